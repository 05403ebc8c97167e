"""Whisper's tensor rules: which weights are "layer matrices" (pruned, factorized), which not.

The one place that knows tensor names (as mergekit's architecture files do): the paper's
operators (:mod:`speechmerge.prune`) and the merge methods (:mod:`speechmerge.merge`) ask
:func:`is_prunable` / :func:`is_matrix` instead of looking at names themselves.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["NON_PRUNABLE_SUBSTRINGS", "is_matrix", "is_prunable"]

#: Name fragments of 2-D weights that are embeddings (or tied to one) and are never pruned.
NON_PRUNABLE_SUBSTRINGS: tuple[str, ...] = (
    "embed_tokens",
    "embed_positions",
    "proj_out",
    "lm_head",
)


def is_prunable(name: str, tensor: Tensor) -> bool:
    """Whether MP/SVP/LoRS apply to this tensor: 2-D float ``*.weight`` of a linear projection.

    False for embeddings (``embed_tokens``, ``embed_positions``, and the tied output projection
    ``proj_out`` / ``lm_head``), 1-D tensors (biases, layer norms), conv weights (3-D) and
    non-float tensors.
    """
    if not name.endswith(".weight"):
        return False
    if tensor.ndim != 2 or not tensor.is_floating_point():
        return False
    return not any(s in name for s in NON_PRUNABLE_SUBSTRINGS)


def is_matrix(name: str, tensor: Tensor) -> bool:
    """The "layer matrices" of the SVD-based methods (TSV-M, Iso-C/CTS, CART): the same 2-D
    linear weights LoRS prunes."""
    return is_prunable(name, tensor)

"""What the merge methods share: reading their parameters and streaming sums over the τ_i.

Every helper folds the task vectors in one at a time (``taskvectors[i]`` is read when
accessed, :class:`speechmerge.merge.engine.TaskVectors`) and drops each before the next.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..architecture import is_prunable
from ..prune import check_ratio, svd_exact

__all__ = [
    "MergeFn",
    "Prune",
    "exact",
    "mean",
    "method_param",
    "plus_lam_mean",
    "pruned_task_arithmetic",
    "ratio_param",
    "sum_each",
]

#: A method's per-tensor function: ``f(name, base, taskvectors, params, lam) -> merged``.
MergeFn = Callable[[str, Tensor, Sequence[Tensor], list[dict[str, Any]], float], Tensor]

#: ``P(τ_i, params[i])``: a pruning of one task vector with its own parameters.
Prune = Callable[[Tensor, dict[str, Any]], Tensor]


def method_param(p: Mapping[str, Any], method: str, key: str, default: Any) -> Any:
    """``p[method][key]``, else ``p[key]``, else ``default`` (see :mod:`speechmerge.merge`)."""
    section = p.get(method)
    if isinstance(section, Mapping) and key in section:
        return section[key]
    return p.get(key, default)


def ratio_param(p: Mapping[str, Any], method: str, key: str, default: float, i: int) -> float:
    """:func:`method_param` checked to lie in [0, 1] (the error names the method and ``i``)."""
    return check_ratio(method_param(p, method, key, default), f"{method}: params[{i}] {key}")


def exact(p: Mapping[str, Any]) -> bool | None:
    """The ``exact`` of an SVD for the task vector with parameters ``p`` (see
    :mod:`speechmerge.merge`): True under ``rounding="paper"``, else ``p["exact"]`` (default
    None)."""
    return svd_exact(p.get("exact"), p.get("rounding"))


def sum_each(
    base: Tensor,
    taskvectors: Sequence[Tensor],
    fn: Callable[[int, Tensor], Tensor] | None = None,
) -> Tensor:
    """Σ_i fn(i, τ_i) (Σ_i τ_i for ``fn=None``) into one accumulator, one τ_i at a time."""
    total = torch.zeros_like(base)
    for i in range(len(taskvectors)):
        # no name holds τ_i (or fn's result) past this statement: each is freed before the next
        total.add_(taskvectors[i] if fn is None else fn(i, taskvectors[i]))
    return total


def mean(base: Tensor, taskvectors: Sequence[Tensor]) -> Tensor:
    """(1/n) Σ τ_i, accumulated one τ_i at a time (no n-fold stacked copy)."""
    return sum_each(base, taskvectors).div_(len(taskvectors))


def plus_lam_mean(base: Tensor, taskvectors: Sequence[Tensor], lam: float) -> Tensor:
    """θ0 + λ mean_i τ_i (the non-matrix rule of TSV-M and Iso-C/CTS)."""
    return mean(base, taskvectors).mul_(lam).add_(base)


def pruned_task_arithmetic(
    name: str,
    base: Tensor,
    taskvectors: Sequence[Tensor],
    params: list[dict[str, Any]],
    lam: float,
    prune: Prune | None = None,
) -> Tensor:
    """θ0 + λ Σ P(τ_i), with P = identity for non-prunable tensors or ``prune is None``."""
    if prune is not None and is_prunable(name, base):
        total = sum_each(base, taskvectors, lambda i, tv: prune(tv, params[i]))
    else:
        total = sum_each(base, taskvectors)
    return total.mul_(lam).add_(base)  # = base + lam * total, without two temporaries

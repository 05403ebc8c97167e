"""Model merging methods (LoRS-Merging paper, Sec. 3 and 4.3), streaming over safetensors.

Every method is a per-tensor function declared in :mod:`.registry` (name, pretty name, paper
reference, parameters; :func:`register` adds one's own)::

    f(name, base_tensor, taskvectors, params, lam) -> merged_tensor

``taskvectors[i]`` is τ_i for this tensor and ``params[i]`` that task vector's own
hyper-parameters (``rank_ratio``, ``keep_ratio``). The caller (:func:`merge_tensor`) hands the
method a :class:`TaskVectors` sequence that reads, validates and casts τ_i (float32, float64
if the base is float64) only when item ``i`` is accessed, and casts the result back to the
base dtype; non-float base tensors are copied without calling the method.

Methods are written to *stream*: they access ``taskvectors[i]`` one at a time, fold it into
running accumulators and drop it before reading the next (two passes where the definition
needs a statistic of all n first: TIES' elected sign, CART's mean, Iso-CTS' common subspace;
each pass re-reads the τ_i). So merging n task vectors holds O(1) tensors of this name, not n:
peak memory is independent of n. Items may alias caller-owned tensors: methods never modify
them in place.

Methods (with ``P(τ)`` applied only to :func:`speechmerge.architecture.is_prunable` tensors; all other
tensors use plain task arithmetic with the same λ):

* ``wa``   -- Weight Averaging: θ0 + mean_i τ_i = (1/n) Σ θ_i (λ ignored).
* ``ta``   -- Task Arithmetic: θ0 + λ Σ τ_i.
* ``mp``   -- MP-Merging: θ0 + λ Σ MP(τ_i, p_i), eqs. (1)-(2).
* ``svp``  -- SVP-Merging: θ0 + λ Σ SVP(τ_i, r_i), eqs. (3)-(4).
* ``lors`` -- LoRS-Merging: θ0 + λ Σ (L_i + S_i), eqs. (5)-(8).

Newer methods (each docstring names the equation / algorithm followed):

* ``ties``    -- TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint mean.
* ``dare``    -- DARE (Yu et al., ICML 2024): random drop + rescale, then task arithmetic.
* ``tsvm``    -- TSV-M (Gargiulo et al., CVPR 2025): per-task top singular vectors, whitened.
* ``iso_c``   -- Iso-C (Marczak et al., ICML 2025): TA sum with a flat (isotropic) spectrum.
* ``iso_cts`` -- Iso-CTS (Marczak et al., ICML 2025): common + task-specific subspaces, flat.
* ``cart``    -- CART (Choi et al., 2024): mean + λ Σ low-rank(θ_i − mean).

Hyper-parameters of a method are read per task vector from ``params[i]``: first from the
method's own section ``params[i][method][key]`` (how the workflow config's ``merge.<method>``
keys arrive, see :func:`speechmerge.config.merge_params`), then from the flat
``params[i][key]`` (library / CLI use), then the method's default. Parameters that are global
to a merge (``seed``, ``common_fraction``) are read from ``params[0]``.

Two flat keys steer every SVD and rounding: ``exact`` (True: the exact SVD; default None:
seeded randomized for small ranks of large matrices) reaches every method that takes a
truncated SVD (svp, lors, cart, tsvm, iso_cts; iso_c and the whitening take full SVDs anyway);
``rounding`` (``"ceil"``, the default, or ``"paper"``) is the rank/count rounding of mp, svp
and lors (:mod:`speechmerge.prune`, "Rounding") and implies ``exact`` for every method.

Layout: :mod:`.registry` (the declarations, :data:`METHOD_NAMES`, :data:`RATIO_FREE`),
:mod:`.engine` (:class:`TaskVectors`, :func:`merge_tensor`, :func:`merge_models`), the methods
by family (:mod:`.basic`: wa, ta; :mod:`.pruned`: mp, svp, lors, ties, dare; :mod:`.subspace`:
tsvm, iso_c, iso_cts, cart) and their shared helpers (:mod:`.common`). The allocator tuning
of a long streaming merge is an opt-in: :func:`speechmerge.io.memory.enable_streaming_memory_tuning`.
"""

import importlib

# The declarations are imported eagerly (no torch: the planning and report code read them);
# everything else on first use (PEP 562), so `import speechmerge.merge.registry` stays light.
from .registry import METHOD_NAMES, METHODS, RATIO_FREE, MergeMethod, Param, get_method, register

_LAZY = {
    "method_param": "common",
    "MergeFn": "common",
    "MERGE_RECORD": "engine",
    "MODEL_FILES": "engine",
    "TaskVectors": "engine",
    "is_merge_output": "engine",
    "merge_models": "engine",
    "merge_state_dicts": "engine",
    "merge_tensor": "engine",
    "normalize_params": "engine",
    "dare_mask": "pruned",
    "iso_cts_dims": "subspace",
    "tsvm_rank": "subspace",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MERGE_RECORD",
    "METHODS",
    "METHOD_NAMES",
    "MODEL_FILES",
    "RATIO_FREE",
    "MergeFn",
    "MergeMethod",
    "Param",
    "TaskVectors",
    "dare_mask",
    "get_method",
    "is_merge_output",
    "iso_cts_dims",
    "merge_models",
    "merge_state_dicts",
    "merge_tensor",
    "method_param",
    "normalize_params",
    "register",
    "tsvm_rank",
]

"""The merge methods: each declares its name, pretty name, paper reference and parameters.

Reports and the dev selection read these declarations instead of keeping their own copies:
:data:`METHOD_NAMES` (name → the name tables print) and :data:`RATIO_FREE` (the methods that
read neither ``rank_ratio`` nor ``keep_ratio``, so a dev-selected (r, p) cannot change their
merges). Each :class:`MergeMethod` also says whether it uses λ (``uses_lambda``: Weight
Averaging does not, so the dev selection selects no λ for it). :func:`register` adds a method
of one's own; :func:`get_method` looks one up.

A method's function has the signature :data:`MergeFn`; the methods themselves are grouped by
family in :mod:`speechmerge.merge.basic`, :mod:`~speechmerge.merge.pruned` and
:mod:`~speechmerge.merge.subspace`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the declarations import no torch: plan and report read them
    from torch import Tensor

    from .common import MergeFn

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "RATIO_FREE",
    "REQUIRED",
    "MergeMethod",
    "Param",
    "get_method",
    "register",
]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The ``default`` of a :class:`Param` that has none: the caller must give it.
REQUIRED: Any = _Required()

#: The selection's ratios: a method that declares neither is in :data:`RATIO_FREE`.
SELECTED_RATIOS = ("rank_ratio", "keep_ratio")


@dataclass(frozen=True)
class Param:
    """One hyper-parameter a method reads (see :mod:`speechmerge.merge` for where from).

    ``default`` is the method's own (:data:`REQUIRED` if it has none; a string describes a
    default that depends on the merge, e.g. ``"1/n"``); ``per_task`` False: read from
    ``params[0]`` only (global to a merge).
    """

    name: str
    default: Any = REQUIRED
    per_task: bool = True

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


#: The flat keys that steer SVDs and rounding (:mod:`speechmerge.merge`), declared by the
#: methods they reach.
EXACT = Param("exact", None)
ROUNDING = Param("rounding", "ceil")


@dataclass(frozen=True)
class MergeMethod:
    """A registered merging method: its per-tensor function and its declaration.

    ``pretty_name`` is what tables print, ``reference`` the paper (and where in it),
    ``params`` what it reads, ``default_lambda`` the λ the CLI uses when none is given (the
    value suggested by the method's paper, or this project's config default 0.3 for the
    task-arithmetic family), ``uses_lambda`` False for a method that ignores λ.
    """

    name: str
    impl: MergeFn | str
    pretty_name: str = ""
    reference: str = ""
    params: tuple[Param, ...] = ()
    default_lambda: float = 1.0
    uses_lambda: bool = True

    @property
    def fn(self) -> MergeFn:
        """The per-tensor function; a built-in's is named ``"module:function"`` (a module of
        :mod:`speechmerge.merge`) and imported on first use, so reading the declarations
        (names, parameters) needs no torch."""
        if not isinstance(self.impl, str):
            return self.impl
        module, _, attr = self.impl.partition(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)

    @property
    def description(self) -> str:
        """First line of the function's docstring."""
        return (self.fn.__doc__ or self.name).strip().splitlines()[0]

    @property
    def required_params(self) -> tuple[str, ...]:
        """The parameters every task vector must give (no default)."""
        return tuple(p.name for p in self.params if p.required)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def __call__(
        self,
        name: str,
        base: Tensor,
        taskvectors: Sequence[Tensor],
        params: list[dict[str, Any]],
        lam: float,
    ) -> Tensor:
        return self.fn(name, base, taskvectors, params, lam)


_LORS_PAPER = (
    "Zhao et al., Low-Rank and Sparse Model Merging for Multi-Lingual Speech Recognition and "
    "Translation (LoRS-Merging)"
)
_ISO = "Marczak et al., No Task Left Behind: Isotropic Model Merging, ICML 2025"

#: The built-in methods, in the order tables list them.
BUILTIN: tuple[MergeMethod, ...] = (
    MergeMethod(
        "wa",
        "basic:weight_averaging",
        "Weight Averaging",
        f"{_LORS_PAPER}, baseline; Wortsman et al., Model soups, ICML 2022",
        uses_lambda=False,
    ),
    MergeMethod(
        "ta",
        "basic:task_arithmetic",
        "Task Arithmetic",
        f"{_LORS_PAPER}, baseline; Ilharco et al., Editing Models with Task Arithmetic, ICLR 2023",
        default_lambda=0.3,
    ),
    MergeMethod(
        "mp",
        "pruned:mp_merging",
        "MP-Merging",
        f"{_LORS_PAPER}, eqs. 1-2",
        (Param("keep_ratio"), ROUNDING),
        default_lambda=0.3,
    ),
    MergeMethod(
        "svp",
        "pruned:svp_merging",
        "SVP-Merging",
        f"{_LORS_PAPER}, eqs. 3-4",
        (Param("rank_ratio"), EXACT, ROUNDING),
        default_lambda=0.3,
    ),
    MergeMethod(
        "lors",
        "pruned:lors_merging",
        "LoRS-Merging",
        f"{_LORS_PAPER}, eqs. 5-8",
        (Param("rank_ratio"), Param("keep_ratio"), EXACT, ROUNDING),
        default_lambda=0.3,
    ),
    MergeMethod(
        "ties",
        "pruned:ties_merging",
        "TIES-Merging",
        "Yadav et al., TIES-Merging, NeurIPS 2023, Alg. 1",
        (Param("keep_ratio", 0.2),),
    ),
    MergeMethod(
        "dare",
        "pruned:dare_merging",
        "DARE",
        "Yu et al., Language Models are Super Mario, ICML 2024, eq. 1",
        (Param("drop_rate", 0.9), Param("seed", 0, per_task=False)),
        default_lambda=0.3,
    ),
    MergeMethod(
        "tsvm",
        "subspace:tsv_merging",
        "TSV-M",
        "Gargiulo et al., Task Singular Vectors, CVPR 2025",
        (Param("rank_fraction", "1/n"), EXACT),
    ),
    MergeMethod("iso_c", "subspace:iso_c_merging", "Iso-C", f"{_ISO} (Iso-C)"),
    MergeMethod(
        "iso_cts",
        "subspace:iso_cts_merging",
        "Iso-CTS",
        f"{_ISO} (Iso-CTS)",
        (Param("common_fraction", 0.8, per_task=False), EXACT),
    ),
    MergeMethod(
        "cart",
        "subspace:cart_merging",
        "CART",
        "Choi et al., Revisiting Weight Averaging for Model Merging, 2024, eq. 6",
        (Param("rank_ratio", 0.08), EXACT),
    ),
)

METHODS: dict[str, MergeMethod] = {m.name: m for m in BUILTIN}

#: Name → the name reports print, for the built-in methods in table order.
METHOD_NAMES: dict[str, str] = {m.name: m.pretty_name for m in BUILTIN}

#: Built-in methods that declare neither ``rank_ratio`` nor ``keep_ratio``.
RATIO_FREE: frozenset[str] = frozenset(
    m.name for m in BUILTIN if not set(SELECTED_RATIOS) & set(m.param_names)
)


def register(
    name: str,
    required_params: Sequence[str] = (),
    default_lambda: float = 1.0,
    *,
    pretty_name: str = "",
    reference: str = "",
    params: Sequence[Param] | None = None,
) -> Callable[[MergeFn], MergeFn]:
    """Decorator adding a per-tensor merge function to :data:`METHODS` under ``name``.

    ``params`` declares what it reads (default: ``required_params`` as required
    :class:`Param`\\ s). ``default_lambda`` is the λ the CLI uses when none is given (the
    value suggested by the method's paper, or this project's config default 0.3 for the
    task-arithmetic family).
    """
    declared = tuple(params) if params is not None else tuple(Param(k) for k in required_params)

    def deco(fn: MergeFn) -> MergeFn:
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        METHODS[name] = MergeMethod(
            name, fn, pretty_name or name, reference, declared, float(default_lambda)
        )
        return fn

    return deco


def get_method(method: str | MergeMethod) -> MergeMethod:
    """Look up a method by name; ValueError listing the known methods if unknown."""
    if isinstance(method, MergeMethod):
        return method
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown merge method {method!r}; known methods: {', '.join(sorted(METHODS))}"
        ) from None

"""The merge registry's declarations: what reports, the selection and the CLI read from it."""

from __future__ import annotations

import pytest
import torch

import speechmerge.report.tables as report
from speechmerge.cli.params import KNOWN_PARAMS
from speechmerge.merge import METHOD_NAMES, METHODS, RATIO_FREE, merge_state_dicts
from speechmerge.merge.registry import BUILTIN
from speechmerge.plan import params as smparams

MAT = "model.encoder.layers.0.fc1.weight"  # a layer matrix
VEC = "model.encoder.layers.0.fc1.bias"


def test_method_names_are_the_reports() -> None:
    """The tables print the registry's names (no hand-kept copy), in table order."""
    assert report.METHOD_NAMES is METHOD_NAMES
    assert list(METHOD_NAMES.values())[:5] == [
        "Weight Averaging",
        "Task Arithmetic",
        "MP-Merging",
        "SVP-Merging",
        "LoRS-Merging",
    ]


def test_every_builtin_declares_a_pretty_name_and_a_reference() -> None:
    assert [m.name for m in BUILTIN] == list(METHODS)[: len(BUILTIN)]
    for m in BUILTIN:
        assert m.pretty_name and m.reference, m.name


def test_required_params() -> None:
    required = {m.name: m.required_params for m in BUILTIN if m.required_params}
    assert required == {
        "mp": ("keep_ratio",),
        "svp": ("rank_ratio",),
        "lors": ("rank_ratio", "keep_ratio"),
    }


def test_declared_params_are_what_the_cli_accepts() -> None:
    assert {p.name for m in BUILTIN for p in m.params} == set(KNOWN_PARAMS)


def test_lambda_free_is_what_the_selection_skips() -> None:
    config = {"merge": {"methods": list(METHODS)}}
    lam_free = {m.name for m in BUILTIN if not m.uses_lambda}
    assert (
        set(smparams.lambda_methods(config))
        == set(METHOD_NAMES) - lam_free
        == (set(METHOD_NAMES) - {"wa"})
    )


def test_ratio_free_is_derived_from_the_declarations() -> None:
    """RATIO_FREE: the methods declaring neither rank_ratio nor keep_ratio: WA, TA, and also
    DARE, TSV-M, Iso-C and Iso-CTS, which read neither ratio either (see the next test). The
    plan's selection reads this set."""
    assert RATIO_FREE == {"wa", "ta", "dare", "tsvm", "iso_c", "iso_cts"}
    assert smparams.RATIO_FREE_METHODS is RATIO_FREE


@pytest.mark.parametrize("method", sorted(METHOD_NAMES))
def test_ratio_free_methods_ignore_the_ratios(method: str) -> None:
    """A (rank_ratio, keep_ratio) change moves a merge exactly when the method is not
    ratio-free: the declarations match what the functions read."""
    g = torch.Generator().manual_seed(0)
    base = {MAT: torch.randn(24, 20, generator=g), VEC: torch.randn(24, generator=g)}
    tvs = [{k: torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(3)]
    a = merge_state_dicts(base, tvs, method, 0.5, {"rank_ratio": 0.1, "keep_ratio": 0.1})
    b = merge_state_dicts(base, tvs, method, 0.5, {"rank_ratio": 0.5, "keep_ratio": 0.6})
    same = all(torch.equal(a[k], b[k]) for k in base)
    assert same == (method in RATIO_FREE)

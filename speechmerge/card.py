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
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .io.atomic import MANIFEST

__all__ = ["CARD_NAME", "input_sha256", "model_card"]

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

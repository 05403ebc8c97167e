"""CoVoST-2 (X→en) in the workflow's corpus format, read through Hugging Face ``datasets``.

The paper (section 4.1) uses CoVoST-2's X→en part for ten source languages: the
high-resource set ca, de, es, fr, it and the low-resource set id, nl, pt, ru, sv (CoVoST-2
calls Swedish ``sv-SE``; its configs are ``{src}_en``: ``de_en``, ``sv-SE_en``). For each
language this module writes ``{out}/{train,dev,test}.tsv`` plus 16 kHz mono FLAC clips, the
format of :mod:`speechmerge.corpus`; the ``subset`` rule then draws the paper's 5 h (1 h for
the low-resource set) / 1 h / 1 h from it.

Two loaders (config ``corpus.covost2.loader``):

``parquet`` (default)
    A parquet copy of CoVoST-2 on the Hub, by default ``fixie-ai/covost2``, laid out as
    ``{src}_en/{split}-NNNNN-of-NNNNN.parquet`` with the columns of the official loader:
    ``client_id, file, audio, sentence, translation, id`` (``audio`` = {bytes, path}),
    splits ``train / validation / test``. Read with ``datasets.load_dataset(name,
    data_dir="{src}_en", split=..., streaming=True)``, so with ``max_hours_per_split`` only
    what is needed is downloaded. ``hub_dataset`` may also be a local folder in the same
    layout (e.g. a ``git clone`` of the mirror): the same call reads it.

``official``
    The recipe of the official ``facebook/covost2`` loader with a local Common Voice copy
    (CoVoST-2 is built on Common Voice 4, which must be downloaded by hand): the CoVoST TSV
    ``covost_v2.{src}_en.tsv`` (from ``covost_tsv_dir``, or downloaded from
    dl.fbaipublicfiles.com through ``datasets.DownloadManager``) is inner-joined on ``path``
    with Common Voice's ``validated.tsv`` and its rows split by the ``split`` column
    (``train`` takes ``train`` and ``train_covost``), audio from ``{common_voice_dir}/clips``.
    ``facebook/covost2`` is a loading script, which ``datasets`` ≥ 4 no longer runs
    (``trust_remote_code`` was removed), so its ``_generate_examples`` is reproduced here.

Audio is never decoded by ``datasets`` (its decoder needs torchcodec in recent versions):
the ``audio`` column is cast to ``Audio(decode=False)`` and the bytes (or the file) are
decoded with soundfile (WAV, FLAC, OGG, MP3), averaged to mono and resampled to 16 kHz with
:func:`speechmerge.synth.resample`.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from .corpus import LANGUAGES, Utterance, write_tsv
from .io.atomic import atomic_dir
from .progress import Progress

log = logging.getLogger(__name__)

# CoVoST-2's source-language codes where they differ from the workflow's (Whisper's) codes.
COVOST_CODES = {"sv": "sv-SE"}
# CoVoST / datasets split names -> the workflow's split names.
SPLITS = {"train": "train", "validation": "dev", "test": "test"}
COVOST_TSV_URL = "https://dl.fbaipublicfiles.com/covost/covost_v2.{src}_en.tsv.tar.gz"
SR = 16_000

DEFAULTS = {
    "loader": "parquet",
    "hub_dataset": "fixie-ai/covost2",
    "revision": None,
    "common_voice_dir": None,
    "covost_tsv_dir": None,
    "max_hours_per_split": None,
    "max_seconds": 30.0,
}


def covost_code(lang: str) -> str:
    """CoVoST-2's code of a workflow language (``sv`` -> ``sv-SE``)."""
    if lang not in LANGUAGES:
        raise ValueError(f"language {lang!r} is not one of the paper's {LANGUAGES}")
    return COVOST_CODES.get(lang, lang)


def covost_config(lang: str) -> str:
    """The X→en config name: ``de_en``, ``sv-SE_en``."""
    return f"{covost_code(lang)}_en"


def settings(cfg: dict | None) -> dict:
    """``corpus.covost2`` with defaults filled in; unknown keys fail, naming the key."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"config key 'corpus.covost2': unknown key(s) {unknown}")
    out = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    if out["loader"] not in ("parquet", "official"):
        raise ValueError(
            f"config key 'corpus.covost2.loader': {out['loader']!r} is not 'parquet' or 'official'"
        )
    if out["loader"] == "official" and not out["common_voice_dir"]:
        raise ValueError(
            "config key 'corpus.covost2.common_voice_dir' is required with loader 'official' "
            "(a local Common Voice 4 language folder holding validated.tsv and clips/; "
            "'{lang}' in it is replaced by CoVoST's language code)"
        )
    return out


# ---------------------------------------------------------------- loaders (examples as dicts)


def _text(value) -> str:
    """One line of text: tabs, newlines and runs of white space collapsed."""
    return re.sub(r"\s+", " ", str(value or "")).strip()


def iter_parquet(lang: str, split: str, cfg: dict) -> Iterator[dict]:
    """Examples of one CoVoST split (``train``/``validation``/``test``) from the parquet
    mirror (Hub name or local folder), streamed; audio left undecoded ({bytes, path})."""
    # deferred: optional extra [covost]
    import datasets

    source = cfg["hub_dataset"]
    config = covost_config(lang)
    local = Path(source).expanduser()
    kwargs = {}
    if local.exists():
        if not (local / config).is_dir():
            raise FileNotFoundError(
                f"config key 'corpus.covost2.hub_dataset': local folder {local} has no "
                f"'{config}' subfolder (expected {local}/{config}/{split}-*.parquet)"
            )
        source = str(local.resolve())
    elif cfg.get("revision"):
        kwargs["revision"] = cfg["revision"]
    ds = datasets.load_dataset(source, data_dir=config, split=split, streaming=True, **kwargs)
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    yield from ds


def _covost_tsv(lang: str, cfg: dict) -> Path:
    name = f"covost_v2.{covost_code(lang)}_en.tsv"
    if cfg.get("covost_tsv_dir"):
        path = Path(cfg["covost_tsv_dir"]).expanduser() / name
        if not path.is_file():
            raise FileNotFoundError(f"config key 'corpus.covost2.covost_tsv_dir': no {path}")
        return path
    # deferred: optional extra [covost]
    import datasets

    url = COVOST_TSV_URL.format(src=covost_code(lang))
    return Path(datasets.DownloadManager().download_and_extract(url)) / name


def _read_tsv(path: Path):
    """A CoVoST / Common Voice TSV, read exactly as the official loader reads it."""

    return pd.read_csv(
        path,
        sep="\t",
        header=0,
        encoding="utf-8",
        escapechar="\\",
        quoting=csv.QUOTE_NONE,
        na_filter=False,
    )


def iter_official(lang: str, split: str, cfg: dict) -> Iterator[dict]:
    """Examples of one split by the official ``facebook/covost2`` recipe (local Common Voice
    folder + CoVoST TSV), in the official loader's order and with its columns."""

    cv_dir = Path(str(cfg["common_voice_dir"]).format(lang=covost_code(lang))).expanduser()
    cv_tsv = cv_dir / "validated.tsv"
    if not cv_tsv.is_file():
        raise FileNotFoundError(
            f"config key 'corpus.covost2.common_voice_dir': no {cv_tsv} (expected a Common "
            "Voice language folder with validated.tsv and clips/)"
        )
    covost = _read_tsv(_covost_tsv(lang, cfg))
    cv = _read_tsv(cv_tsv)
    df = pd.merge(
        left=cv[["path", "sentence", "client_id"]],
        right=covost[["path", "translation", "split"]],
        how="inner",
        on="path",
    )
    name = {"validation": "dev"}.get(split, split)
    keep = df["split"].isin(["train", "train_covost"]) if split == "train" else df["split"] == name
    for row in df[keep].itertuples(index=False):
        file = str(cv_dir / "clips" / row.path)
        yield {
            "id": row.path.replace(".mp3", ""),
            "client_id": row.client_id,
            "file": file,
            "audio": {"bytes": None, "path": file},
            "sentence": row.sentence,
            "translation": row.translation,
        }


def iter_examples(lang: str, split: str, cfg: dict) -> Iterator[dict]:
    cfg = settings(cfg)
    if split not in SPLITS:
        raise ValueError(f"unknown CoVoST split {split!r}; known: {list(SPLITS)}")
    loader = iter_parquet if cfg["loader"] == "parquet" else iter_official
    return loader(lang, split, cfg)


# ----------------------------------------------------------------------------- audio, writing


def decode_audio(audio: dict) -> np.ndarray:
    """{bytes, path} (``datasets.Audio(decode=False)``) -> float32 mono 16 kHz."""

    # deferred: synth needs the optional extra [synthetic] (eSpeak, scipy)
    from .synth import resample

    data, path = audio.get("bytes"), audio.get("path")
    try:
        source = io.BytesIO(data) if data else path
        if source is None:
            raise ValueError("neither bytes nor path")
        wav, sr = sf.read(source, dtype="float32", always_2d=True)
    except Exception as e:
        raise ValueError(f"cannot decode audio {path!r}: {e}") from e
    return resample(wav.mean(axis=1), sr, SR)


def _safe_id(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._") or "utt"


def write_split(
    examples, lang: str, split: str, out_dir: Path, cfg: dict, progress: bool = True
) -> dict:
    """Decode, resample and write one split's clips + TSV under `out_dir`; stop once
    ``max_hours_per_split`` of audio are written. Returns a summary."""

    ours = SPLITS[split]
    cap = cfg["max_hours_per_split"]
    cap_s = cap * 3600.0 if cap else None
    (out_dir / "clips" / ours).mkdir(parents=True, exist_ok=True)
    rows: list[Utterance] = []
    seen: set[str] = set()
    total, skipped = 0.0, {"empty_text": 0, "too_long": 0}
    bar = Progress(
        round(cap_s) if cap_s else None,
        f"covost2 {lang}/{ours}",
        unit="s",
        items="utt",
        enabled=progress,
    )
    for i, ex in enumerate(examples):
        sentence, translation = _text(ex.get("sentence")), _text(ex.get("translation"))
        if not sentence or not translation:
            skipped["empty_text"] += 1
            continue
        audio = decode_audio(ex["audio"])
        seconds = audio.size / SR
        if seconds <= 0 or seconds > cfg["max_seconds"]:
            skipped["too_long"] += 1
            continue
        uid = f"{lang}-{ours}-{_safe_id(str(ex.get('id') or i))}"
        if uid in seen:
            uid = f"{uid}-{i}"
        seen.add(uid)
        rel = f"clips/{ours}/{uid}.flac"
        sf.write(out_dir / rel, audio, SR, subtype="PCM_16")
        rows.append(Utterance(uid, rel, round(seconds, 3), sentence, translation))
        total += seconds
        bar.update(round(seconds), items=1)
        if cap_s is not None and total >= cap_s:
            break
    bar.close()
    if not rows:
        raise ValueError(f"CoVoST-2 {covost_config(lang)} split {split!r}: no usable utterance")
    write_tsv(rows, out_dir / f"{ours}.tsv")
    summary = {"utterances": len(rows), "seconds": round(total, 1), "skipped": skipped}
    log.info("%s %s -> %s: %s", covost_config(lang), split, ours, summary)
    return summary


def write_covost_language(lang: str, out_dir, cfg: dict | None, progress: bool = True) -> dict:
    """Write ``{out_dir}/{train,dev,test}.tsv`` + 16 kHz FLAC clips for one language from
    CoVoST-2 (``cfg`` = the ``corpus.covost2`` config section). Atomic: written into a
    temporary sibling folder, then renamed into place. Returns {split: summary}."""
    cfg = settings(cfg)
    with atomic_dir(out_dir) as tmp:
        summary = {
            SPLITS[split]: write_split(
                iter_examples(lang, split, cfg), lang, split, tmp, cfg, progress
            )
            for split in SPLITS
        }
    return summary

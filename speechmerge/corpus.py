"""Corpora in the workflow's one format, and duration-based subsetting.

A corpus split is a TSV with the columns ``id, audio, duration, sentence, translation``:
``audio`` is a path (relative to the TSV's folder) to a 16 kHz mono FLAC file, ``sentence``
the transcript in the spoken language (the ASR target) and ``translation`` its English
translation (the X→en speech-translation target).

Sources:

* ``synthetic``: the embedded benchmark. Sequences of numbers spoken by eSpeak NG in the
  paper's ten languages, words from ``num2words`` (the default preset: digit strings such as
  "sieben drei null acht" -> "seven three zero eight"). Two domains, as Whisper's
  pre-training data vs CoVoST-2: the *base* split (pre-training only: clean "studio" voices,
  its own sequence lengths and number range) and the *target* splits ``train/dev/test``
  (other voice variants, faster speech, higher pitch, white noise, other lengths). Every
  text belongs to exactly one of train / dev / test by a seeded hash (:func:`text_split`),
  and the base domain draws only train texts, so dev and test texts are never seen in
  training of any model.
* ``covost2`` (see :mod:`speechmerge.covost`), written in the same format.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .io.atomic import atomic_dir, atomic_write_text, check_folder
from .progress import track

COLUMNS = ["id", "audio", "duration", "sentence", "translation"]
SPLITS = ["base", "train", "dev", "test"]
TARGET_SPLITS = ["train", "dev", "test"]

# The paper's language sets (section 4.1).
HIGH_RESOURCE = ["ca", "de", "es", "fr", "it"]
LOW_RESOURCE = ["id", "nl", "pt", "ru", "sv"]
LANGUAGES = HIGH_RESOURCE + LOW_RESOURCE


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: str
    duration: float
    sentence: str
    translation: str


def stable_seed(*parts: object) -> int:
    """A seed derived from strings/ints, stable across processes (unlike hash())."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def number_text(n: int, lang: str) -> str:
    # deferred: optional extra [synthetic]
    from num2words import num2words

    return num2words(n, lang=lang)


def text_split(numbers: tuple[int, ...], seed: int, dev_frac: float, test_frac: float) -> str:
    """The split ("train", "dev" or "test") an utterance text belongs to.

    Decided by a seeded hash of the number sequence alone, so every text has exactly one
    split whichever language speaks it and whichever split asks: dev and test texts are never
    seen in training of any model (the base domain draws from "train" texts only).
    """
    u = stable_seed(seed, "split", *numbers) / 2.0**64
    if u < test_frac:
        return "test"
    if u < test_frac + dev_frac:
        return "dev"
    return "train"


def _draw_number(upper: int, rng: np.random.Generator) -> int:
    """A number in 0..upper, uniform over digit counts, then uniform within a digit count."""
    n_digits = int(rng.integers(1, len(str(upper)) + 1))
    lo = 0 if n_digits == 1 else 10 ** (n_digits - 1)
    hi = min(upper, 10**n_digits - 1)
    return int(rng.integers(lo, hi + 1))


def sample_texts(
    split: str,
    count: int,
    domain: dict,
    cfg: dict,
    seed: int,
    rng: np.random.Generator,
) -> list[tuple[int, ...]]:
    """Draw `count` number sequences of `split`'s texts for a domain.

    A sequence has ``domain["numbers_per_utterance"]`` numbers (default [1, 1]: one number per
    utterance), each drawn by :func:`_draw_number` below ``domain["max_number"]``. Sequences
    are distinct while the split's text space lasts; after many rejected draws (a tiny space)
    repeats are allowed rather than looping forever.
    """
    want = "train" if split == "base" else split
    lo, hi = domain.get("numbers_per_utterance", [1, 1])
    if lo > hi:
        raise ValueError(f"numbers_per_utterance: [low, high] with low <= high, got {[lo, hi]}")
    dev, test = cfg["dev_fraction"], cfg["test_fraction"]
    share = {"train": 1 - dev - test, "dev": dev, "test": test}[want]
    if share <= 0:
        raise ValueError(
            f"corpus.synthetic: dev_fraction ({dev}) and test_fraction ({test}) leave no texts "
            f"for the {want!r} split"
        )
    out: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    misses = other_split = 0
    while len(out) < count:
        k = int(rng.integers(lo, hi + 1))
        seq = tuple(_draw_number(domain["max_number"], rng) for _ in range(k))
        if text_split(seq, seed, dev, test) != want:
            other_split += 1
            if other_split > 10_000 * (count + 1):  # a safety net, never a hang
                raise ValueError(
                    f"corpus.synthetic: {other_split} drawn texts fell outside the {want!r} "
                    f"split and only {len(out)} of {count} were found; check dev_fraction "
                    f"({dev}) and test_fraction ({test})"
                )
            continue
        if seq in seen and misses < 200 * count:
            misses += 1
            continue
        seen.add(seq)
        out.append(seq)
    return out


def sequence_text(numbers: tuple[int, ...], lang: str) -> str:
    """The words of a number sequence in `lang`, numbers separated by spaces."""
    return " ".join(number_text(n, lang) for n in numbers)


def synthesize_language(lang: str, out_dir: str | Path, cfg: dict, seed: int, progress=True):
    """Write ``{out_dir}/{split}.tsv`` and ``{out_dir}/clips/{split}/*.flac`` for one language.

    `cfg` is the ``corpus.synthetic`` section of the workflow config. Deterministic given
    (`lang`, `cfg`, `seed`). Output is atomic: written into a temporary sibling folder and
    renamed into place.
    """

    # deferred: synth needs the optional extra [synthetic] (eSpeak, scipy)
    from .synth import speak

    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            domain = cfg["domains"]["base" if split == "base" else "target"]
            rng = np.random.default_rng(stable_seed(seed, lang, split))
            count = cfg["utterances"][split]
            texts = sample_texts(split, count, domain, cfg, seed, rng)
            (tmp / "clips" / split).mkdir(parents=True)
            rows = []
            for i, seq in enumerate(
                track(texts, f"synth {lang}/{split}", unit="utt", enabled=progress)
            ):
                variant = domain["variants"][rng.integers(len(domain["variants"]))]
                rate = int(rng.integers(domain["rate"][0], domain["rate"][1] + 1))
                pitch = int(rng.integers(domain["pitch"][0], domain["pitch"][1] + 1))
                snr = domain.get("snr_db")
                snr_db = float(rng.uniform(snr[0], snr[1])) if snr else None
                sentence = sequence_text(seq, lang)
                audio = speak(sentence, lang, variant, rate, pitch, snr_db, rng)
                # Keep every utterance inside the model's input window: speak faster.
                while audio.size > cfg["max_seconds"] * 16_000:
                    rate = int(rate * 1.15) + 1
                    audio = speak(sentence, lang, variant, rate, pitch, snr_db, rng)
                uid = f"{lang}-{split}-{i:05d}"
                rel = f"clips/{split}/{uid}.flac"
                sf.write(tmp / rel, audio, 16_000, subtype="PCM_16")
                rows.append(
                    Utterance(
                        uid, rel, round(audio.size / 16_000, 3), sentence, sequence_text(seq, "en")
                    )
                )
            write_tsv(rows, tmp / f"{split}.tsv")


def write_tsv(rows: list[Utterance], path: str | Path) -> None:
    """Write a corpus TSV atomically."""
    table = io.StringIO()
    w = csv.writer(table, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r.id, r.audio, f"{r.duration:.3f}", r.sentence, r.translation])
    atomic_write_text(path, table.getvalue())


def read_tsv(path: str | Path) -> list[Utterance]:
    """Read a corpus TSV; fails naming the file and the missing column or bad row."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: empty corpus file (no header)") from None
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; header is {header}")
        idx = {c: header.index(c) for c in COLUMNS}
        rows = []
        for lineno, rec in enumerate(reader, start=2):
            try:
                rows.append(
                    Utterance(
                        rec[idx["id"]],
                        rec[idx["audio"]],
                        float(rec[idx["duration"]]),
                        rec[idx["sentence"]],
                        rec[idx["translation"]],
                    )
                )
            except (IndexError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: bad row ({e})") from None
    return rows


def subset_by_duration(rows: list[Utterance], seconds: float, seed: int) -> list[Utterance]:
    """A seeded random subset whose total duration is as close as possible to `seconds`
    without exceeding it (the paper fixes hours of audio per language, section 4.1)."""
    if seconds <= 0:
        raise ValueError(f"requested duration must be positive, got {seconds}")
    order = np.random.default_rng(stable_seed(seed, "subset")).permutation(len(rows))
    chosen, total = [], 0.0
    for i in order:
        if total + rows[i].duration <= seconds:
            chosen.append(rows[i])
            total += rows[i].duration
    longest = max((r.duration for r in rows), default=0.0)
    if total < seconds - longest:
        raise ValueError(f"could only fill {total:.1f}s of the requested {seconds:.1f}s")
    if not chosen:
        shortest = min((r.duration for r in rows), default=0.0)
        raise ValueError(
            f"the requested {seconds:.2f}s is shorter than every utterance (shortest "
            f"{shortest:.2f}s): the subset would be empty; raise the hours or the scale"
        )
    return sorted(chosen, key=lambda r: r.id)


def make_subset(corpus_tsv, out_tsv, hours: float, scale: float, seed: int) -> dict:
    """Subset one corpus split to `hours * scale` hours; audio paths are rewritten relative to
    the new TSV's folder. Returns a summary (requested/actual seconds, utterances)."""
    corpus_tsv, out_tsv = Path(corpus_tsv), Path(out_tsv)
    check_folder(corpus_tsv.parent)  # a deleted or truncated clip, named
    rows = read_tsv(corpus_tsv)
    seconds = hours * scale * 3600.0
    available = sum(r.duration for r in rows)
    if available < seconds:
        raise ValueError(
            f"{corpus_tsv}: holds {available:.1f}s of audio, fewer than the {seconds:.1f}s "
            f"requested ({hours} h × scale {scale}); make the corpus larger"
        )
    try:
        chosen = subset_by_duration(rows, seconds, seed)
    except ValueError as e:
        raise ValueError(f"{corpus_tsv}: {e}") from None
    rel = os.path.relpath(corpus_tsv.parent, out_tsv.parent)
    chosen = [
        Utterance(
            r.id,
            os.path.normpath(os.path.join(rel, r.audio)),
            r.duration,
            r.sentence,
            r.translation,
        )
        for r in chosen
    ]
    write_tsv(chosen, out_tsv)
    return {
        "requested_seconds": seconds,
        "seconds": sum(r.duration for r in chosen),
        "utterances": len(chosen),
    }


def load_audio(tsv_path: str | Path, row: Utterance) -> np.ndarray:
    """Load one utterance as float32 mono 16 kHz (resampling if the file differs)."""

    # deferred: synth needs the optional extra [synthetic] (eSpeak, scipy)
    from .synth import TARGET_SR, resample

    path = Path(tsv_path).parent / row.audio
    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:
        raise ValueError(f"cannot read audio {path} (utterance {row.id} of {tsv_path}): {e}") from e
    return resample(audio.mean(axis=1), sr, TARGET_SR)

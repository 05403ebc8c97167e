"""Tests for speechmerge.corpus and speechmerge.synth (the embedded synthetic benchmark)."""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from speechmerge.corpus import (
    COLUMNS,
    LANGUAGES,
    SPLITS,
    Utterance,
    load_audio,
    make_subset,
    number_text,
    read_tsv,
    sample_texts,
    sequence_text,
    subset_by_duration,
    synthesize_language,
    text_split,
    write_tsv,
)
from speechmerge.synth import TARGET_SR, ESpeak, resample, speak

ROOT = Path(__file__).resolve().parent.parent
LANG = "de"
SEED = 3


def tiny_cfg(**overrides) -> dict:
    """The smoke preset's `corpus.synthetic` section with a handful of utterances."""
    smoke = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg = copy.deepcopy(smoke["corpus"]["synthetic"])
    cfg["utterances"] = {"base": 8, "train": 6, "dev": 4, "test": 4}
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Three corpora of one language: two with the same seed, one with another seed."""
    root = tmp_path_factory.mktemp("corpora")
    cfg = tiny_cfg()
    out = {}
    for name, seed in [("a", SEED), ("b", SEED), ("other", SEED + 1)]:
        synthesize_language(LANG, root / name, cfg, seed=seed, progress=False)
        out[name] = root / name
    out["cfg"] = cfg
    return out


def tsv_texts(corpus: Path, split: str) -> set[str]:
    return {r.sentence for r in read_tsv(corpus / f"{split}.tsv")}


# --------------------------------------------------------------------------------------
# synthesize_language


def test_synthesis_writes_every_split(corpora):
    corpus, cfg = corpora["a"], corpora["cfg"]
    for split in SPLITS:
        rows = read_tsv(corpus / f"{split}.tsv")
        assert len(rows) == cfg["utterances"][split]
        assert len({r.id for r in rows}) == len(rows)
        assert all(r.id.startswith(f"{LANG}-{split}-") for r in rows)
    # No temporary sibling folder is left behind.
    assert sorted(p.name for p in corpus.parent.iterdir()) == ["a", "b", "other"]


def test_synthesis_is_deterministic(corpora):
    a, b = corpora["a"], corpora["b"]
    for split in SPLITS:
        assert (a / f"{split}.tsv").read_bytes() == (b / f"{split}.tsv").read_bytes()
        clips_a = sorted(p.relative_to(a) for p in (a / "clips" / split).iterdir())
        clips_b = sorted(p.relative_to(b) for p in (b / "clips" / split).iterdir())
        assert clips_a == clips_b and clips_a
        for rel in clips_a:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_synthesis_depends_on_seed(corpora):
    a, other = corpora["a"], corpora["other"]
    differs = [(a / f"{s}.tsv").read_text() != (other / f"{s}.tsv").read_text() for s in SPLITS]
    assert all(differs)


def test_audio_format_and_durations(corpora):
    corpus, cfg = corpora["a"], corpora["cfg"]
    for split in SPLITS:
        tsv = corpus / f"{split}.tsv"
        for row in read_tsv(tsv):
            info = sf.info(corpus / row.audio)
            assert info.samplerate == TARGET_SR
            assert info.channels == 1
            assert info.frames > 0
            assert abs(info.frames / info.samplerate - row.duration) <= 1e-3
            assert row.duration <= cfg["max_seconds"]
            audio = load_audio(tsv, row)
            assert audio.dtype == np.float32 and audio.ndim == 1
            assert audio.size == info.frames
            assert np.max(np.abs(audio)) > 0


def test_long_utterances_are_respoken_faster(corpora, tmp_path):
    # Same seed and counts as corpus "a" (max_seconds 3), so the same numbers are drawn; the
    # longer German numbers take > 0.9 s at the configured rates and must be re-spoken.
    limit = 0.9
    synthesize_language(LANG, tmp_path / "c", tiny_cfg(max_seconds=limit), SEED, progress=False)
    respoken = 0
    for split in SPLITS:
        before = read_tsv(corpora["a"] / f"{split}.tsv")
        after = read_tsv(tmp_path / "c" / f"{split}.tsv")
        assert [r.sentence for r in after] == [r.sentence for r in before]
        for row in after:
            frames = sf.info(tmp_path / "c" / row.audio).frames
            assert 0 < frames <= limit * TARGET_SR
        respoken += sum(r.duration > limit for r in before)
    assert respoken > 0


def test_speech_does_not_depend_on_history():
    # eSpeak NG keeps C state between calls; ESpeak.synth reloads the library for each one.
    first = speak("fünfundneunzig", "de", "m3", 200, 60)
    speak("quatre-cents", "ca", "f3", 230, 80)
    speak("четыре", "ru", "klatt", 150, 30)
    again = speak("fünfundneunzig", "de", "m3", 200, 60)
    assert np.array_equal(first, again)


def test_targets_are_spoken_language_and_english(corpora):
    words = {number_text(n, LANG): number_text(n, "en") for n in range(1000)}
    assert len(words) == 1000  # num2words is injective on this range
    cfg = corpora["cfg"]
    for split in SPLITS:
        domain = cfg["domains"]["base" if split == "base" else "target"]
        lo, hi = domain.get("numbers_per_utterance", [1, 1])
        for row in read_tsv(corpora["a"] / f"{split}.tsv"):
            spoken, english = row.sentence.split(" "), row.translation.split(" ")
            assert lo <= len(spoken) == len(english) <= hi, row
            for word, en in zip(spoken, english):
                assert words[word] == en, row


def test_breath_noise_does_not_depend_on_the_clock():
    # f3 is a breathy voice: eSpeak NG seeds its noise generator with time(NULL) at
    # initialisation unless reseeded, so audio spoken a second later used to differ.
    first = ESpeak.get().synth("zwei", "de", "f3", 217, 69)
    time.sleep(1.05)
    again = ESpeak.get().synth("zwei", "de", "f3", 217, 69)
    assert np.array_equal(first, again)


# --------------------------------------------------------------------------------------
# Disjointness of number pools and texts


@settings(max_examples=200, deadline=None)
@given(
    seq=st.lists(st.integers(0, 9999), min_size=1, max_size=6).map(tuple),
    seed=st.integers(0, 2**31),
    dev=st.floats(0.0, 0.5),
    test=st.floats(0.0, 0.5),
)
def test_every_text_has_exactly_one_split(seq, seed, dev, test):
    split = text_split(seq, seed, dev, test)
    assert split in {"train", "dev", "test"}
    assert text_split(seq, seed, dev, test) == split  # deterministic
    if test == 0 and dev == 0:
        assert split == "train"


def test_split_fractions_and_sampling():
    cfg = {"dev_fraction": 0.1, "test_fraction": 0.2}
    counts = {"train": 0, "dev": 0, "test": 0}
    for n in range(10_000):
        counts[text_split((n,), 7, 0.1, 0.2)] += 1
    assert abs(counts["test"] - 2000) < 200 and abs(counts["dev"] - 1000) < 150
    domain = {"max_number": 9, "numbers_per_utterance": [3, 5]}
    rng = np.random.default_rng(0)
    texts = sample_texts("test", 300, domain, cfg, 7, rng)
    assert len(set(texts)) == 300  # distinct while the space lasts
    assert all(3 <= len(t) <= 5 and all(0 <= n <= 9 for n in t) for t in texts)
    assert all(text_split(t, 7, 0.1, 0.2) == "test" for t in texts)
    base = sample_texts("base", 100, domain, cfg, 7, np.random.default_rng(1))
    assert all(text_split(t, 7, 0.1, 0.2) == "train" for t in base)
    # A tiny text space (one number, 0..9) is exhausted: repeats rather than an endless loop.
    tiny = sample_texts("train", 30, {"max_number": 9}, cfg, 7, np.random.default_rng(2))
    assert len(tiny) == 30 and len(set(tiny)) < 30
    assert sequence_text((7, 21), "de") == "sieben einundzwanzig"
    assert sequence_text((7, 21), "en") == "seven twenty-one"


def test_split_texts_are_disjoint(corpora):
    for corpus in (corpora["a"], corpora["other"]):
        texts = {s: tsv_texts(corpus, s) for s in SPLITS}
        assert not texts["train"] & texts["dev"]
        assert not texts["train"] & texts["test"]
        assert not texts["dev"] & texts["test"]
        assert not texts["base"] & (texts["dev"] | texts["test"])


# --------------------------------------------------------------------------------------
# eSpeak NG voices and resampling


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_language_speaks(lang):
    assert len(LANGUAGES) == 10
    text = number_text(21, lang)
    assert text.strip()
    assert text != number_text(21, "en")  # the ASR target is in the spoken language
    engine = ESpeak.get()
    raw = engine.synth(text, lang)
    audio = speak(text, lang)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size > 0 and np.max(np.abs(audio)) > 0.01
    assert np.max(np.abs(audio)) <= 0.99 + 1e-6
    # 16 kHz: resampled from eSpeak's native rate, and a plausible spoken duration.
    assert engine.sample_rate == 22050
    assert abs(audio.size - raw.size * TARGET_SR / engine.sample_rate) <= 1
    assert 0.2 < audio.size / TARGET_SR < 5.0


def test_translation_target_is_english():
    assert number_text(21, "de") == "einundzwanzig"
    assert number_text(21, "en") == "twenty-one"


def test_unknown_language_voice_raises():
    with pytest.raises(ValueError, match="xx"):
        speak("one", "xx")


def test_noise_is_seeded():
    a = speak("vint-i-un", "ca", "m3", 200, 60, 15.0, np.random.default_rng(1))
    b = speak("vint-i-un", "ca", "m3", 200, 60, 15.0, np.random.default_rng(1))
    c = speak("vint-i-un", "ca", "m3", 200, 60, 15.0, np.random.default_rng(2))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_resample_keeps_frequency_and_length():
    sr_in, seconds, freq = 22050, 1.0, 1000.0
    t = np.arange(int(sr_in * seconds)) / sr_in
    sine = np.sin(2 * np.pi * freq * t).astype(np.float32)
    out = resample(sine, sr_in, 16000)
    assert out.dtype == np.float32
    assert abs(out.size / sine.size - 16000 / sr_in) < 1e-3
    assert abs(out.size - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    peak = np.fft.rfftfreq(out.size, 1 / 16000)[np.argmax(spectrum)]
    assert abs(peak - freq) <= 2.0
    # Amplitude is preserved away from the edges.
    assert abs(np.max(np.abs(out[1000:-1000])) - 1.0) < 0.02


def test_resample_same_rate_is_identity():
    x = np.linspace(-1, 1, 100)
    out = resample(x, 16000, 16000)
    assert out.dtype == np.float32 and np.allclose(out, x)


# --------------------------------------------------------------------------------------
# Subsetting by duration


def rows_of(durations) -> list[Utterance]:
    return [
        Utterance(f"u{i:04d}", f"clips/u{i:04d}.flac", d, "s", "t") for i, d in enumerate(durations)
    ]


@settings(max_examples=200, deadline=None)
@given(
    durations=st.lists(st.floats(0.01, 30.0, allow_nan=False), min_size=1, max_size=60),
    frac=st.floats(0.01, 1.5),
    seed=st.integers(0, 2**32 - 1),
)
def test_subset_by_duration_properties(durations, frac, seed):
    rows = rows_of(durations)
    available, longest = sum(durations), max(durations)
    requested = frac * available
    eps = 1e-9 * max(1.0, available)
    if available < requested:
        # Not enough audio: everything fits; it fails unless that is within one utterance.
        if available < requested - longest - eps:
            with pytest.raises(ValueError, match="could only fill"):
                subset_by_duration(rows, requested, seed)
        elif available > requested - longest + eps:
            assert len(subset_by_duration(rows, requested, seed)) == len(rows)
        return
    if requested < min(durations) - eps:
        with pytest.raises(ValueError, match="empty"):  # no utterance fits
            subset_by_duration(rows, requested, seed)
        return
    chosen = subset_by_duration(rows, requested, seed)
    assert chosen
    total = sum(r.duration for r in chosen)
    assert total <= requested + eps
    assert total >= requested - longest - eps
    ids = [r.id for r in chosen]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert set(chosen) <= set(rows)
    assert subset_by_duration(rows, requested, seed) == chosen


def test_subset_by_duration_depends_on_seed():
    rows = rows_of(np.random.default_rng(0).uniform(0.5, 3.0, 200))
    subsets = {tuple(r.id for r in subset_by_duration(rows, 60.0, seed)) for seed in range(5)}
    assert len(subsets) > 1


@pytest.mark.parametrize("seconds", [0, -1.0])
def test_subset_by_duration_rejects_non_positive(seconds):
    with pytest.raises(ValueError, match="positive"):
        subset_by_duration(rows_of([1.0]), seconds, 0)


def test_make_subset_rewrites_audio_paths(corpora, tmp_path):
    src = corpora["a"] / "train.tsv"
    rows = read_tsv(src)
    available = sum(r.duration for r in rows)
    out = tmp_path / "subsets" / "de" / "train.tsv"
    hours = 0.6 * available / 3600 / 0.5
    summary = make_subset(src, out, hours=hours, scale=0.5, seed=1)
    assert summary["requested_seconds"] == pytest.approx(0.6 * available)
    chosen = read_tsv(out)
    assert summary["utterances"] == len(chosen) > 0
    assert summary["seconds"] == pytest.approx(sum(r.duration for r in chosen))
    assert summary["seconds"] <= summary["requested_seconds"] + 1e-9
    assert summary["seconds"] >= summary["requested_seconds"] - max(r.duration for r in rows)
    by_id = {r.id: r for r in rows}
    for row in chosen:
        orig = by_id[row.id]
        assert row.audio != orig.audio  # rewritten relative to the new folder
        assert (out.parent / row.audio).resolve() == (src.parent / orig.audio).resolve()
        assert np.array_equal(load_audio(out, row), load_audio(src, orig))
        assert (row.duration, row.sentence, row.translation) == (
            orig.duration,
            orig.sentence,
            orig.translation,
        )
    # Deterministic for a seed.
    out2 = tmp_path / "again" / "train.tsv"
    make_subset(src, out2, hours=hours, scale=0.5, seed=1)
    assert [r.id for r in read_tsv(out2)] == [r.id for r in chosen]


def test_make_subset_same_folder(corpora, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(corpora["a"], corpus)
    src, out = corpus / "dev.tsv", corpus / "dev.sub.tsv"
    seconds = sum(r.duration for r in read_tsv(src)) / 2
    make_subset(src, out, hours=1.0, scale=seconds / 3600, seed=0)
    rows = read_tsv(out)
    assert rows
    for row in rows:
        assert row.audio.startswith("clips/dev/")
        assert load_audio(out, row).size > 0


def test_make_subset_shorter_than_any_utterance(corpora, tmp_path):
    src = corpora["a"] / "dev.tsv"
    out = tmp_path / "sub" / "dev.tsv"
    with pytest.raises(ValueError, match="empty") as err:
        make_subset(src, out, hours=1.0, scale=1e-5, seed=0)  # 0.036 s
    assert str(src) in str(err.value)
    assert not out.exists()


def test_make_subset_too_little_audio(corpora, tmp_path):
    src = corpora["a"] / "test.tsv"
    out = tmp_path / "sub" / "test.tsv"
    with pytest.raises(ValueError) as err:
        make_subset(src, out, hours=1.0, scale=1.0, seed=0)
    assert str(src) in str(err.value)
    assert not out.exists()


# --------------------------------------------------------------------------------------
# TSV reading / writing


def test_tsv_round_trip(tmp_path):
    rows = [
        Utterance("a", "clips/a.flac", 1.25, "vint-i-un", "twenty-one"),
        Utterance("b", "clips/b.flac", 0.5, 'quatre "cents"\tx', "four, hundred"),
    ]
    path = tmp_path / "x" / "t.tsv"
    write_tsv(rows, path)
    assert read_tsv(path) == rows
    assert path.read_text().splitlines()[0].split("\t") == COLUMNS
    assert not any(p.name.endswith(".tmp") for p in path.parent.iterdir())


def test_read_tsv_missing_column(tmp_path):
    path = tmp_path / "broken.tsv"
    path.write_text("id\taudio\tduration\tsentence\nx\tclips/x.flac\t1.0\tun\n")
    with pytest.raises(ValueError) as err:
        read_tsv(path)
    assert str(path) in str(err.value)
    assert "translation" in str(err.value)


def test_read_tsv_bad_row_and_empty_file(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("\t".join(COLUMNS) + "\nx\tclips/x.flac\tlong\tun\tone\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:2"):
        read_tsv(path)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_tsv(empty)


def test_load_audio_names_missing_file(tmp_path):
    row = Utterance("u1", "clips/missing.flac", 1.0, "un", "one")
    with pytest.raises(ValueError, match="missing.flac"):
        load_audio(tmp_path / "t.tsv", row)


def test_sampling_fails_instead_of_hanging():
    """Fractions that leave a split no texts, or a text space none of whose texts is in the
    split, end in an error naming the keys (they looped forever)."""
    import signal

    def timeout(*_):
        raise TimeoutError("sample_texts hangs")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    try:
        with pytest.raises(ValueError, match="dev_fraction"):
            sample_texts("train", 5, {"max_number": 9}, {"dev_fraction": 0.6,
                         "test_fraction": 0.6}, 7, np.random.default_rng(0))  # fmt: skip
        only = next(s for s in ("train", "dev", "test") if s != text_split((0,), 7, 0.1, 0.2))
        with pytest.raises(ValueError, match="fell outside"):  # one text (0,), another split
            sample_texts(only, 1, {"max_number": 0}, {"dev_fraction": 0.1,
                         "test_fraction": 0.2}, 7, np.random.default_rng(0))  # fmt: skip
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_subset_refuses_a_damaged_corpus(tmp_path):
    """A corpus folder whose clip was truncated after it was written (its manifest says
    otherwise): the subset job names the clip instead of using it."""
    from speechmerge.io.atomic import atomic_dir

    corpus = tmp_path / "corpus"
    with atomic_dir(corpus) as tmp:
        (tmp / "clips").mkdir()
        (tmp / "clips" / "a.flac").write_bytes(b"x" * 100)
        write_tsv([Utterance("a", "clips/a.flac", 1.0, "one", "one")], tmp / "train.tsv")
    (corpus / "clips" / "a.flac").write_bytes(b"x" * 10)
    with pytest.raises(ValueError, match="a.flac"):
        make_subset(corpus / "train.tsv", tmp_path / "sub.tsv", 1 / 3600, 1.0, 0)

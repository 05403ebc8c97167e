"""CoVoST-2 source and pretrained base on local stand-ins in the real formats (no network).

* a tiny dataset in the Hub parquet mirror's layout (``{src}_en/{split}-NNNNN-of-NNNNN.parquet``,
  columns client_id, file, audio {bytes, path}, sentence, translation, id; audio declared as
  ``datasets.Audio`` in the parquet metadata, like the mirror), read by local path through
  the same ``datasets.load_dataset`` call as the Hub name;
* a Common Voice folder + CoVoST TSV for the official loader's recipe;
* a tiny Whisper saved with ``save_pretrained`` and snapshotted by path, the code path of
  ``openai/whisper-small``;
* ``snakemake -n`` with the two CoVoST-2 presets.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechmerge import covost
from speechmerge.config import check_languages, load_config
from speechmerge.corpus import load_audio, make_subset, read_tsv

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PRESETS = ["configs/covost2-whisper-small.yaml", "configs/covost2-whisper-small-lowres.yaml"]


def tone(seconds: float, sr: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def encode(audio: np.ndarray, sr: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt, subtype="PCM_16")
    return buf.getvalue()


# utterances per split and their (seconds, sample rate, format, channels)
SPEC = {
    "train": [(1.0 + 0.25 * i, 48_000 if i % 2 else 22_050, "WAV" if i % 3 else "FLAC", 1 + i % 2)
              for i in range(12)],
    "validation": [(1.5, 48_000, "FLAC", 1), (2.0, 22_050, "WAV", 1), (1.0, 48_000, "WAV", 2)],
    "test": [(2.5, 22_050, "FLAC", 1), (1.25, 48_000, "WAV", 1)],
}  # fmt: skip


def write_parquet_mirror(root: Path, config: str = "de_en") -> dict:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = datasets.Features(
        {
            "client_id": datasets.Value("string"),
            "file": datasets.Value("string"),
            "audio": datasets.Audio(sampling_rate=16_000),
            "sentence": datasets.Value("string"),
            "translation": datasets.Value("string"),
            "id": datasets.Value("string"),
        }
    )
    (root / config).mkdir(parents=True)
    for split, spec in SPEC.items():
        cols = {k: [] for k in features}
        for i, (sec, sr, fmt, ch) in enumerate(spec):
            uid = f"common_voice_de_{split}{i:03d}"
            cols["client_id"].append(f"speaker{i % 3}")
            cols["file"].append(f"cv/clips/{uid}.mp3")
            cols["audio"].append({"bytes": encode(tone(sec, sr, 300 + 20 * i, ch), sr, fmt),
                                  "path": f"{uid}.mp3"})  # fmt: skip
            cols["sentence"].append(f"Satz\tnummer {i} ")
            cols["translation"].append(f"sentence number {i}")
            cols["id"].append(uid)
        table = pa.Table.from_pydict(cols, schema=features.arrow_schema)
        pq.write_table(table, root / config / f"{split}-00000-of-00001.parquet")
    return {covost.SPLITS[s]: sum(x[0] for x in spec) for s, spec in SPEC.items()}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("covost2-mirror")
    return root, write_parquet_mirror(root)


def test_language_codes():
    assert covost.covost_config("de") == "de_en"
    assert covost.covost_config("sv") == "sv-SE_en"
    with pytest.raises(ValueError, match="xx"):
        covost.covost_config("xx")


def test_parquet_mirror_to_corpus(mirror, tmp_path):
    root, seconds = mirror
    out = tmp_path / "corpus" / "de"
    summary = covost.write_covost_language("de", out, {"hub_dataset": str(root)}, progress=False)
    assert sorted(p.name for p in out.glob("*.tsv")) == ["dev.tsv", "test.tsv", "train.tsv"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left
    for split, total in seconds.items():
        assert (out / f"{split}.tsv").read_text().splitlines()[0] == (
            "id\taudio\tduration\tsentence\ttranslation"
        )
        rows = read_tsv(out / f"{split}.tsv")
        assert len(rows) == summary[split]["utterances"] == len(SPEC[_covost(split)])
        assert sum(r.duration for r in rows) == pytest.approx(total, abs=1e-2)
        for i, r in enumerate(rows):
            assert r.sentence == f"Satz nummer {i}" and r.translation == f"sentence number {i}"
            assert r.id.startswith(f"de-{split}-common_voice_de_")
            info = sf.info(out / r.audio)
            assert (info.samplerate, info.channels, info.format) == (16_000, 1, "FLAC")
            audio = load_audio(out / f"{split}.tsv", r)
            assert audio.size / 16_000 == pytest.approx(r.duration, abs=1e-3)
            assert r.duration == pytest.approx(SPEC[_covost(split)][i][0], abs=1e-3)
            assert 0.2 < np.abs(audio).max() < 0.4  # the tone survived resampling


def _covost(split: str) -> str:
    return {v: k for k, v in covost.SPLITS.items()}[split]


def test_max_hours_per_split(mirror, tmp_path):
    root, _ = mirror
    cap_h = 5.0 / 3600  # 5 s per split
    out = tmp_path / "de"
    covost.write_covost_language(
        "de", out, {"hub_dataset": str(root), "max_hours_per_split": cap_h}, progress=False
    )
    train = read_tsv(out / "train.tsv")
    total = sum(r.duration for r in train)
    # stops at the first utterance that reaches the cap: 1.0 + 1.25 + 1.5 + 1.75 = 5.5 s
    assert len(train) == 4 and total == pytest.approx(5.5, abs=1e-2)
    assert total - train[-1].duration < 5.0
    assert len(list((out / "clips/train").glob("*.flac"))) == 4


def test_subset_hits_requested_durations(mirror, tmp_path):
    root, _ = mirror
    corpus = tmp_path / "corpus" / "de"
    covost.write_covost_language("de", corpus, {"hub_dataset": str(root)}, progress=False)
    for split, hours in [("train", 10.0 / 3600), ("dev", 3.0 / 3600)]:
        out = tmp_path / "subsets" / "de" / f"{split}.tsv"
        s = make_subset(corpus / f"{split}.tsv", out, hours, 1.0, seed=3)
        longest = max(r.duration for r in read_tsv(corpus / f"{split}.tsv"))
        assert hours * 3600 - longest <= s["seconds"] <= hours * 3600
        rows = read_tsv(out)
        assert sum(r.duration for r in rows) == pytest.approx(s["seconds"])
        assert all(load_audio(out, r).size > 0 for r in rows)  # paths rewritten correctly
        again = out.with_name(f"again-{split}.tsv")
        make_subset(corpus / f"{split}.tsv", again, hours, 1.0, seed=3)
        assert again.read_text() == out.read_text()  # deterministic


def test_missing_config_folder_named(mirror):
    root, _ = mirror
    with pytest.raises(FileNotFoundError, match="sv-SE_en"):
        list(covost.iter_examples("sv", "train", {"hub_dataset": str(root)}))


def test_bad_settings_named():
    with pytest.raises(ValueError, match="corpus.covost2.*typo"):
        covost.settings({"typo": 1})
    with pytest.raises(ValueError, match="common_voice_dir"):
        covost.settings({"loader": "official"})


def test_official_recipe(tmp_path):
    cv = tmp_path / "cv-corpus-4" / "sv-SE"
    (cv / "clips").mkdir(parents=True)
    lines = ["client_id\tpath\tsentence\tup_votes"]
    covost_lines = ["path\tsentence\ttranslation\tclient_id\tsplit"]
    splits = ["train", "train_covost", "dev", "test", "excluded"]
    for i, split in enumerate(splits):
        name = f"common_voice_sv-SE_{i}.mp3"
        sf.write(cv / "clips" / name, tone(1.0 + i, 48_000), 48_000, format="WAV")
        lines.append(f"c{i}\t{name}\tmening {i}\t2")
        covost_lines.append(f"{name}\tmening {i}\tsentence {i}\tc{i}\t{split}")
    lines.append("c9\tcommon_voice_sv-SE_9.mp3\tnot in covost\t2")
    (cv / "validated.tsv").write_text("\n".join(lines) + "\n")
    tsv_dir = tmp_path / "covost"
    tsv_dir.mkdir()
    (tsv_dir / "covost_v2.sv-SE_en.tsv").write_text("\n".join(covost_lines) + "\n")
    cfg = {
        "loader": "official",
        "common_voice_dir": str(tmp_path / "cv-corpus-4" / "{lang}"),
        "covost_tsv_dir": str(tsv_dir),
    }
    out = tmp_path / "sv"
    covost.write_covost_language("sv", out, cfg, progress=False)
    train = read_tsv(out / "train.tsv")
    assert [r.translation for r in train] == ["sentence 0", "sentence 1"]
    assert [r.duration for r in train] == [1.0, 2.0]
    assert [r.sentence for r in read_tsv(out / "dev.tsv")] == ["mening 2"]
    assert [r.id for r in read_tsv(out / "test.tsv")] == ["sv-test-common_voice_sv-SE_3"]


def test_pretrained_base_by_path(tmp_path, arch_tiny):
    """A tiny Whisper in a Hub-style dir (save_pretrained), snapshotted by path as
    `openai/whisper-small` would be by name."""
    import torch

    from speechmerge.model import build_synthetic_base, build_tokenizer, load_pretrained
    from speechmerge.train import snapshot_pretrained

    tok = build_tokenizer(["eins zwei drei", "one two three"], ["de"], 300)
    model, processor = build_synthetic_base(tok, arch_tiny, chunk_seconds=1, seed=0)
    hub = tmp_path / "whisper-tiny-local"
    model.save_pretrained(hub)
    processor.save_pretrained(hub)
    summary = snapshot_pretrained(str(hub), tmp_path / "models" / "base")
    assert summary["parameters"] == model.num_parameters()
    loaded, proc = load_pretrained(str(tmp_path / "models" / "base"))
    assert loaded.config._attn_implementation == "sdpa"
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert loaded.generation_config.lang_to_id == model.generation_config.lang_to_id
    assert proc.tokenizer.get_vocab() == processor.tokenizer.get_vocab()


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_validate(preset):
    config = load_config(REPO / preset)
    assert config["source"] == "covost2" and config["base"]["source"] == "pretrained"
    assert config["merge"]["lambda"]["default"] == 0.15
    assert config["decode"]["beam_size"] == 20
    for lang in config["languages"]:
        for task in config["tasks"]:
            assert f"{lang}-{task}" in config["finetune"]["lr"]
            assert f"{lang}-{task}" in config["merge"]["rank_ratio"]
            assert f"{lang}-{task}" in config["merge"]["keep_ratio"]


def test_covost_needs_pretrained_base():
    config = load_config(REPO / PRESETS[0])
    config["base"]["source"] = "synthetic"
    with pytest.raises(ValueError, match="base.source"):
        check_languages(config)


def test_covost_cap_must_cover_subsets():
    config = load_config(REPO / PRESETS[0])
    config["corpus"]["covost2"]["max_hours_per_split"] = 4  # < 5 h of training audio
    with pytest.raises(ValueError, match="max_hours_per_split"):
        check_languages(config)


@pytest.mark.parametrize("preset", PRESETS)
def test_dry_run(preset, tmp_path):
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-n",
           "--configfile", str(REPO / preset)]  # fmt: skip
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, timeout=120, env=env, check=False
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", out, flags=re.MULTILINE))
    assert int(counts["finetune"]) >= 10
    assert int(counts["corpus_covost2"]) == 5 and "corpus_synthetic" not in counts
    assert int(counts["base"]) == 1
    assert not (tmp_path / "results").exists()

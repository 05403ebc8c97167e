"""decode.backend (issue 16 item 5): CTranslate2 decodes a tiny Whisper with the same greedy
tokens as transformers' ``generate`` on the same log-mel features, through ``transcribe``,
``decode_tsv`` and ``score_model``; the config keys validate, bad values and a missing
ctranslate2 fail naming the key or the extra."""

from __future__ import annotations

import copy
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import ARCH_TINY, load_benchmark

from speechmerge.config import validate_config
from speechmerge.corpus import Utterance, write_tsv
from speechmerge.decode import (
    CT2_COMPUTE_TYPES,
    Ct2Whisper,
    ct2_device,
    decode_backend,
    decode_tsv,
    load_decoder,
    score_model,
    transcribe,
)
from speechmerge.model import (
    TASK_NAMES,
    build_synthetic_base,
    build_tokenizer,
    load_pretrained,
    save_model_dir,
)

ROOT = Path(__file__).resolve().parent.parent
LANG = "de"
MAX_NEW = 8  # the prompt's 4 tokens + 8 fit the tiny decoder's 16 positions
DECODE = {"beam_size": 1, "batch_size": 4, "max_new_tokens": MAX_NEW}


def _audios(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = np.arange(int(16_000 * (0.4 + 0.05 * i))) / 16_000
        tone = 0.2 * np.sin(2 * np.pi * (200 + 40 * i) * t)
        out.append((tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model dir, test TSV): a tiny random Whisper with a 1-s encoder window (a truncated
    position table, as the default preset's 4-s whisper-base), whose transcripts differ by
    clip and some of which end before the token limit, and whose generation config
    suppresses the tokens it would emit most (so a backend that ignored the suppress lists
    would differ); and a corpus TSV of 7 clips. Beside the model dir, ``model-begin``
    suppresses the token every clip starts with too (``begin_suppress_tokens``)."""
    from num2words import num2words

    pytest.importorskip("ctranslate2")
    texts = [num2words(n, lang=lg) for lg in ("de", "en") for n in range(0, 300, 7)]
    tok = build_tokenizer(texts, ["de"], vocab_size=300)
    model, processor = build_synthetic_base(tok, dict(ARCH_TINY), chunk_seconds=1, seed=4)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # a freshly initialised model says one token whatever it hears
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        model.model.decoder.embed_tokens.weight[eot] *= 3  # some clips end before the limit
    root = tmp_path_factory.mktemp("backends")
    audios = _audios(7)
    rows = []
    for i, a in enumerate(audios):
        sf.write(root / f"u{i}.wav", a, 16_000)
        rows.append(Utterance(f"u{i}", f"u{i}.wav", len(a) / 16_000, "eins zwei", "one two"))
    write_tsv(rows, root / "test.tsv")
    specials = set(tok.all_special_ids)
    first, counts = Counter(), Counter()
    for lang, task in ((LANG, "asr"), (LANG, "st")):
        feats = processor.feature_extractor(audios, sampling_rate=16_000, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(
                input_features=feats.input_features,
                language=lang,
                task=TASK_NAMES[task],
                max_new_tokens=MAX_NEW,
            )
        for row in ids.tolist():
            new = [t for t in row if t not in specials]
            first.update(new[:1])
            counts.update(new)
    gc = model.generation_config
    gc.suppress_tokens = [counts.most_common(2)[1][0]]  # the top one would silence it
    save_model_dir(model, processor, root / "model")
    gc.begin_suppress_tokens = [*gc.begin_suppress_tokens, first.most_common(1)[0][0]]
    save_model_dir(model, processor, root / "model-begin")  # every first token changes
    return root / "model", root / "test.tsv"


def _hf_ids(model_dir: Path, lang: str, task: str, beam: int, max_new: int) -> list[list[int]]:
    model, processor = load_pretrained(str(model_dir))
    feats = processor.feature_extractor(_audios(7), sampling_rate=16_000, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(
            input_features=feats.input_features,
            language=lang,
            task=TASK_NAMES[task],
            num_beams=beam,
            do_sample=False,
            max_new_tokens=max_new,
        )
    eot, prompt_len = model.generation_config.eos_token_id, 4
    out = []
    for row in ids.tolist():
        if row[0] == model.generation_config.decoder_start_token_id:
            row = row[prompt_len:]  # transformers < 5 returns the prompt too
        out.append([t for t in row if t != eot])
    return out


@pytest.mark.parametrize(
    "variant,max_new", [("model", 1), ("model", 3), ("model", MAX_NEW), ("model-begin", MAX_NEW)]
)
@pytest.mark.parametrize("task", ["asr", "st"])
def test_ct2_float32_greedy_tokens_equal_hf(tiny, task: str, variant: str, max_new: int) -> None:
    """Token for token, at every generation limit (CTranslate2's max_length counts
    differently from max_new_tokens), with the generation config's suppress lists."""
    model_dir = tiny[0].parent / variant
    hf = _hf_ids(model_dir, LANG, task, 1, max_new)
    ct2 = Ct2Whisper(model_dir, compute_type="float32", threads=1)
    _, processor = load_pretrained(str(model_dir))
    feats = processor.feature_extractor(_audios(7), sampling_rate=16_000, return_tensors="np")
    got = ct2.generate(feats.input_features, LANG, task, beam_size=1, max_new_tokens=max_new)
    assert got == hf and all(got)
    if variant == "model":  # some clips reach the limit (it is tested), at 8 some end before
        assert max(map(len, got)) == max_new
        if max_new == MAX_NEW:
            assert min(map(len, got)) < max_new and len({tuple(t) for t in got}) >= 4


def test_ct2_backend_equals_hf_through_decode_tsv(tiny) -> None:
    model_dir, tsv = tiny
    hf_model, processor = load_pretrained(str(model_dir))
    ct2 = Ct2Whisper(model_dir, compute_type="float32", threads=1)
    kw = {k: DECODE[k] for k in ("beam_size", "batch_size", "max_new_tokens")}
    rows, hf = decode_tsv(hf_model, processor, tsv, LANG, "asr", **kw)
    rows2, got = decode_tsv(ct2, processor, tsv, LANG, "asr", **kw)
    assert [r.id for r in rows] == [r.id for r in rows2] and len(rows) == 7
    assert got == hf and any(got)


def test_score_model_with_ct2_backend_scores_as_hf(tiny, tmp_path, monkeypatch) -> None:
    """Same hypotheses and scores; the score file names the backend; the temporary export
    is gone after the job."""
    import tempfile

    model_dir, tsv = tiny
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def jobs(out: Path) -> list:
        out.mkdir()
        return [(LANG, t, tsv, out / f"{LANG}-{t}.json") for t in ("asr", "st")]

    hf = score_model(model_dir, jobs(tmp_path / "hf"), DECODE)
    cfg = {**DECODE, "backend": "ct2", "ct2_compute_type": "float32"}
    ct2 = score_model(model_dir, jobs(tmp_path / "ct2"), cfg, threads=1)
    for a, b in zip(hf, ct2, strict=True):
        assert (b["backend"], b["ct2_compute_type"]) == ("ct2", "float32")
        assert "backend" not in a  # the hf score files keep their keys
        assert (a["metric"], a["score"]) == (b["metric"], b["score"])
    for t in ("asr", "st"):
        hyp = f"{LANG}-{t}.hyp.tsv"
        assert (tmp_path / "hf" / hyp).read_text() == (tmp_path / "ct2" / hyp).read_text()
        assert json.loads((tmp_path / "ct2" / f"{LANG}-{t}.json").read_text())["backend"] == "ct2"
    assert list(scratch.iterdir()) == []


def test_ct2_int8_and_beam_search_run(tiny) -> None:
    """int8 weights and beam search: one string per clip (tokens may differ from HF's)."""
    model_dir, _ = tiny
    cfg = {**DECODE, "backend": "ct2", "ct2_compute_type": "int8"}
    model, processor = load_decoder(model_dir, cfg, threads=1)
    assert isinstance(model, Ct2Whisper) and model.compute_type == "int8"
    for beam in (1, 3):
        hyps = transcribe(
            model, processor, _audios(3), LANG, "st", beam_size=beam, max_new_tokens=MAX_NEW
        )
        assert len(hyps) == 3 and all(isinstance(h, str) for h in hyps)


def test_decode_backend_defaults_and_refusals() -> None:
    assert decode_backend(DECODE) == ("hf", "float32")
    assert decode_backend({**DECODE, "backend": "ct2", "ct2_compute_type": "float32"}) == (
        "ct2",
        "float32",
    )
    with pytest.raises(ValueError, match=r"'decode\.backend'.*onnx"):
        decode_backend({**DECODE, "backend": "onnx"})
    with pytest.raises(ValueError, match=r"'decode\.ct2_compute_type'.*int4"):
        decode_backend({**DECODE, "ct2_compute_type": "int4"})
    assert ct2_device("cuda:1") == ("cuda", 1) and ct2_device("cuda") == ("cuda", 0)
    assert ct2_device("cpu") == ("cpu", 0) and ct2_device("mps") == ("cpu", 0)


def test_compute_type_the_device_cannot_run_is_refused(tiny) -> None:
    import ctranslate2

    model_dir, _ = tiny
    cpu = ctranslate2.get_supported_compute_types("cpu")
    unsupported = [c for c in CT2_COMPUTE_TYPES if c not in cpu]
    if not unsupported:
        pytest.skip("this CPU runs every compute type")
    with pytest.raises(ValueError, match=rf"'decode\.ct2_compute_type': {unsupported[0]}"):
        Ct2Whisper(model_dir, compute_type=unsupported[0])


def test_missing_ctranslate2_names_the_extra(tiny, monkeypatch) -> None:
    model_dir, tsv = tiny
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import fails as if not installed
    cfg = {**DECODE, "backend": "ct2"}
    with pytest.raises(ImportError, match=r"decode\.backend ct2.*speechmerge\[ct2\]"):
        score_model(model_dir, [(LANG, "asr", tsv, "unused.json")], cfg)


@pytest.fixture
def smoke() -> dict:
    return copy.deepcopy(yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text()))


def test_config_accepts_the_backend_keys(smoke) -> None:
    validate_config(smoke)  # absent: hf
    for compute_type in CT2_COMPUTE_TYPES:
        smoke["decode"].update(backend="ct2", ct2_compute_type=compute_type)
        validate_config(smoke)
    smoke["decode"]["backend"] = "hf"
    validate_config(smoke)


@pytest.mark.parametrize(
    "key,value", [("backend", "onnx"), ("backend", "CT2"), ("ct2_compute_type", "int4")]
)
def test_config_refuses_bad_backend_values(smoke, key: str, value: str) -> None:
    smoke["decode"][key] = value
    with pytest.raises(ValueError, match=rf"config key 'decode\.{key}'"):
        validate_config(smoke)


def test_schema_lists_what_the_code_accepts() -> None:
    from speechmerge.config import SCHEMA
    from speechmerge.decode import BACKENDS

    decode = yaml.safe_load(SCHEMA.read_text())["properties"]["decode"]["properties"]
    assert tuple(decode["backend"]["enum"]) == BACKENDS
    assert tuple(decode["ct2_compute_type"]["enum"]) == CT2_COMPUTE_TYPES
    assert "default" not in decode["backend"] and "default" not in decode["ct2_compute_type"]


def test_benchmark_script_on_the_tiny_model(tiny, tmp_path, capsys) -> None:
    """benchmarks/decode_backends.py's table (not its timings): every backend at beam 1 and
    the config's beam, float32 greedy identical to hf, the --out files."""
    bench = load_benchmark("decode_backends")
    model_dir, tsv = tiny
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"decode": {**DECODE, "beam_size": 2}}))
    out = tmp_path / "bench" / "table.md"
    args = [f"{model_dir}={LANG}-asr", f"{model_dir.parent / 'model-begin'}={LANG}-st"]
    args += ["--test", f"{LANG}={tsv}", "--config", str(config), "--threads", "1"]
    rows = bench.main([*args, "--limit", "4", "--out", str(out)])
    assert {(r["backend"], r["compute_type"], r["beam"]) for r in rows} == {
        (b, c, beam) for b, c in [("hf", "float32"), ("ct2", "float32"), ("ct2", "int8")]
        for beam in (1, 2)
    }  # fmt: skip
    assert all(r["utterances"] == 4 for r in rows)
    summary = {(s["backend"], s["compute_type"], s["beam"]): s for s in bench.summary(rows)}
    exact = summary[("ct2", "float32", 1)]
    assert exact["same_as_hf"] == 1 and exact["wer_vs_hf"]["delta"] == 0
    hf = summary[("hf", "float32", 1)]
    assert exact["bleu_vs_hf"]["delta"] == 0 and hf["wer_vs_hf"] is hf["same_as_hf"] is None
    text = capsys.readouterr().out
    assert "| ct2 | int8 | 2 |" in text and "ct2_export" in text and out.read_text() == text
    saved = json.loads(out.with_suffix(".json").read_text())
    assert len(saved["rows"]) == 12 and len(saved["summary"]) == 6 and len(saved["costs"]) == 2
    with pytest.raises(SystemExit, match="LANG-TASK"):
        bench.main([str(model_dir), "--test", str(tsv)])

"""Tests for speechmerge.model (Whisper-format tokenizer, synthetic base, model dirs) and the
decoding path shared with whisper-small (generate(language=..., task=...))."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ARCH_TINY
from num2words import num2words

from speechmerge.corpus import LANGUAGES
from speechmerge.decode import transcribe
from speechmerge.model import (
    EOT,
    NO_TIMESTAMPS,
    SOT,
    TRANSCRIBE,
    TRANSLATE,
    build_synthetic_base,
    build_tokenizer,
    lang_token,
    load_pretrained,
    save_model_dir,
)
from speechmerge.train import target_ids

LANGS = ["ca", "de"]
SPECIALS = [SOT, "<|en|>", "<|ca|>", "<|de|>", TRANSCRIBE, TRANSLATE, NO_TIMESTAMPS, EOT]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    numbers = [0, 1, 21, 400, 500, 999, 4321, 7777]
    return [num2words(n, lang=lang) for lang in [*LANGS, "en"] for n in numbers]


@pytest.fixture(scope="module")
def tok(texts):
    return build_tokenizer(texts, LANGS, vocab_size=300)


@pytest.fixture(scope="module")
def prefix_tok(texts):
    """A tokenizer of its own for tests that change its (mutable) prefix settings."""
    return build_tokenizer(texts, LANGS, vocab_size=300)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    """(original model, original processor, saved dir)."""
    model, processor = build_synthetic_base(tok, ARCH_TINY, chunk_seconds=1, seed=0)
    out = tmp_path_factory.mktemp("models") / "base"
    save_model_dir(model, processor, out)
    return model, processor, out


def ids_of(tok, *tokens: str) -> list[int]:
    return [tok.convert_tokens_to_ids(t) for t in tokens]


# --------------------------------------------------------------------------------------
# Tokenizer


@pytest.mark.parametrize(
    "text",
    ["quatre-cents", "fünfhundert", "четыре", "vint-i-un", "four thousand, three hundred", "x"],
)
def test_tokenizer_round_trip(tok, text):
    ids = tok.encode(" " + text, add_special_tokens=False)
    assert ids
    assert tok.decode(ids) == " " + text
    assert all(i < 300 for i in ids)  # plain text never produces special tokens


def test_tokenizer_vocab_size(tok):
    assert len(tok.get_vocab()) - len(tok.get_added_vocab()) <= 300
    assert tok.convert_tokens_to_ids(EOT) < 300  # EOT is part of the BPE vocabulary


def test_special_tokens_are_single_distinct_ids(tok):
    ids = []
    for s in SPECIALS:
        enc = tok.encode(s, add_special_tokens=False)
        assert enc == [tok.convert_tokens_to_ids(s)], s
        if s != EOT:  # as in Whisper, the unknown token is <|endoftext|>
            assert enc[0] != tok.unk_token_id, s
        assert tok.convert_ids_to_tokens(enc[0]) == s
        ids.append(enc[0])
    assert len(set(ids)) == len(SPECIALS)


def test_special_tokens_are_skipped_when_decoding(tok):
    ids = ids_of(tok, SOT, "<|de|>", TRANSLATE, NO_TIMESTAMPS)
    ids += tok.encode(" twenty-one", add_special_tokens=False) + ids_of(tok, EOT)
    assert tok.decode(ids, skip_special_tokens=True) == " twenty-one"


def test_prefix_tokens_as_whisper(prefix_tok):
    tok = prefix_tok
    tok.set_prefix_tokens(language="de", task="translate")
    ids = tok("x").input_ids
    assert ids[:4] == ids_of(tok, SOT, "<|de|>", TRANSLATE, NO_TIMESTAMPS)
    assert ids[-1] == tok.convert_tokens_to_ids(EOT)
    assert tok.decode(ids[4:-1]) == "x"
    tok.set_prefix_tokens(language="ca", task="transcribe")
    assert tok("x").input_ids[:4] == ids_of(tok, SOT, "<|ca|>", TRANSCRIBE, NO_TIMESTAMPS)


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("task,token", [("transcribe", TRANSCRIBE), ("translate", TRANSLATE)])
def test_prefix_tokens_every_language(prefix_tok, lang, task, token):
    # WhisperTokenizer derives a language's id from Whisper's language order
    # (sot + 1 + index); the tokens must be laid out as in whisper-small for every language.
    tok = prefix_tok
    tok.set_prefix_tokens(language=lang, task=task)
    assert tok.convert_ids_to_tokens(tok.prefix_tokens) == [
        SOT,
        lang_token(lang),
        token,
        NO_TIMESTAMPS,
    ]
    assert tok.get_decoder_prompt_ids(language=lang, task=task) == [
        (1, tok.convert_tokens_to_ids(lang_token(lang))),
        (2, tok.convert_tokens_to_ids(token)),
        (3, tok.convert_tokens_to_ids(NO_TIMESTAMPS)),
    ]


def test_build_tokenizer_rejects_unknown_language(texts):
    with pytest.raises(ValueError, match="xx"):
        build_tokenizer(texts, ["ca", "xx"], vocab_size=300)


# --------------------------------------------------------------------------------------
# Training targets


@pytest.mark.parametrize("lang,task,token", [("de", "st", TRANSLATE), ("ca", "asr", TRANSCRIBE)])
def test_target_ids(tok, lang, task, token):
    text = "vint-i-un" if lang == "ca" else "twenty-one"
    dec, labels = target_ids(tok, f"  {text} ", lang, task)
    prefix = ids_of(tok, SOT, lang_token(lang), token, NO_TIMESTAMPS)
    text_ids = tok.encode(" " + text, add_special_tokens=False)
    eot = tok.convert_tokens_to_ids(EOT)
    assert dec == prefix + text_ids
    assert len(labels) == len(dec)
    assert labels[:3] == [-100, -100, -100]
    assert -100 not in labels[3:]
    assert labels[-1] == eot
    # Labels are the decoder inputs shifted left by one (teacher forcing).
    assert labels[3:] == dec[4:] + [eot]
    assert tok.decode(labels[3:-1]) == " " + text


# --------------------------------------------------------------------------------------
# Model dirs


def test_save_and_load(saved, tok):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model, _, out = saved
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= names
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs

    loaded, processor = load_pretrained(str(out))
    assert isinstance(loaded, WhisperForConditionalGeneration)
    assert isinstance(processor, WhisperProcessor)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.config.max_source_positions == 50
    assert loaded.config.vocab_size == len(tok)
    assert processor.feature_extractor.feature_size == 80
    assert processor.feature_extractor.n_samples == 16000

    gc = loaded.generation_config
    assert "<|ca|>" in gc.lang_to_id and "<|de|>" in gc.lang_to_id and "<|en|>" in gc.lang_to_id
    assert gc.lang_to_id["<|ca|>"] == tok.convert_tokens_to_ids("<|ca|>")
    assert gc.task_to_id == {
        "transcribe": tok.convert_tokens_to_ids(TRANSCRIBE),
        "translate": tok.convert_tokens_to_ids(TRANSLATE),
    }
    assert gc.decoder_start_token_id == tok.convert_tokens_to_ids(SOT)
    assert gc.no_timestamps_token_id == tok.convert_tokens_to_ids(NO_TIMESTAMPS)
    assert gc.eos_token_id == tok.convert_tokens_to_ids(EOT)

    # The tokenizer survives the round trip.
    text = " quatre-cents"
    assert processor.tokenizer.encode(text, add_special_tokens=False) == tok.encode(
        text, add_special_tokens=False
    )
    for s in SPECIALS:
        assert processor.tokenizer.convert_tokens_to_ids(s) == tok.convert_tokens_to_ids(s)


def test_build_is_seeded(tok):
    a, _ = build_synthetic_base(tok, ARCH_TINY, chunk_seconds=1, seed=0)
    b, _ = build_synthetic_base(tok, ARCH_TINY, chunk_seconds=1, seed=0)
    c, _ = build_synthetic_base(tok, ARCH_TINY, chunk_seconds=1, seed=1)
    w = "model.encoder.layers.0.fc1.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])


@pytest.mark.parametrize("task", ["st", "asr"])
def test_transcribe(saved, task, caplog):
    _, _, out = saved
    model, processor = load_pretrained(str(out))
    caplog.set_level("INFO", logger="speechmerge.progress")
    hyps = transcribe(
        model,
        processor,
        [np.zeros(8000, np.float32)] * 3,
        "de",
        task,
        beam_size=2,
        max_new_tokens=4,
    )
    assert isinstance(hyps, list) and len(hyps) == 3 and isinstance(hyps[0], str)
    # decoding reports its throughput (speechmerge.progress)
    assert f"decode de-{task} done: 3 utterances in" in caplog.text


def test_generate_forces_language_and_task(saved, tok):
    _, _, out = saved
    model, processor = load_pretrained(str(out))
    model.eval()
    feats = processor.feature_extractor(
        [np.zeros(8000, np.float32)] * 2, sampling_rate=16000, return_tensors="pt"
    ).input_features
    assert tuple(feats.shape) == (2, 80, 100)

    seen = []

    def record(_module, _args, kwargs):
        seen.append(kwargs.get("input_ids"))

    prefix = ids_of(tok, SOT, "<|de|>", TRANSLATE, NO_TIMESTAMPS)
    hook = model.model.decoder.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.inference_mode():
            gen = model.generate(
                input_features=feats,
                language="de",
                task="translate",
                num_beams=2,
                max_new_tokens=4,
                return_dict_in_generate=True,
            )
    finally:
        hook.remove()
    sequences = gen.sequences if hasattr(gen, "sequences") else gen
    assert sequences.shape[0] == 2
    for row in sequences.tolist():
        assert row[:4] == prefix
        assert len(row) <= 4 + 4
    # The decoder's first step saw exactly the forced prefix.
    assert seen[0] is not None and seen[0].shape[-1] == 4
    assert all(r == prefix for r in seen[0].tolist())

    # language="ca", task="transcribe" forces the other tokens.
    with torch.inference_mode():
        gen = model.generate(
            input_features=feats[:1],
            language="ca",
            task="transcribe",
            max_new_tokens=2,
            return_dict_in_generate=True,
        )
    assert gen.sequences[0, :4].tolist() == ids_of(tok, SOT, "<|ca|>", TRANSCRIBE, NO_TIMESTAMPS)


def test_load_pretrained_needs_config_json(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as err:
        load_pretrained(str(folder))
    assert str(folder) in str(err.value)


def test_save_model_dir_is_atomic(saved, tmp_path, monkeypatch):
    model, processor, _ = saved

    def boom(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(processor, "save_pretrained", boom)
    out = tmp_path / "model"
    with pytest.raises(RuntimeError, match="disk full"):
        save_model_dir(model, processor, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_save_model_dir_keeps_old_dir_on_failure(saved, tmp_path, monkeypatch):
    model, processor, _ = saved
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")

    def boom(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(processor, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        save_model_dir(model, processor, out)
    assert (out / "config.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_save_model_dir_replaces_existing(saved, tmp_path):
    model, processor, _ = saved
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.bin").write_text("old")
    save_model_dir(model, processor, out)
    assert not (out / "stale.bin").exists()
    assert (out / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]

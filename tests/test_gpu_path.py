"""The GPU path (issue 15 item 5): mixed precision, TF32, half-precision decoding and
gradient checkpointing. Run on the CPU for real where torch can (autocast in bf16 and fp16
with the gradient scaler, fp16 decoding); the choices that depend on a CUDA device are
tested with mocks of its availability."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import ARCH_TINY
from num2words import num2words

import speechmerge.train as smtrain
from speechmerge.decode import transcribe
from speechmerge.model import (
    autocast_dtype,
    build_synthetic_base,
    build_tokenizer,
    configure_cuda,
    decode_dtype,
    select_device,
)
from speechmerge.train import Example, target_ids, train


@pytest.fixture(scope="module")
def tiny():
    texts = [num2words(n, lang=lang) for lang in ["de", "en"] for n in range(40)]
    tok = build_tokenizer(texts, ["de"], vocab_size=300)
    model, processor = build_synthetic_base(tok, ARCH_TINY, chunk_seconds=1, seed=0)
    rng = np.random.default_rng(1)
    examples = []
    for i in range(10):
        dec, lab = target_ids(tok, num2words(5 * i + 2, lang="de"), "de", "asr")
        feats = rng.normal(size=(80, 2 * model.config.max_source_positions)).astype(np.float32)
        examples.append(Example(feats, dec, lab))
    return model, processor, examples


def test_precision_and_device_choices_with_a_mocked_cuda(monkeypatch):
    assert autocast_dtype("cpu") is None and decode_dtype("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("cuda") == torch.bfloat16 and autocast_dtype("cuda:1") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype("cuda") == torch.float16  # e.g. a V100 or T4: fp16 + gradient scaler
    assert decode_dtype("cuda") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == "cuda" and select_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto") == "cpu"


def test_tf32_only_on_cuda():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert configure_cuda("cpu") is False
        assert not torch.backends.cuda.matmul.allow_tf32
        assert configure_cuda("cuda:0") is True
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _train(tiny, **kw):
    model, processor, examples = tiny
    m = copy.deepcopy(model)
    summary = train(m, processor, examples, lr=1e-3, batch_size=4, max_steps=3, progress=False, **kw)  # fmt: skip
    delta = {k: v - model.state_dict()[k] for k, v in m.state_dict().items()}
    return delta, summary


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_training_under_autocast_runs_on_the_cpu(tiny, monkeypatch, dtype):
    """The CUDA branch of train() (autocast; fp16 adds the gradient scaler) run for real
    with the CPU's autocast: the loss is that of fp32 training to low precision."""
    _, ref = _train(tiny)
    scalers = []
    real = torch.amp.GradScaler

    def spy(*a, **k):
        scalers.append(real(*a, **k))
        return scalers[-1]

    monkeypatch.setattr(smtrain, "autocast_dtype", lambda device: dtype)
    monkeypatch.setattr(torch.amp, "GradScaler", spy)
    delta, got = _train(tiny)
    assert len(scalers) == (dtype == torch.float16)
    assert np.isfinite(got["loss"]) and got["loss"] == pytest.approx(ref["loss"], rel=0.05)
    assert max(v.abs().max().item() for v in delta.values()) > 0
    assert all(v.dtype == torch.float32 for v in delta.values())  # fp32 master weights


def test_gradient_checkpointing_changes_memory_not_the_update(tiny):
    ref, s_ref = _train(tiny)
    got, s = _train(tiny, grad_checkpointing=True)
    assert s["loss"] == pytest.approx(s_ref["loss"], rel=1e-6)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-7, msg=k)


def test_half_precision_decoding_runs(tiny):
    """Features follow the model's dtype: an fp16 model (what score_model makes on CUDA)
    decodes; here on the CPU."""
    model, processor, _ = tiny
    m = copy.deepcopy(model).to(torch.float16)
    hyps = transcribe(m, processor, [np.zeros(8000, np.float32)] * 3, "de", "asr", max_new_tokens=4)
    assert len(hyps) == 3 and all(isinstance(h, str) for h in hyps)

"""Training loop details (speechmerge.train): micro-batches change the compute, not the math."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from conftest import ARCH_TINY
from num2words import num2words

from speechmerge.model import build_synthetic_base, build_tokenizer
from speechmerge.train import Example, collate, micro_batches, optimizer_steps, target_ids, train

LANGS = ["ca", "de"]


def test_optimizer_steps():
    assert optimizer_steps(505, 8, 4, 10) == 160  # the default preset's fine-tunes
    assert optimizer_steps(60, 8, 1, 1) == 8
    assert optimizer_steps(3, 8, 4, 1) == 1  # at least one step
    assert optimizer_steps(100, 8, 4, 2.5) == 8  # 13 batches -> 3 steps per epoch


def test_micro_batches_regroup_in_order():
    batches = [[5, 1, 2], [0, 4, 3]]
    chunks = list(micro_batches(batches, 4))
    assert chunks == [[(0, 5), (0, 1), (0, 2), (1, 0)], [(1, 4), (1, 3)]]
    assert [c for ch in micro_batches(batches, 1) for c in ch] == [x for ch in chunks for x in ch]


@pytest.fixture(scope="module")
def tiny_model():
    texts = [num2words(n, lang=lang) for lang in [*LANGS, "en"] for n in range(40)]
    tok = build_tokenizer(texts, LANGS, vocab_size=300)
    model, processor = build_synthetic_base(tok, ARCH_TINY, chunk_seconds=1, seed=0)
    rng = np.random.default_rng(1)
    n_frames = 2 * model.config.max_source_positions
    examples = []
    for i in range(13):  # 13: batches do not divide the data; lengths differ
        lang, task = LANGS[i % 2], ["asr", "st"][i % 3 % 2]
        text = num2words(7 * i + 3, lang=lang) if task == "asr" else num2words(7 * i + 3)
        dec, lab = target_ids(tok, text, lang, task)
        feats = rng.normal(size=(80, n_frames)).astype(np.float32)
        ctc = [t for t in lab if t >= 0][:-1] if task == "asr" else None
        examples.append(Example(feats, dec, lab, ctc))
    return model, processor, examples


def _trained(tiny_model, monkeypatch=None, **kw):
    model, processor, examples = tiny_model
    m = copy.deepcopy(model)
    if monkeypatch is not None:
        # plain SGD with lr 1: the update is the (clipped) gradient itself, so small float
        # differences stay small (Adam's first steps are ≈ lr·sign(g), which amplifies them)
        monkeypatch.setattr(torch.optim, "AdamW", lambda p, lr, **_: torch.optim.SGD(p, lr=lr))
        kw["lr"] = 1.0
    summary = train(m, processor, examples, **{"lr": 1e-3, "seed": 3, "progress": False, **kw})
    return {k: v - model.state_dict()[k] for k, v in m.state_dict().items()}, summary


@pytest.mark.parametrize("ctc_weight", [0.0, 0.5])
def test_micro_batch_size_does_not_change_training(tiny_model, ctc_weight, monkeypatch):
    """Same examples, same gradient: the updates of two SGD steps agree for any micro-batch."""
    kw = {"batch_size": 4, "grad_accum": 3, "max_steps": 2, "ctc_weight": ctc_weight}
    ref, s_ref = _trained(tiny_model, monkeypatch, **kw)
    assert max(v.abs().max().item() for v in ref.values()) > 1e-3  # it did train
    for micro in (1, 5, 12, 64):
        got, s = _trained(tiny_model, monkeypatch, micro_batch_size=micro, **kw)
        assert s["loss"] == pytest.approx(s_ref["loss"], rel=1e-5)
        for k in ref:
            # float sums in another order: the tolerance scales with the tensor's update (a
            # wrong weighting of a micro-batch is off by 10 % or more, not by 1e-3)
            scale = ref[k].abs().max().item()
            torch.testing.assert_close(got[k], ref[k], rtol=1e-3, atol=1e-3 * scale, msg=k)


def test_step_loss_is_the_mean_of_the_batches_hugging_face_losses(tiny_model):
    """One step = grad_accum batches drawn from a seeded shuffle; its loss is the mean of
    each batch's token-mean loss (Hugging Face's `out.loss`), before the update."""
    model, processor, examples = tiny_model
    batch, accum, seed = 4, 3, 3
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    pad = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    m = copy.deepcopy(model).eval()
    losses = []
    with torch.no_grad():
        for k in range(accum):
            feats, dec, lab = collate(
                [examples[i] for i in order[k * batch : (k + 1) * batch]], pad
            )
            losses.append(m(input_features=feats, decoder_input_ids=dec, labels=lab).loss.item())
    _, summary = _trained(tiny_model, batch_size=batch, grad_accum=accum, max_steps=1)
    assert summary["loss"] == pytest.approx(sum(losses) / accum, rel=1e-5)


def test_frozen_encoder_trains_only_the_decoder(tiny_model):
    """finetune.train_encoder: false leaves every encoder tensor bitwise unchanged (its task
    vector is zero there) and still trains the decoder."""
    delta, _ = _trained(tiny_model, batch_size=4, max_steps=2, train_encoder=False)
    enc = {k: v for k, v in delta.items() if k.startswith("model.encoder.")}
    dec = {k: v for k, v in delta.items() if k.startswith("model.decoder.layers.")}
    assert enc and all(torch.count_nonzero(v) == 0 for v in enc.values())
    assert max(v.abs().max().item() for v in dec.values()) > 0
    full, _ = _trained(tiny_model, batch_size=4, max_steps=2)
    assert any(torch.count_nonzero(full[k]) for k in enc)

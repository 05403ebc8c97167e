"""Streamed features and resumable training (speechmerge.train): a killed run, rerun, ends
with the same weights as an uninterrupted one; a checkpoint of another run is refused."""

from __future__ import annotations

import copy
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ARCH_TINY
from num2words import num2words

import speechmerge.train as smtrain
from speechmerge.corpus import Utterance, write_tsv
from speechmerge.model import build_synthetic_base, build_tokenizer, save_model_dir
from speechmerge.train import Checkpoint, Example, extract_features, load_examples, train

REPO = Path(__file__).resolve().parents[1]
#: Dropout on, so that resuming must restore the torch RNG too.
ARCH = {**ARCH_TINY, "dropout": 0.1}
KW = {"lr": 1e-3, "batch_size": 4, "grad_accum": 2, "max_steps": 6, "seed": 3, "progress": False}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny saved base (dropout 0.1) and a Catalan training TSV of 13 noise clips."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("resume")
    texts = [num2words(n, lang=lang) for lang in ["ca", "en"] for n in range(40)]
    tok = build_tokenizer(texts, ["ca"], vocab_size=300)
    model, processor = build_synthetic_base(tok, ARCH, chunk_seconds=1, seed=0)
    save_model_dir(model, processor, root / "base")
    rng = np.random.default_rng(0)
    (root / "clips").mkdir()
    rows = []
    for i in range(13):
        n = int(rng.integers(4000, 16000))
        sf.write(root / "clips" / f"{i}.flac", rng.normal(0, 0.1, n), 16000)
        rows.append(Utterance(f"ca{i}", f"clips/{i}.flac", n / 16000, num2words(3 * i, lang="ca"), num2words(3 * i)))  # fmt: skip
    write_tsv(rows, root / "train.tsv")
    return root, model, processor


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _examples(world):
    root, _, processor = world
    return load_examples(processor, [(root / "train.tsv", "ca", ["asr", "st"])], progress=False)


def _run(world, examples, **kw):
    _, model, processor = world
    m = copy.deepcopy(model)
    summary = train(m, processor, examples, **{**KW, **kw})
    return m.state_dict(), summary


def _assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def test_examples_hold_no_features_and_stream_the_same_ones(world, one_thread):
    """load_examples keeps only targets and audio rows; training on them (features computed
    per batch, in this process or a DataLoader worker) equals training on precomputed
    features, bitwise."""
    _, _, processor = world
    examples = _examples(world)
    assert len(examples) == 26 and all(e.features is None for e in examples)
    feats = extract_features(processor, [smtrain.load_audio(*e.audio) for e in examples])
    pre = [
        Example(f, e.decoder_input_ids, e.labels, e.ctc_targets)
        for f, e in zip(feats, examples, strict=True)
    ]
    ref, _ = _run(world, pre, ctc_weight=0.5)
    streamed, _ = _run(world, examples, ctc_weight=0.5)
    _assert_bitwise(ref, streamed)
    with_worker, _ = _run(world, examples, ctc_weight=0.5, workers=1)
    _assert_bitwise(ref, with_worker)


class Interrupted(Exception):
    pass


def _interrupt(step: int) -> None:
    raise Interrupted


def test_interrupted_training_resumes_to_the_same_weights(world, one_thread, tmp_path, monkeypatch, caplog):  # fmt: skip
    """Checkpoint every 2 steps, interrupted after step 3: the rerun resumes from step 2 and
    ends bitwise equal to an uninterrupted run (dropout, CTC head, Adam state, sampler)."""
    examples = _examples(world)
    ref, ref_summary = _run(world, examples, ctc_weight=0.5)
    ck = Checkpoint(tmp_path / "ck" / "run.pt", every_steps=2)

    def interrupt(step):
        if step == 3:
            raise Interrupted

    monkeypatch.setattr(smtrain, "_after_step", interrupt)
    with pytest.raises(Interrupted):
        _run(world, examples, ctc_weight=0.5, checkpoint=ck)
    assert ck.path.exists()
    monkeypatch.setattr(smtrain, "_after_step", lambda step: None)
    with caplog.at_level(logging.INFO, logger="speechmerge.train"):
        got, summary = _run(world, examples, ctc_weight=0.5, checkpoint=ck)
    assert f"resuming from step 2 of 6, {ck.path}" in caplog.text
    assert summary["resumed_from_step"] == 2
    assert summary["loss"] == ref_summary["loss"]
    _assert_bitwise(ref, got)
    ck.remove()
    assert not ck.path.exists() and not ck.path.parent.exists()


@pytest.mark.parametrize(
    "change,what",
    [
        ({"lr": 2e-3}, "hyper-parameters"),
        ({"seed": 4}, "hyper-parameters"),
        ({"data": 20}, "training data"),
        ({"arch": {**ARCH, "ffn_dim": 48}}, "architecture"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused(world, tmp_path, monkeypatch, change, what):
    processor = world[2]
    examples = _examples(world)
    ck = Checkpoint(tmp_path / "run.pt", every_steps=1)
    monkeypatch.setattr(smtrain, "_after_step", _interrupt)
    with pytest.raises(Interrupted):
        _run(world, examples, max_steps=2, checkpoint=ck)
    monkeypatch.setattr(smtrain, "_after_step", lambda step: None)
    kw = {k: v for k, v in change.items() if k in KW}
    if "data" in change:
        examples = examples[: change["data"]]
    if "arch" in change:
        other, _ = build_synthetic_base(processor.tokenizer, change["arch"], 1, seed=0)
        world = (None, other, processor)
    with pytest.raises(ValueError, match=rf"{ck.path}: a checkpoint of another training run \(its [^)]*{what}[^)]* differ"):  # fmt: skip
        _run(world, examples, max_steps=2, checkpoint=ck, **kw)
    assert ck.path.exists()  # never removed by a refusing run


CHILD = textwrap.dedent(
    """
    import logging, sys, time
    import torch
    torch.set_num_threads(1)
    import speechmerge.train as smtrain
    root, out, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    smtrain._after_step = lambda step: time.sleep(pause)
    hp = {"lr": 1e-3, "batch_size": 4, "grad_accum": 1, "epochs": 3}
    smtrain.finetune(f"{root}/base", f"{root}/train.tsv", "ca", "asr", hp, out, seed=5,
                     runtime={"checkpoint_every_steps": 1, "checkpoint_every_minutes": 0})
    """
)


def _child(world, out: Path, pause: float, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CHILD, str(world[0]), str(out), str(pause)]
    return subprocess.Popen(cmd, stderr=log.open("w"), env=env)


def test_sigkill_mid_finetune_then_rerun_resumes_to_the_same_weights(world, tmp_path):
    """A real SIGKILL of a fine-tune after a few checkpointed steps (12 steps in all); the
    rerun resumes (its log names the step and the file), removes the checkpoint and writes
    the weights of an uninterrupted run, bitwise (one thread)."""
    from safetensors.torch import load_file

    ref_out, out = tmp_path / "ref" / "ca-asr", tmp_path / "run" / "ca-asr"
    ref = _child(world, ref_out, 0.0, tmp_path / "ref.log")
    killed = _child(world, out, 0.3, tmp_path / "killed.log")
    ck = Checkpoint.beside(out).path
    deadline = time.time() + 300
    while "checkpoint: step 3 of 12" not in (tmp_path / "killed.log").read_text():
        assert killed.poll() is None, (tmp_path / "killed.log").read_text()
        assert time.time() < deadline, "no checkpoint after 300 s"
        time.sleep(0.1)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert ck.exists() and not out.exists()
    assert ref.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()

    rerun = _child(world, out, 0.0, tmp_path / "rerun.log")
    assert rerun.wait(timeout=300) == 0, (tmp_path / "rerun.log").read_text()
    log = (tmp_path / "rerun.log").read_text()
    resumed = [line for line in log.splitlines() if "resuming from step" in line]
    assert resumed and f"of 12, {ck}" in resumed[0], log
    assert int(resumed[0].split("resuming from step ")[1].split()[0]) >= 3
    assert not ck.exists() and not ck.parent.exists()
    _assert_bitwise(load_file(ref_out / "model.safetensors"), load_file(out / "model.safetensors"))


def test_decoding_reads_the_test_set_per_batch(world):
    """decode_tsv reads audio per batch; the hypotheses equal those of preloaded audio, and
    of a DataLoader worker."""
    from speechmerge.corpus import load_audio
    from speechmerge.decode import decode_tsv, transcribe

    root, model, processor = world
    kw = {"batch_size": 5, "max_new_tokens": 4}
    rows, hyps = decode_tsv(model, processor, root / "train.tsv", "ca", "asr", **kw)
    audios = [load_audio(root / "train.tsv", r) for r in rows]
    assert len(hyps) == 13
    assert hyps == transcribe(model, processor, audios, "ca", "asr", **kw)
    assert hyps == transcribe(model, processor, audios, "ca", "asr", workers=1, **kw)

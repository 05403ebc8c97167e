"""Training: pre-training of the synthetic base and full-parameter fine-tuning.

One loop serves both, as in the paper (section 4.2): Adam, a batch size, gradient
accumulation, a number of epochs (or, for pre-training, of optimiser steps), a seed.
Targets are built exactly as Whisper's: the decoder reads
``<|startoftranscript|> <|lang|> <|task|> <|notimestamps|> text`` and predicts
``text <|endoftext|>``; the forced prefix tokens are not scored.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .corpus import Utterance, load_audio, read_tsv
from .io.atomic import atomic_file, remove_stale_temps
from .model import (
    EOT,
    NO_TIMESTAMPS,
    SOT,
    TASK_TOKENS,
    autocast_dtype,
    build_synthetic_base,
    build_tokenizer,
    configure_cuda,
    lang_token,
    load_pretrained,
    save_model_dir,
)
from .progress import Progress, track

log = logging.getLogger(__name__)

FIELD = {"asr": "sentence", "st": "translation"}


@dataclass
class Example:
    """One training example. Its log-mel features are computed per batch from `audio` (a
    (TSV path, row) pair: :func:`speechmerge.corpus.load_audio`) while training, so memory
    does not grow with the training set; `features` may hold them precomputed instead
    (tests)."""

    features: np.ndarray | None  # (mel, frames) float32, or None: computed from `audio`
    decoder_input_ids: list[int]
    labels: list[int]
    ctc_targets: list[int] | None = None  # ASR text tokens (pre-training's auxiliary CTC)
    audio: tuple[str, Utterance] | None = None


def target_ids(tokenizer, text: str, lang: str, task: str) -> tuple[list[int], list[int]]:
    """(decoder_input_ids, labels) for one utterance, with the prefix masked in labels."""
    ids = tokenizer.convert_tokens_to_ids
    prefix = [ids(SOT), ids(lang_token(lang)), ids(TASK_TOKENS[task]), ids(NO_TIMESTAMPS)]
    text_ids = tokenizer.encode(" " + text.strip(), add_special_tokens=False)
    full = prefix + text_ids + [ids(EOT)]
    decoder_input_ids = full[:-1]
    labels = [-100] * (len(prefix) - 1) + full[len(prefix) :]
    return decoder_input_ids, labels


def extract_features(processor, audios: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Log-mel features padded/cut to the model's window: (n, mel, 2·max_source_positions)."""
    out = []
    for i in range(0, len(audios), batch_size):
        feats = processor.feature_extractor(
            audios[i : i + batch_size], sampling_rate=16_000, return_tensors="np"
        ).input_features
        out.append(feats.astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, 0, 0), np.float32)


def example_features(processor, example: Example) -> np.ndarray:
    """An example's log-mel features: its precomputed ones, else computed from its audio."""
    if example.features is not None:
        return example.features
    tsv, row = example.audio
    return extract_features(processor, [load_audio(tsv, row)])[0]


def load_examples(processor, sources, progress: bool = True) -> list[Example]:
    """`sources`: iterable of (tsv_path, lang, tasks); one example per (utterance, task).
    Only the TSVs are read here (targets tokenised); audio is read and featurised per batch
    while training (:class:`FeatureDataset`)."""
    examples = []
    for tsv, lang, tasks in sources:
        rows = read_tsv(tsv)
        for row in track(rows, f"load {tsv}", unit="utt", enabled=progress):
            for task in tasks:
                dec, lab = target_ids(processor.tokenizer, getattr(row, FIELD[task]), lang, task)
                ctc = [t for t in lab if t >= 0][:-1] if task == "asr" else None
                examples.append(Example(None, dec, lab, ctc, audio=(str(tsv), row)))
    if not examples:
        raise ValueError("no training examples (empty TSVs?)")
    return examples


class FeatureDataset:
    """Map-style dataset (``torch.utils.data``) of the examples' features: item i is
    (i, features of example i), computed when asked for, in a DataLoader worker or not."""

    def __init__(self, processor, examples: list[Example]):
        self.processor, self.examples = processor, examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        return i, example_features(self.processor, self.examples[i])


def _stack_features(items):
    return [i for i, _ in items], torch.from_numpy(np.stack([f for _, f in items]))


def data_worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # feature extraction is numpy; leave the cores to training


def feature_loader(dataset, batch_sampler, workers: int = 0, seed: int = 0):
    """A DataLoader yielding (indices, features tensor) for each index list of
    `batch_sampler`, in its order. With `workers` > 0 they are computed in worker processes,
    at most 2 batches ahead per worker: memory is a few batches whatever the data size. Its
    own seeded generator leaves the global torch RNG (dropout) untouched."""

    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=_stack_features,
        worker_init_fn=data_worker_init if workers else None,
        generator=torch.Generator().manual_seed(seed),
    )


def _targets(batch: list[Example], pad_id: int):
    n = max(len(e.labels) for e in batch)
    dec = torch.full((len(batch), n), pad_id, dtype=torch.long)
    lab = torch.full((len(batch), n), -100, dtype=torch.long)
    for i, e in enumerate(batch):
        dec[i, : len(e.decoder_input_ids)] = torch.tensor(e.decoder_input_ids)
        lab[i, : len(e.labels)] = torch.tensor(e.labels)
    return dec, lab


def collate(batch: list[Example], pad_id: int, processor=None):
    """(features, decoder_input_ids, labels) of a batch; `processor` computes the features
    of examples without precomputed ones."""

    feats = torch.from_numpy(np.stack([example_features(processor, e) for e in batch]))
    return (feats, *_targets(batch, pad_id))


def _ctc_row_losses(head, encoder_states, batch: list[Example]):
    """Per-row CTC loss divided by its target length (what ``reduction="mean"`` averages);
    0 for rows without CTC targets. Returns (losses, has_target mask)."""

    rows = [i for i, e in enumerate(batch) if e.ctc_targets]
    out = encoder_states.new_zeros(len(batch), dtype=torch.float32)
    if not rows:
        return out + encoder_states.sum() * 0.0
    logp = head(encoder_states[rows]).float().log_softmax(-1).transpose(0, 1)  # (T, B, V)
    targets = torch.cat([torch.tensor(batch[i].ctc_targets) for i in rows]).to(logp.device)
    t_len = torch.full((len(rows),), logp.shape[0], dtype=torch.long)
    y_len = torch.tensor([len(batch[i].ctc_targets) for i in rows])
    losses = torch.nn.functional.ctc_loss(
        logp, targets, t_len, y_len, blank=logp.shape[-1] - 1, reduction="none", zero_infinity=True
    )
    return out.index_put((torch.tensor(rows, device=out.device),), losses / y_len.to(losses))


def optimizer_steps(n_examples: int, batch_size: int, grad_accum: int, epochs: float) -> int:
    """Optimiser steps of `epochs` passes over `n_examples` (what :func:`train` runs): a pass
    is ⌈n / batch_size⌉ batches, grouped by `grad_accum` into optimiser steps (at least 1)."""
    steps_per_epoch = max(1, math.ceil(n_examples / batch_size) // grad_accum)
    return max(1, round(epochs * steps_per_epoch))


def micro_batches(batches: list[list[int]], micro_batch_size: int):
    """Regroup one optimiser step's `batches` (lists of example indices) into micro-batches
    of at most `micro_batch_size`, in the same order. Yields lists of (batch number, index):
    the batch number says whose loss normalisation an example's tokens belong to."""
    flat = [(k, i) for k, idx in enumerate(batches) for i in idx]
    for start in range(0, len(flat), micro_batch_size):
        yield flat[start : start + micro_batch_size]


class StepSampler:
    """The examples of each optimiser step: `grad_accum` batches of `batch_size` indices
    taken in turn from a seeded shuffle of the `n` examples, reshuffled (appended) whenever
    fewer than a batch remain. Its state (the ``random.Random`` and the pending order) is
    what a checkpoint stores."""

    def __init__(self, n: int, batch_size: int, grad_accum: int, seed: int):
        self.n, self.batch_size, self.grad_accum = n, batch_size, grad_accum
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def next_step(self) -> list[list[int]]:
        batches = []
        for _ in range(self.grad_accum):
            if len(self.order) < self.batch_size:
                fresh = list(range(self.n))
                self.rng.shuffle(fresh)
                self.order.extend(fresh)
            idx, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
            batches.append(idx)
        return batches

    def state(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self.order)}

    def set_state(self, state: dict) -> None:
        self.rng.setstate(_as_tuple(state["rng"]))
        self.order = list(state["order"])


class _MicroBatchIndices:
    """The index lists of every micro-batch of `steps` optimiser steps, in training order:
    the DataLoader's batch sampler (a copy of the training loop's sampler runs ahead)."""

    def __init__(self, sampler: StepSampler, steps: int, micro: int):
        self.sampler, self.steps, self.micro = copy.deepcopy(sampler), steps, micro

    def __iter__(self):
        for _ in range(self.steps):
            for chunk in micro_batches(self.sampler.next_step(), self.micro):
                yield [i for _, i in chunk]


def _as_tuple(x):
    """A Python RNG state back from a checkpoint (tuples may come back as lists)."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


# ---------------------------------------------------------------------------------------
# Checkpoints: resume a killed training run where it stopped, with the same final weights.


class Checkpoint:
    """Where and how often :func:`train` saves its full state (weights, optimiser, step, the
    sampler's RNG and pending order, torch/numpy/python RNGs, loss EMA): after every
    `every_steps` optimiser steps and/or `every_minutes` minutes (0 = never by that
    criterion), atomically (temporary file, then rename). A run finding the file resumes
    from it, after checking its fingerprint (model, data, hyper-parameters): a checkpoint
    of another run is refused, naming the file. :meth:`remove` once the output is saved."""

    def __init__(self, path, every_steps: int = 0, every_minutes: float = 0.0):
        self.path = Path(path)
        self.every_steps, self.every_minutes = int(every_steps or 0), float(every_minutes or 0)
        self.last = time.monotonic()

    @classmethod
    def beside(cls, out_dir, every_steps: int = 0, every_minutes: float = 0.0) -> Checkpoint:
        """The checkpoint of output `out_dir`: ``{parent}/.checkpoints/{name}.pt``, beside
        the output and not part of it (Snakemake neither removes nor expects it)."""
        out = Path(out_dir)
        return cls(out.parent / ".checkpoints" / f"{out.name}.pt", every_steps, every_minutes)

    def due(self, steps_done: int) -> bool:
        if self.every_steps and steps_done % self.every_steps == 0:
            return True
        return bool(self.every_minutes) and time.monotonic() - self.last >= 60 * self.every_minutes

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path) as tmp:
            torch.save(state, tmp)
        self.last = time.monotonic()
        log.info("checkpoint: step %d of %d saved to %s", state["step"], state["total"], self.path)

    def load(self, fingerprint: dict, device: str = "cpu") -> dict | None:
        """The saved state, or None without a checkpoint. Refuses (ValueError naming the file
        and what differs) a checkpoint whose fingerprint is not `fingerprint`."""

        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location=device, weights_only=True)
            theirs = state["fingerprint"]
        except Exception as e:
            raise ValueError(
                f"{self.path}: unreadable training checkpoint ({e}); delete it to start over"
            ) from e
        differ = sorted(
            k for k in fingerprint.keys() | theirs.keys() if fingerprint.get(k) != theirs.get(k)
        )
        if differ:
            raise ValueError(
                f"{self.path}: a checkpoint of another training run (its {', '.join(differ)} "
                f"differ from this run's); refusing to resume from it. Delete it to start over."
            )
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        remove_stale_temps(self.path)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # only if empty


def _sha256_tensors(tensors) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()))
    return h.hexdigest()


def run_fingerprint(model, examples: list[Example], hparams: dict) -> dict:
    """What a checkpoint must match to be resumed: the architecture, the starting weights,
    the training data (targets and audio rows, or precomputed features) and the
    hyper-parameters that shape the run."""
    c = model.config
    arch = (
        f"{c.model_type} d_model={c.d_model} layers={c.encoder_layers}+{c.decoder_layers} "
        f"heads={c.encoder_attention_heads} ffn={c.encoder_ffn_dim} vocab={c.vocab_size} "
        f"mel={c.num_mel_bins}"
    )
    data = hashlib.sha256()
    for e in examples:
        src = (
            [e.audio[1].id, e.audio[1].audio, e.audio[1].duration]
            if e.audio is not None
            else hashlib.sha256(np.ascontiguousarray(e.features).tobytes()).hexdigest()
        )
        data.update(json.dumps([src, e.decoder_input_ids, e.labels, e.ctc_targets]).encode())
    return {
        "architecture": arch,
        "starting weights": _sha256_tensors(sorted(model.state_dict().items())),
        "training data": f"{len(examples)} examples, sha256 {data.hexdigest()}",
        "hyper-parameters": json.dumps(hparams, sort_keys=True, default=str),
    }


def _rng_states(device: str) -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if device.startswith("cuda"):
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    random.setstate(_as_tuple(states["python"]))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states:
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def _after_step(step: int) -> None:
    """Called after every optimiser step (and its checkpoint); a seam for tests that
    interrupt training."""


#: The arguments of :func:`train` that shape its result: a checkpoint must match them.
RUN_ARGS = (
    "lr", "batch_size", "grad_accum", "epochs", "max_steps", "micro_batch_size",
    "warmup_steps", "schedule", "weight_decay", "seed", "train_encoder", "ctc_weight",
)  # fmt: skip


def train(
    model,
    processor,
    examples: list[Example],
    *,
    lr: float,
    batch_size: int,
    grad_accum: int = 1,
    epochs: float | None = None,
    max_steps: int | None = None,
    micro_batch_size: int | None = None,
    warmup_steps: int = 0,
    schedule: str = "constant",
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
    grad_checkpointing: bool = False,
    train_encoder: bool = True,
    ctc_weight: float = 0.0,
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
    workers: int = 0,
) -> dict:
    """Full-parameter training with Adam. Either `epochs` or `max_steps` (optimiser steps)
    bounds it. `schedule`: ``constant`` (the paper's fine-tuning) or ``cosine`` (used to
    pre-train the synthetic base). `ctc_weight` > 0 adds an auxiliary CTC loss on the encoder
    output for ASR examples (a throw-away linear head; it speeds up learning the audio-text
    alignment when pre-training from scratch and is not part of the saved model).

    One optimiser step draws `grad_accum` batches of `batch_size` examples (reshuffling the
    examples whenever fewer than a batch remain) and minimises the mean over those batches
    of each batch's loss, the mean over its label tokens (Hugging Face's loss), i.e. batch
    `batch_size` with `grad_accum` accumulation iterations. `micro_batch_size` (default
    `batch_size`) only sets how many of the step's examples go through one forward/backward
    pass: every token is weighted by 1 / (its batch's token count · grad_accum), so the
    gradient, and the examples and their order, are the same for any value (up to float
    rounding). Larger micro-batches are faster on a CPU; smaller ones fit a smaller GPU.

    Features are computed per micro-batch by a DataLoader (`workers` processes, 0: in this
    one). On CUDA, autocast (bf16, else fp16 with a gradient scaler) and TF32. With a
    `checkpoint`, the state is saved as it says and a run finding one resumes from it, ending
    with the same weights as an uninterrupted run. Returns a summary (steps, final loss,
    seconds)."""
    run_args = {k: v for k, v in locals().items() if k in RUN_ARGS}

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    configure_cuda(device)
    fingerprint = None
    if checkpoint is not None:  # of the starting weights: before training changes them
        hparams = {**run_args, "autocast": str(autocast_dtype(device))}
        fingerprint = run_fingerprint(model, examples, hparams)
    model.to(device)
    model.train()
    if grad_checkpointing:  # recompute activations in the backward pass (transformers 5 name)
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
    pad_id = processor.tokenizer.convert_tokens_to_ids(EOT)
    # train_encoder False: the encoder is frozen (no gradients, no optimiser state), a CPU
    # budget option; its task vector is then zero on every encoder tensor.
    for p in model.model.encoder.parameters():
        p.requires_grad_(train_encoder)
    params = [p for p in model.parameters() if p.requires_grad]
    ctc_head = None
    if ctc_weight > 0:
        vocab = model.config.vocab_size
        ctc_head = torch.nn.Linear(model.config.d_model, vocab + 1).to(device)  # blank = vocab
        params += list(ctc_head.parameters())
    # Adam (the paper's optimiser); AdamW with weight_decay 0 is exactly Adam.
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if max_steps is not None:
        total = max(1, max_steps)
    else:
        total = optimizer_steps(len(examples), batch_size, grad_accum, epochs or 1)
    micro = micro_batch_size or batch_size

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        if schedule == "cosine":
            frac = (step - warmup_steps) / max(1, total - warmup_steps)
            return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        return lr

    amp = autocast_dtype(device)
    scaler = torch.amp.GradScaler(device.split(":")[0]) if amp == torch.float16 else None
    sampler = StepSampler(len(examples), batch_size, grad_accum, seed)
    ema = ema_ctc = None
    start = 0
    state = checkpoint.load(fingerprint, device) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        if ctc_head is not None:
            ctc_head.load_state_dict(state["ctc_head"])
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        sampler.set_state(state["sampler"])
        ema, ema_ctc, start = state["ema"], state["ema_ctc"], state["step"]
        _set_rng_states(state["rng"])
        log.info("resuming from step %d of %d, %s", start, total, checkpoint.path)
        del state
    t0 = time.time()
    decay = 0.98**grad_accum  # the smoothing of a per-batch EMA with decay 0.98
    bar = Progress(total - start, "train", unit="step", items="utt", enabled=progress)
    loader = iter(
        feature_loader(
            FeatureDataset(processor, examples),
            _MicroBatchIndices(sampler, total - start, micro),
            workers,
            seed,
        )
    )
    for step in range(start, total):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        batches = sampler.next_step()
        tokens = [sum(sum(t >= 0 for t in examples[i].labels) for i in idx) for idx in batches]
        ctc_rows = [sum(bool(examples[i].ctc_targets) for i in idx) for idx in batches]
        value = value_ctc = 0.0
        for chunk in micro_batches(batches, micro):
            got, feats = next(loader)
            if got != [i for _, i in chunk]:  # the loader's sampler runs the same shuffles
                raise RuntimeError(f"data loader out of step: {got} != {chunk}")
            batch = [examples[i] for _, i in chunk]
            dec, lab = _targets(batch, pad_id)
            feats, dec, lab = feats.to(device), dec.to(device), lab.to(device)
            w_tok = torch.tensor([1.0 / (tokens[k] * grad_accum) for k, _ in chunk], device=device)
            with torch.autocast(device.split(":")[0], dtype=amp, enabled=amp is not None):
                out = model(input_features=feats, decoder_input_ids=dec, use_cache=False)
                ce = torch.nn.functional.cross_entropy(
                    out.logits.float().transpose(1, 2), lab, ignore_index=-100, reduction="none"
                )  # (B, T), 0 where ignored
                loss = (ce.sum(1) * w_tok).sum()
                if ctc_head is not None:
                    w_ctc = [1.0 / (max(1, ctc_rows[k]) * grad_accum) for k, _ in chunk]
                    per_row = _ctc_row_losses(ctc_head, out.encoder_last_hidden_state, batch)
                    ctc = (per_row * torch.tensor(w_ctc, device=device)).sum()
                    loss = loss + ctc_weight * ctc
                    value_ctc += ctc.item()
            (scaler.scale(loss) if scaler else loss).backward()
            value += loss.item()
        ema = value if ema is None else decay * ema + (1 - decay) * value
        ema_ctc = value_ctc if ema_ctc is None else decay * ema_ctc + (1 - decay) * value_ctc
        if scaler:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        bar.update(1, items=sum(map(len, batches)), loss=ema)
        if step % max(1, total // 20) == 0 or step == total - 1:
            log.info(
                "step %d/%d loss %.4f%s lr %.2e (%.0fs)",
                step + 1,
                total,
                ema,
                f" (of which {ctc_weight} x ctc {ema_ctc:.4f})" if ctc_head is not None else "",
                lr_at(step),
                time.time() - t0,
            )
        if checkpoint is not None and step + 1 < total and checkpoint.due(step + 1):
            checkpoint.save(
                {
                    "fingerprint": fingerprint,
                    "step": step + 1,
                    "total": total,
                    "model": model.state_dict(),
                    "ctc_head": ctc_head.state_dict() if ctc_head is not None else None,
                    "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "sampler": sampler.state(),
                    "ema": ema,
                    "ema_ctc": ema_ctc,
                    "rng": _rng_states(device),
                }
            )
        _after_step(step + 1)
    rates = bar.close()
    model.eval()
    return {
        "steps": total,
        "loss": ema,
        "seconds": round(time.time() - t0, 1),
        "examples": len(examples),
        "steps_per_s": rates["steps_per_s"],
        "utterances_per_s": rates["utterances_per_s"],
        **({"resumed_from_step": start} if start else {}),
    }


def training_checkpoint(out_dir, runtime: dict | None) -> Checkpoint | None:
    """The :class:`Checkpoint` of the training job writing `out_dir`, from its runtime options
    (``checkpoint_every_steps``, ``checkpoint_every_minutes``: the ``finetune`` section of
    the config); None when both are 0 or absent."""
    runtime = runtime or {}
    steps = runtime.get("checkpoint_every_steps") or 0
    minutes = runtime.get("checkpoint_every_minutes") or 0
    if not (steps or minutes):
        return None
    return Checkpoint.beside(out_dir, steps, minutes)


def run_training(model, processor, examples, out_dir, runtime: dict | None, **train_kw) -> dict:
    """:func:`train` with the job's checkpoint and data workers (`runtime`), then save the
    model dir atomically and remove the checkpoint (the output now exists)."""

    runtime = runtime or {}
    checkpoint = training_checkpoint(out_dir, runtime)
    summary = train(
        model,
        processor,
        examples,
        checkpoint=checkpoint,
        workers=runtime.get("data_workers") or 0,
        **train_kw,
    )
    model.to("cpu")
    save_model_dir(model, processor, out_dir)
    if checkpoint is not None:
        checkpoint.remove()
    return summary


def hparam_options(hp: dict) -> dict:
    """:func:`train`'s options from the hyper-parameters of a fine-tune or joint model
    (:func:`speechmerge.plan.params.finetune_hparams`, ``joint_hparams``), but for their
    length (epochs, or a joint model's steps)."""
    return {
        "lr": hp["lr"],
        "batch_size": hp["batch_size"],
        "grad_accum": hp["grad_accum"],
        "micro_batch_size": hp.get("micro_batch_size"),
        "grad_checkpointing": hp.get("gradient_checkpointing", False),
        "train_encoder": hp.get("train_encoder", True),
    }


def pretrain_synthetic_base(
    corpus_dirs: dict,
    cfg: dict,
    out_dir,
    seed: int,
    device: str = "cpu",
    runtime: dict | None = None,
):
    """Build and pre-train the synthetic base (multilingual ASR + ST on the *base* domain).

    `corpus_dirs`: {lang: corpus folder} of ``cfg['languages']``; `cfg` is
    ``config['base']['synthetic']``. The tokenizer is trained on the base and train texts
    (transcripts and translations); never on dev or test. `runtime`: checkpoints and data
    workers (:func:`run_training`).
    """

    missing = [lang for lang in cfg["languages"] if lang not in corpus_dirs]
    if missing:
        raise ValueError(f"base.synthetic.languages {missing} have no corpus folder")
    texts = []
    for lang in cfg["languages"]:
        for split in ("base", "train"):
            for r in read_tsv(f"{corpus_dirs[lang]}/{split}.tsv"):
                texts += [r.sentence, r.translation]
    tokenizer = build_tokenizer(texts, cfg["languages"], cfg["vocab_size"])
    model, processor = build_synthetic_base(tokenizer, cfg["arch"], cfg["chunk_seconds"], seed)
    log.info(
        "synthetic base: %.2fM parameters, vocab %d", model.num_parameters() / 1e6, len(tokenizer)
    )
    examples = load_examples(
        processor,
        [(f"{corpus_dirs[lang]}/base.tsv", lang, ["asr", "st"]) for lang in cfg["languages"]],
    )
    hp = cfg["train"]
    return run_training(
        model,
        processor,
        examples,
        out_dir,
        runtime,
        lr=hp["lr"],
        batch_size=hp["batch_size"],
        max_steps=hp["steps"],
        warmup_steps=hp.get("warmup_steps", 0),
        schedule="cosine",
        seed=seed,
        device=device,
        ctc_weight=hp.get("ctc_weight", 0.0),
    )


def snapshot_pretrained(name_or_path: str, out_dir) -> dict:
    """Copy a pretrained Whisper (Hub name or local dir) into `out_dir`, so every later job
    reads one fixed local copy."""

    model, processor = load_pretrained(name_or_path)
    save_model_dir(model, processor, out_dir)
    return {"source": name_or_path, "parameters": model.num_parameters()}


def finetune(
    base_dir,
    train_tsv,
    lang: str,
    task: str,
    hp: dict,
    out_dir,
    seed: int,
    device="cpu",
    runtime: dict | None = None,
):
    """Full-parameter fine-tuning of the base on one (language, task) (paper section 4.2).
    `runtime`: checkpoints and data workers (:func:`run_training`)."""

    model, processor = load_pretrained(str(base_dir))
    examples = load_examples(processor, [(train_tsv, lang, [task])])
    opts = {"epochs": hp["epochs"], "seed": seed, "device": device, **hparam_options(hp)}
    return run_training(model, processor, examples, out_dir, runtime, **opts)

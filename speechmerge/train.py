"""Training: pre-training of the synthetic base and full-parameter fine-tuning.

One loop serves both, as in the paper (section 4.2): Adam, a batch size, gradient
accumulation, a number of epochs (or, for pre-training, of optimiser steps), a seed.
Targets are built exactly as Whisper's: the decoder reads
``<|startoftranscript|> <|lang|> <|task|> <|notimestamps|> text`` and predicts
``text <|endoftext|>``; the forced prefix tokens are not scored.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import numpy as np

from .corpus import load_audio, read_tsv
from .model import EOT, NO_TIMESTAMPS, SOT, TASK_TOKENS, autocast_dtype, lang_token
from .progress import Progress, track

log = logging.getLogger(__name__)

FIELD = {"asr": "sentence", "st": "translation"}


@dataclass
class Example:
    features: np.ndarray  # (mel, frames) float32
    decoder_input_ids: list[int]
    labels: list[int]
    ctc_targets: list[int] | None = None  # ASR text tokens (pre-training's auxiliary CTC)


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


def load_examples(processor, sources, progress: bool = True) -> list[Example]:
    """`sources`: iterable of (tsv_path, lang, tasks). Audio is read and featurised once per
    utterance and shared by its tasks."""
    examples = []
    for tsv, lang, tasks in sources:
        rows = read_tsv(tsv)
        audios = [
            load_audio(tsv, r) for r in track(rows, f"load {tsv}", unit="utt", enabled=progress)
        ]
        feats = extract_features(processor, audios)
        for row, f in zip(rows, feats):
            for task in tasks:
                dec, lab = target_ids(processor.tokenizer, getattr(row, FIELD[task]), lang, task)
                ctc = [t for t in lab if t >= 0][:-1] if task == "asr" else None
                examples.append(Example(f, dec, lab, ctc))
    if not examples:
        raise ValueError("no training examples (empty TSVs?)")
    return examples


def collate(batch: list[Example], pad_id: int):
    import torch

    n = max(len(e.labels) for e in batch)
    feats = torch.from_numpy(np.stack([e.features for e in batch]))
    dec = torch.full((len(batch), n), pad_id, dtype=torch.long)
    lab = torch.full((len(batch), n), -100, dtype=torch.long)
    for i, e in enumerate(batch):
        dec[i, : len(e.decoder_input_ids)] = torch.tensor(e.decoder_input_ids)
        lab[i, : len(e.labels)] = torch.tensor(e.labels)
    return feats, dec, lab


def _ctc_row_losses(head, encoder_states, batch: list[Example]):
    """Per-row CTC loss divided by its target length (what ``reduction="mean"`` averages);
    0 for rows without CTC targets. Returns (losses, has_target mask)."""
    import torch

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
    Returns a summary (steps, final loss, seconds)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    model.to(device)
    model.train()
    if grad_checkpointing:
        model.gradient_checkpointing_enable()
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
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    rng = random.Random(seed)
    order: list[int] = []
    t0 = time.time()
    ema = ema_ctc = None
    decay = 0.98**grad_accum  # the smoothing of a per-batch EMA with decay 0.98
    bar = Progress(total, "train", unit="step", items="utt", enabled=progress)
    for step in range(total):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        batches = []
        for _ in range(grad_accum):
            if len(order) < batch_size:
                fresh = list(range(len(examples)))
                rng.shuffle(fresh)
                order.extend(fresh)
            idx, order = order[:batch_size], order[batch_size:]
            batches.append(idx)
        tokens = [sum(sum(t >= 0 for t in examples[i].labels) for i in idx) for idx in batches]
        ctc_rows = [sum(bool(examples[i].ctc_targets) for i in idx) for idx in batches]
        value = value_ctc = 0.0
        for chunk in micro_batches(batches, micro):
            batch = [examples[i] for _, i in chunk]
            feats, dec, lab = collate(batch, pad_id)
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
    rates = bar.close()
    model.eval()
    return {
        "steps": total,
        "loss": ema,
        "seconds": round(time.time() - t0, 1),
        "examples": len(examples),
        "steps_per_s": rates["steps_per_s"],
        "utterances_per_s": rates["utterances_per_s"],
    }


def pretrain_synthetic_base(corpus_dirs: dict, cfg: dict, out_dir, seed: int, device: str = "cpu"):
    """Build and pre-train the synthetic base (multilingual ASR + ST on the *base* domain).

    `corpus_dirs`: {lang: corpus folder} of ``cfg['languages']``; `cfg` is
    ``config['base']['synthetic']``. The tokenizer is trained on the base and train texts
    (transcripts and translations); never on dev or test.
    """
    from .model import build_synthetic_base, build_tokenizer, save_model_dir

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
    summary = train(
        model,
        processor,
        examples,
        lr=hp["lr"],
        batch_size=hp["batch_size"],
        max_steps=hp["steps"],
        warmup_steps=hp.get("warmup_steps", 0),
        schedule="cosine",
        seed=seed,
        device=device,
        ctc_weight=hp.get("ctc_weight", 0.0),
    )
    model.to("cpu")
    save_model_dir(model, processor, out_dir)
    return summary


def snapshot_pretrained(name_or_path: str, out_dir) -> dict:
    """Copy a pretrained Whisper (Hub name or local dir) into `out_dir`, so every later job
    reads one fixed local copy."""
    from .model import load_pretrained, save_model_dir

    model, processor = load_pretrained(name_or_path)
    save_model_dir(model, processor, out_dir)
    return {"source": name_or_path, "parameters": model.num_parameters()}


def finetune(base_dir, train_tsv, lang: str, task: str, hp: dict, out_dir, seed: int, device="cpu"):
    """Full-parameter fine-tuning of the base on one (language, task) (paper section 4.2)."""
    from .model import load_pretrained, save_model_dir

    model, processor = load_pretrained(str(base_dir))
    examples = load_examples(processor, [(train_tsv, lang, [task])])
    summary = train(
        model,
        processor,
        examples,
        lr=hp["lr"],
        batch_size=hp["batch_size"],
        grad_accum=hp["grad_accum"],
        epochs=hp["epochs"],
        seed=seed,
        device=device,
        micro_batch_size=hp.get("micro_batch_size"),
        grad_checkpointing=hp.get("gradient_checkpointing", False),
        train_encoder=hp.get("train_encoder", True),
    )
    model.to("cpu")
    save_model_dir(model, processor, out_dir)
    return summary

"""Batched decoding with ``WhisperForConditionalGeneration.generate(language=..., task=...)``
(backend ``hf``, the default), or with CTranslate2 (backend ``ct2``: the model dir exported to
a temporary CTranslate2 dir, loaded, and decoded on the same log-mel features; see
:class:`Ct2Whisper`)."""

from __future__ import annotations

import json
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .convert import export_ct2
from .corpus import Utterance, load_audio, read_tsv
from .hypotheses import write_hypotheses
from .io.atomic import atomic_write_text
from .metrics import score
from .model import (
    TASK_NAMES,
    configure_cuda,
    decode_dtype,
    lang_token,
    load_pretrained,
    load_processor,
)
from .progress import Progress
from .train import FIELD, data_worker_init, extract_features

#: ``decode.backend``: ``hf`` (transformers' ``generate``: the default, and the reference every
#: score so far was made with) or ``ct2`` (CTranslate2, :class:`Ct2Whisper`).
BACKENDS = ("hf", "ct2")
#: ``decode.ct2_compute_type``: CTranslate2's compute types (which ones a device runs:
#: ``ctranslate2.get_supported_compute_types("cpu")``; on x86 CPUs int8, int8_float32, float32).
CT2_COMPUTE_TYPES = (
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)
DEFAULT_BACKEND = "hf"
#: float32: int8 was 1.8x faster again on whisper-base but moved the scores (BLEU -5.7 [-10.0,
#: -2.1] at beam 4, benchmarks/decode_backends.py; docs/performance.md); float32 greedy gives
#: hf's hypotheses.
DEFAULT_CT2_COMPUTE_TYPE = "float32"
CT2_EXTRA = "pip install 'speechmerge[ct2]'"


def decode_backend(decode_cfg: dict) -> tuple[str, str]:
    """(backend, CTranslate2 compute type) of a ``decode`` config section; an absent key takes
    its default (``hf``, ``float32``), so configs written before these keys existed keep their
    params. A bad value is an error naming the key."""
    backend = decode_cfg.get("backend", DEFAULT_BACKEND)
    compute_type = decode_cfg.get("ct2_compute_type", DEFAULT_CT2_COMPUTE_TYPE)
    if backend not in BACKENDS:
        raise ValueError(
            f"config key 'decode.backend': {backend!r} is not one of {', '.join(BACKENDS)}"
        )
    if compute_type not in CT2_COMPUTE_TYPES:
        raise ValueError(
            f"config key 'decode.ct2_compute_type': {compute_type!r} is not one of "
            f"{', '.join(CT2_COMPUTE_TYPES)}"
        )
    return backend, compute_type


def import_ctranslate2():
    """The ``ctranslate2`` module, or an ImportError naming the extra that installs it."""
    try:
        # deferred: optional extra [ct2]
        import ctranslate2
    except ImportError as e:
        raise ImportError(
            f"decode.backend ct2 needs the ctranslate2 package (extra ct2): {CT2_EXTRA}"
        ) from e
    return ctranslate2


def ct2_device(device: str) -> tuple[str, int]:
    """CTranslate2's (device, index) for a torch device string: ``cuda[:N]`` → (cuda, N);
    anything else (cpu, and mps, which CTranslate2 does not run) → (cpu, 0)."""
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return "cuda", int(index or 0)
    return "cpu", 0


def export_for_decoding(model_dir, out_dir) -> dict:
    """:func:`speechmerge.convert.export_ct2` in float32 (one export serves every compute
    type: CTranslate2 quantizes at load), with the CTranslate2 config's suppress lists set to
    the Hugging Face generation config's (``suppress_tokens``; ``begin_suppress_tokens``,
    which CTranslate2 applies as ``suppress_blank``), so both suppress the same tokens."""
    # deferred: transformers takes seconds to import; only model work needs it
    from transformers import GenerationConfig

    record = export_ct2(model_dir, out_dir, quantization="float32")
    gc = GenerationConfig.from_pretrained(model_dir)
    cfg_path = Path(out_dir) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["suppress_ids"] = list(gc.suppress_tokens or [])
    cfg["suppress_ids_begin"] = list(gc.begin_suppress_tokens or [])
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return record


class Ct2Whisper:
    """A Hugging Face Whisper model dir decoded with CTranslate2.

    The dir is exported (:func:`export_for_decoding`) into a temporary directory that is
    deleted as soon as the model is loaded (CTranslate2 holds the weights in memory), or
    `ct2_dir`, an export made before, is loaded. `compute_type` is applied at load (``int8``
    quantizes the float32 export's weights). `device` is a torch device string (CUDA when it
    is cuda[:N], else the CPU); `threads` is CTranslate2's ``intra_threads`` (0: its default).

    :meth:`generate` decodes log-mel features (the Hugging Face feature extractor's, as for
    ``generate``) with the prompt ``<|startoftranscript|><|lang|><|task|><|notimestamps|>`` and
    the generation config's suppress lists: greedy decoding in float32 gives the Hugging Face
    model's tokens (tests/test_decode_backends.py). Encoder windows shorter than 30 s (a
    truncated position table, ``max_source_positions`` < 1500) work: CTranslate2 accepts
    features up to twice its position table's length.
    """

    def __init__(
        self,
        model_dir,
        *,
        compute_type: str = DEFAULT_CT2_COMPUTE_TYPE,
        device: str = "cpu",
        threads: int = 0,
        ct2_dir=None,
    ):
        # deferred: transformers takes seconds to import; only model work needs it
        from transformers import GenerationConfig

        ctranslate2 = import_ctranslate2()
        decode_backend({"backend": "ct2", "ct2_compute_type": compute_type})
        self.device, self.device_index = ct2_device(device)
        supported = ctranslate2.get_supported_compute_types(self.device)
        if compute_type not in supported:
            raise ValueError(
                f"config key 'decode.ct2_compute_type': {compute_type} does not run on "
                f"{self.device} (CTranslate2 supports {', '.join(sorted(supported))} there)"
            )
        self.model_dir, self.compute_type, self.threads = str(model_dir), compute_type, threads
        self.generation_config = GenerationConfig.from_pretrained(model_dir)
        t0 = time.time()
        if ct2_dir is None:
            with tempfile.TemporaryDirectory(prefix="speechmerge-ct2-") as tmp:
                export_for_decoding(model_dir, Path(tmp) / "model")
                self.export_seconds = time.time() - t0
                self.model = self._load(ctranslate2, Path(tmp) / "model")
        else:
            self.export_seconds = 0.0
            self.model = self._load(ctranslate2, ct2_dir)
        self.load_seconds = time.time() - t0 - self.export_seconds
        self._storage_view = ctranslate2.StorageView

    def _load(self, ctranslate2, path):
        return ctranslate2.models.Whisper(
            str(path),
            device=self.device,
            device_index=self.device_index,
            compute_type=self.compute_type,
            intra_threads=self.threads,
            inter_threads=1,
        )

    def prompt(self, lang: str, task: str) -> list[int]:
        """The ids ``generate(language=lang, task=...)`` starts from: start of transcript,
        language, task, no timestamps (from the generation config, as Hugging Face takes
        them)."""
        gc = self.generation_config
        langs = getattr(gc, "lang_to_id", None) or {}
        tasks = getattr(gc, "task_to_id", None) or {}
        if lang_token(lang) not in langs or TASK_NAMES[task] not in tasks:
            raise ValueError(
                f"{self.model_dir}: its generation config has no id for {lang_token(lang)} or "
                f"{TASK_NAMES[task]} (lang_to_id / task_to_id)"
            )
        return [
            gc.decoder_start_token_id,
            langs[lang_token(lang)],
            tasks[TASK_NAMES[task]],
            gc.no_timestamps_token_id,
        ]

    def generate(
        self,
        features: np.ndarray,
        lang: str,
        task: str,
        *,
        beam_size: int = 1,
        max_new_tokens: int = 40,
    ) -> list[list[int]]:
        """Token ids (without prompt and end of text) per row of `features` (n, mels,
        frames)."""
        gc = self.generation_config
        prompt = self.prompt(lang, task)
        # CTranslate2's Whisper decodes at most min(max_length / 2, max_length - (prompt - 1))
        # new tokens: the max_length that makes that max_new_tokens (as generate's limit).
        max_length = max(2 * max_new_tokens, max_new_tokens + len(prompt) - 1)
        feats = self._storage_view.from_array(np.ascontiguousarray(features, dtype=np.float32))
        results = self.model.generate(
            feats,
            [prompt] * len(features),
            beam_size=beam_size,
            max_length=max_length,
            num_hypotheses=1,
            length_penalty=1.0,
            suppress_blank=bool(gc.begin_suppress_tokens),
            suppress_tokens=list(gc.suppress_tokens or []),
        )
        return [r.sequences_ids[0] for r in results]


class AudioDataset:
    """Map-style dataset of utterances' audio: arrays as given, or read from a corpus TSV's
    rows when asked for (so a test set is never held in memory whole)."""

    def __init__(self, audios: list[np.ndarray] | None = None, tsv=None, rows=None):
        self.audios, self.tsv, self.rows = audios, tsv, rows

    def __len__(self) -> int:
        return len(self.audios) if self.audios is not None else len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.audios is not None:
            return self.audios[i]
        return load_audio(self.tsv, self.rows[i])


def _batch_features(processor, audios: list[np.ndarray]):
    return torch.from_numpy(extract_features(processor, audios))


def transcribe(
    model,
    processor,
    audios: list[np.ndarray] | AudioDataset,
    lang: str,
    task: str,
    *,
    beam_size: int = 1,
    batch_size: int = 16,
    max_new_tokens: int = 40,
    device: str = "cpu",
    workers: int = 0,
) -> list[str]:
    """Greedy (beam_size 1) or beam search, in batches, exactly as for whisper-small.

    `model`: a ``WhisperForConditionalGeneration`` (moved to `device`), or a
    :class:`Ct2Whisper` (on its own device; `device` is not used). Features are computed per
    batch by a DataLoader (`workers` processes, 0: this one), in the model's dtype (see
    :func:`decode_dtype`)."""

    dataset = audios if isinstance(audios, AudioDataset) else AudioDataset(audios)
    ct2 = isinstance(model, Ct2Whisper)
    if not ct2:
        model.to(device).eval()
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=partial(_batch_features, processor),
        worker_init_fn=data_worker_init if workers else None,
    )
    out: list[str] = []
    bar = Progress(len(dataset), f"decode {lang}-{task}", unit="utt")
    for feats in loader:
        if ct2:
            ids = model.generate(
                feats.numpy(), lang, task, beam_size=beam_size, max_new_tokens=max_new_tokens
            )
        else:
            feats = feats.to(device, dtype=model.dtype)
            with torch.inference_mode():
                ids = model.generate(
                    input_features=feats,
                    language=lang,
                    task=TASK_NAMES[task],
                    num_beams=beam_size,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                )
        out.extend(t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True))
        bar.update(len(feats))
    bar.close()
    return out


def decode_tsv(
    model, processor, tsv, lang: str, task: str, **kw
) -> tuple[list[Utterance], list[str]]:
    """Decode every utterance of a corpus TSV (audio read per batch); returns (rows,
    hypotheses)."""
    rows = read_tsv(tsv)
    return rows, transcribe(model, processor, AudioDataset(tsv=tsv, rows=rows), lang, task, **kw)


def load_decoder(model_dir, decode_cfg: dict, device: str = "cpu", threads: int | None = None):
    """(model, processor) for :func:`transcribe`, by ``decode.backend``: the Hugging Face
    model (float16 on CUDA, see :func:`decode_dtype`), or a :class:`Ct2Whisper` in
    ``decode.ct2_compute_type`` on CUDA when `device` is, else on the CPU with `threads`
    threads (None: torch's, which the workflow's jobs set to the job's threads)."""
    backend, compute_type = decode_backend(decode_cfg)
    if backend == "ct2":
        threads = torch.get_num_threads() if threads is None else threads
        processor = load_processor(str(model_dir))
        model = Ct2Whisper(model_dir, compute_type=compute_type, device=device, threads=threads)
        return model, processor
    model, processor = load_pretrained(str(model_dir), device=device)
    if decode_dtype(device) is not None:
        configure_cuda(device)
        model.to(decode_dtype(device))
    return model, processor


def score_model(
    model_dir,
    jobs,
    decode_cfg: dict,
    device: str = "cpu",
    system: str = "",
    threads: int | None = None,
) -> list[dict]:
    """Decode and score one model on several test sets, with ``decode_cfg``'s backend (see
    :func:`load_decoder`).

    `jobs`: list of (lang, task, test_tsv, out_json). Each out_json gets the score (WER or
    BLEU, BLEU's signature; with the ct2 backend also the backend and compute type), and a
    TSV twin ``*.hyp.tsv`` holds id, reference and hypothesis. Files are written atomically.
    """

    model, processor = load_decoder(model_dir, decode_cfg, device, threads)
    backend = {}
    if isinstance(model, Ct2Whisper):
        backend = {"backend": "ct2", "ct2_compute_type": model.compute_type}
    results = []
    for lang, task, tsv, out_json in jobs:
        t0 = time.time()
        rows, hyps = decode_tsv(
            model,
            processor,
            tsv,
            lang,
            task,
            device=device,
            **{k: decode_cfg[k] for k in ("beam_size", "batch_size", "max_new_tokens")},
        )
        refs = [getattr(r, FIELD[task]) for r in rows]
        result = {
            "system": system,
            "model": str(model_dir),
            "lang": lang,
            "task": task,
            "test_set": str(tsv),
            "utterances": len(rows),
            "beam_size": decode_cfg["beam_size"],
            **backend,
            **score(task, refs, hyps, key=f"{lang}-{task}"),
            "seconds": round(time.time() - t0, 2),
        }
        out_json = Path(out_json)
        write_hypotheses(out_json, [r.id for r in rows], refs, hyps)
        atomic_write_text(out_json, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        results.append(result)
    return results

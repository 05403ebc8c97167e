"""Models: build the synthetic base, load a pretrained Whisper, save and load model dirs.

Every model in the workflow is a Hugging Face Whisper model dir (``config.json``,
``model.safetensors``, ``generation_config.json`` and the processor files), so the
synthetic preset and whisper-small share one code path: ``WhisperProcessor`` +
``WhisperForConditionalGeneration`` + ``generate(language=..., task=...)``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .io.atomic import atomic_dir, check_folder

# Whisper's special tokens, in Whisper's order (language tokens in the middle).
SOT = "<|startoftranscript|>"
EOT = "<|endoftext|>"
TRANSLATE = "<|translate|>"
TRANSCRIBE = "<|transcribe|>"
NO_TIMESTAMPS = "<|notimestamps|>"
TASK_TOKENS = {"asr": TRANSCRIBE, "st": TRANSLATE}
TASK_NAMES = {"asr": "transcribe", "st": "translate"}


def lang_token(lang: str) -> str:
    return f"<|{lang}|>"


def build_tokenizer(texts, languages, vocab_size: int):
    """A Whisper-format tokenizer: byte-level BPE trained on `texts`, plus Whisper's specials.

    Returns a ``transformers.WhisperTokenizer`` whose special tokens and prefix handling
    (``set_prefix_tokens(language=..., task=...)``) behave as whisper-small's. That handling
    computes a language's token id as ``id(<|startoftranscript|>) + 1 + (its index in
    Whisper's language list)``, so, as in whisper-small, a token for every Whisper language
    follows ``<|startoftranscript|>`` in Whisper's order (``<|en|>``, ``<|zh|>``, ``<|de|>``
    …), whatever `languages` holds; `languages` must all be Whisper languages.
    """
    # deferred: only building a tokenizer needs it
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # deferred: transformers takes seconds to import; only model work needs it
    from transformers import WhisperTokenizer

    # deferred: transformers takes seconds to import; only model work needs it
    from transformers.models.whisper.tokenization_whisper import LANGUAGES as WHISPER_LANGUAGES

    whisper_langs = list(WHISPER_LANGUAGES)
    unknown = [lang for lang in languages if lang not in whisper_langs]
    if unknown:
        raise ValueError(f"languages {unknown} are not Whisper languages: {whisper_langs}")

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOT],
        show_progress=False,
    )
    # Whisper's targets start with a space (" text"); train on the same form.
    bpe.train_from_iterator((" " + t.strip() for t in texts), trainer=trainer)

    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = WhisperTokenizer(vocab=model["vocab"], merges=merges)
    specials = (
        [SOT]
        + [lang_token(x) for x in whisper_langs]
        + [TRANSLATE, TRANSCRIBE, "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", NO_TIMESTAMPS]
    )
    tok.add_special_tokens({"additional_special_tokens": specials})
    sot = tok.convert_tokens_to_ids(SOT)
    if tok.convert_tokens_to_ids(specials) != list(range(sot, sot + len(specials))):
        raise RuntimeError("Whisper's special tokens did not get consecutive ids")
    return tok


def special_ids(tokenizer) -> dict:
    """Whisper's start/end/pad token ids, as both ``WhisperConfig`` and ``GenerationConfig``
    take them."""
    sot, eot = tokenizer.convert_tokens_to_ids([SOT, EOT])
    return {
        "decoder_start_token_id": sot,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
    }


def generation_config_for(tokenizer, max_length: int):
    """A GenerationConfig carrying what ``WhisperForConditionalGeneration.generate`` needs for
    ``language=`` / ``task=`` (``lang_to_id``, ``task_to_id``, ``no_timestamps_token_id``)."""
    # deferred: transformers takes seconds to import; only model work needs it
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    lang_to_id = {
        t: i
        for t, i in sorted(tokenizer.get_added_vocab().items(), key=lambda kv: kv[1])
        if re.fullmatch(r"<\|[a-z]{2,3}\|>", t)
    }
    eot = ids(EOT)
    return GenerationConfig(
        **special_ids(tokenizer),
        max_length=max_length,
        lang_to_id=lang_to_id,
        task_to_id={"transcribe": ids(TRANSCRIBE), "translate": ids(TRANSLATE)},
        no_timestamps_token_id=ids(NO_TIMESTAMPS),
        is_multilingual=True,
        begin_suppress_tokens=[eot],
        suppress_tokens=[],
        return_timestamps=False,
    )


def build_synthetic_base(tokenizer, arch: dict, chunk_seconds: int, seed: int):
    """A small, randomly initialised Whisper-architecture model and its processor.

    Input frames = 2 × ``max_source_positions`` (Whisper's stride-2 conv front end), so
    ``max_source_positions = 50 × chunk_seconds`` at Whisper's 10 ms hop.
    """
    # deferred: transformers takes seconds to import; only model work needs it
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=arch["num_mel_bins"],
        d_model=arch["d_model"],
        encoder_layers=arch["encoder_layers"],
        decoder_layers=arch["decoder_layers"],
        encoder_attention_heads=arch["attention_heads"],
        decoder_attention_heads=arch["attention_heads"],
        encoder_ffn_dim=arch["ffn_dim"],
        decoder_ffn_dim=arch["ffn_dim"],
        max_source_positions=50 * chunk_seconds,
        max_target_positions=arch["max_target_positions"],
        **special_ids(tokenizer),
        dropout=arch.get("dropout", 0.0),
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    model = WhisperForConditionalGeneration(config)
    model.generation_config = generation_config_for(tokenizer, arch["max_target_positions"])
    fe = WhisperFeatureExtractor(
        feature_size=arch["num_mel_bins"], sampling_rate=16_000, chunk_length=chunk_seconds
    )
    processor = WhisperProcessor(feature_extractor=fe, tokenizer=tokenizer)
    return model, processor


def load_processor(name_or_path: str):
    """A Whisper model's processor (feature extractor + tokenizer) by Hub name or path; a
    path is checked first (a model dir, not damaged)."""
    # deferred: transformers takes seconds to import; only model work needs it
    from transformers import WhisperProcessor

    path = Path(name_or_path)
    if path.exists() and not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a Hugging Face model dir (no config.json)")
    if path.is_dir():
        check_folder(path)
    return WhisperProcessor.from_pretrained(name_or_path)


def load_pretrained(name_or_path: str, device: str | None = None):
    """Load a Whisper model + processor by Hub name (e.g. ``openai/whisper-small``) or path."""
    # deferred: transformers takes seconds to import; only model work needs it
    from transformers import WhisperForConditionalGeneration

    processor = load_processor(name_or_path)
    try:  # PyTorch's fused scaled-dot-product attention (flash / memory-efficient on GPUs)
        model = WhisperForConditionalGeneration.from_pretrained(
            name_or_path, attn_implementation="sdpa"
        )
    except (ValueError, ImportError):  # a transformers or torch build without SDPA support
        model = WhisperForConditionalGeneration.from_pretrained(name_or_path)
    if device:
        model.to(device)
    return model, processor


def save_model_dir(model, processor, out_dir: str | Path) -> None:
    """Save model + processor + generation config atomically (temp dir, then rename), so an
    interrupted job never leaves a model dir Snakemake would take as complete."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)


def select_device(preference: str = "auto") -> str:
    """``auto`` picks CUDA, then Apple MPS, then CPU."""

    if preference != "auto":
        return preference
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def autocast_dtype(device: str):
    """bf16 where the GPU supports it, fp16 on other CUDA GPUs, none (fp32) on CPU."""

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def decode_dtype(device: str):
    """float16 weights and activations for decoding on CUDA (half the memory of beam
    search's caches); None (float32) elsewhere."""

    return torch.float16 if device.startswith("cuda") else None


def configure_cuda(device: str) -> bool:
    """On CUDA, let float32 matmuls and convolutions use TF32 tensor cores (Ampere and
    later; autocast covers most of the compute anyway). Returns whether it did."""

    if not device.startswith("cuda"):
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True

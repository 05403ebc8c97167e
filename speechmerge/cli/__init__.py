"""Command-line interface: ``speechmerge`` / ``python -m speechmerge COMMAND``.

Commands: ``merge``, ``compress``, ``decompress``, ``methods``, ``convert-ct2``, ``export-ct2``,
``verify``, ``results-md``, ``card``. ``merge`` takes Hugging Face Whisper model directories
(the base and the fine-tuned models), computes the task vectors τ_i = θ_i − θ_0 into a temporary
directory (streaming, one tensor at a time), merges them with any registered method and writes
a Hugging Face model directory (weights + the base's config, generation config, tokenizer and
processor files) that ``WhisperForConditionalGeneration.from_pretrained`` loads directly.
``compress`` writes a compressed LoRS task vector (:mod:`speechmerge.compress`).

Layout: :mod:`.parser` (the options), :mod:`.params` (checking the method parameters),
:mod:`.commands` (what each command does).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..io.atomic import terminate_on_sigterm
from .commands import run
from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with terminate_on_sigterm():  # clean-ups (temp outputs) run on SIGTERM as on Ctrl-C
        return run(args)

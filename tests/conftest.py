"""Shared test helpers."""

import pytest
from hypothesis import settings

# On a shared, oversubscribed CPU a single example can exceed Hypothesis' 200 ms deadline
# for reasons unrelated to the code under test: `pytest --hypothesis-profile=no-deadline`.
settings.register_profile("no-deadline", deadline=None)

#: The smallest Whisper architecture the library's base builder accepts; shared by the tests
#: that need a real (tiny) WhisperForConditionalGeneration.
ARCH_TINY = {
    "num_mel_bins": 80,
    "d_model": 16,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "attention_heads": 2,
    "ffn_dim": 32,
    "max_target_positions": 16,
}


@pytest.fixture
def arch_tiny() -> dict:
    return dict(ARCH_TINY)


def reversed_keys(value):
    """The same config with every mapping's keys in reverse order (for rerun checks)."""
    if isinstance(value, dict):
        return {k: reversed_keys(v) for k, v in reversed(list(value.items()))}
    if isinstance(value, list):
        return [reversed_keys(v) for v in value]
    return value

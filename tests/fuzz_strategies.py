"""Hypothesis strategies for malformed and edge-case multimodal inputs (shared by the processor and pipeline fuzzers)."""

from __future__ import annotations

import io

import numpy as np
import soundfile
from hypothesis import strategies as st
from PIL import Image


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _wav_bytes(samples: np.ndarray, sampling_rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sampling_rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


GOOD_PNG = _png_bytes(Image.new("RGB", (12, 10), (200, 30, 30)))
GOOD_WAV = _wav_bytes(np.sin(np.linspace(0, 200, 4000)).astype(np.float32), 8000)

plausible_texts = st.one_of(st.text(max_size=40), st.sampled_from(["seven", "a red dress", "Großes Haus 🙂"]))
bad_texts = st.one_of(
    st.sampled_from(["", " ", "\t\n", "\u200b", "word " * 400, "é" * 1000, "🙂" * 50]),
    st.binary(max_size=20),  # bytes, often not UTF-8
    st.integers(),
    st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)

_image_modes = st.sampled_from(["RGB", "L", "LA", "RGBA", "P", "1", "I;16", "I", "F", "CMYK"])


@st.composite
def pil_images(draw) -> Image.Image:
    mode = draw(_image_modes)
    width = draw(st.sampled_from([1, 2, 7, 33, 300]))
    height = draw(st.sampled_from([1, 3, 16, 64, 2000]))
    return Image.new(mode, (width, height))


@st.composite
def image_arrays(draw) -> np.ndarray:
    shape = draw(
        st.sampled_from([(8, 8), (8, 8, 1), (8, 8, 3), (8, 8, 4), (3, 8, 8), (1, 1, 3), (0, 4, 3), (8, 8, 2),
                         (2, 8, 8, 3), (5,), ()])
    )
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_]))
    array = np.zeros(shape, dtype=dtype)
    fill = draw(st.sampled_from([0.0, 0.5, 1.0, 255.0, 65535.0, -3.0, np.nan, np.inf]))
    if array.size:
        with np.errstate(invalid="ignore", over="ignore"):
            array[...] = np.array(fill).astype(dtype) if dtype != np.bool_ else bool(fill == fill and fill)
    return array


corrupt_image_bytes = st.sampled_from(
    [GOOD_PNG, GOOD_PNG[: len(GOOD_PNG) // 2], b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, b"not an image", b""]
)

plausible_images = pil_images()
bad_images = st.one_of(image_arrays(), corrupt_image_bytes, st.text(max_size=10), st.integers())


ALL_WAVE_KINDS = ["normal", "nan", "inf", "silent", "loud", "stereo", "stereo_last", "many_channels", "int16",
                  "complex", "3d"]


@st.composite
def waveforms(draw, kinds: list[str] = ALL_WAVE_KINDS) -> np.ndarray:
    # plausible clips are at least 10 ms long at every rate drawn (shorter ones are refused: MIN_CLIP_SECONDS)
    length = draw(st.sampled_from([0, 1, 5, 160, 3000]) if kinds is ALL_WAVE_KINDS else st.sampled_from([400, 3000]))
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(length)
    wave = rng.standard_normal(length).astype(np.float32)
    if kind == "nan" and length:
        wave[length // 2] = np.nan
    elif kind == "inf" and length:
        wave[0] = np.inf
    elif kind == "silent":
        wave = np.zeros(length, dtype=np.float32)
    elif kind == "loud":
        wave = wave * 1e30
    elif kind == "stereo":
        wave = np.stack([wave, wave])
    elif kind == "stereo_last":
        wave = np.stack([wave, -wave], axis=1)
    elif kind == "many_channels":
        wave = np.tile(wave, (20, 1))
    elif kind == "int16":
        wave = (wave * 1000).astype(np.int16)
    elif kind == "complex":
        wave = wave.astype(np.complex64)
    elif kind == "3d":
        wave = wave.reshape(1, 1, -1)
    return wave


corrupt_wav_bytes = st.sampled_from([GOOD_WAV, GOOD_WAV[:30], GOOD_WAV[: len(GOOD_WAV) // 2], b"RIFF" + b"\x00" * 8,
                                     b"garbage", b""])

plausible_audios = waveforms(kinds=["normal", "silent", "loud", "stereo", "stereo_last", "int16"])
bad_audios = st.one_of(waveforms(), corrupt_wav_bytes, st.text(max_size=8), st.integers(),
                       st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5))
sampling_rates = st.one_of(
    st.just(16000), st.just(16000), st.none(), st.sampled_from([8000, 44100, 1, 0, -16000, True]), st.floats(),
    st.text(max_size=3),
)


MODALITY_STRATEGIES = {
    "text": (plausible_texts, bad_texts),
    "images": (plausible_images, bad_images),
    "audio": (plausible_audios, bad_audios),
}


ENTRY_NAMES = {"text": "text example {}", "images": "image {}", "audio": "audio example {}"}
"""How the processor names an entry of each argument in its errors."""


@st.composite
def batches(draw) -> tuple[dict, tuple[str, ...] | None]:
    """Keyword arguments for a processor call of 1-3 examples: plausible ones (some entries missing), ones with a
    malformed entry, or a malformed layout (a single bad value, ragged lengths); with, for a malformed entry, what an
    error must name (the entry, e.g. "image 2", or the sampling rate or the example left empty), else None."""
    size = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["plausible", "plausible", "malformed_entry", "malformed_entry", "layout"]))
    names = draw(st.lists(st.sampled_from(sorted(MODALITY_STRATEGIES)), min_size=1, max_size=3, unique=True))
    arguments = {}
    for name in names:
        plausible, bad = MODALITY_STRATEGIES[name]
        if kind == "layout":
            arguments[name] = draw(st.one_of(bad, st.lists(plausible, min_size=0, max_size=4)))
        else:
            arguments[name] = draw(st.lists(st.one_of(plausible, plausible, plausible, st.none()), min_size=size,
                                            max_size=size))
    names_the_problem = None
    if kind == "malformed_entry":
        name = draw(st.sampled_from(names))
        position = draw(st.integers(0, size - 1))
        arguments[name][position] = draw(MODALITY_STRATEGIES[name][1])
        names_the_problem = (ENTRY_NAMES[name].format(position), "sampling", "have no text, image or audio")
    arguments["sampling_rate"] = draw(sampling_rates)
    return arguments, names_the_problem

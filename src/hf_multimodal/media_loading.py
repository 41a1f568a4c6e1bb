"""Loading images and audio from what users and datasets hand over: paths, http(s) URLs, bytes, arrays, `datasets`
dicts. Audio is decoded with soundfile (no FFmpeg), only as far as it is kept, mixed down to mono and resampled;
images are decoded with Pillow and turned upright by their EXIF orientation, as transformers' `load_image` does.
Used by the pipeline and by the training data collator."""

from __future__ import annotations

import contextlib
import io
import math
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .feature_extraction_wavenet import check_sampling_rate, resample_audio, to_mono_float32


MAX_DOWNLOAD_BYTES = 200 * 2**20
DEFAULT_TIMEOUT = 10.0
# Images above this many pixels are refused before their pixels are decoded (a 140 KB PNG can hold 12000 x 12000
# zeros, 687 MiB once decoded); Pillow's own limit only warns below 179 MP. 64 MP keeps every phone photo's default.
MAX_IMAGE_PIXELS = 64_000_000


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _read_source(source: str | os.PathLike, what: str, timeout: float | None) -> bytes:
    """The bytes of a local file or an http(s) URL; ValueError naming the source when they cannot be read."""
    source = os.fspath(source)
    if _is_url(source):
        return _download(source, what, timeout or DEFAULT_TIMEOUT)
    with open(_existing_file(source, what), "rb") as file:
        return file.read()


def _download(url: str, what: str, timeout: float) -> bytes:
    """The body at `url`, within `timeout` seconds in all (urllib's own timeout bounds each read, so a server that
    trickles a byte at a time could hold a caller forever). The transfer runs in a daemon thread that stops at its
    next chunk once the caller has given up."""
    outcome: dict[str, Any] = {}
    given_up = threading.Event()

    def fetch() -> None:
        try:
            chunks, size = [], 0
            with urllib.request.urlopen(url, timeout=timeout) as response:
                while size <= MAX_DOWNLOAD_BYTES and not given_up.is_set():
                    chunk = response.read1(2**16)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
            outcome["data"] = b"".join(chunks)
        except (urllib.error.URLError, OSError, ValueError) as error:
            outcome["error"] = error

    thread = threading.Thread(target=fetch, name="hf_multimodal-download", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        given_up.set()
        raise ValueError(
            f"downloading the {what} from {url} took longer than timeout={timeout:g} s: pass a larger timeout=, or "
            "download the file first and pass its path or bytes."
        )
    if "error" in outcome:
        raise ValueError(f"could not download the {what} from {url}: {outcome['error']}.") from outcome["error"]
    if len(outcome["data"]) > MAX_DOWNLOAD_BYTES:
        raise ValueError(f"the {what} at {url} is larger than {MAX_DOWNLOAD_BYTES // 2**20} MiB.")
    return outcome["data"]


def _existing_file(source: str, what: str) -> str:
    if not os.path.isfile(source):
        raise ValueError(
            f"{what} file not found: {source!r}. Pass an existing file path, an http(s) URL, the file's bytes or "
            "decoded data."
        )
    return source


def _undecoded_dataset_value(value: dict, what: str) -> bytes | str:
    """The `{"bytes": ..., "path": ...}` form `datasets` gives for `Image(decode=False)` / `Audio(decode=False)`."""
    data, path = value.get("bytes"), value.get("path")
    if data is not None:
        return data
    if path is not None:
        return path
    raise ValueError(
        f"the {what} dict has neither 'bytes' nor 'path' set (both are None): set one of them"
        + (", or pass {'array': waveform, 'sampling_rate': rate}." if what == "audio" else ".")
    )


def load_image(image: Any, timeout: float | None = None) -> Image.Image | np.ndarray | torch.Tensor:
    """Decode one image given as a PIL image, numpy array, torch tensor, file path, http(s) URL, bytes or a
    `datasets` `{"bytes", "path"}` dict. Arrays and tensors are returned as they are (the processor checks them).

    Example:

    ```python
    >>> import io
    >>> from PIL import Image
    >>> buffer = io.BytesIO()
    >>> Image.new("RGB", (8, 6)).save(buffer, format="PNG")
    >>> load_image(buffer.getvalue()).size
    (8, 6)
    ```
    """
    if isinstance(image, dict):
        image = _undecoded_dataset_value(image, "image")
    if isinstance(image, Image.Image):
        return _decoded(image, "the PIL image")
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return image
    if isinstance(image, (str, os.PathLike)):
        source = os.fspath(image)
        return _decode_image_bytes(_read_source(source, "image", timeout), repr(source))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode_image_bytes(bytes(image), f"from {len(image)} bytes")
    raise TypeError(
        f"image is a {type(image).__name__}; expected a PIL image, numpy array, torch tensor, file path, http(s) URL, "
        "bytes or a {'bytes', 'path'} dict."
    )


def _decode_image_bytes(data: bytes, source: str) -> Image.Image:
    if not data:
        raise ValueError(f"image {source} is empty (0 bytes).")
    try:
        image = Image.open(io.BytesIO(data))
    except MemoryError:
        raise
    except Exception as error:  # PIL raises many types for corrupt or unknown data
        raise ValueError(
            f"could not decode image {source}: {error}. Pass a valid image file (PNG, JPEG, ...), a PIL image or an "
            "array."
        ) from error
    pixels = image.width * image.height  # known from the header, before any pixel is decoded
    if pixels > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"image {source} is {image.width}x{image.height} pixels, more than hf_multimodal's limit of "
            f"{MAX_IMAGE_PIXELS:,} ({pixels * len(image.getbands()) / 2**20:,.0f} MiB once decoded): resize it "
            "first, or raise hf_multimodal.media_loading.MAX_IMAGE_PIXELS for images you trust."
        )
    return _decoded(image, f"image {source}")


def _decoded(image: Image.Image, source: str) -> Image.Image:
    """Force PIL's lazy decoding now, so that truncated or corrupt data fails here with a clear error, and turn the
    image upright by its EXIF orientation (a phone photo stored sideways), as transformers' `load_image` does."""
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception as error:
        raise ValueError(f"could not decode {source}: {error}. The file is truncated or corrupt.") from error


def load_audio(
    audio: Any,
    sampling_rate: int | None = None,
    target_sampling_rate: int | None = None,
    timeout: float | None = None,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Decode one clip to a mono float32 waveform at `target_sampling_rate` (resampled when needed).

    With `max_seconds`, only the start of a longer clip is decoded, mixed down and resampled: its first `max_seconds`
    plus one second (a margin for the resampling filter, so the kept part equals that of the whole clip resampled).
    Memory and time then stay those of a short clip, however long the input.

    `audio` is a file path, an http(s) URL, the bytes of an audio file (WAV, FLAC, OGG: anything `soundfile`
    reads), a `{"array", "sampling_rate"}` (or `{"raw", "sampling_rate"}`) dict, a `datasets` `{"bytes", "path"}`
    dict, or a waveform (numpy array, torch tensor, list of floats) at `sampling_rate`.

    Example:

    ```python
    >>> import numpy as np
    >>> clip = {"array": np.zeros(8000, dtype=np.float32), "sampling_rate": 8000}
    >>> load_audio(clip, target_sampling_rate=16000).shape
    (16000,)
    ```
    """
    if isinstance(audio, dict):
        audio, sampling_rate = _audio_from_dict(audio, sampling_rate)
    file = _audio_file(audio, timeout)
    audio, sampling_rate = _decode_audio(*file, max_seconds) if file else _decoded_audio(audio, sampling_rate)
    sampling_rate = check_sampling_rate(sampling_rate)
    waveform = to_mono_float32(audio)
    if max_seconds is not None:
        waveform = waveform[: _samples_to_keep(max_seconds, sampling_rate)]
    if target_sampling_rate is None:
        return waveform
    return resample_audio(waveform, sampling_rate, target_sampling_rate)


def _audio_from_dict(audio: dict, sampling_rate: int | None) -> tuple[Any, int | None]:
    """A decoded waveform wins over a `path` beside it (older `datasets` decode to `{"path", "array",
    "sampling_rate"}`, and the file may since have moved or changed)."""
    keys = [key for key in ("array", "raw") if audio.get(key) is not None]
    if not keys and ("bytes" in audio or "path" in audio):
        return _undecoded_dataset_value(audio, "audio"), sampling_rate
    if len(keys) != 1 or audio.get("sampling_rate") is None or set(audio) - {*keys, "sampling_rate", "path", "bytes"}:
        raise ValueError(
            f"audio dict has keys {sorted(audio)}: expected {{'array', 'sampling_rate'}} (or 'raw' instead of "
            "'array'), or a datasets {'bytes', 'path'} dict."
        )
    return audio[keys[0]], audio["sampling_rate"]


def audio_duration(audio: Any, sampling_rate: int | None = None, timeout: float | None = None) -> float:
    """Seconds of one clip, given in any form `load_audio` takes: a file's are read from its header, without decoding
    it (a URL is downloaded first).

    Example:

    ```python
    >>> import numpy as np
    >>> audio_duration({"array": np.zeros(4000, dtype=np.float32), "sampling_rate": 8000})
    0.5
    ```
    """
    if isinstance(audio, dict):
        audio, sampling_rate = _audio_from_dict(audio, sampling_rate)
    file = _audio_file(audio, timeout)
    if file:
        with _sound_file(*file) as sound:
            return sound.frames / sound.samplerate
    waveform, sampling_rate = _decoded_audio(audio, sampling_rate)
    return to_mono_float32(waveform).shape[0] / check_sampling_rate(sampling_rate)


def _audio_file(audio: Any, timeout: float | None) -> tuple[bytes | bytearray | memoryview | str, str] | None:
    """A clip given as a path, an http(s) URL or a file's bytes: what soundfile reads (a local path, decoded from disk
    only as far as it is kept, or bytes; a download is bounded by MAX_DOWNLOAD_BYTES) and how errors name it; None for
    a clip in another form."""
    if isinstance(audio, (str, os.PathLike)):
        source = os.fspath(audio)
        if _is_url(source):
            return _download(source, "audio", timeout or DEFAULT_TIMEOUT), repr(source)
        return _existing_file(source, "audio"), repr(source)
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return audio, f"from {len(audio)} bytes"
    return None


def _decoded_audio(audio: Any, sampling_rate: int | None) -> tuple[Any, int]:
    """The samples and rate of a clip given decoded: a torchcodec `AudioDecoder` (as `datasets` 5 decodes `Audio()`
    columns) or a waveform at `sampling_rate`."""
    if hasattr(audio, "get_all_samples"):
        samples = audio.get_all_samples()
        return samples.data, samples.sample_rate
    if sampling_rate is None:
        raise ValueError(
            "audio is a raw waveform without a sampling rate: pass {'array': waveform, 'sampling_rate': rate}, or "
            "sampling_rate=rate to the pipeline call."
        )
    return audio, sampling_rate


def _samples_to_keep(max_seconds: float, sampling_rate: int) -> int:
    return int(math.ceil((max_seconds + 1.0) * sampling_rate))


def _decode_audio(data: bytes | bytearray | memoryview | str, source: str, max_seconds: float | None = None
                  ) -> tuple[np.ndarray, int]:
    """Decode a file's bytes or a local file's path with soundfile, reading only the frames that are kept."""
    with _sound_file(data, source) as sound:
        sampling_rate = sound.samplerate
        count = -1 if max_seconds is None else _samples_to_keep(max_seconds, sampling_rate)
        frames = sound.read(count, dtype="float32", always_2d=True)
    return frames.mean(axis=1), sampling_rate  # (frames, channels) -> mono


@contextlib.contextmanager
def _sound_file(data: bytes | bytearray | memoryview | str, source: str) -> Iterator[Any]:
    """A `soundfile.SoundFile` over a file's bytes or a local file's path; a failure to read it (an empty, corrupt,
    truncated or unknown file) raises a ValueError that names the clip."""
    is_path = isinstance(data, str)
    if (os.path.getsize(data) if is_path else len(data)) == 0:
        raise ValueError(f"audio {source} is empty (0 bytes).")
    try:
        import soundfile
    except ImportError as error:
        raise ImportError("decoding audio files needs soundfile: pip install soundfile") from error
    try:
        with soundfile.SoundFile(data if is_path else io.BytesIO(data)) as sound:
            yield sound
    except MemoryError:
        raise
    except Exception as error:  # libsndfile errors for corrupt, truncated or unknown formats
        raise ValueError(
            f"could not decode audio {source}: {error}. Pass a valid WAV / FLAC / OGG file or a waveform array."
        ) from error


__all__ = ["audio_duration", "load_audio", "load_image"]

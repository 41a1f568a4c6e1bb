"""media_loading: what the pipeline and the training collator decode, and the limits they keep."""

from __future__ import annotations

import http.server
import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import soundfile
from PIL import Image

from hf_multimodal import media_loading
from hf_multimodal.media_loading import audio_duration, load_audio, load_image


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims `width` x `height` (what a decompression bomb looks like before
    decoding: a few bytes that would inflate to gigabytes)."""
    data = bytearray(png(1, 1))
    header = struct.pack(">II", width, height) + bytes(data[24:29])  # width, height, then depth, colour, ...
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(data)


def test_images_above_the_pixel_limit_are_refused_before_decoding():
    with pytest.raises(ValueError, match=r"12000x12000 pixels.*MAX_IMAGE_PIXELS"):
        load_image(png_claiming_size(12000, 12000))
    assert load_image(png(4000, 3000)).size == (4000, 3000)  # 12 MP: a phone photo passes


def test_the_pixel_limit_can_be_raised_for_trusted_images(monkeypatch):
    monkeypatch.setattr(media_loading, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(ValueError, match="4x4 pixels"):
        load_image(png(4, 4))
    monkeypatch.setattr(media_loading, "MAX_IMAGE_PIXELS", 16)
    assert load_image(png(4, 4)).size == (4, 4)


def test_a_decoded_array_wins_over_the_path_beside_it(tmp_path):
    array = np.linspace(-0.5, 0.5, 800, dtype=np.float32)
    stale = tmp_path / "moved.wav"  # older `datasets` decode to {"path", "array", "sampling_rate"}
    for path in (str(stale), None):
        clip = load_audio({"path": path, "array": array, "sampling_rate": 8000})
        np.testing.assert_array_equal(clip, array)
    soundfile.write(stale, np.zeros(80, np.float32), 8000)
    np.testing.assert_array_equal(load_audio({"path": str(stale), "array": array, "sampling_rate": 8000}), array)


def test_a_dataset_dict_without_bytes_path_or_array_says_so():
    with pytest.raises(ValueError, match=r"neither 'bytes' nor 'path' set \(both are None\).*'array'"):
        load_audio({"path": None, "bytes": None})


def test_audio_paths_are_decoded_from_disk_only_as_far_as_kept(tmp_path, monkeypatch):
    rate = 8000
    clip = np.random.default_rng(0).uniform(-0.5, 0.5, rate * 5).astype(np.float32)
    path = tmp_path / "clip.wav"
    soundfile.write(path, clip, rate, subtype="FLOAT")

    def refuse(*args, **kwargs):
        raise AssertionError("a local audio file was read whole into memory")

    monkeypatch.setattr(media_loading, "_read_source", refuse)
    np.testing.assert_array_equal(load_audio(str(path), max_seconds=1.0), clip[: 2 * rate])  # 1 s + 1 s margin
    np.testing.assert_array_equal(load_audio(path), clip)


def test_missing_and_empty_audio_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="audio file not found: .*nowhere.wav"):
        load_audio(str(tmp_path / "nowhere.wav"))
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.wav' is empty \(0 bytes\)"):
        load_audio(str(tmp_path / "empty.wav"))


def test_audio_duration_reads_a_files_header_not_its_samples(tmp_path, monkeypatch):
    clip = np.zeros(12000, np.float32)
    path = tmp_path / "clip.wav"
    soundfile.write(path, clip, 8000)
    data = path.read_bytes()
    monkeypatch.setattr(soundfile.SoundFile, "read", lambda *args, **kwargs: pytest.fail("the samples were decoded"))
    for form in (str(path), path, data, {"bytes": data, "path": None}, {"bytes": None, "path": str(path)}):
        assert audio_duration(form) == 1.5
    assert audio_duration({"array": clip[:4000], "sampling_rate": 8000}) == 0.5
    assert audio_duration(clip, sampling_rate=16000) == 0.75
    with pytest.raises(ValueError, match="raw waveform without a sampling rate: pass .*'sampling_rate': rate"):
        audio_duration(clip)
    with pytest.raises(ValueError, match="could not decode audio from 4 bytes"):
        audio_duration(b"RIFF")


@pytest.fixture
def trickling_server():
    """An HTTP server that sends a WAV header, then one byte every 0.2 s for a minute."""

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(300):
                    self.wfile.write(b"R")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:  # the client went away
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/clip.wav"
    server.shutdown()


def test_a_trickling_download_fails_once_the_timeout_has_passed_in_all(trickling_server):
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"took longer than timeout=1 s: pass a larger timeout="):
        load_audio(trickling_server, timeout=1.0)
    # each read gets a byte well within the timeout, so a per-read timeout alone would wait the full minute
    assert time.monotonic() - started < 10

"""WaveNetFeatureExtractor: sampling-rate checks, mixdown, normalisation, truncation, padding, error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoFeatureExtractor

from hf_multimodal import WaveNetFeatureExtractor, resample_audio
from hf_multimodal.feature_extraction_wavenet import check_sampling_rate
from hf_multimodal.media_loading import load_audio


@pytest.fixture
def extractor() -> WaveNetFeatureExtractor:
    return WaveNetFeatureExtractor()


class TestWaveNetFeatureExtractor:
    def test_batch_is_padded_with_an_attention_mask(self, extractor):
        batch = extractor([np.ones(1600), np.ones(800)], sampling_rate=16000, return_tensors="pt")
        assert set(batch) == {"input_values", "attention_mask"}  # as transformers' audio feature extractors
        assert batch["input_values"].shape == (2, 1600) and batch["input_values"].dtype == torch.float32
        assert batch["attention_mask"].sum(-1).tolist() == [1600, 800]
        assert batch["input_values"][1, 800:].abs().max() == 0

    def test_wrong_sampling_rate_names_both_rates(self, extractor):
        with pytest.raises(ValueError, match="expected sampling rate 16000, got 44100: resample"):
            extractor(np.zeros(100), sampling_rate=44100)

    def test_normalisation_uses_real_samples_only(self, extractor):
        rng = np.random.default_rng(0)
        clip = rng.normal(3.0, 2.0, 4000)
        values = extractor([clip, np.ones(8000)], sampling_rate=16000)["input_values"][0, :4000]
        assert abs(values.mean()) < 1e-4 and abs(values.std() - 1.0) < 1e-3

    def test_normalisation_can_be_disabled(self):
        values = WaveNetFeatureExtractor(do_normalize=False)(np.full(400, 0.25), sampling_rate=16000)["input_values"]
        np.testing.assert_allclose(values, 0.25)

    @pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
    def test_stereo_is_mixed_down(self, extractor, layout):
        left, right = np.linspace(-1, 1, 1000), np.linspace(1, -1, 1000) * 0.5
        stereo = np.stack([left, right]) if layout == "channels_first" else np.stack([left, right], axis=1)
        mono = WaveNetFeatureExtractor(do_normalize=False)(stereo, sampling_rate=16000)["input_values"][0]
        np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-6)

    def test_integer_pcm_is_scaled_to_unit_range(self):
        pcm = np.tile(np.array([-32768, 0, 16384], dtype=np.int16), 100)
        values = WaveNetFeatureExtractor(do_normalize=False)(pcm, sampling_rate=16000)["input_values"][0]
        np.testing.assert_allclose(values[:3], [-1.0, 0.0, 0.5])

    def test_long_audio_is_truncated_to_max_length_seconds(self, extractor):
        batch = extractor(np.ones(16000 * 3), sampling_rate=16000, max_length_seconds=1.5)
        assert batch["input_values"].shape == (1, 24000)

    def test_padding_to_max_length(self):
        extractor = WaveNetFeatureExtractor(max_length_seconds=0.5)
        batch = extractor([np.ones(400)], sampling_rate=16000, padding="max_length", return_tensors="np")
        assert batch["input_values"].shape == (1, 8000)

    @pytest.mark.parametrize(
        ("audio", "error", "message"),
        [
            (np.zeros(0), ValueError, "audio example 0 is empty"),
            ([np.ones(400), np.array([0.0, np.nan])], ValueError, "audio example 1 contains NaN or infinite"),
            ([np.ones(400), np.ones(1)], ValueError, "audio example 1 is 1 sample long (0.062 ms at 16000 Hz)"),
            (np.ones(159), ValueError, "clips shorter than 10 ms hold no sound"),
            (np.array([1.0, np.inf]), ValueError, "NaN or infinite"),
            (np.zeros((20, 30)), ValueError, "cannot tell channels from samples"),
            (np.zeros((2, 20, 30)), ValueError, "audio example 0 has shape (20, 30): cannot tell channels"),
            (np.float32(0.5), TypeError, "a list of waveforms, got float32"),
            ("clip.wav", TypeError, "decode files first"),
            ([], ValueError, "audio is an empty list"),
            (np.array(["a", "b"]), TypeError, "must hold numbers"),
            (np.array([1 + 2j]), TypeError, "complex-valued"),
        ],
    )
    def test_bad_audio_names_the_problem(self, extractor, audio, error, message):
        with pytest.raises(error) as raised:
            extractor(audio, sampling_rate=16000)
        assert message in str(raised.value)

    def test_round_trip_through_auto_feature_extractor(self, tmp_path):
        WaveNetFeatureExtractor(max_length_seconds=4.0, do_normalize=False).save_pretrained(tmp_path)
        loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
        assert isinstance(loaded, WaveNetFeatureExtractor)
        assert loaded.max_length_seconds == 4.0 and loaded.do_normalize is False


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("up", "down"), [(2, 1), (147, 160), (10, 11), (91, 100), (1, 1), (4, 2)])
def test_resample_polyphase_is_resample_poly_with_its_filter_designed_once(up, down, dtype):
    from scipy.signal import resample_poly

    from hf_multimodal.feature_extraction_wavenet import _polyphase_filter, resample_polyphase

    waveform = np.random.default_rng(0).standard_normal(3001).astype(dtype)
    expected = resample_poly(waveform, up, down)
    designed = _polyphase_filter.cache_info().misses
    for _ in range(2):
        resampled = resample_polyphase(waveform, up, down)
        assert resampled.dtype == expected.dtype and np.array_equal(resampled, expected)
    assert _polyphase_filter.cache_info().misses <= designed + 1  # the second call reuses the filter


def test_resample_audio_keeps_duration_and_pitch():
    rate = 8000
    tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
    resampled = resample_audio(tone, rate, 16000)
    assert resampled.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(resampled))
    assert abs(np.argmax(spectrum) * 16000 / len(resampled) - 440) < 2


@pytest.mark.parametrize("rate", [0, -8000, 8000.5, True, "8000", 999, 400_000])
def test_one_sampling_rate_check_everywhere(rate):
    """The feature extractor, resample_audio and the pipeline's loaders refuse the same rates with the same words."""
    message = "must be a whole number of Hz between 1000 and 384000"
    with pytest.raises(ValueError, match=f"orig_sampling_rate {message}"):
        resample_audio(np.zeros(10), rate, 16000)
    with pytest.raises(ValueError, match=f"sampling_rate {message}"):
        WaveNetFeatureExtractor()(np.zeros(10), sampling_rate=rate)
    with pytest.raises(ValueError, match=f"sampling_rate {message}"):
        load_audio({"array": np.zeros(10), "sampling_rate": rate}, target_sampling_rate=16000)
    assert check_sampling_rate(16000.0) == 16000

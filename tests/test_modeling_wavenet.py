"""WaveNetModel: shapes, frame rate, causal padding invariance, gated dilated stacks, checkpointing, save / load."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from hf_multimodal import WaveNetConfig, WaveNetModel
from hf_multimodal.modeling_wavenet import WaveNetCausalConv1d

from conftest import TINY_AUDIO


def tiny_wavenet(**kwargs) -> WaveNetModel:
    torch.manual_seed(0)
    return WaveNetModel(WaveNetConfig(**{**TINY_AUDIO, **kwargs})).eval()


class TestWaveNetModel:
    def test_output_shapes_and_frame_rate(self):
        model = tiny_wavenet()
        outputs = model(torch.randn(3, 16000), output_hidden_states=True)
        assert outputs.last_hidden_state.shape == (3, 100, 32)
        assert outputs.pooler_output.shape == (3, 32)
        # front-end output + one residual stream per dilated layer
        assert len(outputs.hidden_states) == 1 + 2 * 2

    def test_length_not_a_multiple_of_the_frame_is_padded_up(self):
        model = tiny_wavenet()
        assert model(torch.randn(1, 16001)).last_hidden_state.shape[1] == 101
        assert model(torch.randn(1, 7)).last_hidden_state.shape[1] == 1

    def test_dilations_cycle_per_stack(self):
        model = tiny_wavenet(num_stacks=3, layers_per_stack=4)
        dilations = [layer.dilated_conv.dilation[0] for layer in model.layers]
        assert dilations == [1, 2, 4, 8] * 3

    def test_convolutions_are_causal(self):
        conv = WaveNetCausalConv1d(1, 1, kernel_size=3, dilation=4)
        signal = torch.zeros(1, 1, 50)
        signal[..., 30] = 1.0
        response = conv(signal)[0, 0] - conv(torch.zeros(1, 1, 50))[0, 0]
        assert response[:30].abs().max() == 0  # nothing before the impulse reacts to it
        assert response[30:].abs().max() > 0

    @pytest.mark.parametrize("frontend, sampling_rate", [("waveform", 16000), ("log_mel", 16000), ("log_mel", 8000)])
    def test_padding_does_not_change_real_frames_or_pooling(self, frontend, sampling_rate):
        model = tiny_wavenet(frontend=frontend, sampling_rate=sampling_rate)
        real = torch.randn(1, 5000)
        alone = model(real, attention_mask=torch.ones_like(real, dtype=torch.long))
        padded = torch.cat([real, torch.zeros(1, 11000)], dim=1)
        mask = torch.zeros_like(padded, dtype=torch.long)
        mask[:, :5000] = 1
        batched = model(padded, attention_mask=mask)
        frames = alone.last_hidden_state.shape[1]
        torch.testing.assert_close(batched.last_hidden_state[:, :frames], alone.last_hidden_state, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched.pooler_output, alone.pooler_output, atol=1e-5, rtol=1e-4)

    def test_returned_hidden_states_are_on_the_gradient_path(self):
        """They are the tensors each layer reads, not copies made for the output (which would take no gradient)."""
        model = WaveNetModel(WaveNetConfig(**TINY_AUDIO))
        outputs = model(torch.randn(2, 1600), output_hidden_states=True)
        assert len(outputs.hidden_states) == TINY_AUDIO["num_stacks"] * TINY_AUDIO["layers_per_stack"] + 1
        for state in outputs.hidden_states:
            state.retain_grad()
        outputs.pooler_output.sum().backward()
        assert all(state.grad is not None and state.grad.abs().sum() > 0 for state in outputs.hidden_states[:-1])

    def test_stereo_input_is_refused_with_a_fix(self):
        with pytest.raises(ValueError, match="mix channels down first"):
            tiny_wavenet()(torch.randn(2, 2, 1600))

    def test_gradient_checkpointing_gives_the_same_gradients(self):
        model = tiny_wavenet(hidden_dropout=0.0).train()
        audio = torch.randn(2, 3200)
        model(audio).pooler_output.sum().backward()
        reference = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        model.gradient_checkpointing_enable()
        assert all(layer.gradient_checkpointing for layer in model.layers)
        model(audio).pooler_output.sum().backward()
        for expected, parameter in zip(reference, model.parameters()):
            torch.testing.assert_close(parameter.grad, expected)

    def test_save_and_auto_load(self, tmp_path):
        model = tiny_wavenet()
        model.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").exists()
        loaded = AutoModel.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, WaveNetModel)
        audio = torch.randn(1, 4000)
        torch.testing.assert_close(loaded(audio).pooler_output, model(audio).pooler_output)


class TestLogMelFrontend:
    def test_a_bfloat16_model_computes_its_features_in_float32(self):
        """torch's FFT takes no bfloat16: the spectrum is computed in float32, the learned layers in bfloat16."""
        model = tiny_wavenet(frontend="log_mel")
        waveforms = torch.randn(2, 8000)
        expected = model(waveforms).pooler_output
        pooled = model.to(torch.bfloat16)(waveforms).pooler_output
        assert pooled.dtype == torch.bfloat16
        torch.testing.assert_close(pooled.float(), expected, atol=0.1, rtol=0.05)

    def test_frames_follow_the_hop_at_any_rate(self):
        for rate in (8000, 16000):
            model = tiny_wavenet(frontend="log_mel", sampling_rate=rate)
            assert model.config.samples_per_frame == rate // 100 and model.config.window_length == rate // 40
            assert model(torch.randn(2, rate)).last_hidden_state.shape == (2, 100, 32)

    def test_loudness_and_a_constant_channel_do_not_change_the_output(self):
        """Normalising each mel bin over the clip's frames removes the gain and a fixed channel filter."""
        model = tiny_wavenet(frontend="log_mel", sampling_rate=8000)
        speech = torch.randn(1, 8000) * torch.linspace(0.1, 1.0, 8000)
        louder = model(10.0 * speech).pooler_output
        torch.testing.assert_close(louder, model(speech).pooler_output, atol=1e-4, rtol=1e-3)

    def test_mel_filters_are_rebuilt_not_saved(self, tmp_path):
        model = tiny_wavenet(frontend="log_mel", sampling_rate=8000)
        assert not any("mel_filters" in name or "window" in name for name in model.state_dict())
        model.save_pretrained(tmp_path)
        loaded = AutoModel.from_pretrained(tmp_path).eval()
        audio = torch.randn(1, 4000)
        torch.testing.assert_close(loaded(audio).pooler_output, model(audio).pooler_output)

    def test_bad_settings_are_refused(self):
        with pytest.raises(ValueError, match="frontend must be one of waveform, log_mel"):
            WaveNetConfig(frontend="mfcc")
        with pytest.raises(ValueError, match="hop_ms .* at most window_ms"):
            WaveNetConfig(frontend="log_mel", hop_ms=40.0, window_ms=25.0)


def test_old_audio_attention_mask_name_still_works_with_a_warning():
    model = tiny_wavenet()
    audio, mask = torch.randn(1, 3200), torch.ones(1, 3200, dtype=torch.long)
    with pytest.warns(FutureWarning, match="attention_mask"):
        old = model(audio, audio_attention_mask=mask).pooler_output
    torch.testing.assert_close(old, model(audio, attention_mask=mask).pooler_output)

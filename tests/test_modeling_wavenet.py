"""WaveNetModel: shapes, frame rate, causal padding invariance, gated dilated stacks, checkpointing, save / load."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hf_multimodal import WaveNetConfig, WaveNetModel
from hf_multimodal.modeling_wavenet import WaveNetCausalConv1d, warp_frequency_axis

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

    @pytest.mark.parametrize(
        "frontend, sampling_rate",
        [
            ("waveform", 16000),
            ("log_mel", 16000),
            ("log_mel", 8000),
            ("mfcc", 8000),
            ("speech_embedding", 8000),
            ("speech_embedding", 16000),
        ],
    )
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
        with pytest.raises(ValueError, match="frontend must be one of waveform, log_mel, mfcc"):
            WaveNetConfig(frontend="plp")
        with pytest.raises(ValueError, match="hop_ms .* at most window_ms"):
            WaveNetConfig(frontend="log_mel", hop_ms=40.0, window_ms=25.0)
        with pytest.raises(ValueError, match="pooling must be one of mean, mean_std"):
            WaveNetConfig(pooling="max")
        with pytest.raises(ValueError, match="need frontend='log_mel'"):
            WaveNetConfig(mask_time_prob=0.2)
        with pytest.raises(ValueError, match=r"mask_feature_prob must be in \[0, 1\)"):
            WaveNetConfig(frontend="log_mel", mask_feature_prob=1.5)
        with pytest.raises(ValueError, match=r"mask_feature_length \(50\) must be at most num_mel_bins \(40\)"):
            WaveNetConfig(frontend="log_mel", mask_feature_length=50)
        with pytest.raises(ValueError, match=r"num_mfcc \(30\) must be at most num_mel_bins \(24\)"):
            WaveNetConfig(frontend="mfcc", num_mfcc=30, num_mel_bins=24)
        with pytest.raises(ValueError, match="inference_frequency_warps stretches a spectrum: it needs frontend="):
            WaveNetConfig(inference_frequency_warps=[0.9, 1.0])
        with pytest.raises(ValueError, match=r"numbers in \[0.5, 2.0\] .* got 3.0 in \[1.0, 3.0\]"):
            WaveNetConfig(frontend="mfcc", inference_frequency_warps=[1.0, 3.0])


class TestSpeechEmbeddingFrontend:
    def test_a_frame_every_80_ms_each_reading_the_775_ms_that_end_with_it(self):
        for rate in (8000, 16000):
            model = tiny_wavenet(frontend="speech_embedding", sampling_rate=rate)
            assert model.config.samples_per_frame == 8 * rate // 100
            assert model.frontend.receptive_field() == 76 and model.frontend.context_frames == 68
            assert model(torch.randn(2, rate)).last_hidden_state.shape == (2, 13, 32)  # ceil(1 s / 80 ms)
        # output frame j reads mel frames 8j .. 8j + 75 (the first 68 are the silence of the left context): a change
        # from mel frame 68 + 40 on leaves frames 0-4 as they were and changes frame 5, whose 80 ms hold it
        stack = model.frontend.feature_encoder
        mel = torch.randn(1, 1, 68 + 104, 32)
        changed = mel.clone()
        changed[:, :, 68 + 40 :] += 1.0
        before, after = stack(mel)[0, :, :, 0], stack(changed)[0, :, :, 0]
        assert before.shape == (96, 13)
        torch.testing.assert_close(after[:, :5], before[:, :5])
        assert not torch.allclose(after[:, 5], before[:, 5])

    @pytest.mark.parametrize("trainable_top_blocks", [None, 2])
    def test_the_stack_over_a_few_context_frames_computes_what_it_computes_over_all_68(self, trainable_top_blocks):
        """`feature_encoder_outputs` materialises only the silent columns each layer's outputs read: outputs and
        weight gradients equal those of `feature_encoder` run over the whole context, at lengths that put the clip
        at every offset of the stack's three time poolings."""
        frontend = tiny_wavenet(frontend="speech_embedding", sampling_rate=8000).train().frontend
        if trainable_top_blocks is not None:
            for block in frontend.feature_encoder_blocks()[:-trainable_top_blocks]:
                block.requires_grad_(False)
        def gradients(outputs: torch.Tensor) -> dict[str, torch.Tensor]:
            outputs.square().sum().backward()
            named = frontend.feature_encoder.named_parameters()
            grads = {name: p.grad.clone() for name, p in named if p.grad is not None}
            frontend.zero_grad(set_to_none=True)
            return grads

        learning = [name for name, p in frontend.feature_encoder.named_parameters() if p.requires_grad]
        assert len(learning) == (18 if trainable_top_blocks else 40)
        for samples in (640, 1280, 1920, 3200, 3840, 8000):
            waveforms = torch.randn(2, samples)
            full = frontend.feature_encoder(frontend.log_mel(waveforms, None).unsqueeze(1)).squeeze(-1).transpose(1, 2)
            compact = frontend.feature_encoder_outputs(waveforms)
            assert compact.shape == full.shape == (2, samples // 640, 96)
            torch.testing.assert_close(compact, full, rtol=1e-4, atol=1e-4)
            expected, given = gradients(full), gradients(compact)
            assert list(given) == list(expected) == learning
            for name, gradient in expected.items():
                torch.testing.assert_close(given[name], gradient, rtol=1e-3, atol=1e-3)

    @pytest.mark.parametrize("blocks", [1, 2, 3, 4])
    def test_the_output_of_the_lower_blocks_stands_for_the_waveforms(self, blocks):
        """`compute_feature_encoder_outputs(blocks=N)`, each clip's columns past its real ones zeroed as a cache holds
        them, fed back with the mask of its real columns: the blocks above run on it and give the encoder's real
        frames, pooled output and frame mask of the waveforms, and the learning top blocks the same gradients."""
        model = tiny_wavenet(frontend="speech_embedding", sampling_rate=8000)
        model.freeze_feature_encoder(trainable_top_blocks=5 - blocks)
        attention_mask = torch.ones(3, 4000, dtype=torch.long)
        attention_mask[1, 2500:] = 0
        attention_mask[2, 1100:] = 0
        waveforms = torch.randn(3, 4000) * attention_mask
        outputs, mask = model.compute_feature_encoder_outputs(waveforms, attention_mask, blocks=blocks)
        assert outputs.shape[2:] == model.frontend.block_output_shapes()[blocks - 1]
        frames = model._get_feature_vector_attention_mask(7, attention_mask).bool()  # 80 ms frames (640 samples)
        assert frames.sum(-1).tolist() == [7, 4, 2]
        assert mask.sum(-1).tolist() == model.frontend.output_columns(
            1 + 8 * frames.sum(-1), 0, model.frontend.blocks_end(blocks)
        ).tolist()  # a frame is 8 mel columns, after one silent column
        stored = outputs * mask[:, :, None, None]
        assert torch.equal(model.feature_encoder_frame_mask(stored, mask), frames)

        def run(**inputs) -> tuple[BaseModelOutputWithPooling, dict[str, torch.Tensor]]:
            output = model(**inputs)
            output.pooler_output.square().sum().backward()
            named = model.frontend.feature_encoder.named_parameters()
            grads = {name: p.grad.clone() for name, p in named if p.grad is not None}
            model.zero_grad(set_to_none=True)
            return output, grads

        expected, expected_grads = run(input_values=waveforms, attention_mask=attention_mask)
        given, given_grads = run(feature_encoder_outputs=stored, attention_mask=mask)
        torch.testing.assert_close(given.pooler_output, expected.pooler_output, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            given.last_hidden_state[frames], expected.last_hidden_state[frames], rtol=1e-4, atol=1e-5
        )
        assert list(given_grads) == list(expected_grads) and expected_grads  # the top blocks' weights only
        for name, gradient in expected_grads.items():
            torch.testing.assert_close(given_grads[name], gradient, rtol=1e-3, atol=1e-4)

    def test_lower_blocks_out_of_range_or_of_another_shape_are_refused(self):
        model = tiny_wavenet(frontend="speech_embedding", sampling_rate=8000)
        for blocks in (0, 6):
            with pytest.raises(ValueError, match="blocks must be between 1 and 5"):
                model.compute_feature_encoder_outputs(torch.randn(1, 800), blocks=blocks)
        with pytest.raises(ValueError, match=r"\(channels, mel bands\) one of \[\(24, 16\)"):
            model(feature_encoder_outputs=torch.randn(1, 9, 72, 8))

    def test_8_khz_audio_reads_as_the_same_clip_upsampled_to_16_khz(self):
        from scipy.signal import resample_poly

        clip = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
        clip *= np.hanning(8000).astype(np.float32)
        at_8k = tiny_wavenet(frontend="speech_embedding", sampling_rate=8000).frontend
        at_16k = tiny_wavenet(frontend="speech_embedding", sampling_rate=16000).frontend
        low = at_8k.log_mel(torch.from_numpy(clip)[None], None)
        high = at_16k.log_mel(torch.from_numpy(resample_poly(clip, 2, 1).astype(np.float32))[None], None)
        assert low.shape == high.shape == (1, 68 + 100, 32)
        assert (low - high)[:, 68:].abs().mean() < 0.02  # in units of 10 dB

    def test_the_clip_level_does_not_change_the_output(self):
        model = tiny_wavenet(frontend="speech_embedding", sampling_rate=8000)
        speech = torch.randn(1, 8000) * torch.linspace(0.1, 1.0, 8000)
        torch.testing.assert_close(model(30.0 * speech).pooler_output, model(speech).pooler_output)

    def test_freeze_feature_encoder_keeps_the_stack_and_trains_the_rest(self):
        model = tiny_wavenet(frontend="speech_embedding", sampling_rate=8000).train()
        model.freeze_feature_encoder()
        model(torch.randn(2, 8000)).pooler_output.sum().backward()
        assert all(p.grad is None and not p.requires_grad for p in model.frontend.feature_encoder.parameters())
        assert model.frontend.projection.weight.grad is not None and model.layers[0].dilated_conv.weight.grad is not None
        with pytest.raises(ValueError, match="only 'speech_embedding' has one.*--freeze_modalities audio"):
            tiny_wavenet(frontend="mfcc").freeze_feature_encoder()

    def test_freeze_feature_encoder_can_keep_the_top_blocks_learning(self):
        model = tiny_wavenet(frontend="speech_embedding", sampling_rate=8000).train()
        blocks = model.frontend.feature_encoder_blocks()
        assert len(blocks) == 5 and sum(len(block) for block in blocks) == len(model.frontend.feature_encoder)
        assert isinstance(blocks[0][-1], torch.nn.MaxPool2d) and isinstance(blocks[-1][-1], torch.nn.Conv2d)
        model.freeze_feature_encoder(trainable_top_blocks=2)
        model(torch.randn(2, 8000)).pooler_output.sum().backward()
        for index, block in enumerate(blocks):
            learns = index >= 3
            assert all(p.requires_grad == learns and (p.grad is not None) == learns for p in block.parameters())
        for bad in (-1, 5):
            with pytest.raises(ValueError, match=f"trainable_top_blocks must be between 0 and 4 .*got {bad}"):
                model.freeze_feature_encoder(trainable_top_blocks=bad)

    def test_the_stack_outputs_computed_once_stand_for_the_waveforms_in_training(self):
        model = tiny_wavenet(frontend="speech_embedding", sampling_rate=8000)
        model.freeze_feature_encoder()
        waveforms = torch.randn(3, 9000)
        attention_mask = torch.ones(3, 9000, dtype=torch.long)
        attention_mask[1, 5000:] = 0
        features, frame_mask = model.compute_feature_encoder_outputs(waveforms, attention_mask)
        assert features.shape == (3, 15, 96) and frame_mask.sum(dim=1).tolist() == [15, 8, 15]
        assert not features.requires_grad
        expected = model(waveforms, attention_mask=attention_mask)
        given = model(feature_encoder_outputs=features, attention_mask=frame_mask)
        torch.testing.assert_close(given.last_hidden_state, expected.last_hidden_state)
        torch.testing.assert_close(given.pooler_output, expected.pooler_output)
        model.train()  # the rest of the encoder learns from them
        model(feature_encoder_outputs=features, attention_mask=frame_mask).pooler_output.sum().backward()
        assert model.frontend.projection.weight.grad is not None
        assert model.layers[0].dilated_conv.weight.grad is not None

    def test_feature_encoder_outputs_are_refused_with_the_fix(self):
        model = tiny_wavenet(frontend="speech_embedding", sampling_rate=8000)
        features, _ = model.compute_feature_encoder_outputs(torch.randn(1, 8000))
        with pytest.raises(ValueError, match="either input_values .* or feature_encoder_outputs"):
            model(torch.randn(1, 8000), feature_encoder_outputs=features)
        with pytest.raises(ValueError, match="either input_values"):
            model()
        with pytest.raises(ValueError, match="frontend='mfcc' has no feature encoder.*Pass input_values"):
            tiny_wavenet(frontend="mfcc").compute_feature_encoder_outputs(torch.randn(1, 8000))

    def test_bad_settings_are_refused(self):
        with pytest.raises(ValueError, match="needs sampling_rate >= 7600, got 4000"):
            WaveNetConfig(frontend="speech_embedding", sampling_rate=4000)
        with pytest.raises(ValueError, match="needs frontend='log_mel' or 'mfcc'"):
            WaveNetConfig(frontend="speech_embedding", inference_frequency_warps=[0.9, 1.0])


class TestMfccFrontend:
    def test_features_are_the_orthonormal_dct_of_the_log_mel_frames(self):
        scipy_fft = pytest.importorskip("scipy.fft")
        frontend = tiny_wavenet(frontend="mfcc", sampling_rate=8000, num_mfcc=13).frontend
        log_mel = torch.randn(2, 7, 40)
        expected = scipy_fft.dct(log_mel.numpy(), type=2, norm="ortho", axis=-1)[..., :13]
        torch.testing.assert_close(frontend.frame_features(log_mel), torch.from_numpy(expected), atol=1e-5, rtol=1e-4)
        assert frontend.projection.in_features == 13

    def test_dct_is_rebuilt_not_saved(self, tmp_path):
        model = tiny_wavenet(frontend="mfcc", sampling_rate=8000)
        assert not any("dct" in name for name in model.state_dict())
        model.save_pretrained(tmp_path)
        loaded = AutoModel.from_pretrained(tmp_path).eval()
        audio = torch.randn(1, 4000)
        torch.testing.assert_close(loaded(audio).pooler_output, model(audio).pooler_output)

    def test_projection_starts_at_pytorch_default_initialisation(self):
        mfcc, log_mel = (
            tiny_wavenet(frontend=name, sampling_rate=8000).frontend.projection for name in ("mfcc", "log_mel")
        )
        bound = 1 / math.sqrt(mfcc.in_features)  # U(-bound, bound), standard deviation bound / sqrt(3), bias too
        assert mfcc.weight.abs().max() <= bound and mfcc.bias.abs().max() <= bound
        torch.testing.assert_close(mfcc.weight.std().item(), bound / math.sqrt(3), rtol=0.1, atol=0)
        assert mfcc.bias.std() > 0.3 * bound
        # the log-mel front-end keeps N(0, initializer_range) and a zero bias
        torch.testing.assert_close(log_mel.weight.std().item(), 0.02, rtol=0.1, atol=0)
        assert not log_mel.bias.any()


SPEC_AUGMENT = {"mask_time_prob": 0.3, "mask_time_length": 5, "mask_feature_prob": 0.3, "mask_feature_length": 4}


class TestSpecAugmentAndStatisticsPooling:
    def test_masks_zero_whole_spans_of_real_frames_and_of_mel_bins(self):
        frontend = tiny_wavenet(frontend="log_mel", sampling_rate=8000, **SPEC_AUGMENT).frontend
        features = torch.randn(4, 60, 40)
        frame_mask = torch.arange(60).unsqueeze(0) < torch.tensor([[60], [60], [60], [30]])
        np.random.seed(0)  # the spans are drawn as Wav2Vec2Model draws them, from numpy's generator
        masked = frontend.spec_augment(features, frame_mask)
        zero_frames = (masked == 0).all(dim=-1)
        zero_bins = (masked == 0).all(dim=1)
        assert zero_frames.any() and zero_bins.any()
        assert not zero_frames[3, 30:].any()  # padding frames are never chosen as time masks
        kept = ~zero_frames.unsqueeze(-1) & ~zero_bins.unsqueeze(1)
        torch.testing.assert_close(masked[kept], features[kept])
        assert zero_frames.float().mean() < 0.5 and zero_bins.float().mean() < 0.5

    def test_masking_happens_in_training_only(self):
        plain = tiny_wavenet(frontend="log_mel", sampling_rate=8000, hidden_dropout=0.0)
        masked = WaveNetModel(
            WaveNetConfig(**TINY_AUDIO, **SPEC_AUGMENT, frontend="log_mel", sampling_rate=8000, hidden_dropout=0.0)
        )
        masked.load_state_dict(plain.state_dict())
        audio = torch.randn(2, 8000)
        torch.testing.assert_close(masked.eval()(audio).pooler_output, plain(audio).pooler_output)
        torch.testing.assert_close(plain.train()(audio).pooler_output, plain.eval()(audio).pooler_output)
        assert not torch.allclose(masked.train()(audio).pooler_output, plain(audio).pooler_output)

    def test_configs_saved_before_the_options_load_with_identical_outputs(self, tmp_path):
        model = tiny_wavenet(frontend="log_mel", sampling_rate=8000)
        model.save_pretrained(tmp_path)
        saved = json.loads((tmp_path / "config.json").read_text())
        new_keys = (
            "pooling", "mask_time_prob", "mask_time_length", "mask_feature_prob", "mask_feature_length",
            "inference_frequency_warps",
        )
        (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k not in new_keys}))
        loaded = AutoModel.from_pretrained(tmp_path).eval()
        assert loaded.config.pooling == "mean" and loaded.config.mask_time_prob == 0.0
        audio = torch.randn(2, 4000)
        torch.testing.assert_close(loaded(audio).pooler_output, model(audio).pooler_output, rtol=0, atol=0)

    def test_statistics_pooling_keeps_the_hidden_size_and_ignores_padding(self):
        model = tiny_wavenet(frontend="log_mel", sampling_rate=8000, pooling="mean_std")
        real = torch.randn(1, 3000)
        alone = model(real).pooler_output
        padded = torch.cat([real, torch.zeros(1, 5000)], dim=1)
        mask = (torch.arange(8000) < 3000).long().unsqueeze(0)
        assert alone.shape == (1, TINY_AUDIO["hidden_size"])
        torch.testing.assert_close(model(padded, attention_mask=mask).pooler_output, alone, atol=1e-5, rtol=1e-4)
        with torch.no_grad():  # the standard deviation enters the pooled vector: without its weights it changes
            model.pooling_projection.weight[:, TINY_AUDIO["hidden_size"] :] = 0.0
        assert not torch.allclose(model(real).pooler_output, alone)


WARPS = [0.85, 1.0, 1.15]


class TestInferenceFrequencyWarps:
    def test_warped_filters_read_the_spectrum_stretched_by_the_factor(self):
        filters = tiny_wavenet(frontend="log_mel", sampling_rate=8000).frontend.mel_filters
        torch.testing.assert_close(warp_frequency_axis(filters, 1.0), filters)
        tone = torch.zeros(filters.shape[0])
        tone[20] = 1.0
        stretched = torch.zeros(filters.shape[0])
        stretched[25] = 1.0  # the tone at 1.25 times its frequency
        torch.testing.assert_close(tone @ warp_frequency_axis(filters, 1.25), stretched @ filters)
        assert not warp_frequency_axis(filters, 1.25)[-20:].any()  # past the top bin: nothing

    @pytest.mark.parametrize("frontend", ["log_mel", "mfcc"])
    def test_each_output_is_the_mean_over_the_readings_and_padding_changes_nothing(self, frontend):
        model = tiny_wavenet(frontend=frontend, sampling_rate=8000, hidden_dropout=0.0)
        audio, mask = torch.randn(2, 8000), (torch.arange(8000) < torch.tensor([[8000], [4800]])).long()
        readings = []
        for factor in WARPS:
            model.config.inference_frequency_warps = [factor]
            readings.append(model(audio, attention_mask=mask, output_hidden_states=True))
        model.config.inference_frequency_warps = WARPS
        ensemble = model(audio, attention_mask=mask, output_hidden_states=True)
        for name in ("last_hidden_state", "pooler_output"):
            expected = torch.stack([getattr(reading, name) for reading in readings]).mean(0)
            torch.testing.assert_close(getattr(ensemble, name), expected, atol=1e-5, rtol=1e-4)
        assert len(ensemble.hidden_states) == len(readings[0].hidden_states)
        assert ensemble.hidden_states[0].shape == (2, 100, TINY_AUDIO["hidden_size"])
        assert not torch.allclose(ensemble.pooler_output, readings[1].pooler_output)  # 1.0 alone: another output
        alone = model(audio[1:, :4800]).pooler_output  # whole frames: padding is all the mask hides
        torch.testing.assert_close(ensemble.pooler_output[1:], alone, atol=1e-5, rtol=1e-4)

    def test_training_reads_each_clip_once(self):
        model = tiny_wavenet(frontend="mfcc", sampling_rate=8000, hidden_dropout=0.0).train()
        audio = torch.randn(2, 4000)
        plain = model(audio).pooler_output
        model.config.inference_frequency_warps = WARPS
        torch.testing.assert_close(model(audio).pooler_output, plain)
        assert not torch.allclose(model.eval()(audio).pooler_output, plain)

    def test_switched_on_after_loading_and_saved_with_the_config(self, tmp_path):
        model = tiny_wavenet(frontend="mfcc", sampling_rate=8000)
        model.save_pretrained(tmp_path)
        loaded = AutoModel.from_pretrained(tmp_path).eval()
        audio = torch.randn(1, 4000)
        plain = loaded(audio).pooler_output
        loaded.config.inference_frequency_warps = WARPS  # the front-end reads the model's config at each call
        assert not torch.allclose(loaded(audio).pooler_output, plain)
        loaded.save_pretrained(tmp_path / "warped")
        reloaded = AutoModel.from_pretrained(tmp_path / "warped").eval()
        assert reloaded.config.inference_frequency_warps == WARPS
        torch.testing.assert_close(reloaded(audio).pooler_output, loaded(audio).pooler_output)


def test_old_audio_attention_mask_name_still_works_with_a_warning():
    model = tiny_wavenet()
    audio, mask = torch.randn(1, 3200), torch.ones(1, 3200, dtype=torch.long)
    with pytest.warns(FutureWarning, match="attention_mask"):
        old = model(audio, audio_attention_mask=mask).pooler_output
    torch.testing.assert_close(old, model(audio, attention_mask=mask).pooler_output)

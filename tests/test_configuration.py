"""MultimodalConfig and WaveNetConfig: defaults, sub-config forms, validation messages, serialisation."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, BertConfig, DistilBertConfig, ResNetConfig, ViTConfig

from hf_multimodal import FUSION_TYPES, MultimodalConfig, WaveNetConfig

from conftest import TINY_AUDIO, TINY_TEXT, tiny_config


class TestMultimodalConfig:
    def test_defaults_are_bert_resnet_wavenet(self):
        config = MultimodalConfig()
        assert isinstance(config.text_config, BertConfig)
        assert isinstance(config.vision_config, ResNetConfig)
        assert isinstance(config.audio_config, WaveNetConfig)
        assert config.modalities == ("text", "image", "audio")
        assert config.model_type == "hf_multimodal"

    def test_sub_config_as_object_dict_or_none(self):
        config = MultimodalConfig(
            text_config=DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64),
            vision_config={"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2},
            audio_config=None,
        )
        assert isinstance(config.text_config, DistilBertConfig)
        assert isinstance(config.vision_config, ViTConfig) and config.vision_config.hidden_size == 32
        assert config.audio_config is None
        assert config.modalities == ("text", "image")

    def test_dict_without_model_type_uses_the_modality_default(self):
        config = MultimodalConfig(text_config=TINY_TEXT, audio_config=TINY_AUDIO)
        assert isinstance(config.text_config, BertConfig) and config.text_config.hidden_size == 32
        assert isinstance(config.audio_config, WaveNetConfig) and config.audio_config.hidden_size == 32

    def test_round_trip_keeps_absent_modalities_absent(self, tmp_path):
        config = tiny_config(("text", "audio"), fusion_type="transformer", id2label={0: "cat", 1: "dog"})
        config.save_pretrained(tmp_path)
        saved = json.loads((tmp_path / "config.json").read_text())
        assert saved["vision_config"] is None
        loaded = AutoConfig.from_pretrained(tmp_path)
        assert isinstance(loaded, MultimodalConfig)
        assert loaded.modalities == ("text", "audio")
        assert loaded.fusion_type == "transformer"
        assert loaded.id2label == {0: "cat", 1: "dog"} and loaded.num_labels == 2
        assert loaded.text_config.hidden_size == 32

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"fusion_type": "mean"}, "fusion_type must be one of concat, weighted_sum, gated"),
            ({"text_config": None, "vision_config": None, "audio_config": None}, "needs at least one encoder"),
            ({"text_config": 7}, "text_config must be a PreTrainedConfig, a dict or None"),
            ({"vision_config": {"model_type": "no-such-model"}}, "'no-such-model', which transformers does not know"),
            ({"fusion_hidden_size": 30, "fusion_num_heads": 4}, "must be divisible by fusion_num_heads"),
            ({"modality_dropout": 1.0}, "modality_dropout must be a probability in [0, 1)"),
            ({"problem_type": "ranking"}, "problem_type must be one of single_label_classification"),
            ({"fusion_rank": 0}, "fusion_rank must be an integer >= 1"),
        ],
    )
    def test_invalid_values_name_the_problem(self, kwargs, message):
        with pytest.raises((ValueError, TypeError)) as error:
            MultimodalConfig(**kwargs)
        assert message in str(error.value)

    def test_every_fusion_type_is_accepted(self):
        assert [MultimodalConfig(fusion_type=name).fusion_type for name in FUSION_TYPES] == list(FUSION_TYPES)

    def test_sub_config_lookup_rejects_unknown_modality(self):
        with pytest.raises(ValueError, match="unknown modality 'video'"):
            MultimodalConfig().sub_config("video")


class TestWaveNetConfig:
    def test_default_frame_rate_is_at_most_100_hz(self):
        config = WaveNetConfig()
        assert config.samples_per_frame == 160
        assert config.frame_rate == 100.0

    def test_receptive_field_counts_every_dilation(self):
        config = WaveNetConfig(num_stacks=2, layers_per_stack=3, kernel_size=3)
        assert config.receptive_field == 1 + 2 * 2 * (1 + 2 + 4)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"frontend_strides": [5, 4]}, "must be non-empty and of equal length"),
            ({"frontend_kernel_sizes": [4, 8, 8, 4]}, "front-end kernel 4 with stride 5"),
            ({"hidden_size": 0}, "hidden_size must be an integer >= 1"),
        ],
    )
    def test_invalid_values_name_the_problem(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            WaveNetConfig(**kwargs)

    def test_round_trip(self, tmp_path):
        WaveNetConfig(hidden_size=48, frontend_strides=[4, 4, 4, 2]).save_pretrained(tmp_path)
        loaded = AutoConfig.from_pretrained(tmp_path)
        assert isinstance(loaded, WaveNetConfig)
        assert loaded.hidden_size == 48 and loaded.frontend_strides == [4, 4, 4, 2]

"""MultimodalProcessor: any subset per call, None entries, presence masks, other sub-processors, save / load."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, ViTImageProcessorPil, Wav2Vec2FeatureExtractor
from transformers.utils.logging import warning_once

from hf_multimodal import MultimodalProcessor, WaveNetFeatureExtractor

from conftest import random_audio, random_image, tiny_image_processor, tiny_model


class TestMultimodalProcessor:
    def test_batch_with_none_entries_gives_presence_masks(self, processor, batch_inputs):
        batch = processor(**batch_inputs)
        assert batch["has_text"].tolist() == [True, False, True, True]
        assert batch["has_image"].tolist() == [True, True, False, True]
        assert batch["has_audio"].tolist() == [True, False, True, True]
        assert batch["input_ids"].shape[0] == 4 and batch["pixel_values"].shape == (4, 3, 32, 32)
        assert batch["input_values"].shape == (4, int(0.7 * 16000))
        assert batch["audio_attention_mask"].sum(-1).tolist() == [4800, 0, 11200, 8000]
        assert batch["pixel_values"][2].abs().sum() == 0  # placeholder row, never encoded

    def test_audio_padding_can_be_asked_for(self, processor, batch_inputs):
        seconds = processor.feature_extractor.max_length_seconds
        batch = processor(**batch_inputs, padding="max_length")
        assert batch["input_values"].shape == (4, int(seconds * 16000))
        assert batch["audio_attention_mask"].sum(-1).tolist() == [4800, 0, 11200, 8000]
        longest = processor(**batch_inputs)  # the default: padded to the longest clip, the same samples
        torch.testing.assert_close(batch["input_values"][:, :11200], longest["input_values"])

    def test_options_are_routed_to_each_sub_processor(self, processor, batch_inputs):
        """As transformers' processors: per-modality dicts, or flat keywords sent to the sub-processors taking them."""
        texts = ["one two three four five six seven eight nine ten eleven", "c", "a", "b"]
        flat = processor(text=texts, max_length=6)
        assert flat["input_ids"].shape == (4, 6) and flat["input_ids"][0, -1] == processor.tokenizer.sep_token_id
        padded = processor(text=texts, text_kwargs={"padding": "max_length", "max_length": 20})
        assert padded["input_ids"].shape == (4, 20)
        audio = {"audio": batch_inputs["audio"], "sampling_rate": 16000, "text": texts}
        for options in ({"max_length_seconds": 0.4}, {"audio_kwargs": {"max_length_seconds": 0.4}}):
            assert processor(**audio, padding="max_length", **options)["input_values"].shape == (4, 6400)
        # and the flat padding="max_length" pads the text to max_text_length too
        assert processor(text=texts, padding="max_length")["input_ids"].shape == (4, processor.max_text_length)

    def test_one_image_per_example_also_as_nested_lists(self, processor):
        image = random_image(0)
        nested = processor(text=["a", "b", "c"], images=[[image], [], None])
        assert nested["has_image"].tolist() == [True, False, False]
        torch.testing.assert_close(nested["pixel_values"][0], processor(images=image)["pixel_values"][0])
        with pytest.raises(ValueError, match="example 0 has 2 images: this model reads one image per example"):
            processor(images=[[image, image]])

    def test_output_feeds_the_model(self, processor, batch_inputs):
        outputs = tiny_model()(**processor(**batch_inputs))
        assert outputs.logits.shape == (4, 3)
        assert outputs.presence.tolist() == [[True, True, True], [False, True, False], [True, False, True], [True] * 3]

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"text": "only text"},
            {"images": random_image(5)},
            {"audio": random_audio(5), "sampling_rate": 16000},
            {"text": ["a", "b"], "audio": [random_audio(1), random_audio(2)], "sampling_rate": 16000},
        ],
    )
    def test_any_subset_per_call(self, processor, kwargs):
        batch = processor(**kwargs)
        given = {"text": "has_text", "images": "has_image", "audio": "has_audio"}
        assert {flag for name, flag in given.items() if name in kwargs} == {k for k in batch if k.startswith("has_")}

    def test_empty_or_whitespace_text_counts_as_missing(self, processor):
        batch = processor(text=["", "   ", "word"], images=[random_image(0)] * 3)
        assert batch["has_text"].tolist() == [False, False, True]

    def test_example_without_any_modality_is_refused(self, processor):
        with pytest.raises(ValueError, match=r"examples \[0, 2\] have no text, image or audio"):
            processor(text=[None, "word", "  "], images=[None, None, None])

    def test_image_modes_are_converted_to_rgb(self, processor):
        images = [
            Image.new("L", (20, 20), 128),
            Image.new("RGBA", (20, 20)),
            Image.new("P", (20, 20)),
            Image.new("I;16", (20, 20)),
            Image.new("1", (5, 5)),
            np.zeros((10, 12), dtype=np.uint8),
        ]
        assert processor(images=images)["pixel_values"].shape == (6, 3, 32, 32)

    def test_text_truncation_warns_once(self, processor, caplog):
        warning_once.cache_clear()
        with caplog.at_level(logging.WARNING):
            batch = processor(text=["word " * 100])
            processor(text=["word " * 200])
        assert batch["input_ids"].shape[1] == 32
        assert caplog.text.count("Text longer than 32 tokens was truncated") == 1

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({}, ValueError, "nothing to process"),
            ({"text": ["a", "b"], "images": [random_image(0)]}, ValueError, "different numbers of examples"),
            ({"text": [3]}, TypeError, "text example 0 is a int"),
            ({"images": ["not an image"]}, TypeError, "image 0 is a str"),
            ({"images": [np.zeros((0, 5, 3))]}, ValueError, "image 0 has shape (0, 5, 3)"),
            ({"audio": [random_audio(0)], "sampling_rate": 8000}, ValueError, "expected sampling rate 16000, got 8000"),
            ({"text": []}, ValueError, "text is empty"),
            ({"text": "a", "return_tensors": "np"}, ValueError, "return_tensors must be 'pt'"),
            ({"text": 5}, TypeError, "text must be one example or a list of examples"),
            ({"images": np.zeros(30, np.uint8)}, ValueError, "images is an array of shape (30,): expected one example"),
            # positions in the batch, also where earlier examples lack the modality
            ({"text": ["a", "b"], "audio": [None, np.ones(1)], "sampling_rate": 16000}, ValueError,
             "audio example 1 is 1 sample long"),
            ({"text": ["a", "b"], "audio": [None, "clip.wav"], "sampling_rate": 16000}, TypeError,
             "audio example 1 is a str"),
        ],
    )
    def test_bad_inputs_name_the_problem(self, processor, kwargs, error, message):
        with pytest.raises(error) as raised:
            processor(**kwargs)
        assert message in str(raised.value)

    def test_known_words_map_to_their_bert_ids(self):
        ids = MultimodalProcessor().tokenizer("hello world")["input_ids"]
        assert ids == [101, 7592, 2088, 102]

    def test_other_sub_processors(self):
        processor = MultimodalProcessor(
            image_processor=ViTImageProcessorPil(size={"height": 24, "width": 24}),
            feature_extractor=Wav2Vec2FeatureExtractor(return_attention_mask=True),
        )
        batch = processor(images=[random_image(0), None], audio=[None, random_audio(1, 0.2)], sampling_rate=16000)
        assert batch["pixel_values"].shape == (2, 3, 24, 24)
        assert batch["audio_attention_mask"].tolist()[1].count(1) == 3200 and "attention_mask" not in batch


class TestSaveAndLoad:
    def test_round_trip_keeps_every_sub_processor(self, tmp_path, batch_inputs):
        processor = MultimodalProcessor(
            image_processor=tiny_image_processor(),
            feature_extractor=WaveNetFeatureExtractor(max_length_seconds=0.5, do_normalize=False),
            max_text_length=16,
        )
        processor.save_pretrained(tmp_path)
        loaded = AutoProcessor.from_pretrained(tmp_path)
        assert isinstance(loaded, MultimodalProcessor)
        assert isinstance(loaded.feature_extractor, WaveNetFeatureExtractor)
        assert loaded.feature_extractor.max_length_seconds == 0.5 and loaded.max_text_length == 16
        assert loaded.image_processor.size == {"shortest_edge": 32}
        expected, actual = processor(**batch_inputs), loaded(**batch_inputs)
        assert set(expected) == set(actual)
        for name in expected:
            torch.testing.assert_close(actual[name], expected[name])

    def test_sub_processors_do_not_overwrite_each_other(self, tmp_path):
        MultimodalProcessor(image_processor=tiny_image_processor()).save_pretrained(tmp_path)
        saved = json.loads((tmp_path / "processor_config.json").read_text())
        assert saved["image_processor"]["image_processor_type"].startswith("ConvNextImageProcessor")
        assert saved["feature_extractor"]["feature_extractor_type"] == "WaveNetFeatureExtractor"
        assert saved["image_processor"]["size"] == {"shortest_edge": 32}
        assert saved["feature_extractor"]["sampling_rate"] == 16000
        assert (tmp_path / "tokenizer.json").exists()

    def test_from_backbones_reads_saved_preprocessing(self, tmp_path):
        MultimodalProcessor(max_text_length=8).tokenizer.save_pretrained(tmp_path / "text")
        Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(tmp_path / "audio")
        processor = MultimodalProcessor.from_backbones(text=tmp_path / "text", audio=tmp_path / "audio")
        assert isinstance(processor.feature_extractor, Wav2Vec2FeatureExtractor)
        assert processor.tokenizer("hello")["input_ids"] == [101, 7592, 102]


def test_saving_leaves_the_live_processor_as_it_was(tmp_path):
    processor = MultimodalProcessor(image_processor=tiny_image_processor())
    parts = [processor, processor.feature_extractor, processor.image_processor, processor.tokenizer]
    before = [vars(part).get("auto_map") for part in parts] + [processor.tokenizer.init_kwargs.get("auto_map")]
    processor.save_pretrained(tmp_path)
    after = [vars(part).get("auto_map") for part in parts] + [processor.tokenizer.init_kwargs.get("auto_map")]
    assert after == before
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["auto_map"]["AutoProcessor"] == "processing_multimodal.MultimodalProcessor"  # the folder has it

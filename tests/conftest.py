"""Shared tiny configurations and inputs: every model in the suite is random, small and built offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ConvNextImageProcessorPil

from hf_multimodal import MultimodalConfig, MultimodalForSequenceClassification, MultimodalProcessor


TINY_TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TINY_VISION = {"hidden_sizes": [16, 32], "depths": [1, 1], "embedding_size": 16, "layer_type": "basic"}
TINY_AUDIO = {"hidden_size": 32, "num_stacks": 2, "layers_per_stack": 2, "frontend_channels": [16, 32, 32, 32]}
TINY_SUB_CONFIGS = {"text_config": TINY_TEXT, "vision_config": TINY_VISION, "audio_config": TINY_AUDIO}


def tiny_config(modalities=("text", "image", "audio"), **kwargs) -> MultimodalConfig:
    """A MultimodalConfig with hidden sizes of 32 and 2 layers per encoder, for the given modalities."""
    keys = {"text": "text_config", "image": "vision_config", "audio": "audio_config"}
    sub_configs = {key: (TINY_SUB_CONFIGS[key] if modality in modalities else None) for modality, key in keys.items()}
    defaults = {"fusion_hidden_size": 32, "fusion_num_heads": 2}
    if "id2label" not in kwargs:
        defaults["num_labels"] = 3
    return MultimodalConfig(**{**sub_configs, **defaults, **kwargs})


def tiny_model(modalities=("text", "image", "audio"), seed: int = 0, **kwargs) -> MultimodalForSequenceClassification:
    torch.manual_seed(seed)
    return MultimodalForSequenceClassification(tiny_config(modalities, **kwargs)).eval()


def tiny_image_processor() -> ConvNextImageProcessorPil:
    return ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=1.0)


@pytest.fixture(scope="session")
def processor() -> MultimodalProcessor:
    return MultimodalProcessor(image_processor=tiny_image_processor(), max_text_length=32)


def random_image(seed: int, size: tuple[int, int] = (40, 36)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def random_audio(seed: int, seconds: float = 0.5, sampling_rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(int(seconds * sampling_rate)).astype(np.float32)


@pytest.fixture(scope="session")
def batch_inputs() -> dict:
    """Raw inputs of a 4-example batch in which every modality is missing somewhere."""
    return {
        "text": ["a loud red bird", None, "seven", "the quick brown fox jumps"],
        "images": [random_image(0), random_image(1), None, random_image(3, (64, 20))],
        "audio": [random_audio(0, 0.3), None, random_audio(2, 0.7), random_audio(3, 0.5)],
        "sampling_rate": 16000,
    }

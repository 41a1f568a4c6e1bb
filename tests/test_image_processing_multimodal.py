"""MultimodalImageProcessor: the fast path gives the stock ResNet-style processor's pixels, other inputs take the
stock path, and it saves / loads through AutoImageProcessor, AutoProcessor and remote code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, ConvNextImageProcessorPil

from hf_multimodal import MultimodalImageProcessor, MultimodalProcessor
from hf_multimodal.image_processing_multimodal import IMAGENET_MEAN, IMAGENET_STD, resize_and_crop_geometry

from conftest import WITHOUT_THE_PACKAGE, random_image


def stock(**kwargs) -> ConvNextImageProcessorPil:
    """microsoft/resnet-50's preprocessing with the stock PIL backend."""
    defaults = {"size": {"shortest_edge": 224}, "crop_pct": 0.875, "image_mean": IMAGENET_MEAN}
    return ConvNextImageProcessorPil(**{**defaults, "image_std": IMAGENET_STD, **kwargs})


# Landscape, portrait, square, smaller than the crop, odd sizes and extreme aspect ratios (strong upscaling).
SIZES = [(500, 375), (375, 500), (224, 224), (256, 256), (257, 255), (5, 7), (1, 1), (1000, 300), (17, 1023), (2, 900)]


def test_fast_path_matches_the_stock_processor():
    images = [random_image(seed, size) for seed, size in enumerate(SIZES)]
    ours = MultimodalImageProcessor()(images=images, return_tensors="pt")["pixel_values"]
    reference = stock()(images=images, return_tensors="pt")["pixel_values"]
    assert ours.shape == (len(SIZES), 3, 224, 224) and ours.dtype == torch.float32 and ours.is_contiguous()
    torch.testing.assert_close(ours, reference, atol=2e-6, rtol=0)


def test_uint8_arrays_take_the_fast_path_and_match_pil_images():
    images = [random_image(seed, (64 + seed, 48)) for seed in range(3)]
    processor = MultimodalImageProcessor()
    from_arrays = processor(images=[np.asarray(image) for image in images], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(from_arrays, processor(images=images, return_tensors="pt")["pixel_values"])


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (40, 30), 100),  # grayscale
        Image.new("RGBA", (30, 40), (10, 200, 30, 128)),
        np.random.default_rng(0).random((36, 40, 3), dtype=np.float32),  # floats in [0, 1]
        np.random.default_rng(1).integers(0, 256, (3, 36, 40), dtype=np.uint8),  # channels first
    ],
    ids=["L", "RGBA", "float", "channels-first"],
)
def test_other_inputs_take_the_stock_path(image):
    ours = MultimodalImageProcessor()(images=image, return_tensors="pt")["pixel_values"]
    reference = stock(do_convert_rgb=True)(images=image, return_tensors="pt")["pixel_values"]
    assert ours.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours, reference)


def test_options_match_the_stock_processor():
    images = [random_image(seed, (90, 70)) for seed in range(2)]
    for kwargs in (
        {"size": {"shortest_edge": 384}},  # warped to a square, no crop
        {"crop_pct": 1.0, "size": {"shortest_edge": 64}},
        {"do_normalize": False},
        {"do_rescale": False, "do_normalize": False},
        {"resample": 2},
    ):
        ours = MultimodalImageProcessor(**kwargs)(images=images, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(ours, stock(**kwargs)(images=images, return_tensors="pt")["pixel_values"])


def test_return_tensors_kinds():
    images = [random_image(0), random_image(1)]
    processor = MultimodalImageProcessor()
    as_numpy = processor(images=images, return_tensors="np")["pixel_values"]
    as_list = processor(images=images)["pixel_values"]
    assert isinstance(as_numpy, np.ndarray) and as_numpy.shape == (2, 3, 224, 224)
    assert isinstance(as_list, list) and len(as_list) == 2 and as_list[0].shape == (3, 224, 224)
    np.testing.assert_array_equal(as_list[1], as_numpy[1])


def test_geometry_follows_transformers_arithmetic():
    assert resize_and_crop_geometry(500, 375, 224, 0.875) == (341, 256, 58, 16)
    assert resize_and_crop_geometry(375, 500, 224, 0.875) == (256, 341, 16, 58)
    assert resize_and_crop_geometry(10, 10, 384, 0.875) == (384, 384, 0, 0)


def test_default_processor_uses_it_and_round_trips(tmp_path):
    processor = MultimodalProcessor()
    assert isinstance(processor.image_processor, MultimodalImageProcessor)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())["image_processor"]
    assert saved["image_processor_type"] == "MultimodalImageProcessor"
    assert saved["auto_map"]["AutoImageProcessor"] == "image_processing_multimodal.MultimodalImageProcessor"
    assert (tmp_path / "image_processing_multimodal.py").is_file()
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded.image_processor, MultimodalImageProcessor)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), MultimodalImageProcessor)
    images = [random_image(3, (120, 90))]
    torch.testing.assert_close(reloaded(images=images)["pixel_values"], processor(images=images)["pixel_values"])


@pytest.mark.slow
def test_remote_code_processor_in_a_fresh_process(tmp_path):
    """Without the package installed, the saved processor loads its image processor from the saved code."""
    folder = tmp_path / "processor"
    MultimodalProcessor(max_text_length=16).save_pretrained(folder)
    image = random_image(5, (300, 200))
    expected = MultimodalProcessor()(images=[image])["pixel_values"]
    torch.save({"image": np.asarray(image), "pixel_values": expected}, tmp_path / "expected.pt")
    script = tmp_path / "load.py"
    script.write_text(
        WITHOUT_THE_PACKAGE
        + textwrap.dedent(
            """
            import torch
            from PIL import Image
            from transformers import AutoProcessor

            expected = torch.load(sys.argv[2], weights_only=False)
            processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
            image_processor = processor.image_processor
            assert type(image_processor).__name__ == "MultimodalImageProcessor", type(image_processor)
            module = type(image_processor).__module__
            assert module.startswith("transformers_modules"), module
            pixels = processor(images=[Image.fromarray(expected["image"])])["pixel_values"]
            torch.testing.assert_close(pixels, expected["pixel_values"])
            print("REMOTE-IMAGE-PROCESSOR-OK")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "expected.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"},
    )
    assert "REMOTE-IMAGE-PROCESSOR-OK" in result.stdout, result.stderr[-3000:]

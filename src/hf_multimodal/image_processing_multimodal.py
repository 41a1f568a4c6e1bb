"""ResNet-style image preprocessing with a fast batched path: one PIL resize per image, normalisation in torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, ConvNextImageProcessorPil
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WARP_MIN_SIZE = 384
"""At this `shortest_edge` and above, images are warped to a square without cropping (as in ConvNeXt)."""


def resize_and_crop_geometry(width: int, height: int, shortest_edge: int, crop_pct: float | None) -> tuple[int, ...]:
    """`(resized_width, resized_height, left, top)` of ConvNeXt-style preprocessing of a `width` x `height` image:
    the shortest edge is resized to `int(shortest_edge / crop_pct)` (the other edge keeps the aspect ratio, rounded
    down), then a `shortest_edge` square is cropped at (`left`, `top`). From 384 up, the image is warped to a square
    without cropping. The arithmetic is transformers' (`get_resize_output_image_size`, `center_crop`).

    Example:

    ```python
    >>> resize_and_crop_geometry(500, 375, 224, 0.875)
    (341, 256, 58, 16)
    >>> resize_and_crop_geometry(500, 375, 384, 0.875)
    (384, 384, 0, 0)
    ```
    """
    if shortest_edge >= WARP_MIN_SIZE:
        return shortest_edge, shortest_edge, 0, 0
    resized_short = int(shortest_edge / crop_pct)
    short, long = (width, height) if width <= height else (height, width)
    resized_long = int(resized_short * long / short)
    resized_height, resized_width = (resized_long, resized_short) if width <= height else (resized_short, resized_long)
    return resized_width, resized_height, (resized_width - shortest_edge) // 2, (resized_height - shortest_edge) // 2


def _is_fast_image(image: Any) -> bool:
    """RGB PIL images and (height, width, 3) uint8 arrays: what `MultimodalProcessor` hands over."""
    if isinstance(image, Image.Image):
        return image.mode == "RGB"
    return (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[-1] == 3
        and min(image.shape[:2]) > 4  # smaller sides make the channel axis ambiguous for the stock path
    )


class MultimodalImageProcessor(ConvNextImageProcessorPil):
    r"""
    ResNet-style image preprocessing (as `microsoft/resnet-50`): resize the shortest edge to
    `int(size["shortest_edge"] / crop_pct)` (256) with bicubic filtering, center-crop `size["shortest_edge"]` (224),
    rescale to [0, 1] and normalise with the ImageNet mean and standard deviation.

    It is [`~transformers.ConvNextImageProcessorPil`] with a fast path for RGB PIL images and `(height, width, 3)`
    uint8 arrays (what [`MultimodalProcessor`] passes on): the same PIL resize, without the stock path's round trips
    between PIL and numpy, then the crop as a view and rescaling plus normalisation as one per-channel table lookup
    (256 entries) written straight into the batch. The resized pixels are the stock processor's; the normalised
    values differ by float rounding only. Other inputs (other modes, float or channels-first arrays, tensors) and
    options the fast path does not cover take the stock path.

    Args:
        size (`dict[str, int]`, *optional*, defaults to `{"shortest_edge": 224}`):
            Output side; at 384 and above images are warped to a square instead of cropped.
        crop_pct (`float`, *optional*, defaults to 0.875):
            Share of the resized shortest edge kept by the crop.
        resample (`PILImageResampling`, *optional*, defaults to `BICUBIC`):
            Resampling filter.
        image_mean, image_std (`tuple[float, float, float]`, *optional*):
            Normalisation; ImageNet's by default.
        do_convert_rgb (`bool`, *optional*, defaults to `True`):
            Convert grayscale, palette, RGBA, ... images to RGB (the stock path does it).
        kwargs:
            Any other option of [`~transformers.ConvNextImageProcessorPil`].

    Example:

    ```python
    >>> from PIL import Image
    >>> from hf_multimodal import MultimodalImageProcessor
    >>> processor = MultimodalImageProcessor()
    >>> processor(images=[Image.new("RGB", (500, 375)), Image.new("RGB", (64, 80))], return_tensors="pt")[
    ...     "pixel_values"
    ... ].shape
    torch.Size([2, 3, 224, 224])
    ```
    """

    size = {"shortest_edge": 224}
    crop_pct = 0.875
    image_mean = IMAGENET_MEAN
    image_std = IMAGENET_STD
    resample = PILImageResampling.BICUBIC
    do_convert_rgb = True

    def _preprocess_image_like_inputs(self, images: Any, *args, **kwargs) -> BatchFeature:
        flat = self._prepare_images_structure(images)
        if args or not self._fast_path_applies(flat, kwargs):
            return super()._preprocess_image_like_inputs(images, *args, **kwargs)
        return self._fast_preprocess(flat, **kwargs)

    @staticmethod
    def _fast_path_applies(images: list, options: dict[str, Any]) -> bool:
        size = options.get("size")
        resample = options.get("resample")
        return (
            len(images) > 0
            and all(_is_fast_image(image) for image in images)
            and bool(options.get("do_resize"))
            and isinstance(size, SizeDict)
            and size.shortest_edge is not None
            and size.longest_edge is None
            and (size.shortest_edge >= WARP_MIN_SIZE or options.get("crop_pct") is not None)
            and not options.get("do_center_crop")
            and not options.get("do_pad")
            and options.get("data_format") in (None, ChannelDimension.FIRST, "channels_first")
            and options.get("input_data_format") is None
            and options.get("return_tensors") in (None, "pt", "np")
            and (resample is None or isinstance(resample, (int, PILImageResampling)))
        )

    def _fast_preprocess(
        self,
        images: list[Image.Image | np.ndarray],
        size: SizeDict,
        resample: PILImageResampling | int | None,
        crop_pct: float | None,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | tuple[float, ...],
        image_std: float | tuple[float, ...],
        return_tensors: str | None,
        **kwargs,
    ) -> BatchFeature:
        side = size.shortest_edge
        filter_ = Image.Resampling(int(resample if resample is not None else PILImageResampling.BILINEAR))
        # uint8 value -> rescaled and normalised float32, per channel: one table lookup per pixel.
        scale = np.full(3, rescale_factor if do_rescale else 1.0)
        shift = np.zeros(3)
        if do_normalize:
            std = np.broadcast_to(image_std, 3).astype(np.float64)
            scale, shift = scale / std, np.broadcast_to(image_mean, 3).astype(np.float64) / std
        table = (np.arange(256)[None, :] * scale[:, None] - shift[:, None]).astype(np.float32)
        as_is = not do_rescale and not do_normalize  # the stock path then keeps uint8 pixels
        pixel_values = np.empty((len(images), 3, side, side), dtype=np.uint8 if as_is else np.float32)
        for row, image in enumerate(images):
            if isinstance(image, np.ndarray):
                image = Image.fromarray(image)
            width, height, left, top = resize_and_crop_geometry(image.width, image.height, side, crop_pct)
            pixels = np.asarray(image.resize((width, height), filter_))[top : top + side, left : left + side]
            if as_is:
                pixel_values[row] = pixels.transpose(2, 0, 1)
                continue
            for channel in range(3):
                np.take(table[channel], pixels[..., channel], out=pixel_values[row, channel])
        if return_tensors == "pt":
            return BatchFeature({"pixel_values": torch.from_numpy(pixel_values)})
        return BatchFeature({"pixel_values": pixel_values if return_tensors == "np" else list(pixel_values)})


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MultimodalImageProcessor", "resize_and_crop_geometry"]

"""Configuration of the WaveNet-style raw-waveform audio encoder."""

from __future__ import annotations

import math

from transformers import PreTrainedConfig


class WaveNetConfig(PreTrainedConfig):
    r"""
    Configuration of a [`WaveNetModel`]: a strided convolutional front-end that takes raw audio down to a low frame
    rate, followed by stacks of causal dilated convolutions with gated (tanh x sigmoid) activations and residual and
    skip connections, as in WaveNet (van den Oord et al., 2016), used here as an encoder.

    Every convolution is causal, so a frame only sees samples up to its own end: padding appended to an example never
    changes the frames that cover its real samples.

    Args:
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate, in Hz, of the waveforms the model expects.
        frontend_channels (`list[int]`, *optional*, defaults to `[32, 64, 64, 64]`):
            Output channels of each front-end convolution.
        frontend_kernel_sizes (`list[int]`, *optional*, defaults to `[10, 8, 8, 4]`):
            Kernel size of each front-end convolution.
        frontend_strides (`list[int]`, *optional*, defaults to `[5, 4, 4, 2]`):
            Stride of each front-end convolution. Their product is the number of samples per frame (160, i.e. a
            100 Hz frame rate at 16 kHz).
        hidden_size (`int`, *optional*, defaults to 64):
            Residual, skip and output channels of the dilated stacks.
        num_stacks (`int`, *optional*, defaults to 2):
            Number of stacks of dilated layers.
        layers_per_stack (`int`, *optional*, defaults to 4):
            Layers per stack; dilations go 1, 2, 4, ... 2**(layers_per_stack - 1) in every stack.
        kernel_size (`int`, *optional*, defaults to 3):
            Kernel size of the dilated convolutions.
        hidden_dropout (`float`, *optional*, defaults to 0.1):
            Dropout applied to the residual branch of each layer.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the layer norms.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser of linear layers.

    Example:

    ```python
    >>> from hf_multimodal import WaveNetConfig, WaveNetModel
    >>> config = WaveNetConfig(hidden_size=32, num_stacks=1, layers_per_stack=2)
    >>> config.frame_rate
    100.0
    >>> model = WaveNetModel(config)
    ```
    """

    model_type = "wavenet"

    sampling_rate: int = 16000
    frontend_channels: list[int] | tuple[int, ...] = (32, 64, 64, 64)
    frontend_kernel_sizes: list[int] | tuple[int, ...] = (10, 8, 8, 4)
    frontend_strides: list[int] | tuple[int, ...] = (5, 4, 4, 2)
    hidden_size: int = 64
    num_stacks: int = 2
    layers_per_stack: int = 4
    kernel_size: int = 3
    hidden_dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.frontend_channels = list(self.frontend_channels)
        self.frontend_kernel_sizes = list(self.frontend_kernel_sizes)
        self.frontend_strides = list(self.frontend_strides)
        super().__post_init__(**kwargs)
        self._check_frontend()
        self._check_stacks()

    @property
    def samples_per_frame(self) -> int:
        """Number of input samples per output frame (the product of the front-end strides)."""
        return math.prod(self.frontend_strides)

    @property
    def frame_rate(self) -> float:
        """Output frames per second of audio."""
        return self.sampling_rate / self.samples_per_frame

    @property
    def receptive_field(self) -> int:
        """Frames of context a dilated-stack output sees, itself included."""
        return 1 + self.num_stacks * (self.kernel_size - 1) * (2**self.layers_per_stack - 1)

    def _check_frontend(self) -> None:
        """The front-end lists must have one entry per convolution and every kernel must cover its stride."""
        lengths = {len(self.frontend_channels), len(self.frontend_kernel_sizes), len(self.frontend_strides)}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(
                "frontend_channels, frontend_kernel_sizes and frontend_strides must be non-empty and of equal length, "
                f"got {len(self.frontend_channels)}, {len(self.frontend_kernel_sizes)} and "
                f"{len(self.frontend_strides)}: give one entry per front-end convolution."
            )
        for kernel, stride in zip(self.frontend_kernel_sizes, self.frontend_strides):
            if stride < 1 or kernel < stride:
                raise ValueError(
                    f"front-end kernel {kernel} with stride {stride}: each kernel must be >= its stride >= 1 so that "
                    "no sample is skipped."
                )

    def _check_stacks(self) -> None:
        """Positive sizes for the dilated stacks."""
        for name in ("hidden_size", "num_stacks", "layers_per_stack", "kernel_size", "sampling_rate"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


__all__ = ["WaveNetConfig"]

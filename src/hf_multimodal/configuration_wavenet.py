"""Configuration of the WaveNet-style raw-waveform audio encoder."""

from __future__ import annotations

import math

from transformers import PreTrainedConfig


FRONTENDS: tuple[str, ...] = ("waveform", "log_mel", "mfcc", "speech_embedding")
"""Names accepted by `WaveNetConfig.frontend`."""

POOLINGS: tuple[str, ...] = ("mean", "mean_std")
"""Names accepted by `WaveNetConfig.pooling`."""

SPEECH_EMBEDDING_MEL_FRAMES_PER_FRAME = 8
"""10 ms mel frames per output frame of the `"speech_embedding"` front-end (its three time poolings halve the rate)."""

SPEECH_EMBEDDING_MIN_SAMPLING_RATE = 7600
"""The `"speech_embedding"` front-end's mel bands reach 3.8 kHz, which needs at least this rate."""


class WaveNetConfig(PreTrainedConfig):
    r"""
    Configuration of a [`WaveNetModel`]: a front-end that takes raw audio down to a low frame rate, followed by
    stacks of causal dilated convolutions with gated (tanh x sigmoid) activations and residual and skip connections,
    as in WaveNet (van den Oord et al., 2016), used here as an encoder.

    Four front-ends:
    - `"waveform"` (the default): strided causal convolutions learn their own filters from the raw samples. It needs
      much data: trained on a few thousand spoken digits it reads about 60% of them right.
    - `"log_mel"`: a log-mel spectrogram (25 ms windows every 10 ms by default), normalised per mel bin over the
      clip's real frames (cepstral mean and variance normalisation, which removes most of the recording channel and
      some of the speaker), then a linear projection. It learns from a few thousand clips (0.95+ on held-out
      recordings of known speakers, where the waveform front-end gets about 0.6).
    - `"mfcc"`: the same log-mel frames taken through an orthonormal DCT-II, of which the first `num_mfcc`
      coefficients (mel-frequency cepstral coefficients) are kept and normalised the same way. Dropping the upper
      coefficients smooths the spectrum across bands, taking out pitch harmonics, which vary from speaker to speaker:
      on a voice never heard it reads more spoken digits right than `"log_mel"` (README: Results).
    - `"speech_embedding"`: the convolutional stack of Google's `speech_embedding` (Lin et al., 2020, "Training
      keyword spotters with limited and synthesized speech data"), 32 log-mel bands from 60 Hz to 3.8 kHz every 10 ms
      read by 2D convolutions into a 96-dimensional frame every 80 ms, each seeing the 775 ms of audio that end with
      it; then a layer norm and a linear projection. Random at initialisation: it is meant to be loaded pretrained
      (`scripts/convert_speech_embedding.py` converts the weights that the `openwakeword` package ships), where it
      reads voices never heard far better than the other front-ends trained on a few speakers (README: A pretrained
      speech front-end). Any rate from 8 kHz up works (the spectrum is computed at the clip's own rate, scaled
      as at 16 kHz) and each clip is brought to the level the network was trained at, so the feature extractor's
      normalisation does not matter. `window_ms`, `hop_ms`, `num_mel_bins`, `num_mfcc`, the SpecAugment masks and
      the frequency warps do not apply to it.

    Every operation along time is causal and the normalisation uses real frames only, so padding appended to an
    example never changes the frames that cover its real samples, nor the pooled output.

    Args:
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate, in Hz, of the waveforms the model expects (e.g. 8000 for telephone-band speech: the
            spectral front-ends then pay for no upsampling; `"speech_embedding"` needs at least 7600).
        frontend (`str`, *optional*, defaults to `"waveform"`):
            `"waveform"`, `"log_mel"`, `"mfcc"` or `"speech_embedding"` (see above).
        num_mel_bins (`int`, *optional*, defaults to 40):
            Mel bands of the `"log_mel"` and `"mfcc"` front-ends, between 20 Hz and half the sampling rate.
        num_mfcc (`int`, *optional*, defaults to 20):
            Cepstral coefficients kept by the `"mfcc"` front-end, at most `num_mel_bins`.
        window_ms (`float`, *optional*, defaults to 25.0):
            Analysis window of the spectral front-ends, in milliseconds (Hann window, FFT size the next power of
            two).
        hop_ms (`float`, *optional*, defaults to 10.0):
            Step between frames of the spectral front-ends, in milliseconds (one output frame per step).
        mask_time_prob (`float`, *optional*, defaults to 0.0):
            SpecAugment time masking of the spectral front-ends, in training only (as `Wav2Vec2Config`'s option of
            the same name): about this fraction of each clip's real frames is set to the clip's mean (zero after
            the per-bin normalisation), in `mask_time_prob * frames / mask_time_length` spans that may overlap.
            0 (the default) masks nothing.
        mask_time_length (`int`, *optional*, defaults to 10):
            Frames per time mask (10 frames = 100 ms at the default hop).
        mask_feature_prob (`float`, *optional*, defaults to 0.0):
            SpecAugment frequency masking of the spectral front-ends, in training only (as `Wav2Vec2Config`'s
            `mask_feature_prob`): about this fraction of the mel bins (cepstral coefficients for `"mfcc"`) of each
            clip is set to zero, in `mask_feature_prob * features / mask_feature_length` spans. 0 (the default)
            masks nothing.
        mask_feature_length (`int`, *optional*, defaults to 10):
            Mel bins (coefficients) per frequency mask, at most `num_mel_bins` (`num_mfcc`).
        inference_frequency_warps (`list[float]`, *optional*, defaults to `[]`):
            A test-time ensemble of the spectral front-ends, in evaluation mode only (`model.eval()`; an encoder in
            training mode reads each clip once, while a frozen one, which `MultimodalTrainer` keeps in evaluation mode,
            reads it as it will at inference): each clip is read once per factor with its spectrum stretched by that
            factor (1.1 moves every formant 10% up, as a shorter vocal tract would; 1.0 is the clip as recorded), the
            encoder runs on every reading and its outputs (frames and `pooler_output`) are averaged over them. An unseen
            voice then meets the encoder at several vocal-tract lengths, one of which is closer to the voices it was
            trained on (README: A test-time ensemble for unseen voices). Costs one encoder pass per factor; empty (the
            default) reads each clip once. Factors in [0.5, 2.0], e.g. `[0.9, 1.0, 1.1]`. It can be switched on for a
            trained model (`model.config.audio_config.inference_frequency_warps = [...]`).
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
        pooling (`str`, *optional*, defaults to `"mean"`):
            How `pooler_output` summarises the real frames: `"mean"`, their mean; `"mean_std"`, their mean and
            standard deviation (statistics pooling, as in x-vectors) concatenated and projected back to
            `hidden_size`.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the layer norms.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser of linear layers (but for the projection of the `"mfcc"`
            front-end, which starts at PyTorch's default initialisation).

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
    frontend: str = "waveform"
    num_mel_bins: int = 40
    num_mfcc: int = 20
    window_ms: float = 25.0
    hop_ms: float = 10.0
    mask_time_prob: float = 0.0
    mask_time_length: int = 10
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    inference_frequency_warps: list[float] | tuple[float, ...] = ()
    frontend_channels: list[int] | tuple[int, ...] = (32, 64, 64, 64)
    frontend_kernel_sizes: list[int] | tuple[int, ...] = (10, 8, 8, 4)
    frontend_strides: list[int] | tuple[int, ...] = (5, 4, 4, 2)
    hidden_size: int = 64
    num_stacks: int = 2
    layers_per_stack: int = 4
    kernel_size: int = 3
    hidden_dropout: float = 0.1
    pooling: str = "mean"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.frontend_channels = list(self.frontend_channels)
        self.frontend_kernel_sizes = list(self.frontend_kernel_sizes)
        self.frontend_strides = list(self.frontend_strides)
        self.inference_frequency_warps = list(self.inference_frequency_warps)
        super().__post_init__(**kwargs)
        self._check_frontend()
        self._check_stacks()
        self._check_spec_augment()
        self._check_frequency_warps()

    @property
    def is_spectral(self) -> bool:
        """Whether the front-end computes a spectrogram (`"log_mel"`, `"mfcc"`) rather than learning from samples."""
        return self.frontend in ("log_mel", "mfcc")

    @property
    def is_speech_embedding(self) -> bool:
        """Whether the front-end is the (pretrained) `speech_embedding` stack."""
        return self.frontend == "speech_embedding"

    @property
    def num_frame_features(self) -> int:
        """Features per frame of a spectral front-end, before its projection: cepstral coefficients or mel bands."""
        return self.num_mfcc if self.frontend == "mfcc" else self.num_mel_bins

    @property
    def samples_per_frame(self) -> int:
        """Number of input samples per output frame: the product of the strides of the `"waveform"` front-end, the
        hop of the spectral ones, 80 ms for `"speech_embedding"` (eight 10 ms mel frames)."""
        if self.is_speech_embedding:
            return SPEECH_EMBEDDING_MEL_FRAMES_PER_FRAME * round(self.sampling_rate / 100)
        if self.is_spectral:
            return int(round(self.sampling_rate * self.hop_ms / 1000))
        return math.prod(self.frontend_strides)

    @property
    def window_length(self) -> int:
        """Samples per analysis window of the spectral front-ends."""
        return int(round(self.sampling_rate * self.window_ms / 1000))

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
        """Positive sizes for the dilated stacks, a known front-end whose window covers its hop, a known pooling."""
        names = ("hidden_size", "num_stacks", "layers_per_stack", "kernel_size", "sampling_rate", "num_mel_bins", "num_mfcc")
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if self.frontend not in FRONTENDS:
            raise ValueError(f"frontend must be one of {', '.join(FRONTENDS)}; got {self.frontend!r}.")
        if self.frontend == "mfcc" and self.num_mfcc > self.num_mel_bins:
            raise ValueError(
                f"num_mfcc ({self.num_mfcc}) must be at most num_mel_bins ({self.num_mel_bins}): lower it or add bands."
            )
        if self.is_spectral and not 1 <= self.samples_per_frame <= self.window_length:
            raise ValueError(
                f"hop_ms ({self.hop_ms}) must be positive and at most window_ms ({self.window_ms}) so that no sample is "
                "skipped."
            )
        if self.is_speech_embedding and self.sampling_rate < SPEECH_EMBEDDING_MIN_SAMPLING_RATE:
            raise ValueError(
                f"frontend='speech_embedding' reads mel bands up to 3800 Hz: it needs sampling_rate >= "
                f"{SPEECH_EMBEDDING_MIN_SAMPLING_RATE}, got {self.sampling_rate}. Resample the audio (8000 or 16000) "
                "or choose another front-end."
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {self.pooling!r}.")

    def _check_spec_augment(self) -> None:
        """Masking fractions in [0, 1), positive span lengths, frequency spans no wider than the mel bins, and masking
        only where there is a spectrogram to mask."""
        for axis, size_name in (("time", None), ("feature", "num_mfcc" if self.frontend == "mfcc" else "num_mel_bins")):
            prob, length = getattr(self, f"mask_{axis}_prob"), getattr(self, f"mask_{axis}_length")
            if not 0.0 <= prob < 1.0:
                raise ValueError(f"mask_{axis}_prob must be in [0, 1), got {prob!r}.")
            if not isinstance(length, int) or length < 1:
                raise ValueError(f"mask_{axis}_length must be an integer >= 1, got {length!r}.")
            if size_name is not None and length > getattr(self, size_name):
                size = getattr(self, size_name)
                raise ValueError(f"mask_{axis}_length ({length}) must be at most {size_name} ({size}): lower it.")
        if (self.mask_time_prob or self.mask_feature_prob) and not self.is_spectral:
            raise ValueError(
                f"mask_time_prob and mask_feature_prob mask a spectrogram: they need frontend='log_mel' or 'mfcc', got "
                f"frontend={self.frontend!r}. Set a spectral front-end or leave both at 0."
            )

    def _check_frequency_warps(self) -> None:
        """Warps are numbers in [0.5, 2.0], and only a spectral front-end has a spectrum to warp."""
        for factor in self.inference_frequency_warps:
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0.5 <= factor <= 2.0:
                raise ValueError(
                    f"inference_frequency_warps must hold numbers in [0.5, 2.0] (1.0 reads the clip as recorded), got "
                    f"{factor!r} in {self.inference_frequency_warps}."
                )
        if self.inference_frequency_warps and not self.is_spectral:
            raise ValueError(
                "inference_frequency_warps stretches a spectrum: it needs frontend='log_mel' or 'mfcc', got "
                f"frontend={self.frontend!r}. Set a spectral front-end or leave it empty."
            )


__all__ = ["FRONTENDS", "POOLINGS", "SPEECH_EMBEDDING_MEL_FRAMES_PER_FRAME", "WaveNetConfig"]

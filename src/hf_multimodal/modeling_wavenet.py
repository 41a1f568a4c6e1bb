"""WaveNet-style raw-waveform encoder: strided causal front-end, then gated dilated causal convolution stacks."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.audio_utils import mel_filter_bank
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

from .configuration_wavenet import SPEECH_EMBEDDING_MEL_FRAMES_PER_FRAME, WaveNetConfig
from .modeling_safe_io import SafeSerializationMixin


def masked_mean(hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `hidden_states` (batch, length, dim) over the positions where `mask` (batch, length) is true.

    Rows with no true position give zeros rather than NaN.
    """
    if mask is None:
        return hidden_states.mean(dim=1)
    weights = mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def masked_mean_std(hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean and standard deviation of `hidden_states` (batch, length, dim) over the positions where `mask` (batch,
    length) is true, concatenated: (batch, 2 * dim) (statistics pooling, as in x-vectors)."""
    mean = masked_mean(hidden_states, mask)
    variance = masked_mean((hidden_states - mean.unsqueeze(1)).square(), mask)
    return torch.cat([mean, torch.sqrt(variance + 1e-5)], dim=-1)


def mono_waveforms(input_values: torch.Tensor) -> torch.Tensor:
    """`input_values` as `(batch_size, samples)` mono waveforms (a `(batch_size, 1, samples)` channel axis dropped);
    anything else is refused with the fix."""
    if input_values.dim() == 3 and input_values.shape[1] == 1:
        input_values = input_values.squeeze(1)
    if input_values.dim() != 2:
        raise ValueError(
            f"input_values must have shape (batch_size, samples) of mono audio, got {tuple(input_values.shape)}: "
            "mix channels down first (WaveNetFeatureExtractor does)."
        )
    return input_values


def frame_mask_from_samples(attention_mask: torch.Tensor, samples_per_frame: int, num_frames: int) -> torch.Tensor:
    """Frame-level bool mask (batch, num_frames) from a sample-level `attention_mask` (batch, samples): a frame is real
    when it covers at least one real sample; every row keeps at least one frame."""
    lengths = attention_mask.sum(dim=-1)
    frames = ((lengths + samples_per_frame - 1) // samples_per_frame).clamp(min=1, max=num_frames)
    positions = torch.arange(num_frames, device=attention_mask.device)
    return positions.unsqueeze(0) < frames.unsqueeze(1)


class WaveNetCausalConv1d(nn.Conv1d):
    """A `Conv1d` padded on the left only, so that output frame `t` never sees input past the end of its stride."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation)
        self.left_padding = dilation * (kernel_size - 1) + 1 - stride

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(hidden_states, (self.left_padding, 0)))


class WaveNetFrontend(nn.Module):
    """Strided causal convolutions from (batch, samples) waveforms to (batch, hidden, frames) features."""

    def __init__(self, config: WaveNetConfig):
        super().__init__()
        in_channels = [1, *config.frontend_channels[:-1]]
        self.convs = nn.ModuleList(
            WaveNetCausalConv1d(c_in, c_out, kernel, stride=stride)
            for c_in, c_out, kernel, stride in zip(
                in_channels, config.frontend_channels, config.frontend_kernel_sizes, config.frontend_strides
            )
        )
        self.layer_norm = nn.LayerNorm(config.frontend_channels[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.frontend_channels[-1], config.hidden_size)

    def forward(self, input_values: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = input_values.unsqueeze(1)
        for conv in self.convs:
            hidden_states = F.gelu(conv(hidden_states))
        hidden_states = self.projection(self.layer_norm(hidden_states.transpose(1, 2)))
        return hidden_states.transpose(1, 2)


def causal_power_spectrogram(
    input_values: torch.Tensor, window: torch.Tensor, hop_length: int, n_fft: int, left_frames: int = 0
) -> torch.Tensor:
    """Power spectrum (batch, frames, n_fft // 2 + 1) of `input_values` (batch, samples), one frame per `hop_length`
    samples: frame `t` is the FFT of the `window`-weighted samples that end where hop `t` ends (the input is padded
    on the left with zeros), so it never sees samples past its own hop. `left_frames` more frames of left padding
    come first (context for a front-end that reads several frames at once).

    Computed in float32 whatever the input's dtype (torch's FFT takes no bfloat16), as transformers' audio feature
    extractors compute their features.
    """
    window_length = window.shape[0]
    num_frames = input_values.shape[-1] // hop_length + left_frames
    padded = F.pad(input_values.float(), (window_length - hop_length + left_frames * hop_length, 0))
    frames = padded.unfold(-1, window_length, hop_length)[:, :num_frames]
    spectrum = torch.fft.rfft(frames * window.float(), n=n_fft)
    return spectrum.real.square() + spectrum.imag.square()


def warp_frequency_axis(filters: torch.Tensor, factor: float) -> torch.Tensor:
    """`filters` (frequency bins, bands) read at `factor` times each bin's frequency (linear interpolation, zero past
    the top bin): applied to a power spectrum, they give what `filters` give on that spectrum stretched by `factor`
    along frequency (up to a constant gain, which the per-band normalisation removes)."""
    bins = filters.shape[0]
    position = torch.arange(bins, dtype=filters.dtype, device=filters.device) * factor
    low = position.floor().long().clamp(max=bins - 1)
    high = (low + 1).clamp(max=bins - 1)
    fraction = (position - low).unsqueeze(1)
    warped = filters[low] * (1 - fraction) + filters[high] * fraction
    return warped.masked_fill((position > bins - 1).unsqueeze(1), 0.0)


class MelSpectrumFrontend(nn.Module):
    """Base of the front-ends that compute a mel spectrum: a periodic Hann window of `window_length` samples and the
    `compute_mel_filters()` of the subclass, held as buffers rebuilt from the config rather than saved."""

    window_length: int

    def register_spectrum_buffers(self) -> None:
        """Register the `window` and `mel_filters` buffers (not saved with the weights)."""
        self.register_buffer("mel_filters", self.compute_mel_filters(), persistent=False)
        self.register_buffer("window", self.compute_window(), persistent=False)

    def compute_mel_filters(self) -> torch.Tensor:
        """`(frequency bins, mel bands)` filters applied to the power spectrum."""
        raise NotImplementedError

    def compute_window(self) -> torch.Tensor:
        """The periodic Hann analysis window, `(window_length,)`."""
        return torch.hann_window(self.window_length, periodic=True)

    def reset_buffers(self) -> None:
        """Rebuild the buffers computed from the config (not saved with the weights): a model's `_init_weights` calls
        this, as `from_pretrained` creates modules empty."""
        init.copy_(self.mel_filters, self.compute_mel_filters())
        init.copy_(self.window, self.compute_window())


class WaveNetLogMelFrontend(MelSpectrumFrontend):
    """(batch, samples) waveforms to (batch, hidden, frames) features: causal log-mel frames, normalised per mel bin
    over each clip's real frames, layer norm and a linear projection.

    Frame `t` is the Hann-windowed FFT of the window that ends where hop `t` ends (the input is padded on the left
    with `window - hop` zeros), so it never sees samples past its own hop, like the causal convolutions of the
    waveform front-end. The mel filters come from `transformers.audio_utils.mel_filter_bank` (HTK scale, Slaney
    area normalisation) and are rebuilt from the config, not saved with the weights. `frame_features` is the hook
    `WaveNetMfccFrontend` overrides. In training, SpecAugment masks (`config.mask_time_prob`,
    `config.mask_feature_prob`) set spans of the normalised frames or mel bins to zero. In evaluation mode with
    `config.inference_frequency_warps`, each clip is read once per warp: the output holds `len(warps) * batch` rows,
    warp-major (the model averages its outputs over them).
    """

    def __init__(self, config: WaveNetConfig):
        super().__init__()
        self.hop_length = config.samples_per_frame
        self.window_length = config.window_length
        self.n_fft = 2 ** math.ceil(math.log2(self.window_length))
        self.num_mel_bins, self.sampling_rate = config.num_mel_bins, config.sampling_rate
        self.mask_time_prob, self.mask_time_length = config.mask_time_prob, config.mask_time_length
        self.mask_feature_prob, self.mask_feature_length = config.mask_feature_prob, config.mask_feature_length
        self.config = config  # read at each call: `inference_frequency_warps` may be switched on after loading
        self.register_spectrum_buffers()
        self.layer_norm = nn.LayerNorm(config.num_frame_features, eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.num_frame_features, config.hidden_size)

    def compute_mel_filters(self) -> torch.Tensor:
        """`(n_fft // 2 + 1, num_mel_bins)` triangular mel filters from 20 Hz to half the sampling rate."""
        filters = mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1,
            num_mel_filters=self.num_mel_bins,
            min_frequency=20.0,
            max_frequency=self.sampling_rate / 2,
            sampling_rate=self.sampling_rate,
            norm="slaney",
            mel_scale="htk",
        )
        return torch.tensor(filters, dtype=torch.float32)

    def forward(self, input_values: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        power = causal_power_spectrogram(input_values, self.window, self.hop_length, self.n_fft)
        filters = self.mel_filters.to(power.dtype)
        warps = self.frequency_warps()
        if warps:
            filters = torch.stack([warp_frequency_axis(filters, factor) for factor in warps])
            mel = torch.einsum("btf,kfm->kbtm", power, filters).flatten(0, 1)
            frame_mask = frame_mask.repeat(len(warps), 1) if frame_mask is not None else None
        else:
            mel = power @ filters
        features = self.frame_features(torch.log(mel + 1e-6))
        weights = (
            frame_mask.to(features.dtype).unsqueeze(-1)
            if frame_mask is not None
            else torch.ones_like(features[..., :1])
        )
        count = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
        mean = (features * weights).sum(dim=1, keepdim=True) / count
        variance = ((features - mean).square() * weights).sum(dim=1, keepdim=True) / count
        normalised = (features - mean) * torch.rsqrt(variance + 1e-5) * weights
        if self.training:
            normalised = self.spec_augment(normalised, frame_mask)
        return self.projection(self.layer_norm(normalised.to(self.projection.weight.dtype))).transpose(1, 2)

    def frequency_warps(self) -> tuple[float, ...]:
        """The warps this call reads each clip at: `config.inference_frequency_warps` in evaluation mode, none (one
        reading, as recorded) in training."""
        return () if self.training else tuple(self.config.inference_frequency_warps)

    def frame_features(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Per-frame features, before normalisation, from `log_mel` (batch, frames, mel bins): here the log-mel
        frames themselves."""
        return log_mel

    def spec_augment(self, features: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """SpecAugment (Park et al., 2019) on normalised `features` (batch, frames, mel bins or coefficients): random
        spans of real frames and of feature bins set to zero, each bin's mean over the clip. Spans are drawn as
        `Wav2Vec2Model` draws them (`_compute_mask_indices`, numpy's global generator); a batch shorter than one time
        span is left as is."""
        batch_size, num_frames, num_bins = features.shape
        if self.mask_time_prob > 0 and num_frames >= self.mask_time_length:
            time_mask = _compute_mask_indices(
                (batch_size, num_frames), self.mask_time_prob, self.mask_time_length, attention_mask=frame_mask
            )
            features = features.masked_fill(torch.from_numpy(time_mask).to(features.device).unsqueeze(-1), 0.0)
        if self.mask_feature_prob > 0:
            feature_mask = _compute_mask_indices(
                (batch_size, num_bins), self.mask_feature_prob, self.mask_feature_length
            )
            features = features.masked_fill(torch.from_numpy(feature_mask).to(features.device).unsqueeze(1), 0.0)
        return features


class WaveNetMfccFrontend(WaveNetLogMelFrontend):
    """The log-mel front-end with mel-frequency cepstral coefficients as frame features: the log-mel frames through an
    orthonormal DCT-II, first `config.num_mfcc` coefficients kept (a smoothed spectral envelope, without the pitch
    harmonics). The DCT matrix is rebuilt from the config, not saved with the weights.
    """

    def __init__(self, config: WaveNetConfig):
        super().__init__(config)
        self.num_mfcc = config.num_mfcc
        self.register_buffer("dct", self.compute_dct(), persistent=False)

    def compute_dct(self) -> torch.Tensor:
        """`(num_mel_bins, num_mfcc)` orthonormal DCT-II matrix (as `scipy.fft.dct(..., norm="ortho")`)."""
        bands = torch.arange(self.num_mel_bins, dtype=torch.float64) + 0.5
        orders = torch.arange(self.num_mfcc, dtype=torch.float64)
        dct = torch.cos(math.pi / self.num_mel_bins * bands.unsqueeze(1) * orders) * math.sqrt(2.0 / self.num_mel_bins)
        dct[:, 0] /= math.sqrt(2.0)
        return dct.float()

    def reset_buffers(self) -> None:
        super().reset_buffers()
        init.copy_(self.dct, self.compute_dct())

    def frame_features(self, log_mel: torch.Tensor) -> torch.Tensor:
        """The first `num_mfcc` cepstral coefficients of `log_mel` (batch, frames, mel bins)."""
        return log_mel @ self.dct.to(log_mel.dtype)


SPEECH_EMBEDDING_LAYERS: tuple[tuple[int, int, int] | tuple[int, int], ...] = (
    (24, 3, 3), (24, 1, 3), (24, 3, 1), (2, 2),
    (48, 1, 3), (48, 3, 1), (48, 1, 3), (48, 3, 1), (1, 2),
    (72, 1, 3), (72, 3, 1), (72, 1, 3), (72, 3, 1), (2, 2),
    (96, 1, 3), (96, 3, 1), (96, 1, 3), (96, 3, 1), (1, 2),
    (96, 1, 3), (96, 3, 1), (96, 1, 3), (96, 3, 1), (2, 2),
)  # fmt: skip
"""The `speech_embedding` stack over (time, mel) planes: `(channels, time kernel, mel kernel)` for a convolution
(no padding along time, "same" padding along mel) and its activation, `(time, mel)` for a max-pooling; a last
`(3, 1)` convolution with 96 channels and no activation follows."""

SPEECH_EMBEDDING_BLOCKS = sum(len(spec) == 2 for spec in SPEECH_EMBEDDING_LAYERS)
"""Convolution blocks of the stack, each ending in a max-pooling (5): what `WaveNetModel.freeze_feature_encoder`
can keep learning from the top."""
SPEECH_EMBEDDING_MEL_BANDS = 32
SPEECH_EMBEDDING_SIZE = 96
SPEECH_EMBEDDING_LEVEL = 2000.0
"""RMS, in 16-bit sample units, each clip is brought to before the `speech_embedding` stack reads it (about -24
dBFS, a plain recording level of speech): the network was trained on 16-bit audio, whose level its log-mel input
keeps."""


def _time_window(layer: nn.Module) -> tuple[int, int]:
    """(frames read, stride) of a `speech_embedding` stack layer along time: (1, 1) for the activations."""
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
        return layer.kernel_size[0], layer.stride[0]
    return 1, 1


def _resize_left_context(hidden: torch.Tensor, kept: int, needed: int) -> torch.Tensor:
    """`hidden` (batch, channels, time, mel), whose first `kept` time columns are one column repeated, with `needed`
    of them instead."""
    if needed < kept:
        return hidden[:, :, kept - needed :]
    if needed == kept:
        return hidden
    # the repeated part channels-last like `hidden`: the concatenation then keeps that layout (one copy, not three)
    repeated = hidden[:, :, :1].expand(-1, -1, needed - kept, -1).contiguous(memory_format=torch.channels_last)
    return torch.cat([repeated, hidden], dim=2)


class SpeechEmbeddingActivation(nn.Module):
    """The `speech_embedding` stack's activation: a leaky ReLU (slope 0.2) floored at -0.4."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(hidden_states, 0.2).clamp(min=-0.4)


class WaveNetSpeechEmbeddingFrontend(MelSpectrumFrontend):
    """(batch, samples) waveforms to (batch, hidden, frames) features through Google's `speech_embedding` stack: each
    clip brought to a fixed level, 32 log-mel bands (60-3800 Hz, 25 ms Hann windows every 10 ms, in dB with an 80 dB
    floor under the clip's loudest band, scaled as the network was trained), `SPEECH_EMBEDDING_LAYERS`, a layer norm
    and a linear projection to `hidden_size`.

    Output frame `t` reads the 76 mel frames (775 ms) that end with its own 80 ms, the clip padded on the left with
    silence: causal like the other front-ends, and padding appended to a clip changes none of its real frames (that
    silence is computed over the few frames each layer reads of it: `feature_encoder_outputs`). The
    spectrum is computed at the clip's rate (window and hop in milliseconds) and scaled to what it would be at 16 kHz,
    so 8 kHz audio reads as it would upsampled. The window and mel filters are rebuilt from the config, not saved.
    When no weight of `feature_encoder` requires a gradient (`WaveNetModel.freeze_feature_encoder`), the stack runs
    without building a graph.
    """

    def __init__(self, config: WaveNetConfig):
        super().__init__()
        self.sampling_rate = config.sampling_rate
        self.hop_length = config.samples_per_frame // SPEECH_EMBEDDING_MEL_FRAMES_PER_FRAME  # 10 ms
        self.window_length = round(config.sampling_rate * 0.025)
        self.n_fft = 2 ** math.ceil(math.log2(self.window_length))
        self.register_spectrum_buffers()
        layers, channels = [], 1
        for spec in SPEECH_EMBEDDING_LAYERS:
            if len(spec) == 2:
                layers.append(nn.MaxPool2d(spec))
            else:
                out_channels, time_kernel, mel_kernel = spec
                layers += [
                    nn.Conv2d(channels, out_channels, (time_kernel, mel_kernel), padding=(0, mel_kernel // 2)),
                    SpeechEmbeddingActivation(),
                ]
                channels = out_channels
        layers.append(nn.Conv2d(channels, SPEECH_EMBEDDING_SIZE, (3, 1)))
        self.feature_encoder = nn.Sequential(*layers)
        self.context_frames = self.receptive_field() - SPEECH_EMBEDDING_MEL_FRAMES_PER_FRAME
        self.context_columns = self._plan_context_columns()
        self.layer_norm = nn.LayerNorm(SPEECH_EMBEDDING_SIZE, eps=config.layer_norm_eps)
        self.projection = nn.Linear(SPEECH_EMBEDDING_SIZE, config.hidden_size)

    def block_bounds(self) -> list[tuple[int, int]]:
        """(first layer, end) in `feature_encoder` of each of its `SPEECH_EMBEDDING_BLOCKS` blocks, bottom first: its
        layers up to each max-pooling (the last convolution joins the top block)."""
        ends = [i + 1 for i, layer in enumerate(self.feature_encoder) if isinstance(layer, nn.MaxPool2d)]
        ends[-1] = len(self.feature_encoder)
        return list(zip([0, *ends[:-1]], ends))

    def blocks_end(self, blocks: int) -> int:
        """The index in `feature_encoder` of the first layer above its lower `blocks` blocks (its length for all 5)."""
        return self.block_bounds()[blocks - 1][1]

    def feature_encoder_blocks(self) -> list[nn.Sequential]:
        """The `SPEECH_EMBEDDING_BLOCKS` blocks of `feature_encoder`, bottom first (`block_bounds`). They share the
        stack's modules."""
        return [self.feature_encoder[start:end] for start, end in self.block_bounds()]

    def frozen_blocks(self) -> int:
        """How many of the stack's blocks, from the bottom, have no weight that learns
        (`WaveNetModel.freeze_feature_encoder`): all 5 for a frozen stack, 3 with its top 2 learning."""
        blocks = 0
        for block in self.feature_encoder_blocks():
            if any(parameter.requires_grad for parameter in block.parameters()):
                break
            blocks += 1
        return blocks

    def block_output_shapes(self) -> list[tuple[int, int]]:
        """(channels, mel bands) of each block's output, bottom first: (24, 16), (48, 8), (72, 4), (96, 2), (96, 1)."""
        shapes, channels, bands = [], 1, SPEECH_EMBEDDING_MEL_BANDS
        for layer in self.feature_encoder:
            if isinstance(layer, nn.Conv2d):
                channels = layer.out_channels
            elif isinstance(layer, nn.MaxPool2d):
                bands //= layer.kernel_size[1]
                shapes.append((channels, bands))
        shapes[-1] = (channels, bands)  # the last convolution joins the top block
        return shapes

    def receptive_field(self) -> int:
        """Mel frames one output frame of `feature_encoder` reads (76)."""
        field, step = 1, 1
        for layer in self.feature_encoder:
            reach, stride = _time_window(layer)
            field += (reach - 1) * step
            step *= stride
        return field

    def _plan_context_columns(self) -> tuple[tuple[int, int], ...]:
        """Per layer of `feature_encoder`: (kept, needed), the silent left-context columns its input holds and those
        it is given (`feature_encoder_outputs`), for a log-mel input holding one.

        The silent left context is one column repeated along time at every layer of the stack (each layer reads
        time alike everywhere), so each layer is given only the columns of it that its outputs over the clip read,
        repeated from the first: the outputs of the whole 68-frame context, computed over a few frames of it (1.4x
        faster on 0.8 s clips, 3x on 0.4 s ones: the context is most of a short clip's frames).
        """
        plan = []
        silent, kept = self.context_frames, 1  # context columns the full computation has / this one holds
        for layer in self.feature_encoder:
            reach, stride = _time_window(layer)
            if reach == 1:
                plan.append((kept, kept))
                continue
            silent_after = (silent - reach) // stride + 1 if silent >= reach else 0
            kept_after = min(silent_after, 1)  # one silent column, to repeat for the next layers
            # the last `needed` columns of the context give the last `kept_after` silent outputs and every output
            # over the clip, in the full computation's windows
            plan.append((kept, silent - stride * (silent_after - kept_after)))
            silent, kept = silent_after, kept_after
        return tuple(plan)

    def output_columns(self, columns: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Time columns out of the layers `start:stop` of `feature_encoder` for `columns` in (their silent context
        columns included, as `context_columns` plans them): `1 + 8 * frames` log-mel columns give `frames` output
        frames."""
        for index in range(start, len(self.feature_encoder) if stop is None else stop):
            kept, needed = self.context_columns[index]
            reach, stride = _time_window(self.feature_encoder[index])
            columns = (columns - kept + needed - reach) // stride + 1
        return columns

    def run_layers(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The layers `start:stop` of `feature_encoder` over `hidden` (batch, channels, columns, mel bands), whose
        first columns are the silent context `context_columns` plans for layer `start`."""
        for index in range(start, stop):
            hidden = _resize_left_context(hidden, *self.context_columns[index])
            hidden = self.feature_encoder[index](hidden)
            if index == 0:
                # The convolutions run channels-last, the layout oneDNN's CPU kernels are fastest in (1.3-1.5x
                # for the stack on 2 EPYC cores, forward and backward); the one-channel input cannot carry it.
                hidden = hidden.contiguous(memory_format=torch.channels_last)
        return hidden

    def compute_mel_filters(self) -> torch.Tensor:
        """`(n_fft // 2 + 1, 32)` mel filters from 60 to 3800 Hz (Slaney scale and area normalisation), scaled by
        `(16000 / sampling_rate) ** 2`: the power of a window of the same duration at 16 kHz."""
        filters = mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1,
            num_mel_filters=SPEECH_EMBEDDING_MEL_BANDS,
            min_frequency=60.0,
            max_frequency=3800.0,
            sampling_rate=self.sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        return torch.tensor(filters, dtype=torch.float32) * (16000 / self.sampling_rate) ** 2

    def log_mel(
        self, input_values: torch.Tensor, frame_mask: torch.Tensor | None, context_frames: int | None = None
    ) -> torch.Tensor:
        """(batch, context + frames, 32) scaled log-mel input of the stack, its first `context_frames` (defaults to
        `self.context_frames`, what the stack reads) silence: the same value in every frame and band."""
        sample_mask = (
            frame_mask.repeat_interleave(input_values.shape[-1] // frame_mask.shape[-1], dim=-1)
            if frame_mask is not None
            else None
        )
        values = input_values.float()
        power = masked_mean(values.square().unsqueeze(-1), sample_mask)
        values = values * (SPEECH_EMBEDDING_LEVEL * torch.rsqrt(power + 1e-10))
        context_frames = self.context_frames if context_frames is None else context_frames
        power = causal_power_spectrogram(values, self.window, self.hop_length, self.n_fft, context_frames)
        decibels = 10 * torch.log10((power @ self.mel_filters.float()).clamp(min=1e-10))
        decibels = torch.maximum(decibels, decibels.amax(dim=(1, 2), keepdim=True) - 80.0)
        return decibels / 10 + 2

    def feature_encoder_outputs(
        self, input_values: torch.Tensor, frame_mask: torch.Tensor | None = None, blocks: int | None = None
    ) -> torch.Tensor:
        """(batch, frames, 96) output of the pretrained stack: what `forward` projects. It does not depend on any
        trained weight while the stack is frozen, so it can be computed once per clip (`feature_cache`). With
        `blocks`, the output of the stack's lower `blocks` only, (batch, columns, channels, mel bands) time first
        (`block_output_shapes`; its first columns silent context), which `top_blocks_outputs` continues."""
        hidden = self.log_mel(input_values, frame_mask, context_frames=1).to(self.projection.weight.dtype).unsqueeze(1)
        stop = self.blocks_end(blocks) if blocks else len(self.feature_encoder)
        trainable = any(parameter.requires_grad for parameter in self.feature_encoder[:stop].parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            hidden = self.run_layers(hidden, 0, stop)
        if stop < len(self.feature_encoder):
            return hidden.permute(0, 2, 1, 3)
        return hidden.squeeze(-1).transpose(1, 2)

    def blocks_of(self, block_outputs: torch.Tensor) -> int:
        """How many of the stack's blocks gave `block_outputs` (batch, columns, channels, mel bands), by their
        (channels, mel bands); an error naming the shapes the blocks give otherwise."""
        shapes = self.block_output_shapes()[:-1]
        if block_outputs.dim() != 4 or tuple(block_outputs.shape[2:]) not in shapes:
            raise ValueError(
                f"feature encoder block outputs must be (batch_size, columns, channels, mel bands) with (channels, "
                f"mel bands) one of {shapes} (the output of the stack's lower 1-{len(shapes)} blocks, from "
                f"compute_feature_encoder_outputs(..., blocks=N)); got {tuple(block_outputs.shape)}."
            )
        return shapes.index(tuple(block_outputs.shape[2:])) + 1

    def top_blocks_outputs(self, block_outputs: torch.Tensor) -> torch.Tensor:
        """(batch, frames, 96) output of the stack from the output of its lower blocks (`feature_encoder_outputs`
        with `blocks`): the blocks above them run on it."""
        start = self.blocks_end(self.blocks_of(block_outputs))
        hidden = block_outputs.permute(0, 2, 1, 3).contiguous(memory_format=torch.channels_last)
        return self.run_layers(hidden, start, len(self.feature_encoder)).squeeze(-1).transpose(1, 2)

    def project(self, feature_encoder_outputs: torch.Tensor) -> torch.Tensor:
        """(batch, hidden, frames) features from the stack's (batch, frames, 96) output."""
        return self.projection(self.layer_norm(feature_encoder_outputs)).transpose(1, 2)

    def forward(self, input_values: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(self.feature_encoder_outputs(input_values, frame_mask))


FRONTEND_CLASSES: dict[str, type[nn.Module]] = {
    "waveform": WaveNetFrontend,
    "log_mel": WaveNetLogMelFrontend,
    "mfcc": WaveNetMfccFrontend,
    "speech_embedding": WaveNetSpeechEmbeddingFrontend,
}
"""`WaveNetConfig.frontend` name -> front-end module."""


def feature_encoder_of(encoder: nn.Module | None) -> nn.Module | None:
    """The pretrained feature encoder of an audio encoder (the `"speech_embedding"` stack of a WaveNet encoder's
    front-end), or None for an encoder without one (another front-end, another model, no encoder)."""
    return getattr(getattr(encoder, "frontend", None), "feature_encoder", None)


class WaveNetResidualLayer(GradientCheckpointingLayer):
    """One gated dilated layer: `z = tanh(W_f * x) * sigmoid(W_g * x)`, then a residual and a skip projection."""

    def __init__(self, config: WaveNetConfig, dilation: int):
        super().__init__()
        self.dilated_conv = WaveNetCausalConv1d(
            config.hidden_size, 2 * config.hidden_size, config.kernel_size, dilation=dilation
        )
        self.output_conv = nn.Conv1d(config.hidden_size, 2 * config.hidden_size, kernel_size=1)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        filter_part, gate_part = self.dilated_conv(hidden_states).chunk(2, dim=1)
        gated = self.dropout(torch.tanh(filter_part) * torch.sigmoid(gate_part))
        residual, skip = self.output_conv(gated).chunk(2, dim=1)
        return (hidden_states + residual) * math.sqrt(0.5), skip


class WaveNetPreTrainedModel(SafeSerializationMixin, PreTrainedModel):
    config: WaveNetConfig
    config_class = WaveNetConfig
    base_model_prefix = "wavenet"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["WaveNetResidualLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MelSpectrumFrontend):
            module.reset_buffers()
        if isinstance(module, WaveNetMfccFrontend):
            # PyTorch's default initialisation of the projection (uniform, +/- 1 / sqrt(num_mfcc), bias too), larger
            # than N(0, initializer_range): it reads voices never heard better (README: Audio encoder options for
            # unseen voices). Children are initialised before their parent, so this replaces the projection's normal
            # draw; weights loaded by `from_pretrained` are marked initialised and kept.
            init.kaiming_uniform_(module.projection.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.projection.in_features)
            init.uniform_(module.projection.bias, -bound, bound)
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            # Variance-preserving convolutions train the deep gated stacks from scratch far better than N(0, 0.02).
            init.kaiming_normal_(module.weight, nonlinearity="linear")
            if module.bias is not None:
                init.zeros_(module.bias)

    def _get_feature_vector_attention_mask(
        self, feature_vector_length: int, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Frame-level mask (batch, frames) from a sample-level `attention_mask` (batch, samples).

        A frame is real when it covers at least one real sample (same name and signature as in `Wav2Vec2Model`).
        """
        return frame_mask_from_samples(attention_mask, self.config.samples_per_frame, feature_vector_length)


class WaveNetModel(WaveNetPreTrainedModel):
    r"""
    WaveNet-style encoder of raw 16 kHz mono audio.

    Outputs a [`~transformers.modeling_outputs.BaseModelOutputWithPooling`]:
    - `last_hidden_state` (`torch.FloatTensor` of shape `(batch_size, frames, hidden_size)`), with
      `frames = ceil(samples / config.samples_per_frame)`;
    - `pooler_output` (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): mean over the real frames (with
      `config.pooling="mean_std"`, their mean and standard deviation projected to `hidden_size`);
    - `hidden_states` (tuple of `(batch_size, frames, hidden_size)`, with `output_hidden_states=True`): the front-end
      output and the residual stream after every dilated layer.

    In evaluation mode with `config.inference_frequency_warps` (spectral front-ends), each clip is read once per warp
    and every output above is the mean over its readings (same shapes).

    Example:

    ```python
    >>> import torch
    >>> from hf_multimodal import WaveNetConfig, WaveNetModel
    >>> model = WaveNetModel(WaveNetConfig(hidden_size=32, num_stacks=1, layers_per_stack=3)).eval()
    >>> outputs = model(torch.randn(2, 16000))
    >>> outputs.last_hidden_state.shape, outputs.pooler_output.shape
    (torch.Size([2, 100, 32]), torch.Size([2, 32]))
    ```
    """

    def __init__(self, config: WaveNetConfig):
        super().__init__(config)
        self.frontend = FRONTEND_CLASSES[config.frontend](config)
        self.layers = nn.ModuleList(
            WaveNetResidualLayer(config, dilation=2**index)
            for _ in range(config.num_stacks)
            for index in range(config.layers_per_stack)
        )
        self.output_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # Statistics pooling projects mean and standard deviation back to hidden_size; mean pooling has no weights,
        # so configs saved before `pooling` existed load as they were.
        self.pooling_projection = (
            nn.Linear(2 * config.hidden_size, config.hidden_size) if config.pooling == "mean_std" else None
        )
        self.gradient_checkpointing = False
        self.post_init()

    def freeze_feature_encoder(self, trainable_top_blocks: int = 0) -> None:
        """Keep the weights of the front-end's feature encoder (the pretrained `"speech_embedding"` stack) fixed in
        training, as `Wav2Vec2Model.freeze_feature_encoder` does; its layer norm and projection, the dilated stacks
        and the pooling still learn. `scripts/train.py --freeze_feature_encoder` calls it.

        Args:
            trainable_top_blocks (`int`, *optional*, defaults to 0): How many of the stack's convolution blocks
                (`SPEECH_EMBEDDING_BLOCKS`, each ending in a max-pooling; the last conv with the top one), counted
                from its output, keep learning. The blocks below them run without building a graph, so a training
                step costs less (2 of 5: about a third of the stack's forward and backward;
                `scripts/train.py --feature_encoder_trainable_blocks`).

        Example:

        ```python
        >>> from hf_multimodal import WaveNetConfig, WaveNetModel
        >>> model = WaveNetModel(WaveNetConfig(frontend="speech_embedding", hidden_size=32, num_stacks=1))
        >>> model.freeze_feature_encoder(trainable_top_blocks=2)
        >>> [any(p.requires_grad for p in block.parameters()) for block in model.frontend.feature_encoder_blocks()]
        [False, False, False, True, True]
        ```
        """
        frontend = self._feature_encoding_frontend(
            "to freeze", "Freeze the whole encoder instead (scripts/train.py --freeze_modalities audio)."
        )
        if not 0 <= trainable_top_blocks < SPEECH_EMBEDDING_BLOCKS:
            raise ValueError(
                f"trainable_top_blocks must be between 0 and {SPEECH_EMBEDDING_BLOCKS - 1} (the stack has "
                f"{SPEECH_EMBEDDING_BLOCKS} blocks; to train all of them, do not freeze it), got "
                f"{trainable_top_blocks!r}."
            )
        for block in frontend.feature_encoder_blocks()[: SPEECH_EMBEDDING_BLOCKS - trainable_top_blocks]:
            block.requires_grad_(False)

    def _feature_encoding_frontend(self, purpose: str, fix: str) -> WaveNetSpeechEmbeddingFrontend:
        """The front-end, which must have a feature encoder; else an error saying what for (`purpose`) and the fix."""
        if feature_encoder_of(self) is None:
            raise ValueError(
                f"frontend={self.config.frontend!r} has no feature encoder {purpose}: only 'speech_embedding' has "
                f"one. {fix}"
            )
        return self.frontend

    @torch.no_grad()
    def compute_feature_encoder_outputs(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None, blocks: int | None = None
    ) -> tuple[torch.FloatTensor, torch.BoolTensor | None]:
        r"""
        The pretrained stack's output for `input_values` (the arguments of `forward`): `(batch_size, frames, 96)`
        features and the bool mask of the real frames, `(batch_size, frames)` (None without `attention_mask`). Passed
        back to `forward` as `feature_encoder_outputs` (and `attention_mask`), they stand for the waveforms: a frozen
        stack's outputs can be computed once per clip (`hf_multimodal.feature_cache` does it in training).

        With `blocks` (1 to 4), the output of the stack's lower `blocks` only: `(batch_size, columns, channels, mel
        bands)` (`frontend.block_output_shapes()`, its first columns silent left context) and the mask of its real
        columns, `(batch_size, columns)`; passed back the same way, the blocks above them run on it (the lower
        blocks of a stack whose top blocks learn, `freeze_feature_encoder(trainable_top_blocks=...)`).

        Example:

        ```python
        >>> import torch
        >>> from hf_multimodal import WaveNetConfig, WaveNetModel
        >>> config = WaveNetConfig(frontend="speech_embedding", hidden_size=32, num_stacks=1, layers_per_stack=2)
        >>> model = WaveNetModel(config).eval()
        >>> waveforms = torch.randn(2, 16000)
        >>> features, _ = model.compute_feature_encoder_outputs(waveforms)
        >>> features.shape  # 80 ms frames of 1 s
        torch.Size([2, 13, 96])
        >>> torch.allclose(model(feature_encoder_outputs=features).pooler_output, model(waveforms).pooler_output)
        True
        >>> lower, _ = model.compute_feature_encoder_outputs(waveforms, blocks=3)
        >>> lower.shape  # 40 ms columns (and a silent one), 72 channels, 4 mel bands
        torch.Size([2, 27, 72, 4])
        >>> torch.allclose(model(feature_encoder_outputs=lower).pooler_output, model(waveforms).pooler_output)
        True
        ```
        """
        frontend = self._feature_encoding_frontend("to run", "Pass input_values to forward instead.")
        if blocks is not None and not 1 <= blocks <= SPEECH_EMBEDDING_BLOCKS:
            raise ValueError(
                f"blocks must be between 1 and {SPEECH_EMBEDDING_BLOCKS} (the stack's blocks, from the bottom), got "
                f"{blocks!r}."
            )
        input_values, frame_mask = self._frames(input_values, attention_mask)
        outputs = frontend.feature_encoder_outputs(input_values, frame_mask, blocks=blocks)
        if frame_mask is None or outputs.dim() == 3:
            return outputs, frame_mask
        columns = frontend.output_columns(
            1 + SPEECH_EMBEDDING_MEL_FRAMES_PER_FRAME * frame_mask.sum(-1), 0, frontend.blocks_end(blocks)
        )
        return outputs, torch.arange(outputs.shape[1], device=columns.device) < columns[:, None]

    def feature_encoder_frame_mask(
        self, feature_encoder_outputs: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.BoolTensor | None:
        """The `(batch_size, frames)` mask of the real output frames of `feature_encoder_outputs` and their
        `attention_mask` (`compute_feature_encoder_outputs`'s): that mask itself for the stack's output, derived from
        the real columns for the output of its lower blocks. None without a mask."""
        if attention_mask is None:
            return None
        if feature_encoder_outputs.dim() == 3:
            return attention_mask.bool()
        frontend = self._feature_encoding_frontend(
            "for feature_encoder_outputs to come from", "Pass input_values instead of feature_encoder_outputs."
        )
        start = frontend.blocks_end(frontend.blocks_of(feature_encoder_outputs))
        frames = frontend.output_columns(torch.tensor(feature_encoder_outputs.shape[1]), start)
        real = frontend.output_columns(attention_mask.sum(-1), start)
        return torch.arange(int(frames), device=real.device) < real[:, None]

    def _frames(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.BoolTensor | None]:
        """Mono waveforms padded to whole frames, and the mask of the real frames (None without `attention_mask`)."""
        input_values = mono_waveforms(input_values)
        remainder = (-input_values.shape[-1]) % self.config.samples_per_frame
        if remainder:
            input_values = F.pad(input_values, (0, remainder))
        num_frames = input_values.shape[-1] // self.config.samples_per_frame
        if attention_mask is None:
            return input_values, None
        return input_values, self._get_feature_vector_attention_mask(num_frames, attention_mask)

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        feature_encoder_outputs: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple[torch.Tensor, ...]:
        r"""
        input_values (`torch.FloatTensor` of shape `(batch_size, samples)`):
            Mono waveforms at `config.sampling_rate`, as returned by [`WaveNetFeatureExtractor`].
        attention_mask (`torch.LongTensor` of shape `(batch_size, samples)`, *optional*):
            1 for real samples, 0 for padding. Padding then changes neither the real frames nor `pooler_output`.
            With `feature_encoder_outputs`, the mask of their real frames, `(batch_size, frames)`.
            (`audio_attention_mask`, its name before hf_multimodal 0.2, is still accepted, with a warning.)
        feature_encoder_outputs (`torch.FloatTensor` of shape `(batch_size, frames, 96)`, *optional*):
            The `"speech_embedding"` stack's output from [`compute_feature_encoder_outputs`], instead of
            `input_values`: the rest of the encoder runs on it as on the waveforms it was computed from. Or the output
            of its lower blocks, `(batch_size, columns, channels, mel bands)` (`blocks=N` there), with the mask of its
            real columns as `attention_mask`: the blocks above them run on it first.
        """
        if "audio_attention_mask" in kwargs:
            if attention_mask is not None:
                raise ValueError("got attention_mask and audio_attention_mask (its old name): pass attention_mask only.")
            warnings.warn("WaveNetModel(audio_attention_mask=...) is deprecated: pass attention_mask=...", FutureWarning)
            attention_mask = kwargs.pop("audio_attention_mask")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_values is None) == (feature_encoder_outputs is None):
            raise ValueError(
                "pass either input_values (waveforms) or feature_encoder_outputs (from "
                "compute_feature_encoder_outputs), exactly one of them."
            )
        if feature_encoder_outputs is not None:
            batch_size = feature_encoder_outputs.shape[0]
            frontend = self._feature_encoding_frontend(
                "for feature_encoder_outputs to come from", "Pass input_values instead of feature_encoder_outputs."
            )
            frame_mask = self.feature_encoder_frame_mask(feature_encoder_outputs, attention_mask)
            if feature_encoder_outputs.dim() == 4:  # the output of the stack's lower blocks: the others run on it
                feature_encoder_outputs = frontend.top_blocks_outputs(feature_encoder_outputs)
            features = frontend.project(feature_encoder_outputs)
        else:
            input_values, frame_mask = self._frames(input_values, attention_mask)
            batch_size = input_values.shape[0]
            features = self.frontend(input_values, frame_mask)

        # The residual stream is held as (batch, frames, hidden), the layout returned, and each layer reads the tensor
        # returned: a transposed copy made only for the output would be off the graph and take no gradient.
        hidden_states = features.transpose(1, 2)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        skip_sum = torch.zeros_like(hidden_states.transpose(1, 2))
        for layer in self.layers:
            residual_stream, skip = layer(hidden_states.transpose(1, 2))
            hidden_states = residual_stream.transpose(1, 2)
            skip_sum = skip_sum + skip
            if output_hidden_states:
                all_hidden_states += (hidden_states,)

        last_hidden_state = self.layer_norm(self.output_proj(F.gelu(skip_sum.transpose(1, 2))))
        readings = last_hidden_state.shape[0] // batch_size
        if readings > 1:  # the front-end read each clip at several frequency warps: their mean
            last_hidden_state = last_hidden_state.unflatten(0, (readings, -1)).mean(0)
            if output_hidden_states:
                all_hidden_states = tuple(h.unflatten(0, (readings, -1)).mean(0) for h in all_hidden_states)
        if self.pooling_projection is None:
            pooled_output = masked_mean(last_hidden_state, frame_mask)
        else:
            pooled_output = self.pooling_projection(masked_mean_std(last_hidden_state, frame_mask))
        if not return_dict:
            return tuple(v for v in (last_hidden_state, pooled_output, all_hidden_states) if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state, pooler_output=pooled_output, hidden_states=all_hidden_states
        )


__all__ = ["WaveNetModel", "WaveNetPreTrainedModel", "feature_encoder_of", "frame_mask_from_samples"]

"""Configuration of the small recurrent (GRU / LSTM) encoder of token ids or log-mel audio frames."""

from __future__ import annotations

from transformers import PreTrainedConfig

from .configuration_wavenet import WaveNetConfig


CELLS: tuple[str, ...] = ("gru", "lstm")
"""Names accepted by `RecurrentEncoderConfig.cell`."""

INPUT_KINDS: tuple[str, ...] = ("tokens", "audio")
"""Names accepted by `RecurrentEncoderConfig.input_kind`."""

POOLINGS: tuple[str, ...] = ("mean", "last")
"""Names accepted by `RecurrentEncoderConfig.pooling`."""


class RecurrentEncoderConfig(PreTrainedConfig):
    r"""
    Configuration of a [`RecurrentEncoderModel`]: a stack of GRU or LSTM layers over token embeddings (a text
    encoder) or over log-mel frames (an audio encoder), a layer norm, and masked pooling over the real positions.

    The audio input goes through the log-mel front-end of the WaveNet encoder (`WaveNetLogMelFrontend`: causal log-mel
    frames normalised per mel bin over each clip's real frames, then a linear projection to `hidden_size`); its
    settings are the WaveNet's `"log_mel"` ones (`sampling_rate`, `num_mel_bins`, `window_ms`, `hop_ms`).

    Args:
        cell (`str`, *optional*, defaults to `"gru"`):
            `"gru"` or `"lstm"`.
        input_kind (`str`, *optional*, defaults to `"tokens"`):
            `"tokens"` (`input_ids` through an embedding table) or `"audio"` (waveforms `input_values` through the
            log-mel front-end).
        vocab_size (`int`, *optional*, defaults to 30522):
            Size of the token embedding table (`"tokens"` only); the default matches the BERT uncased vocabulary of the
            package's default tokenizer.
        embedding_size (`int`, *optional*, defaults to 128):
            Width of the token embeddings (`"tokens"` only).
        pad_token_id (`int`, *optional*, defaults to 0):
            Id of the padding token, whose embedding starts at zero (`"tokens"` only).
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate, in Hz, of the waveforms (`"audio"` only).
        num_mel_bins (`int`, *optional*, defaults to 40):
            Mel bands of the front-end (`"audio"` only).
        window_ms (`float`, *optional*, defaults to 25.0):
            Analysis window of the front-end, in milliseconds (`"audio"` only).
        hop_ms (`float`, *optional*, defaults to 10.0):
            Step between frames, in milliseconds (`"audio"` only): one recurrent step per hop.
        hidden_size (`int`, *optional*, defaults to 128):
            Width of the output (the last hidden state and the pooled output). A bidirectional encoder gives each
            direction half of it, so it must then be even. The audio front-end projects to this width too.
        num_layers (`int`, *optional*, defaults to 2):
            Number of stacked recurrent layers.
        bidirectional (`bool`, *optional*, defaults to `True`):
            Read each sequence in both directions (padding never reaches the backward direction: sequences are
            packed to their real length).
        dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the embeddings / front-end output and between recurrent layers.
        pooling (`str`, *optional*, defaults to `"mean"`):
            `pooler_output`: `"mean"` over the real positions, or `"last"`, the final state of each direction (of the
            last real position forwards, of the first one backwards). The multimodal model mean-pools the last hidden
            state itself, whatever this says.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the layer norms.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser of the embeddings and linear layers.

    Example:

    ```python
    >>> from hf_multimodal import RecurrentEncoderConfig, RecurrentEncoderModel
    >>> config = RecurrentEncoderConfig(cell="lstm", input_kind="audio", sampling_rate=8000, hidden_size=32)
    >>> config.samples_per_frame
    80
    >>> model = RecurrentEncoderModel(config)
    ```
    """

    model_type = "recurrent_encoder"

    cell: str = "gru"
    input_kind: str = "tokens"
    vocab_size: int = 30522
    embedding_size: int = 128
    pad_token_id: int | None = 0
    sampling_rate: int = 16000
    num_mel_bins: int = 40
    window_ms: float = 25.0
    hop_ms: float = 10.0
    hidden_size: int = 128
    num_layers: int = 2
    bidirectional: bool = True
    dropout: float = 0.1
    pooling: str = "mean"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check()

    @property
    def num_directions(self) -> int:
        """2 for a bidirectional encoder, else 1."""
        return 2 if self.bidirectional else 1

    def log_mel_config(self) -> WaveNetConfig:
        """The WaveNet `"log_mel"` front-end settings of an `"audio"` encoder (projecting to `hidden_size`); raises
        `ValueError` where they are invalid (e.g. a hop longer than the window)."""
        return WaveNetConfig(
            frontend="log_mel",
            sampling_rate=self.sampling_rate,
            num_mel_bins=self.num_mel_bins,
            window_ms=self.window_ms,
            hop_ms=self.hop_ms,
            hidden_size=self.hidden_size,
            layer_norm_eps=self.layer_norm_eps,
        )

    @property
    def samples_per_frame(self) -> int:
        """Input samples per output frame of an `"audio"` encoder (the front-end's hop)."""
        return self.log_mel_config().samples_per_frame

    def _check(self) -> None:
        for name, value, allowed in (
            ("cell", self.cell, CELLS),
            ("input_kind", self.input_kind, INPUT_KINDS),
            ("pooling", self.pooling, POOLINGS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")
        for name in ("hidden_size", "num_layers", "vocab_size", "embedding_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if self.bidirectional and self.hidden_size % 2:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be even for a bidirectional encoder (each direction gets half "
                "of it): change hidden_size or set bidirectional=False."
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {self.dropout!r}.")
        if self.input_kind == "audio":
            self.log_mel_config()


__all__ = ["CELLS", "INPUT_KINDS", "POOLINGS", "RecurrentEncoderConfig"]

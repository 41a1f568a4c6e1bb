"""Small recurrent (GRU / LSTM) encoder of token ids or of log-mel audio frames, with masked pooling."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_recurrent import RecurrentEncoderConfig
from .modeling_safe_io import SafeSerializationMixin
from .modeling_wavenet import WaveNetLogMelFrontend, frame_mask_from_samples, masked_mean, mono_waveforms


RECURRENT_CELLS: dict[str, type[nn.RNNBase]] = {"gru": nn.GRU, "lstm": nn.LSTM}
"""`RecurrentEncoderConfig.cell` name -> torch recurrent layer."""

MAIN_INPUT_NAMES: dict[str, str] = {"tokens": "input_ids", "audio": "input_values"}
"""`RecurrentEncoderConfig.input_kind` -> the encoder's main input."""


class RecurrentEncoderPreTrainedModel(SafeSerializationMixin, PreTrainedModel):
    """Weight initialisation and loading of [`RecurrentEncoderModel`] (see there for an example)."""

    config: RecurrentEncoderConfig
    config_class = RecurrentEncoderConfig
    base_model_prefix = "recurrent_encoder"
    input_modalities = ("text", "audio")
    main_input_name = "input_ids"  # set per model from `config.input_kind` (an audio encoder's is "input_values")
    _input_embed_layer = "embeddings"

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, WaveNetLogMelFrontend):
            module.reset_buffers()
        if isinstance(module, nn.RNNBase):
            # Orthogonal recurrent weights per gate keep the state's scale over long sequences (a 2 s clip is 200
            # steps); an LSTM's forget gate starts open (bias 1) so that early training carries information along.
            size, gates = module.hidden_size, module.weight_hh_l0.shape[0] // module.hidden_size
            for name, parameter in module.named_parameters():
                if name.startswith("weight_hh"):
                    blocks = [nn.init.orthogonal_(torch.empty(size, size)) for _ in range(gates)]
                    init.copy_(parameter, torch.cat(blocks))
                elif name.startswith("weight_ih"):
                    init.xavier_uniform_(parameter)
                else:
                    bias = torch.zeros(parameter.shape)
                    if isinstance(module, nn.LSTM) and name.startswith("bias_ih"):
                        bias[size : 2 * size] = 1.0
                    init.copy_(parameter, bias)

    def _get_feature_vector_attention_mask(
        self, feature_vector_length: int, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Frame-level mask (batch, frames) of an `"audio"` encoder from a sample-level `attention_mask` (batch,
        samples), as `WaveNetModel` and `Wav2Vec2Model` give it."""
        return frame_mask_from_samples(attention_mask, self.config.samples_per_frame, feature_vector_length)


class RecurrentEncoderModel(RecurrentEncoderPreTrainedModel):
    r"""
    GRU or LSTM encoder of token ids (`input_kind="tokens"`) or of audio waveforms (`input_kind="audio"`, through the
    WaveNet log-mel front-end, one recurrent step per 10 ms frame by default).

    Sequences are packed to their real length, so padding changes neither the real positions (in both directions)
    nor the pooled output. Token padding must be on the right (as the package's tokenizer pads).

    Outputs a [`~transformers.modeling_outputs.BaseModelOutputWithPooling`]:
    - `last_hidden_state` (`torch.FloatTensor` of shape `(batch_size, length, hidden_size)`): the last layer's
      states (both directions concatenated), layer-normed; `length` is the number of tokens, or of frames,
      `ceil(samples / config.samples_per_frame)`;
    - `pooler_output` (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): the mean over real positions, or
      with `config.pooling="last"` the final state of each direction, layer-normed;
    - `hidden_states` (with `output_hidden_states=True`): the embeddings / front-end output (width `embedding_size`
      for tokens, `hidden_size` for audio) and the output of every recurrent layer.

    Example:

    ```python
    >>> import torch
    >>> from hf_multimodal import RecurrentEncoderConfig, RecurrentEncoderModel
    >>> model = RecurrentEncoderModel(RecurrentEncoderConfig(cell="gru", hidden_size=32, embedding_size=16)).eval()
    >>> input_ids = torch.tensor([[101, 7592, 102], [101, 102, 0]])
    >>> attention_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    >>> outputs = model(input_ids=input_ids, attention_mask=attention_mask)
    >>> outputs.last_hidden_state.shape, outputs.pooler_output.shape
    (torch.Size([2, 3, 32]), torch.Size([2, 32]))
    ```
    """

    def __init__(self, config: RecurrentEncoderConfig):
        super().__init__(config)
        self.main_input_name = MAIN_INPUT_NAMES[config.input_kind]
        if config.input_kind == "tokens":
            self.embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
            input_size = config.embedding_size
        else:
            self.frontend = WaveNetLogMelFrontend(config.log_mel_config())
            input_size = config.hidden_size
        cell = RECURRENT_CELLS[config.cell]
        per_direction = config.hidden_size // config.num_directions
        self.layers = nn.ModuleList(
            cell(
                input_size if index == 0 else config.hidden_size,
                per_direction,
                batch_first=True,
                bidirectional=config.bidirectional,
            )
            for index in range(config.num_layers)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        input_values: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple[torch.Tensor, ...]:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, length)`):
            Token ids, for a `"tokens"` encoder.
        attention_mask (`torch.LongTensor` of shape `(batch_size, length)` or `(batch_size, samples)`, *optional*):
            1 for real tokens / audio samples, 0 for padding (on the right).
        input_values (`torch.FloatTensor` of shape `(batch_size, samples)`):
            Mono waveforms at `config.sampling_rate`, for an `"audio"` encoder.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if self.config.input_kind == "tokens":
            hidden_states, mask = self._embed_tokens(input_ids, attention_mask, input_values)
        else:
            hidden_states, mask = self._embed_audio(input_values, attention_mask, input_ids)
        lengths = mask.sum(dim=-1).clamp(min=1) if mask is not None else None
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for layer in self.layers:
            hidden_states, final_states = self._run_layer(layer, self.dropout(hidden_states), lengths)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)

        last_hidden_state = self.layer_norm(hidden_states)
        if self.config.pooling == "last":
            pooled_output = self.layer_norm(final_states.transpose(0, 1).reshape(last_hidden_state.shape[0], -1))
        else:
            pooled_output = masked_mean(last_hidden_state, mask)
        if not return_dict:
            return tuple(v for v in (last_hidden_state, pooled_output, all_hidden_states) if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state, pooler_output=pooled_output, hidden_states=all_hidden_states
        )

    def _embed_tokens(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, input_values: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token embeddings `(batch, length, embedding_size)` and the bool mask of real tokens."""
        if input_ids is None or input_values is not None:
            raise ValueError(
                "this is a text (input_kind='tokens') recurrent encoder: pass input_ids (not input_values); for audio "
                "build one with RecurrentEncoderConfig(input_kind='audio')."
            )
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch_size, length), got {tuple(input_ids.shape)}.")
        if attention_mask is None:
            return self.embeddings(input_ids), None
        mask = attention_mask.bool()
        positions = torch.arange(mask.shape[1], device=mask.device)
        if not torch.equal(mask, positions.unsqueeze(0) < mask.sum(dim=-1, keepdim=True)):
            raise ValueError(
                "attention_mask must be right-padded (each row 1s, then 0s): tokenize with padding_side='right'."
            )
        return self.embeddings(input_ids), mask

    def _embed_audio(
        self, input_values: torch.Tensor | None, attention_mask: torch.Tensor | None, input_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-mel front-end frames `(batch, frames, hidden_size)` and the bool mask of real frames."""
        if input_values is None or input_ids is not None:
            raise ValueError(
                "this is an audio (input_kind='audio') recurrent encoder: pass input_values (not input_ids); for text "
                "build one with RecurrentEncoderConfig(input_kind='tokens')."
            )
        input_values = mono_waveforms(input_values)
        samples_per_frame = self.config.samples_per_frame
        # a last, partial hop becomes one more frame, as in WaveNetModel
        input_values = F.pad(input_values, (0, (-input_values.shape[-1]) % samples_per_frame))
        num_frames = input_values.shape[-1] // samples_per_frame
        if attention_mask is None:
            return self.frontend(input_values).transpose(1, 2), None
        mask = frame_mask_from_samples(attention_mask, samples_per_frame, num_frames)
        return self.frontend(input_values, mask).transpose(1, 2), mask

    @staticmethod
    def _run_layer(
        layer: nn.RNNBase, hidden_states: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One recurrent layer over the real positions: its outputs `(batch, length, hidden_size)` (zeros at padding)
        and its final states `(directions, batch, hidden_size // directions)`."""
        if lengths is None:
            outputs, state = layer(hidden_states)
        else:
            packed = pack_padded_sequence(hidden_states, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_outputs, state = layer(packed)
            outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=hidden_states.shape[1])
        final_states = state[0] if isinstance(state, tuple) else state  # an LSTM's (h, c)
        return outputs, final_states


__all__ = ["RecurrentEncoderModel", "RecurrentEncoderPreTrainedModel"]

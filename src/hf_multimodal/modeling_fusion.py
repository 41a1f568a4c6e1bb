"""Fusion heads: each turns per-modality embeddings plus a presence mask into one fused embedding.

Every head receives `features`, a dict from modality name to a `(batch_size, hidden_size)` tensor (or, for heads with
`uses_sequences = True`, a `(batch_size, length, hidden_size)` tensor with a matching `padding_masks` entry), and
`presence`, a `(batch_size, num_modalities)` bool tensor whose columns follow `head.modalities`. A modality that is
absent for an example is masked out (attention and softmax masks, packed sequences, a multiplicative identity, a
learned placeholder), never read as zeros that could pass for data. Every example must have at least one modality.
"""

from __future__ import annotations

import itertools
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from .configuration_multimodal import MultimodalConfig


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension restricted to `mask` (rows need at least one true entry)."""
    return logits.masked_fill(~mask, torch.finfo(logits.dtype).min).softmax(dim=-1) * mask


class MultimodalFusion(nn.Module):
    """Base class of fusion heads: `forward(features, presence, padding_masks=None) -> (batch_size, hidden_size)`.

    Parameters created directly on a head (placeholders, type embeddings, queries) are initialised by
    `MultimodalPreTrainedModel._init_weights`.
    """

    uses_sequences: ClassVar[bool] = False
    description: ClassVar[str] = ""
    """One line for model cards: what the head does."""
    expresses_relations: ClassVar[bool] = True
    """Whether the head can represent a label that is a relation between modalities (e.g. "the image and the
    recording show the same digit"). tests/test_modeling_fusion.py checks it on a toy equality task."""
    max_learning_rate: ClassVar[float | None] = None
    """The largest learning rate the fusion part (projections, head, classifier) trains well at with this head, or
    None for no limit: `MultimodalTrainer` lowers the fusion part's default learning rate to it (a learning rate
    given for the fusion part is used as given)."""

    def __init__(self, config: MultimodalConfig):
        super().__init__()
        self.modalities = config.modalities
        self.hidden_size = config.fusion_hidden_size

    def stack(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch_size, num_modalities, hidden_size) tensor of `features` in `self.modalities` order."""
        return torch.stack([features[modality] for modality in self.modalities], dim=1)

    def modality_weights(
        self, features: dict[str, torch.Tensor], presence: torch.BoolTensor, padding_masks=None
    ) -> torch.Tensor | None:
        """The head's own weight of each modality per example, `(batch_size, num_modalities)`, summing to 1 over the
        present ones (softmax weights, gates, attention), for heads that weigh modalities; None for the others."""
        return None


class ConcatFusion(MultimodalFusion):
    """Concatenation followed by an MLP; an absent modality is replaced by a learned per-modality placeholder."""

    description: ClassVar[str] = "concatenation of the modality embeddings, then an MLP"

    def __init__(self, config: MultimodalConfig):
        super().__init__(config)
        self.missing_embeddings = nn.Parameter(torch.empty(len(self.modalities), self.hidden_size))
        self.mlp = nn.Sequential(
            nn.Linear(len(self.modalities) * self.hidden_size, self.hidden_size),
            nn.GELU(),
            nn.Dropout(config.fusion_dropout),
        )

    def forward(self, features, presence, padding_masks=None):
        stacked = torch.where(presence.unsqueeze(-1), self.stack(features), self.missing_embeddings.to(presence.device))
        return self.mlp(stacked.flatten(1))


class WeightedSumFusion(MultimodalFusion):
    """A learned weight per modality, softmax-normalised over the modalities present in each example.

    It is additive in the modalities: it cannot express a relation between them (whether two modalities agree), so
    use another head for relational labels.
    """

    description: ClassVar[str] = "a learned weight per modality, softmax over the present ones"
    expresses_relations: ClassVar[bool] = False

    def __init__(self, config: MultimodalConfig):
        super().__init__(config)
        self.modality_logits = nn.Parameter(torch.empty(len(self.modalities)))
        self.dropout = nn.Dropout(config.fusion_dropout)

    def forward(self, features, presence, padding_masks=None):
        weights = self.modality_weights(features, presence)
        return self.dropout((weights.unsqueeze(-1) * self.stack(features)).sum(dim=1))

    def modality_weights(self, features, presence, padding_masks=None):
        return masked_softmax(self.modality_logits.expand(presence.shape[0], -1), presence)


class GatedFusion(MultimodalFusion):
    """Gated multimodal unit (Arevalo et al., 2017) for any number of modalities.

    Each modality gets `h_m = tanh(W_m x_m)` and a gate logit from `[x_m, context]`, where the context is the mean of
    the present modalities; gates are softmax-normalised over the present modalities and `sum_m g_m h_m` is returned.
    Its output is a weighted sum of per-modality transforms, so it cannot express a relation between modalities
    beyond what the gates capture (0.73 balanced accuracy on a toy "are the two equal?" task where the comparator,
    concat, attention, transformer, BiLSTM and low-rank heads reach 1.0): use one of those for relational labels.
    """

    description: ClassVar[str] = "a gated multimodal unit with context-dependent gates"
    expresses_relations: ClassVar[bool] = False

    def __init__(self, config: MultimodalConfig):
        super().__init__(config)
        self.transforms = nn.ModuleDict({m: nn.Linear(self.hidden_size, self.hidden_size) for m in self.modalities})
        self.gates = nn.ModuleDict({m: nn.Linear(2 * self.hidden_size, 1) for m in self.modalities})
        self.dropout = nn.Dropout(config.fusion_dropout)

    def forward(self, features, presence, padding_masks=None):
        transformed = torch.stack([torch.tanh(self.transforms[m](features[m])) for m in self.modalities], dim=1)
        gates = self.modality_weights(features, presence)
        return self.dropout((gates.unsqueeze(-1) * transformed).sum(dim=1))

    def modality_weights(self, features, presence, padding_masks=None):
        weights = presence.unsqueeze(-1).to(features[self.modalities[0]].dtype)
        context = (self.stack(features) * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        gate_logits = torch.cat(
            [self.gates[m](torch.cat([features[m], context], dim=-1)) for m in self.modalities], dim=-1
        )
        return masked_softmax(gate_logits, presence)


class AttentionFusion(MultimodalFusion):
    """A learned query attends over the modality tokens (plus type embeddings); absent ones are key-padding masked."""

    description: ClassVar[str] = "a learned query attending over one token per modality"

    def __init__(self, config: MultimodalConfig):
        super().__init__(config)
        self.type_embeddings = nn.Parameter(torch.empty(len(self.modalities), self.hidden_size))
        self.query = nn.Parameter(torch.empty(1, 1, self.hidden_size))
        self.attention = nn.MultiheadAttention(
            self.hidden_size, config.fusion_num_heads, dropout=config.fusion_dropout, batch_first=True
        )
        self.layer_norm = nn.LayerNorm(self.hidden_size)

    def forward(self, features, presence, padding_masks=None):
        attended, _ = self._attend(features, presence, need_weights=False)
        return self.layer_norm(attended.squeeze(1))

    def modality_weights(self, features, presence, padding_masks=None):
        return self._attend(features, presence, need_weights=True)[1].squeeze(1)  # averaged over the heads

    def _attend(self, features, presence, need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = self.stack(features) + self.type_embeddings
        query = self.query.expand(tokens.shape[0], -1, -1)
        return self.attention(query, tokens, tokens, key_padding_mask=~presence, need_weights=need_weights)


class TransformerFusion(MultimodalFusion):
    """Cross-modal transformer over the concatenated token sequences of all modalities, read out at a [CLS] token.

    Tokens of absent modalities and padding tokens are key-padding masked, so every layer attends across the real
    tokens of the present modalities only.
    """

    description: ClassVar[str] = "a cross-modal transformer over all token sequences with a [CLS] readout"

    uses_sequences: ClassVar[bool] = True
    max_learning_rate: ClassVar[float | None] = 3e-4
    """At 1e-3 its validation loss stops improving within a few epochs; at 3e-4 it learns relations 5-12 points better
    and classifies about as well (README: "The transformer head's learning rate")."""

    def __init__(self, config: MultimodalConfig):
        super().__init__(config)
        self.type_embeddings = nn.Parameter(torch.empty(len(self.modalities), self.hidden_size))
        self.cls_token = nn.Parameter(torch.empty(1, 1, self.hidden_size))
        layer = nn.TransformerEncoderLayer(
            self.hidden_size,
            config.fusion_num_heads,
            dim_feedforward=2 * self.hidden_size,
            dropout=config.fusion_dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.fusion_num_layers, enable_nested_tensor=False)
        self.layer_norm = nn.LayerNorm(self.hidden_size)

    def forward(self, features, presence, padding_masks=None):
        if padding_masks is None:
            raise ValueError("TransformerFusion needs padding_masks for its token sequences.")
        batch_size = presence.shape[0]
        tokens = [self.cls_token.expand(batch_size, -1, -1)]
        keep = [presence.new_ones(batch_size, 1)]
        eager = not torch.compiler.is_compiling()
        for index, modality in enumerate(self.modalities):
            sequence, mask = features[modality], padding_masks[modality] & presence[:, index : index + 1]
            if eager:
                # Masked tokens never reach the [CLS] readout: leave out the positions no example reads (a modality
                # absent from the whole batch, padding past the longest sequence), which only shortens the attention
                # (leave-one-modality-out importance fuses batches without a modality). Traced graphs keep the shapes.
                length = int(mask.any(dim=0).nonzero().max()) + 1 if bool(mask.any()) else 0
                sequence, mask = sequence[:, :length], mask[:, :length]
            tokens.append(sequence + self.type_embeddings[index])
            keep.append(mask)
        hidden_states, padding = torch.cat(tokens, dim=1), ~torch.cat(keep, dim=1)
        *layers, last = self.encoder.layers
        for layer in layers:
            hidden_states = layer(hidden_states, src_key_padding_mask=padding)
        return self.layer_norm(self.cls_readout(last, hidden_states, padding))

    @staticmethod
    def cls_readout(
        layer: nn.TransformerEncoderLayer, hidden_states: torch.Tensor, padding: torch.BoolTensor
    ) -> torch.Tensor:
        """The last encoder layer at the [CLS] position only, `(batch_size, hidden_size)`: the readout never uses the
        other positions' outputs, so their queries and feed-forward are skipped (the same pre-norm layer, weights and
        dropouts as `layer(hidden_states)[:, 0]`)."""
        normed = layer.norm1(hidden_states)
        attended, _ = layer.self_attn(normed[:, :1], normed, normed, key_padding_mask=padding, need_weights=False)
        cls = hidden_states[:, 0] + layer.dropout1(attended[:, 0])
        feed_forward = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(cls)))))
        return cls + layer.dropout2(feed_forward)


class BiLSTMFusion(MultimodalFusion):
    """A bidirectional LSTM over the present modality tokens of each example, packed so absent ones are skipped."""

    description: ClassVar[str] = "a bidirectional LSTM over the modality tokens"

    def __init__(self, config: MultimodalConfig):
        super().__init__(config)
        self.type_embeddings = nn.Parameter(torch.empty(len(self.modalities), self.hidden_size))
        self.lstm = nn.LSTM(
            self.hidden_size,
            self.hidden_size,
            num_layers=config.fusion_num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=config.fusion_dropout if config.fusion_num_layers > 1 else 0.0,
        )
        self.output = nn.Linear(2 * self.hidden_size, self.hidden_size)

    def forward(self, features, presence, padding_masks=None):
        tokens = self.stack(features) + self.type_embeddings
        # Move each example's present tokens to the front, keeping their modality order (scattered to their places
        # rather than stably sorted, which ONNX cannot express).
        present = presence.long()
        lengths = present.sum(dim=1)
        places = torch.where(presence, present.cumsum(dim=1), lengths[:, None] + (1 - present).cumsum(dim=1)) - 1
        tokens = torch.zeros_like(tokens).scatter(1, places.unsqueeze(-1).expand_as(tokens), tokens)
        if torch.compiler.is_compiling():
            last_hidden = self._last_hidden_by_length(tokens, lengths)
        else:
            packed = pack_padded_sequence(tokens, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, (last_hidden, _) = self.lstm(packed)
        return self.output(torch.cat([last_hidden[-2], last_hidden[-1]], dim=-1))

    def _last_hidden_by_length(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The final states of the packed LSTM without packing, whose shapes depend on the data (traced graphs,
        torch.export / ONNX, cannot hold it): the LSTM reads the first `n` tokens of every example for each `n` up
        to the number of modalities, and each example keeps the run of its own length."""
        _, (last_hidden, _) = self.lstm(tokens[:, :1])
        for length in range(2, tokens.shape[1] + 1):
            _, (hidden, _) = self.lstm(tokens[:, :length])
            last_hidden = torch.where((lengths == length)[None, :, None], hidden, last_hidden)
        return last_hidden


class LowRankTensorFusion(MultimodalFusion):
    """Low-rank multimodal fusion (Liu et al., 2018): the outer product of `[x_m, 1]` over modalities, computed as
    a rank-`fusion_rank` sum of element-wise products of per-modality factors. An absent modality contributes the
    multiplicative identity, so the product runs over the present modalities only.
    """

    description: ClassVar[str] = "low-rank multimodal tensor fusion (LMF)"

    def __init__(self, config: MultimodalConfig):
        super().__init__(config)
        rank = config.fusion_rank
        self.factors = nn.ParameterDict(
            {m: nn.Parameter(torch.empty(rank, self.hidden_size + 1, self.hidden_size)) for m in self.modalities}
        )
        self.rank_weights = nn.Parameter(torch.empty(1, rank))
        self.bias = nn.Parameter(torch.empty(self.hidden_size))
        self.layer_norm = nn.LayerNorm(self.hidden_size)
        self.dropout = nn.Dropout(config.fusion_dropout)

    def forward(self, features, presence, padding_masks=None):
        product = None
        for index, modality in enumerate(self.modalities):
            with_one = nn.functional.pad(features[modality], (0, 1), value=1.0)
            factor = torch.einsum("bd,rdo->bro", with_one, self.factors[modality])
            factor = torch.where(presence[:, index, None, None], factor, torch.ones_like(factor))
            product = factor if product is None else product * factor
        fused = torch.einsum("xr,bro->bo", self.rank_weights, product) + self.bias
        return self.dropout(self.layer_norm(fused))


class ComparatorFusion(MultimodalFusion):
    """Explicit pairwise comparison, as natural-language-inference models compare two sentences (Mou et al., 2016;
    Conneau et al., 2017): for every pair `(a, b)` of modalities a small MLP reads `[a, b, a * b, |a - b|]`, which
    makes agreement and disagreement between two modalities directly visible. The representations of the pairs an
    example has (both modalities present) are averaged, and so are its present modalities; the two means are fused
    by a linear layer. An example with a single modality has no pair: a learned placeholder stands in for the pair
    mean, so any non-empty subset of modalities works.
    """

    description: ClassVar[str] = "a comparator MLP over [a, b, a * b, |a - b|] for every pair of present modalities"

    def __init__(self, config: MultimodalConfig):
        super().__init__(config)
        self.pairs = list(itertools.combinations(range(len(self.modalities)), 2))
        self.comparators = nn.ModuleDict(
            {
                self._pair_name(i, j): nn.Sequential(
                    nn.Linear(4 * self.hidden_size, self.hidden_size), nn.GELU(), nn.Dropout(config.fusion_dropout)
                )
                for i, j in self.pairs
            }
        )
        self.missing_pair = nn.Parameter(torch.empty(self.hidden_size))
        self.output = nn.Linear(2 * self.hidden_size, self.hidden_size)
        self.layer_norm = nn.LayerNorm(self.hidden_size)

    def _pair_name(self, i: int, j: int) -> str:
        return f"{self.modalities[i]}_{self.modalities[j]}"

    def forward(self, features, presence, padding_masks=None):
        weights = presence.unsqueeze(-1).to(features[self.modalities[0]].dtype)
        unary = (self.stack(features) * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        pair_sum, pair_count = torch.zeros_like(unary), torch.zeros_like(unary[:, :1])
        for i, j in self.pairs:
            a, b = features[self.modalities[i]], features[self.modalities[j]]
            compared = self.comparators[self._pair_name(i, j)](torch.cat([a, b, a * b, (a - b).abs()], dim=-1))
            both = (presence[:, i] & presence[:, j]).unsqueeze(-1).to(unary.dtype)
            pair_sum, pair_count = pair_sum + both * compared, pair_count + both
        pairs = torch.where(pair_count > 0, pair_sum / pair_count.clamp(min=1.0), self.missing_pair.to(unary.dtype))
        return self.layer_norm(self.output(torch.cat([pairs, unary], dim=-1)))


FUSION_CLASSES: dict[str, type[MultimodalFusion]] = {
    "concat": ConcatFusion,
    "weighted_sum": WeightedSumFusion,
    "gated": GatedFusion,
    "attention": AttentionFusion,
    "transformer": TransformerFusion,
    "bilstm": BiLSTMFusion,
    "low_rank_tensor": LowRankTensorFusion,
    "comparator": ComparatorFusion,
}


__all__ = ["FUSION_CLASSES", "ComparatorFusion", "LowRankTensorFusion", "MultimodalFusion"]

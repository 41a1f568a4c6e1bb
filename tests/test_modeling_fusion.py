"""Fusion heads on their own: which of them can represent a relation between modalities (a toy equality task with
free embeddings as perfect encoders), and the comparator head's masking of absent modalities."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn

from hf_multimodal import FUSION_TYPES, MultimodalConfig, MultimodalModel
from hf_multimodal.modeling_fusion import FUSION_CLASSES

from conftest import TINY_AUDIO, TINY_VISION


HIDDEN = 32


def pair_config(fusion_type: str) -> MultimodalConfig:
    return MultimodalConfig(
        text_config=None,
        vision_config=TINY_VISION,
        audio_config=TINY_AUDIO,
        fusion_type=fusion_type,
        fusion_hidden_size=HIDDEN,
        fusion_num_heads=2,
        fusion_dropout=0.0,
        num_labels=2,
    )


def head_inputs(head, first: torch.Tensor, second: torch.Tensor) -> tuple:
    """Inputs of `head` for a batch whose image and audio features are `first` and `second` (both present)."""
    presence = torch.ones(first.shape[0], 2, dtype=torch.bool)
    if head.uses_sequences:
        masks = {m: presence[:, :1] for m in head.modalities}
        return {"image": first[:, None], "audio": second[:, None]}, presence, masks
    return {"image": first, "audio": second}, presence, None


def equality_accuracy(fusion_type: str, seed: int, steps: int = 400) -> float:
    """Balanced accuracy of `head + linear classifier` trained on "are the two digits equal?" over all 100 pairs of
    10 free per-digit embeddings per modality (the encoders are perfect: only the head's capacity is tested)."""
    torch.manual_seed(seed)
    config = pair_config(fusion_type)
    head = MultimodalModel(config).fusion  # initialised by the model's _init_weights
    tables = nn.ParameterDict({m: nn.Parameter(torch.randn(10, HIDDEN)) for m in ("image", "audio")})
    classifier = nn.Linear(HIDDEN, 2)
    parameters = [*head.parameters(), *tables.parameters(), *classifier.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=3e-3)
    first, second = torch.meshgrid(torch.arange(10), torch.arange(10), indexing="ij")
    first, second = first.flatten(), second.flatten()
    labels = (first == second).long()
    weights = torch.where(labels == 1, 9.0, 1.0)  # balance the 10 equal pairs against the 90 unequal ones
    for _ in range(steps):
        logits = classifier(head(*head_inputs(head, tables["image"][first], tables["audio"][second])))
        loss = (nn.functional.cross_entropy(logits, labels, reduction="none") * weights).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predictions = classifier(head(*head_inputs(head, tables["image"][first], tables["audio"][second]))).argmax(-1)
    recalls = [(predictions[labels == value] == value).float().mean() for value in (0, 1)]
    return float(sum(recalls) / 2)


@pytest.mark.slow
@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_head_capacity_for_relations_matches_its_declaration(fusion_type):
    """Heads that declare `expresses_relations` learn equality of two modalities; the others cannot, and their
    docstring says so."""
    accuracies = [equality_accuracy(fusion_type, seed=0)]
    if FUSION_CLASSES[fusion_type].expresses_relations:
        if accuracies[0] < 0.95:  # one more draw before calling it a failure
            accuracies.append(equality_accuracy(fusion_type, seed=1))
        assert max(accuracies) >= 0.95, f"{fusion_type}: balanced accuracy {accuracies} on the equality task"
    else:
        accuracies.append(equality_accuracy(fusion_type, seed=1))
        assert max(accuracies) < 0.8, f"{fusion_type} learns equality ({accuracies}): declare expresses_relations"
        assert "cannot express a relation" in FUSION_CLASSES[fusion_type].__doc__


def test_comparator_reads_only_present_pairs():
    torch.manual_seed(0)
    config = MultimodalConfig(
        text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        vision_config=TINY_VISION,
        audio_config=TINY_AUDIO,
        fusion_type="comparator",
        fusion_hidden_size=HIDDEN,
        fusion_num_heads=2,
    )
    head = MultimodalModel(config).fusion.eval()
    features = {m: torch.randn(3, HIDDEN) for m in ("text", "image", "audio")}
    presence = torch.tensor([[True, True, False], [False, False, True], [True, True, True]])
    fused = head(features, presence)
    changed = dict(features, audio=torch.randn(3, HIDDEN))
    refused = head(changed, presence)
    torch.testing.assert_close(refused[0], fused[0])  # audio absent in example 0: its values are never read
    assert not torch.allclose(refused[1], fused[1]) and not torch.allclose(refused[2], fused[2])
    assert torch.isfinite(fused).all()  # example 1 has one modality and no pair: the placeholder stands in


def test_transformer_leaves_out_the_positions_no_example_reads_as_a_traced_graph_masks_them():
    torch.manual_seed(0)
    head = MultimodalModel(pair_config("transformer")).fusion.eval()
    features = {"image": torch.randn(3, 4, HIDDEN), "audio": torch.randn(3, 6, HIDDEN)}
    masks = {
        "image": torch.tensor([[True, True, False, False], [True, False, False, False], [True, True, True, False]]),
        "audio": torch.ones(3, 6, dtype=torch.bool),
    }
    presence = torch.tensor([[True, False], [True, False], [True, False]])  # audio absent from the whole batch
    with torch.no_grad():
        shortened = head(features, presence, masks)
        with mock.patch.object(torch.compiler, "is_compiling", return_value=True):
            masked = head(features, presence, masks)
    torch.testing.assert_close(shortened, masked, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_transformer_reads_its_last_layer_at_cls_only_as_the_whole_layer_would(mode):
    torch.manual_seed(0)
    head = MultimodalModel(pair_config("transformer")).fusion.train(mode == "train")  # dropout 0: deterministic
    hidden_states = torch.randn(3, 5, HIDDEN)
    padding = torch.tensor([[False] * 5, [False, False, True, True, True], [False, True, False, True, False]])
    assert len(head.encoder.layers) == 2
    for layer in head.encoder.layers:
        expected = layer(hidden_states, src_key_padding_mask=padding)[:, 0]
        torch.testing.assert_close(head.cls_readout(layer, hidden_states, padding), expected, atol=1e-5, rtol=1e-4)

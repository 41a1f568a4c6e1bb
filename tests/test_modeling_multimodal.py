"""MultimodalModel / MultimodalForSequenceClassification: every fusion type x every modality subset, missing
modalities, padding invariance, gradients, losses, other encoders, pretrained-weight survival, save / load."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, BertModel

from hf_multimodal import (
    FUSION_TYPES,
    MODALITIES,
    MultimodalForSequenceClassification,
    MultimodalModel,
    WaveNetConfig,
    WaveNetModel,
)

from conftest import TINY_AUDIO, TINY_TEXT, TINY_VISION, tiny_config, tiny_model


SUBSETS = [subset for size in (1, 2, 3) for subset in itertools.combinations(MODALITIES, size)]
BATCH = 4


def tensor_inputs(modalities, batch_size: int = BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random model inputs for `modalities`; the text and audio rows have different real lengths."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    if "text" in modalities:
        lengths = torch.arange(batch_size) % 5 + 3
        inputs["input_ids"] = torch.randint(1000, 2000, (batch_size, 8), generator=generator)
        inputs["attention_mask"] = (torch.arange(8)[None, :] < lengths[:, None]).long()
        inputs["input_ids"] = inputs["input_ids"] * inputs["attention_mask"]
    if "image" in modalities:
        inputs["pixel_values"] = torch.randn(batch_size, 3, 32, 32, generator=generator)
    if "audio" in modalities:
        lengths = 800 * (torch.arange(batch_size) % 3 + 1)
        inputs["input_values"] = torch.randn(batch_size, 2400, generator=generator)
        inputs["audio_attention_mask"] = (torch.arange(2400)[None, :] < lengths[:, None]).long()
        inputs["input_values"] = inputs["input_values"] * inputs["audio_attention_mask"]
    return inputs


def missing_pattern(modalities) -> dict[str, torch.Tensor]:
    """Presence flags in which each modality misses somewhere but every example keeps at least one."""
    flags = {}
    for index, modality in enumerate(modalities):
        column = torch.ones(BATCH, dtype=torch.bool)
        if len(modalities) > 1:
            column[index % BATCH] = False
        flags[f"has_{modality}"] = column
    return flags


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_every_fusion_type_with_every_modality_subset(fusion_type):
    """Shapes for every subset, with examples that miss a modality inside the batch, at training and inference."""
    for modalities in SUBSETS:
        model = tiny_model(modalities, fusion_type=fusion_type)
        inputs = {**tensor_inputs(modalities), **missing_pattern(modalities)}
        for training in (True, False):
            model.train(training)
            outputs = model(**inputs, labels=torch.tensor([0, 1, 2, 0]))
            assert outputs.logits.shape == (BATCH, 3), (fusion_type, modalities)
            assert outputs.fused_embeds.shape == (BATCH, 32)
            assert torch.isfinite(outputs.logits).all() and torch.isfinite(outputs.loss)
            expected_presence = torch.stack([inputs[f"has_{m}"] for m in modalities], dim=1)
            assert torch.equal(outputs.presence, expected_presence)
            for modality in MODALITIES:
                embeds = getattr(outputs, f"{modality}_embeds")
                assert (embeds is None) == (modality not in modalities)


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_absent_rows_are_masked_not_read(fusion_type):
    """What sits in the input rows of a missing modality never reaches the output, and neither do other examples."""
    model = tiny_model(fusion_type=fusion_type)
    inputs = {**tensor_inputs(MODALITIES), **missing_pattern(MODALITIES)}
    reference = model(**inputs).logits
    scrambled = dict(inputs)
    scrambled["pixel_values"] = inputs["pixel_values"].clone()
    scrambled["pixel_values"][~inputs["has_image"]] = 1e4
    scrambled["input_values"] = inputs["input_values"].clone()
    scrambled["input_values"][~inputs["has_audio"]] = -7.0
    torch.testing.assert_close(model(**scrambled).logits, reference)
    alone = {name: value[2:3] for name, value in inputs.items()}
    torch.testing.assert_close(model(**alone).logits, reference[2:3], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fusion_type", ["gated", "transformer"])
def test_text_and_audio_padding_do_not_change_predictions(fusion_type):
    model = tiny_model(("text", "audio"), fusion_type=fusion_type)
    inputs = tensor_inputs(("text", "audio"), batch_size=1)
    inputs["attention_mask"][:] = 1
    inputs["audio_attention_mask"][:] = 1
    padded = {
        "input_ids": torch.cat([inputs["input_ids"], torch.zeros(1, 9, dtype=torch.long)], dim=1),
        "attention_mask": torch.cat([inputs["attention_mask"], torch.zeros(1, 9, dtype=torch.long)], dim=1),
        "input_values": torch.cat([inputs["input_values"], torch.zeros(1, 4321)], dim=1),
        "audio_attention_mask": torch.cat([inputs["audio_attention_mask"], torch.zeros(1, 4321, dtype=torch.long)], 1),
    }
    torch.testing.assert_close(model(**padded).logits, model(**inputs).logits, atol=1e-5, rtol=1e-4)


def test_images_reach_the_vision_encoder_channels_last():
    """The convolutions get their input in the layout oneDNN runs fastest (benchmark, items 2 and 13), which gives
    the values of the processor's contiguous layout."""
    model = tiny_model(("image",), fusion_type="concat")
    encoder, seen = model.multimodal.vision_model, []

    def record_layout(module, args, kwargs):
        seen.append(kwargs["pixel_values"].is_contiguous(memory_format=torch.channels_last))

    encoder.register_forward_pre_hook(record_layout, with_kwargs=True)
    pixels = tensor_inputs(("image",))["pixel_values"]
    with torch.no_grad():
        model(pixel_values=pixels)
        assert seen == [True]
        contiguous = encoder(pixel_values=pixels).last_hidden_state
        channels_last = encoder(pixel_values=pixels.contiguous(memory_format=torch.channels_last)).last_hidden_state
    assert torch.allclose(contiguous, channels_last, atol=1e-5)


def test_gradients_reach_present_encoders_only():
    model = tiny_model(fusion_type="concat").train()
    inputs = tensor_inputs(("text", "audio"))
    model(**inputs, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    for modality, attribute in (("text", "text_model"), ("audio", "audio_model")):
        grads = [p.grad for p in getattr(model.multimodal, attribute).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), modality
    assert all(p.grad is None for p in model.multimodal.vision_model.parameters())
    assert all(p.grad is None for p in model.multimodal.projections["image"].parameters())


def test_modality_flagged_absent_everywhere_gets_no_gradient():
    model = tiny_model(fusion_type="attention").train()
    inputs = {**tensor_inputs(MODALITIES), "has_image": torch.zeros(BATCH, dtype=torch.bool)}
    model(**inputs, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    assert all(p.grad is None for p in model.multimodal.vision_model.parameters())
    assert any(p.grad is not None for p in model.multimodal.text_model.parameters())


def test_modality_dropout_hides_modalities_but_never_all():
    model = tiny_model(modality_dropout=0.9).train()
    inputs = tensor_inputs(MODALITIES, batch_size=BATCH)
    seen = torch.zeros(3)
    for seed in range(20):
        torch.manual_seed(seed)
        presence = model.multimodal(**inputs).presence
        assert presence.any(dim=1).all()
        seen += (~presence).float().sum(dim=0)
    assert (seen > 0).all()
    model.eval()
    assert model.multimodal(**inputs).presence.all()


def test_modality_dropout_can_keep_two_modalities_for_relational_labels():
    model = tiny_model(modality_dropout=0.9, modality_dropout_min_present=2).train()
    inputs = {**tensor_inputs(MODALITIES, batch_size=BATCH), "has_text": torch.tensor([True, True, False, False])}
    for seed in range(20):
        torch.manual_seed(seed)
        presence = model.multimodal(**inputs).presence
        assert (presence.sum(dim=1) >= 2).all()  # examples 2 and 3 have exactly two: both always kept
        assert presence[2:, 1:].all()


class TestAlignment:
    """The shared embedding space: get_*_features, the contrastive loss, and the auxiliary losses of a classifier."""

    def test_features_are_the_embeddings_the_fusion_head_reads(self):
        model = MultimodalModel(tiny_config()).eval()
        inputs = tensor_inputs(MODALITIES)
        outputs = model(**inputs)
        text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output
        image = model.get_image_features(inputs["pixel_values"]).pooler_output
        audio = model.get_audio_features(inputs["input_values"], inputs["audio_attention_mask"]).pooler_output
        for features, expected in ((text, outputs.text_embeds), (image, outputs.image_embeds), (audio, outputs.audio_embeds)):
            assert features.shape == (BATCH, 32)
            torch.testing.assert_close(features, expected)
        classifier = tiny_model()  # the classifier hands them over to its MultimodalModel
        assert classifier.get_image_features(inputs["pixel_values"]).pooler_output.shape == (BATCH, 32)

    def test_contrastive_loss_aligns_pairs_and_trains_the_temperature(self):
        torch.manual_seed(0)
        model = MultimodalModel(tiny_config(("image", "audio"))).train()
        inputs = tensor_inputs(("image", "audio"))
        loss = model(**inputs, return_loss=True).loss
        assert loss.shape == () and torch.isfinite(loss)
        loss.backward()
        assert model.logit_scale.grad is not None and model.audio_model.layers[0].dilated_conv.weight.grad is not None
        assert model.logit_scale.item() == pytest.approx(2.6592, abs=1e-4)  # CLIP's initial ln(1 / 0.07)

    def test_contrastive_loss_without_pairs_says_what_to_give(self):
        model = MultimodalModel(tiny_config(("image", "audio"))).train()
        inputs = tensor_inputs(("image", "audio"))
        with pytest.raises(ValueError, match="no two examples of this batch share two modalities"):
            model(**inputs, has_audio=torch.tensor([True, False, False, False]), return_loss=True)
        with pytest.raises(ValueError, match="no two examples"):
            model(pixel_values=inputs["pixel_values"], return_loss=True)  # a single modality

    def test_auxiliary_losses_are_added_in_training_only(self):
        labels = torch.tensor([0, 1, 2, 0])
        inputs = tensor_inputs(MODALITIES)
        plain = tiny_model(classifier_dropout=0.0, fusion_dropout=0.0)
        auxiliary = tiny_model(classifier_dropout=0.0, fusion_dropout=0.0, contrastive_loss_weight=1.0, modality_loss_weight=1.0)
        assert set(auxiliary.modality_classifiers) == set(MODALITIES) and not hasattr(plain, "modality_classifiers")
        auxiliary.load_state_dict(plain.state_dict(), strict=False)
        with torch.no_grad():
            assert auxiliary(**inputs, labels=labels).loss.item() == pytest.approx(plain(**inputs, labels=labels).loss.item())
            for model in (plain, auxiliary):  # training mode without any dropout: only the auxiliary terms differ
                model.train()
                for module in model.modules():
                    if isinstance(module, torch.nn.Dropout):
                        module.p = 0.0
            assert auxiliary(**inputs, labels=labels).loss.item() > plain(**inputs, labels=labels).loss.item()

    def test_a_classifier_starts_from_an_aligned_model_with_another_fusion_head(self, tmp_path):
        aligned = MultimodalModel(tiny_config(fusion_type="gated"))
        aligned.save_pretrained(tmp_path)
        classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, fusion_type="comparator", num_labels=2)
        assert classifier.config.fusion_type == "comparator"
        for name, tensor in aligned.state_dict().items():
            if not name.startswith("fusion."):
                torch.testing.assert_close(classifier.multimodal.state_dict()[name], tensor)


@pytest.mark.parametrize(
    ("problem_type", "labels", "num_labels"),
    [
        ("single_label_classification", torch.tensor([0, 2, 1, 1]), 3),
        ("multi_label_classification", torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]]), 3),
        ("regression", torch.tensor([0.5, -1.0, 2.0, 0.0]), 1),
    ],
)
def test_problem_types_compute_the_matching_loss(problem_type, labels, num_labels):
    model = tiny_model(("text", "image"), num_labels=num_labels)
    outputs = model(**tensor_inputs(("text", "image")), labels=labels)
    logits = outputs.logits
    expected = {
        "single_label_classification": lambda: torch.nn.functional.cross_entropy(logits, labels),
        "multi_label_classification": lambda: torch.nn.functional.binary_cross_entropy_with_logits(logits, labels),
        "regression": lambda: torch.nn.functional.mse_loss(logits.squeeze(), labels),
    }[problem_type]()
    assert model.config.problem_type == problem_type
    torch.testing.assert_close(outputs.loss, expected)


@pytest.mark.parametrize(
    ("modality", "sub_config"),
    [
        ("text", {"model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}),
        ("text", {"model_type": "roberta", **TINY_TEXT, "vocab_size": 2100}),
        ("image", {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 64, "image_size": 32, "patch_size": 8}),
        ("image", {"model_type": "convnext", "hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2}),
        ("audio", {"model_type": "wav2vec2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 64, "conv_dim": [16, 16], "conv_stride": [5, 4], "conv_kernel": [10, 8],
                   "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
                   "feat_extract_norm": "layer", "do_stable_layer_norm": True}),
    ],
)
def test_other_encoders_from_auto_model(modality, sub_config):
    key = {"text": "text_config", "image": "vision_config", "audio": "audio_config"}[modality]
    torch.manual_seed(0)
    config = tiny_config(MODALITIES, fusion_type="transformer", **{key: sub_config})
    model = MultimodalForSequenceClassification(config).eval()
    batch = {**tensor_inputs(MODALITIES), **missing_pattern(MODALITIES)}
    outputs = model(**batch, labels=torch.tensor([0, 1, 2, 0]))
    assert outputs.logits.shape == (BATCH, 3) and torch.isfinite(outputs.loss)
    assert type(model.get_encoder(modality)).__name__.lower().startswith(sub_config["model_type"].replace("_", ""))


def test_wav2vec2_audio_padding_is_masked_at_frame_level():
    audio_config = {
        "model_type": "wav2vec2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "conv_dim": [16, 16], "conv_stride": [5, 4], "conv_kernel": [10, 8],
        "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
    }
    torch.manual_seed(0)
    model = MultimodalModel(tiny_config(("audio",), audio_config=audio_config)).eval()
    audio = torch.randn(1, 2000)
    alone = model(input_values=audio, audio_attention_mask=torch.ones(1, 2000, dtype=torch.long)).fused_embeds
    padded = torch.cat([audio, torch.zeros(1, 3000)], dim=1)
    mask = (torch.arange(5000) < 2000).long()[None]
    torch.testing.assert_close(model(input_values=padded, audio_attention_mask=mask).fused_embeds, alone, atol=1e-4, rtol=1e-3)


class TestErrors:
    def test_example_without_any_modality(self):
        model = tiny_model(("text", "audio"))
        inputs = {**tensor_inputs(("text", "audio")), "has_text": torch.tensor([True, False, True, True]),
                  "has_audio": torch.tensor([True, False, False, True])}
        with pytest.raises(ValueError, match=r"examples \[1\] have no modality at all"):
            model(**inputs)

    def test_inputs_for_a_modality_the_model_lacks(self):
        model = tiny_model(("text", "audio"))
        with pytest.raises(ValueError, match="got image inputs \\(pixel_values\\) but this model has no image encoder"):
            model(**tensor_inputs(("text", "image")))

    def test_no_inputs(self):
        with pytest.raises(ValueError, match="no inputs given: pass at least one of input_ids, pixel_values"):
            tiny_model(("text", "image"))()

    def test_mismatched_batch_sizes(self):
        inputs = {**tensor_inputs(("text",), batch_size=2), **tensor_inputs(("audio",), batch_size=3)}
        with pytest.raises(ValueError, match="different batch sizes"):
            tiny_model(("text", "audio"))(**inputs)

    def test_presence_flag_without_inputs(self):
        with pytest.raises(ValueError, match="has_audio marks examples as having audio but input_values is None"):
            tiny_model(("text", "audio"))(**tensor_inputs(("text",)), has_audio=torch.ones(BATCH, dtype=torch.bool))

    def test_unknown_modality_encoder(self):
        with pytest.raises(ValueError, match="this model has no image encoder"):
            tiny_model(("text",)).get_encoder("image")


def test_gradient_checkpointing_trains_every_encoder():
    model = tiny_model(fusion_type="gated").train()
    model.activation_checkpointing_enable()
    model(**tensor_inputs(MODALITIES), labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    assert model.multimodal.audio_model.layers[0].gradient_checkpointing
    assert model.multimodal.text_model.encoder.layer[0].gradient_checkpointing
    assert model.multimodal.audio_model.layers[0].dilated_conv.weight.grad is not None


def test_pretrained_backbone_weights_survive_init_save_and_load(tmp_path):
    backbone_folders = tmp_path / "backbones"
    torch.manual_seed(1)
    BertModel(BertConfig(**TINY_TEXT)).save_pretrained(backbone_folders / "bert")
    WaveNetModel(WaveNetConfig(**TINY_AUDIO)).save_pretrained(backbone_folders / "wavenet")
    bert = AutoModel.from_pretrained(backbone_folders / "bert")
    wavenet = AutoModel.from_pretrained(backbone_folders / "wavenet")
    model = MultimodalForSequenceClassification.from_backbones(
        text=backbone_folders / "bert", image=TINY_VISION, audio=backbone_folders / "wavenet",
        fusion_hidden_size=32, fusion_num_heads=2, num_labels=2,
    )
    # local folders are recorded by their name only: saved configs must not carry this machine's paths
    assert model.config.backbones == {"text": "bert", "audio": "wavenet"}
    assert model.config.text_config._name_or_path == "bert"

    def assert_same(encoder, reference):
        state = encoder.state_dict()
        for name, tensor in reference.state_dict().items():
            if name.startswith("pooler."):  # unused by the multimodal model, so not built
                continue
            torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)

    assert_same(model.get_encoder("text"), bert)
    assert_same(model.get_encoder("audio"), wavenet)
    model.save_pretrained(tmp_path / "model")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    assert_same(loaded.get_encoder("text"), bert)
    assert_same(loaded.get_encoder("audio"), wavenet)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_token_embeddings_are_the_text_encoders_and_resize_through_a_save(tmp_path):
    model = tiny_model()
    assert model.get_input_embeddings() is model.multimodal.text_model.get_input_embeddings()
    vocabulary = model.config.text_config.vocab_size
    model.resize_token_embeddings(vocabulary + 5)  # e.g. after adding tokens to the tokenizer
    assert model.get_input_embeddings().num_embeddings == model.config.text_config.vocab_size == vocabulary + 5
    inputs = {"input_ids": torch.tensor([[vocabulary + 4, 3]]), "attention_mask": torch.ones(1, 2, dtype=torch.long)}
    model.eval().save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)
    with pytest.raises(ValueError, match=r"no text encoder \(text_config is None\), so it has no input embeddings"):
        tiny_model(("image", "audio")).get_input_embeddings()


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_modality_importance_is_the_leave_one_out_drop_of_the_predicted_score(fusion_type):
    model = tiny_model(fusion_type=fusion_type)
    inputs = {**tensor_inputs(MODALITIES), **missing_pattern(MODALITIES)}  # example i lacks modality i (i < 3)
    output = model.modality_importance(**inputs)
    full = model(**inputs).logits.softmax(-1)
    torch.testing.assert_close(output.logits.softmax(-1), full)
    assert output.predicted.tolist() == full.argmax(-1).tolist()
    for index, modality in enumerate(MODALITIES):
        flags = inputs[f"has_{modality}"].clone()
        flags[:] = False  # the same examples through the ordinary forward, with this modality removed
        without = model(**{**inputs, f"has_{modality}": flags}).logits.softmax(-1)
        expected = (full - without).gather(1, output.predicted[:, None])[:, 0]
        present = inputs[f"has_{modality}"]
        torch.testing.assert_close(output.importance[present, index], expected[present], atol=1e-6, rtol=1e-5)
        assert output.importance[~present, index].isnan().all()  # an absent modality has no importance


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_fusion_weights_are_the_heads_own_weights_of_the_present_modalities(fusion_type):
    model = tiny_model(fusion_type=fusion_type).eval()
    inputs = {**tensor_inputs(MODALITIES), **missing_pattern(MODALITIES)}  # example i lacks modality i (i < 3)
    weights = model.modality_importance(**inputs).fusion_weights
    if fusion_type not in ("weighted_sum", "gated", "attention"):
        assert weights is None  # a head that does not weigh modalities has no such view
        return
    present = torch.stack([inputs[f"has_{modality}"] for modality in MODALITIES], dim=1)
    assert weights.shape == present.shape and (weights[~present] == 0).all() and (weights[present] > 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(present)))
    if fusion_type == "weighted_sum":  # the learned softmax weights, renormalised over the present modalities
        logits = model.multimodal.fusion.modality_logits.detach()
        expected = logits.exp() * present / (logits.exp() * present).sum(dim=1, keepdim=True)
        torch.testing.assert_close(weights, expected)


def test_modality_importance_of_an_only_modality_is_undefined_and_bad_inputs_are_named():
    model = tiny_model()
    inputs = tensor_inputs(("image",), batch_size=2)
    assert model.modality_importance(**inputs).importance.isnan().all()
    with pytest.raises(TypeError, match=r"got also \['labels'\]"):
        model.modality_importance(**inputs, labels=torch.tensor([0, 1]))


def test_output_hidden_states_gives_every_encoders_states_per_example(batch_inputs, processor):
    model = tiny_model().eval()
    batch = processor(**batch_inputs)
    with torch.no_grad():
        plain = model(**batch)
        outputs = model(**batch, output_hidden_states=True)
    assert torch.equal(outputs.logits, plain.logits) and plain.text_hidden_states is None
    for modality in ("text", "image", "audio"):
        states = getattr(outputs, f"{modality}_hidden_states")
        encoder = model.multimodal.get_encoder(modality)
        present = batch[f"has_{modality}"]
        inputs = {"text": ("input_ids", "attention_mask"), "image": ("pixel_values",), "audio": ("input_values",)}
        with torch.no_grad():
            alone = encoder(**{name: batch[name][present] for name in inputs[modality]}, output_hidden_states=True)
        assert len(states) == len(alone.hidden_states) > 1
        for state, expected in zip(states, alone.hidden_states):
            assert state.shape[0] == len(present) and not state[~present].any()  # zero rows where it is absent
            torch.testing.assert_close(state[present], expected, rtol=1e-4, atol=1e-5)
    # the config's default, as in transformers
    model.config.output_hidden_states = True
    with torch.no_grad():
        assert model(**batch).audio_hidden_states is not None

"""torch.compile without graph breaks (every fusion head, train and eval), bucketed padding that bounds the shapes a
compiled model sees, and activation checkpointing per encoder. Compilation here uses the "eager" backend: dynamo
captures the same graphs as with inductor, without inductor's minutes of code generation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import tiny_model
from test_modeling_multimodal import tensor_inputs
from transformers import pipeline

from hf_multimodal import FUSION_TYPES, MODALITIES
from hf_multimodal.data_collator import MultimodalDataCollator
from hf_multimodal.modeling_multimodal import INPUT_NAMES, PRESENCE_NAMES, allow_compiling_recurrent_layers
from hf_multimodal.processing_multimodal import bucket_multiples, padding_kwargs


def _without_dropout(modalities=MODALITIES, **kwargs):
    """A tiny model with every dropout off (its draws differ between eager and compiled code): the dropout modules,
    and through `fusion_dropout` the attention and LSTM dropout of the fusion heads."""
    model = tiny_model(modalities, fusion_dropout=0.0, **kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _compiled(model):
    torch._dynamo.reset()
    allow_compiling_recurrent_layers(model)  # the bilstm head
    return torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: a graph break is an error


def _inputs_lacking_modalities(modalities) -> dict[str, torch.Tensor]:
    inputs = tensor_inputs(modalities)
    inputs["has_text"] = torch.tensor([True, False, True, True])
    inputs["has_audio"] = torch.tensor([True, True, False, True])
    return inputs


@pytest.mark.slow  # two whole-model compilations: about 10 s each on a loaded core
@pytest.mark.parametrize(
    ("fusion_type", "training"), [("gated", False), ("transformer", True)], ids=["gated-eval", "transformer-train"]
)
def test_compiled_model_gives_the_eager_logits(fusion_type, training):
    """The whole classifier compiles as one graph (presence masks, scattering, a pooled and a sequence head) and
    matches eager mode on examples lacking modalities. In training, with modality dropout: text and audio only, whose
    layer norms do not mix examples (a ResNet's batch norm in training mode does, and a compiled graph encodes every
    row: see README "torch.compile"). Every head is checked alone below; `scripts/benchmark.py --only compile`
    counts the graphs of whole runs."""
    modalities = ("text", "audio") if training else MODALITIES
    model = _without_dropout(modalities, fusion_type=fusion_type, modality_dropout=0.5)
    model.train(training)
    inputs, labels = _inputs_lacking_modalities(modalities), torch.tensor([0, 1, 2, 0])
    compiled = _compiled(model)
    torch.manual_seed(3)  # the same modality-dropout draw
    expected = model(**inputs, labels=labels)
    torch.manual_seed(3)
    actual = compiled(**inputs, labels=labels)
    torch.testing.assert_close(actual.presence, expected.presence)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=1e-4, atol=1e-5)
    given = torch.stack([inputs.get(f"has_{m}", torch.ones(4, dtype=torch.bool)) for m in modalities], dim=1)
    assert (expected.presence != given).any() == training  # modality dropout hid modalities in training only


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_compiled_fusion_head_gives_the_eager_output(fusion_type, training):
    """Every fusion head compiles as one graph (fullgraph) and gives its eager output, in both modes, on features
    of examples lacking modalities."""
    model = _without_dropout(fusion_type=fusion_type)
    inputs = _inputs_lacking_modalities(MODALITIES)
    tensors = {name: inputs.get(name) for names in INPUT_NAMES.values() for name in names}
    presence = model.multimodal._presence(tensors, {name: inputs.get(name) for name in PRESENCE_NAMES.values()})
    with torch.no_grad():
        _, features, padding_masks, _ = model.multimodal._encode_present(tensors, presence)
    head = model.multimodal.fusion.train(training)
    masks = padding_masks if head.uses_sequences else None
    actual = _compiled(head)(features, presence, masks)
    torch.testing.assert_close(actual, head(features, presence, masks), rtol=1e-4, atol=1e-5)


def test_bucket_multiples_and_padding_kwargs():
    assert bucket_multiples(32, 16000) == {"text": 16, "audio": 4000}
    assert bucket_multiples(8, None) == {"text": 8}
    padding = padding_kwargs({"text": 16, "audio": 4000}, ["audio", "image"])
    assert padding == {"audio_kwargs": {"pad_to_multiple_of": 4000}}
    for wrong in ({"image": 8}, {"text": 0}, {"audio": 2.5}):
        with pytest.raises(ValueError, match="pad_to_multiple_of takes positive integers for text and audio"):
            padding_kwargs(wrong, MODALITIES)


def _varied_rows(count: int) -> list[dict]:
    """Rows of every text length from 1 to `count` words and audio of `count` different lengths up to 1 s."""
    rng = np.random.default_rng(0)
    return [
        {
            "text": " ".join(["seven"] * (1 + index)),
            "image": None,
            "audio": {"array": rng.standard_normal(800 + 450 * index).astype(np.float32), "sampling_rate": 16000},
            "label": index % 3,
        }
        for index in range(count)
    ]


def test_bucketed_collator_bounds_the_shapes(processor):
    """Padded to the longest, every batch of this data has its own shape; padded to buckets, batches take one of
    the bucketed lengths (text: multiples of 16 tokens up to 32; audio: quarters of the 1 s cut)."""
    rows = _varied_rows(32)
    batches = [rows[start : start + 2] for start in range(0, len(rows), 2)]
    multiples = bucket_multiples(processor.max_text_length, 16000)

    def shapes(pad_to_multiple_of):
        collator = MultimodalDataCollator(
            processor, ("text", "audio"), max_audio_seconds=1.0, pad_to_multiple_of=pad_to_multiple_of
        )
        return {(tuple(b["input_ids"].shape), tuple(b["input_values"].shape)) for b in map(collator, batches)}

    longest, bucketed = shapes({}), shapes(multiples)
    assert len(longest) == len(batches)
    assert {text[1] for text, _ in bucketed} <= {16, 32}
    assert {audio[1] for _, audio in bucketed} <= {4000, 8000, 12000, 16000}
    assert len(bucketed) <= 2 * 4 and len(bucketed) < len(longest)


def test_checkpointing_per_encoder_enables_exactly_those_and_keeps_the_gradients():
    inputs = {**tensor_inputs(MODALITIES), "labels": torch.tensor([0, 1, 2, 0])}

    def gradients(modalities):
        model = tiny_model(fusion_type="gated").train()
        if modalities is not None:
            model.activation_checkpointing_enable(modalities=modalities)
        torch.manual_seed(5)  # checkpointing replays the dropout draws of the forward
        model(**inputs).loss.backward()
        return model, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain_model, plain = gradients(None)
    assert not plain_model.is_activation_checkpointing
    model, checkpointed = gradients(["text", "audio"])
    enabled = {m: model.get_encoder(m).is_activation_checkpointing for m in MODALITIES}
    assert enabled == {"text": True, "image": False, "audio": True}
    assert model.multimodal.audio_model.layers[0].gradient_checkpointing
    assert model.multimodal.text_model.encoder.layer[0].gradient_checkpointing
    assert plain.keys() == checkpointed.keys()
    for name, gradient in plain.items():
        torch.testing.assert_close(checkpointed[name], gradient, rtol=1e-5, atol=1e-7, msg=name)
    assert any(name.startswith("multimodal.text_model.") for name in plain)


def test_checkpointing_per_encoder_refuses_what_cannot_be_checkpointed():
    model = tiny_model(("text", "image"))
    with pytest.raises(ValueError, match=r"not supported by the encoder of image \(ResNetModel\)"):
        model.activation_checkpointing_enable(modalities=["text", "image"])
    assert not model.get_encoder("text").is_activation_checkpointing  # nothing enabled on refusal
    with pytest.raises(ValueError, match="this model has no audio encoder"):
        model.activation_checkpointing_enable(modalities=["audio"])
    with pytest.raises(ValueError, match="unknown modality 'video'"):
        model.activation_checkpointing_enable(modalities=["video"])


def test_pipeline_torch_compile_compiles_the_model_and_buckets_its_batches(processor):
    """`pipeline(..., torch_compile=...)` compiles the model in place (with the given `torch.compile` arguments) and
    pads each batch to the bucketed lengths; without it nothing changes."""
    processor = copy.deepcopy(processor)  # the session's processor stays as it is
    processor.feature_extractor.max_length_seconds = 1.0
    model = tiny_model(("text", "audio"))
    compiled = pipeline(
        "multimodal-classification", model=model, processor=processor, torch_compile={"backend": "eager"}
    )
    assert compiled.model._compiled_call_impl is not None
    assert compiled.pad_to_multiple_of == {"text": 16, "audio": 4000}
    examples = [  # decoded examples, as `preprocess` gives them
        {"text": "seven", "image": None, "audio": np.zeros(900, np.float32)},
        {"text": "a shaky seven", "image": None, "audio": None},
    ]
    batch = compiled._collate(examples)
    assert batch["input_ids"].shape[1] == 16 and batch["input_values"].shape[1] == 4000
    plain = pipeline("multimodal-classification", model=tiny_model(("text", "audio")), processor=processor)
    assert plain.pad_to_multiple_of == {} and plain.model._compiled_call_impl is None
    assert plain._collate(examples)["input_values"].shape[1] == 900


def test_training_script_buckets_with_torch_compile_and_refuses_checkpointing_a_frozen_encoder(tmp_path, processor):
    from train import DataArguments, ModelArguments, _bucket_multiples  # scripts/

    from hf_multimodal.training_args import MultimodalTrainingArguments

    data_args = DataArguments(dataset="data", max_text_tokens=32, max_audio_seconds=2.0)
    rate = processor.feature_extractor.sampling_rate
    for compiling, bucket_shapes, expected in (
        (True, None, {"text": 16, "audio": rate // 2}),  # on by default with --torch_compile
        (False, None, {}),
        (True, False, {}),
        (False, True, {"text": 16, "audio": rate // 2}),
    ):
        training_args = MultimodalTrainingArguments(str(tmp_path), torch_compile=compiling, report_to="none")
        data_args.bucket_shapes = bucket_shapes
        assert _bucket_multiples(data_args, training_args, processor) == expected
    with pytest.raises(ValueError, match=r"\['text'\] are in --freeze_modalities and --activation_checkpointing"):
        ModelArguments(freeze_modalities=["text"], activation_checkpointing_modalities=["text", "audio"])

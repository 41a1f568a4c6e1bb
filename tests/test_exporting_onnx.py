"""ONNX export (torch.onnx dynamo exporter) and the ONNX Runtime classifier: logit parity with the eager model on
dynamic batch sizes and lengths, missing modalities through the presence masks and placeholder rows, every fusion
head, and the errors that say what is wrong."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import random_audio, random_image, tiny_model

from hf_multimodal import FUSION_TYPES, MODALITIES
from hf_multimodal.exporting_onnx import OnnxMultimodalClassifier, export_onnx, max_logit_difference, pad_audio

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")


TOLERANCE = 1e-4
HEAD_MODALITIES = ("image", "audio")
ONE_LAYER_ENCODERS = {
    "vision_config": {"hidden_sizes": [16], "depths": [1], "embedding_size": 16, "layer_type": "basic"},
    "audio_config": {"hidden_size": 32, "num_stacks": 1, "layers_per_stack": 1, "frontend_channels": [16, 32, 32, 32]},
}
WORDS = ["seven", "a loud red bird", "the quick brown fox jumps over", "two", "nine nine nine", "an ambiguous one"]


def raw_batch(batch_size: int, seed: int, missing: float = 0.3, modalities=MODALITIES) -> dict:
    """Processor arguments for `batch_size` examples of varied lengths; each modality is missing with probability
    `missing`, every example keeps at least one and every modality is in at least one example."""
    rng = np.random.default_rng(seed)
    present = rng.random((batch_size, len(modalities))) >= missing
    present[~present.any(axis=1), 0] = True
    present[0, ~present.any(axis=0)] = True
    columns = {
        "text": [WORDS[(seed + row) % len(WORDS)] for row in range(batch_size)],
        "image": [random_image(seed + row, (30 + row, 40)) for row in range(batch_size)],
        "audio": [random_audio(seed + row, 0.2 + 0.05 * row) for row in range(batch_size)],
    }
    arguments = {"text": "text", "image": "images", "audio": "audio"}
    batch = {
        arguments[m]: [value if present[row, index] else None for row, value in enumerate(columns[m])]
        for index, m in enumerate(modalities)
    }
    return {**batch, "sampling_rate": 16000} if "audio" in modalities else batch


@pytest.fixture(scope="module")
def exported(processor, tmp_path_factory):
    """A gated three-modality model and its ONNX export (from a batch in which every modality is missing somewhere)."""
    model = tiny_model(fusion_type="gated")
    path = export_onnx(model, processor(**raw_batch(4, seed=0)), tmp_path_factory.mktemp("onnx") / "model.onnx")
    return model, OnnxMultimodalClassifier(path)


@pytest.mark.slow
@pytest.mark.parametrize(("batch_size", "seed"), [(1, 1), (3, 2), (8, 3), (16, 4)])
def test_logits_match_the_eager_model_on_dynamic_batch_sizes_and_lengths(exported, processor, batch_size, seed):
    model, classifier = exported
    batch = processor(**raw_batch(batch_size, seed))
    assert classifier(batch).shape == (batch_size, 3)
    assert max_logit_difference(model, classifier, batch) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("modality", MODALITIES)
def test_a_modality_missing_everywhere(exported, processor, modality):
    """Flagged absent in every row (its rows are placeholders), and left out of the batch altogether (the classifier
    fills in placeholder rows): both give the eager model's logits without that modality."""
    model, classifier = exported
    flagged = dict(processor(**raw_batch(5, seed=7, missing=0.0)))
    flagged[f"has_{modality}"] = torch.zeros(5, dtype=torch.bool)
    assert max_logit_difference(model, classifier, flagged) <= TOLERANCE
    others = tuple(m for m in MODALITIES if m != modality)
    left_out = processor(**raw_batch(5, seed=8, missing=0.0, modalities=others))
    assert max_logit_difference(model, classifier, left_out) <= TOLERANCE


@pytest.mark.slow
def test_defaults_of_inputs_left_out_follow_the_model(exported, processor):
    """No presence masks, attention masks or token type ids: as in the model, every row is present and real."""
    model, classifier = exported
    batch = processor(**raw_batch(3, seed=9, missing=0.0))
    inputs = {name: batch[name] for name in ("input_ids", "pixel_values", "input_values")}
    assert max_logit_difference(model, classifier, inputs) <= TOLERANCE


@pytest.mark.slow
def test_the_classifier_names_bad_inputs(exported, processor):
    _, classifier = exported
    batch = dict(processor(**raw_batch(3, seed=10, missing=0.0)))
    with pytest.raises(ValueError, match=r"examples \[1\] have no modality"):
        classifier({**batch, **{f"has_{m}": torch.tensor([True, False, True]) for m in MODALITIES}})
    without_images = {name: value for name, value in batch.items() if name != "pixel_values"}
    with pytest.raises(ValueError, match="has_image marks examples as having image but pixel_values is missing"):
        classifier(without_images)
    with pytest.raises(ValueError, match="exported size"):
        classifier({**batch, "pixel_values": torch.zeros(3, 3, 16, 16)})
    with pytest.raises(ValueError, match="got also"):
        classifier({**batch, "labels": torch.zeros(3)})


@pytest.mark.slow
@pytest.mark.parametrize("fusion_type", [name for name in FUSION_TYPES if name != "gated"])  # gated: `exported`
def test_every_fusion_head_exports_with_parity(fusion_type, processor, tmp_path):
    """Each head, traced without data-dependent branches (the BiLSTM without packing), on two batch sizes; over image
    and audio with one-layer encoders, to keep the export short (the three-modality graph of the gated head is tested
    above): a model of two modalities exports them only."""
    encoders = ONE_LAYER_ENCODERS
    if fusion_type == "concat":  # and a spectral front-end with its test-time ensemble over frequency warps
        audio = {**encoders["audio_config"], "frontend": "mfcc", "inference_frequency_warps": [0.9, 1.0, 1.1]}
        encoders = {**encoders, "audio_config": audio}
    if fusion_type == "comparator":  # and the pretrained speech_embedding front-end's stack
        encoders = {**encoders, "audio_config": {**encoders["audio_config"], "frontend": "speech_embedding"}}
    model = tiny_model(HEAD_MODALITIES, fusion_type=fusion_type, **encoders)
    example = processor(**raw_batch(3, seed=11, modalities=HEAD_MODALITIES))
    classifier = OnnxMultimodalClassifier(export_onnx(model, example, tmp_path / "m.onnx"))
    assert classifier.modalities == HEAD_MODALITIES
    for batch_size, seed in ((2, 12), (7, 13)):
        batch = processor(**raw_batch(batch_size, seed, modalities=HEAD_MODALITIES))
        assert max_logit_difference(model, classifier, batch) <= TOLERANCE


@pytest.mark.slow
def test_a_model_the_exporter_cannot_trace_raises_not_implemented(processor, tmp_path, monkeypatch):
    """A head that branches on the data (here through `.item()`) fails export with an error naming the model."""
    model = tiny_model(HEAD_MODALITIES, fusion_type="concat", **ONE_LAYER_ENCODERS)
    forward = type(model.multimodal.fusion).forward
    monkeypatch.setattr(
        type(model.multimodal.fusion),
        "forward",
        lambda self, features, presence, padding_masks=None: (
            forward(self, features, presence) * 2 if presence.sum().item() > 3 else forward(self, features, presence)
        ),
    )
    encoders = "encoders: image resnet, audio wavenet"
    with pytest.raises(NotImplementedError, match=f"fusion_type 'concat'; {encoders}"):
        export_onnx(model, processor(**raw_batch(3, seed=16, modalities=HEAD_MODALITIES)), tmp_path / "m.onnx")


def test_export_names_missing_modalities_and_packages(processor, tmp_path, monkeypatch):
    model = tiny_model(fusion_type="concat")
    no_images = processor(**raw_batch(3, seed=17, modalities=("text", "audio")))
    with pytest.raises(ValueError, match="example_inputs lacks pixel_values"):
        export_onnx(model, no_images, tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="MultimodalForSequenceClassification, got a MultimodalModel"):
        export_onnx(model.multimodal, no_images, tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r"pip install 'hf_multimodal\[onnx\]'"):
        export_onnx(model, no_images, tmp_path / "m.onnx")


def test_audio_is_padded_to_whole_frames_as_the_encoder_pads_it():
    inputs = {"input_values": torch.ones(2, 170), "audio_attention_mask": torch.ones(2, 170, dtype=torch.long)}
    padded = pad_audio(inputs, samples_per_frame=160, min_frames=2)
    assert padded["input_values"].shape == (2, 320) and padded["audio_attention_mask"][:, 170:].sum() == 0
    model = tiny_model(("audio",))
    with torch.inference_mode():
        assert torch.equal(model(**inputs).logits, model(**padded).logits)
    assert pad_audio(inputs, samples_per_frame=None)["input_values"].shape == (2, 170)

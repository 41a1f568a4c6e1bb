"""`MultimodalForSequenceClassification.ablation_logits` and the test evaluation of scripts/train.py built on it: every
presence variant (all modalities, then each one left out) from one pass of the encoders."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import AUDIO_DIR, TINY_AUDIO, TINY_TEXT, TINY_VISION, tiny_image_processor, tiny_model
from make_demo_dataset import build_demo_dataset, save_demo_dataset
from modality_accuracy import modality_accuracy, switch_on_frequency_warps
from modality_importance import bootstrap_first_modality
from test_modeling_multimodal import missing_pattern, tensor_inputs
from train import build_trainer, evaluate_split, parse_arguments

from hf_multimodal import FUSION_TYPES, MODALITIES, MultimodalForSequenceClassification, MultimodalProcessor
from hf_multimodal.data_collator import MultimodalDataCollator


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_every_variant_is_the_forward_with_that_modality_flagged_absent(fusion_type):
    model = tiny_model(fusion_type=fusion_type)
    inputs = {**tensor_inputs(MODALITIES), **missing_pattern(MODALITIES)}  # example i lacks modality i (i < 3)
    logits = model.ablation_logits(**inputs)
    assert list(logits) == ["all", "without_text", "without_image", "without_audio"]
    with torch.no_grad():
        torch.testing.assert_close(logits["all"], model(**inputs).logits, atol=1e-6, rtol=0)
        for modality in MODALITIES:
            absent = torch.zeros_like(inputs[f"has_{modality}"])
            expected = model(**{**inputs, f"has_{modality}": absent}).logits
            torch.testing.assert_close(logits[f"without_{modality}"], expected, atol=1e-6, rtol=0)


def test_examples_left_without_any_modality_get_nan_rows_and_bad_arguments_are_named():
    model = tiny_model(fusion_type="attention")
    inputs = tensor_inputs(MODALITIES)
    only_image = torch.tensor([True, False, False, False])  # example 0 has the image alone
    inputs |= {"has_text": ~only_image, "has_audio": ~only_image}
    logits = model.ablation_logits(**inputs, drop=("image", "text"))
    assert list(logits) == ["all", "without_image", "without_text"]
    assert logits["without_image"][0].isnan().all() and torch.isfinite(logits["without_image"][1:]).all()
    torch.testing.assert_close(logits["without_text"][0], logits["all"][0])  # example 0 had no text to lose
    with pytest.raises(ValueError, match=r"drop names \['text'\], which this model does not read"):
        tiny_model(("image", "audio")).ablation_logits(**tensor_inputs(("image", "audio")), drop=["text"])
    with pytest.raises(TypeError, match=r"ablation_logits takes the model's inputs .*got also \['labels'\]"):
        model.ablation_logits(**inputs, labels=torch.tensor([0, 1, 2, 0]))


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """A tiny demo dataset with the demo's missing modalities (each example lacks at most one)."""
    dataset = build_demo_dataset(AUDIO_DIR, num_train=24, num_validation=8, num_test=24)
    return save_demo_dataset(dataset, tmp_path_factory.mktemp("ablation") / "data")


LABEL_MAPS = {
    "single_label_classification": None,
    "multi_label_classification": lambda label: [label, (label + 3) % 10],
    "regression": float,
}


def relabelled(data: Path, problem_type: str, folder: Path) -> Path:
    """`data` with its labels turned into those of `problem_type` (a class, two classes, a number)."""
    if LABEL_MAPS[problem_type] is None:
        return data
    splits = datasets.load_from_disk(str(data))
    splits = splits.map(lambda row: {"target": LABEL_MAPS[problem_type](row["label"])}).remove_columns("label")
    splits.rename_column("target", "label").save_to_disk(str(folder))
    return folder


def untrained_trainer(data: Path, output: Path, modalities: tuple[str, ...]):
    options = {
        "dataset": data,
        "output_dir": output,
        "text_config": json.dumps(TINY_TEXT),
        "image_config": json.dumps(TINY_VISION),
        "audio_config": json.dumps(TINY_AUDIO),
        "fusion_hidden_size": 32,
        "image_size": 16,
        "max_text_tokens": 16,
        "max_audio_seconds": 1.0,
        "per_device_eval_batch_size": 8,
        "dataloader_pin_memory": False,
        "report_to": "none",
    }
    arguments = [item for key, value in options.items() for item in (f"--{key}", str(value))]
    return build_trainer(*parse_arguments([*arguments, "--modalities", *modalities]))


@pytest.mark.parametrize(
    ("problem_type", "modalities", "variants_with_empty_examples"),
    [
        ("single_label_classification", MODALITIES, ()),
        ("multi_label_classification", ("image", "audio"), ("without_image", "without_audio")),  # the other's absent
        ("regression", MODALITIES, ()),
        ("single_label_classification", ("audio",), ("all",)),  # the examples without audio
    ],
)
def test_one_encoding_pass_gives_the_results_of_one_predict_per_variant(
    demo_data, tmp_path, problem_type, modalities, variants_with_empty_examples
):
    """Each variant's predictions and metrics are those of the evaluation before `ablation_logits` (one
    `trainer.predict` per variant, the collator leaving the modality out), label-prior rows included."""
    trainer, splits = untrained_trainer(relabelled(demo_data, problem_type, tmp_path / "data"), tmp_path / "run", modalities)
    assert splits.problem_type == problem_type
    collator, model = trainer.data_collator, trainer.model.eval()
    drop = modalities if len(modalities) > 1 else ()
    calls = {modality: 0 for modality in modalities}
    for modality in modalities:
        model.get_encoder(modality).register_forward_hook(lambda *_, m=modality: calls.__setitem__(m, calls[m] + 1))
    results = evaluate_split(trainer, splits.test, drop=drop)
    batches = -(-len(splits.test) // 8)
    assert max(calls.values()) == batches and all(count <= batches for count in calls.values())  # once per batch
    assert list(results) == ["all", *(f"without_{modality}" for modality in drop)]
    for variant, (metrics, predictions, label_ids) in results.items():
        dropped = () if variant == "all" else (variant.removeprefix("without_"),)
        kept = [modality for modality in modalities if modality not in dropped]
        left_empty = sum(all(row[modality] is None for modality in kept) for row in splits.test)
        assert (left_empty > 0) == (variant in variants_with_empty_examples)  # where the label prior answers
        trainer.data_collator = replace(collator, drop_modalities=dropped)  # the evaluation before: a predict each
        output = trainer.predict(splits.test, metric_key_prefix="test")
        expected = np.asarray(output.predictions)
        if problem_type == "single_label_classification":
            np.testing.assert_array_equal(predictions, expected.argmax(-1))
        else:
            np.testing.assert_allclose(predictions, expected, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(label_ids, output.label_ids)
        assert metrics["num_examples"] == len(splits.test)
        assert metrics == pytest.approx({"num_examples": len(splits.test)} | {
            name: output.metrics[f"test_{name}"] for name in metrics if name != "num_examples"
        }, rel=1e-6, abs=1e-6, nan_ok=True)
    trainer.data_collator = collator


def test_the_bootstrap_says_how_often_importance_and_ablation_put_the_same_modality_first():
    """scripts/modality_importance.py: a clear first modality is first in every resample; two tied ones share it."""
    rng = np.random.default_rng(0)
    importance = rng.uniform(0.0, 0.1, (400, 3))
    importance[:, 0] += 0.5  # text clearly first
    importance[::4, 2] = np.nan  # audio absent from a quarter of the examples: left out of its mean
    drops = (rng.uniform(size=(400, 3)) < [0.3, 0.1, 0.1]).astype(int)
    clear = bootstrap_first_modality(importance, drops, ("text", "image", "audio"), resamples=200)
    assert clear == {
        "agreement": 1.0,
        "first_by_importance": {"text": 1.0, "image": 0.0, "audio": 0.0},
        "first_by_ablation": {"text": 1.0, "image": 0.0, "audio": 0.0},
    }
    tied = bootstrap_first_modality(rng.uniform(size=(400, 2)), drops[:, :2], ("text", "audio"), resamples=200)
    assert 0.1 < tied["first_by_importance"]["text"] < 0.9  # equal distributions: either may come first
    assert sum(tied["first_by_importance"].values()) == pytest.approx(1.0)


@pytest.mark.slow
def test_modality_accuracy_reads_the_runs_modalities_and_can_switch_the_frequency_warps_on(demo_data, tmp_path):
    """scripts/modality_accuracy.py: "all" reads the run's modalities (its metrics.json) on every row that has one of
    them, each modality alone its clean rows; a one-reading ensemble at 1.0 is the model as trained."""
    test = datasets.load_from_disk(demo_data)["test"]
    labels = dict(enumerate(test.features["label"].names))
    model = tiny_model(id2label=labels, audio_config={**TINY_AUDIO, "frontend": "mfcc"})
    model.save_pretrained(tmp_path)
    MultimodalProcessor(image_processor=tiny_image_processor(), max_text_length=16).save_pretrained(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"modalities": ["audio"]}))  # a run on audio only

    plain = modality_accuracy(str(tmp_path), str(demo_data), ["test"])["test"]
    assert set(plain) == {"all", *MODALITIES}
    assert plain["all"]["num_examples"] == sum(row["audio"] is not None for row in test) < len(test)
    clean_audio = sum(row["audio"] is not None and row["audio_state"] == "clean" for row in test)
    assert plain["audio"]["num_examples"] == clean_audio > 0
    assert modality_accuracy(str(tmp_path), str(demo_data), ["test"], inference_frequency_warps=[1.0])["test"] == plain

    audio = torch.randn(2, 8000)
    encoder = model.get_encoder("audio")
    before = encoder(audio).pooler_output
    switch_on_frequency_warps(model, [0.9, 1.1])
    assert model.config.audio_config.inference_frequency_warps == [0.9, 1.1]
    assert not torch.allclose(encoder(audio).pooler_output, before)
    with pytest.raises(ValueError, match=r"numbers in \[0.5, 2.0\]"):
        switch_on_frequency_warps(model, [4.0])
    with pytest.raises(ValueError, match="needs a WaveNet audio encoder; this model has no audio encoder"):
        switch_on_frequency_warps(tiny_model(("text", "image")), [1.0])
    with pytest.raises(ValueError, match="needs frontend='log_mel' or 'mfcc'"):
        switch_on_frequency_warps(tiny_model(), [1.0])


@pytest.mark.slow
def test_modality_accuracy_scores_several_models_as_one_ensemble_of_their_mean_probabilities(demo_data, tmp_path):
    """scripts/modality_accuracy.py with several folders: their class probabilities averaged (a model twice is that
    model); folders that classify differently are refused with the fix."""
    test = datasets.load_from_disk(demo_data)["test"]
    labels = dict(enumerate(test.features["label"].names))
    processor = MultimodalProcessor(image_processor=tiny_image_processor(), max_text_length=16)
    folders = []
    for seed in (0, 1):
        folders.append(tmp_path / f"seed{seed}")
        tiny_model(seed=seed, id2label=labels).save_pretrained(folders[-1])
        processor.save_pretrained(folders[-1])
    single = modality_accuracy(str(folders[0]), str(demo_data), ["test"])
    assert modality_accuracy([str(folders[0])] * 2, str(demo_data), ["test"]) == single

    ensemble = modality_accuracy([str(folder) for folder in folders], str(demo_data), ["test"])["test"]
    models = [MultimodalForSequenceClassification.from_pretrained(folder).eval() for folder in folders]
    collator = MultimodalDataCollator(processor, MODALITIES, max_audio_seconds=2.0)
    batch = collator([row for row in test])  # every test example has at least one modality
    truth = batch.pop("labels")
    with torch.inference_mode():
        mean = sum(model(**batch).logits.softmax(-1) for model in models) / 2
    assert ensemble["all"]["accuracy"] == pytest.approx((mean.argmax(-1) == truth).float().mean().item())

    tiny_model(id2label={index: f"class {index}" for index in labels}).save_pretrained(tmp_path / "other")
    processor.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="does not classify like .*pass models of one task"):
        modality_accuracy([str(folders[0]), str(tmp_path / "other")], str(demo_data), ["test"])

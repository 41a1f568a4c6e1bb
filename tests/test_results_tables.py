"""The results tables of scripts/train.py and scripts/compare_runs.py show only what exists: the ablation of the
modalities a model has, the extra test splits it was evaluated on, and an aligned model's retrieval results."""

from __future__ import annotations

import json

from compare_runs import compare_runs
from train import format_results_table


SCORES = {"accuracy": 0.9, "precision": 0.8, "recall": 0.7, "f1": 0.75, "num_examples": 10}


def classifier_results(modalities: list[str]) -> dict:
    return {
        "objective": "classification",
        "modalities": modalities,
        "fusion_type": "comparator",
        "test": SCORES,
        "ablation": {f"without_{m}": SCORES for m in modalities} if len(modalities) > 1 else {},
        "extra_tests": {"test_unseen_speaker": SCORES},
    }


def test_the_ablation_rows_are_those_of_the_models_modalities():
    table = format_results_table(classifier_results(["image", "audio"]))
    assert "| without image |" in table and "| without audio |" in table and "without text" not in table
    assert "| test_unseen_speaker split | 0.900 |" in table
    single = format_results_table(classifier_results(["audio"]))
    assert "audio only" in single and "without" not in single


def test_an_aligned_models_table_shows_retrieval_and_zero_shot():
    results = {
        "objective": "contrastive",
        "modalities": ["image", "audio"],
        "test": {
            "retrieval": {"audio_to_image": {"recall@1": 0.5, "recall@5": 0.9, "num_queries": 10}},
            "zero_shot": {"audio": {"accuracy": 0.4, "num_examples": 10}},
        },
    }
    table = format_results_table(results)
    assert "| test | audio -> image | 0.500 | 0.900 |" in table and "| test | zero-shot audio (accuracy) | 0.400 |" in table


def test_compare_runs_leaves_absent_ablations_empty(tmp_path):
    for name, modalities in (("pair", ["image", "audio"]), ("only_audio", ["audio"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(classifier_results(modalities)))
    table = compare_runs([tmp_path / "pair", tmp_path / "only_audio"])
    assert "| pair | image + audio | comparator | 0.900 | 0.750 | - | 0.900 | 0.900 |" in table
    assert "| only_audio | audio | - | 0.900 | 0.750 | - | - | - |" in table

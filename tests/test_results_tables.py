"""The results tables of scripts/train.py, scripts/compare_runs.py and scripts/summarize_results.py show only what
exists: the ablation of the modalities a model has, the extra test splits it was evaluated on, an aligned model's
retrieval results, the runs of a lane."""

from __future__ import annotations

import json

from compare_runs import compare_runs
from summarize_results import alignment, other_relations, relational_readers
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


def aligned_results(recall: float) -> dict:
    return {
        "retrieval": {"audio_to_image": {"recall@1": recall, "recall@5": 0.9, "num_queries": 10}},
        "retrieval_query_bank": {"audio_to_image": {"recall@1": recall + 0.1, "recall@5": 0.95, "num_queries": 10}},
        "zero_shot": {"audio": {"accuracy": 0.4, "num_examples": 10}},
    }


def test_an_aligned_models_table_shows_retrieval_with_and_without_the_query_bank_and_zero_shot(tmp_path):
    results = {"objective": "contrastive", "modalities": ["image", "audio"], "test": aligned_results(0.5)}
    table = format_results_table(results)
    assert "| test | audio -> image | 0.500 | 0.900 |" in table and "| test | zero-shot audio (accuracy) | 0.400 |" in table
    assert "| test | audio -> image, query bank | 0.600 | 0.950 |" in table
    # the results script's table: both test splits side by side
    results.update(extra_tests={"test_unseen_speaker": aligned_results(0.3)}, hyperparameters={"train_seconds": 90})
    (tmp_path / "align" / "pairs").mkdir(parents=True)
    (tmp_path / "align" / "pairs" / "metrics.json").write_text(json.dumps(results))
    lines = alignment(tmp_path)
    assert "| audio -> image | 0.500 | 0.900 | 0.300 | 0.900 |" in lines
    assert "| audio -> image, query bank | 0.600 | 0.950 | 0.400 | 0.950 |" in lines


def test_compare_runs_leaves_absent_ablations_empty(tmp_path):
    for name, modalities in (("pair", ["image", "audio"]), ("only_audio", ["audio"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(classifier_results(modalities)))
    table = compare_runs([tmp_path / "pair", tmp_path / "only_audio"])
    assert "| pair | image + audio | comparator | 0.900 | 0.750 | - | 0.900 | 0.900 |" in table
    assert "| only_audio | audio | - | 0.900 | 0.750 | - | - | - |" in table


def test_the_readers_table_shows_each_head_over_each_kind_of_readers_with_both_stages_time(tmp_path):
    assert relational_readers(tmp_path) == []  # no run of the lane yet: no table, not a bare header
    runs = {"partial": 300.0, "partial_comparator": 30.0, "copies_transformer": 42.0, "adapted_low_rank_tensor": 60.0}
    for name, seconds in runs.items():
        (tmp_path / "match_readers" / name).mkdir(parents=True)
        results = {**classifier_results(["image", "audio"]), "hyperparameters": {"train_seconds": seconds}}
        (tmp_path / "match_readers" / name / "metrics.json").write_text(json.dumps(results))
    table = relational_readers(tmp_path)
    assert len(table) == 5 and table[0].startswith("| digit readers | fusion |")
    assert "| stack's top 2 blocks adapted | comparator | 0.900 | 0.900 | 0.900 / 0.900 | 5.0 + 0.5 |" in table
    assert "| whole stack adapted | low_rank_tensor | 0.900 | 0.900 | 0.900 / 0.900 | - + 1.0 |" in table
    copies = "| stack's top 2 blocks adapted, 3 augmented copies cached | transformer |"
    assert f"{copies} 0.900 | 0.900 | 0.900 / 0.900 | - + 0.7 |" in table


def test_the_other_relations_table_shows_each_modality_alone_in_the_relations_order(tmp_path):
    assert other_relations(tmp_path) == []
    runs = {"text_audio": (["text", "audio"], 120.0), "text_audio_comparator": (["text", "audio"], 30.0),
            "text_image_transformer": (["text", "image"], 60.0)}  # fmt: skip
    for name, (modalities, seconds) in runs.items():
        results = {**classifier_results(modalities), "hyperparameters": {"train_seconds": seconds}}
        results["ablation"] = {
            "without_text": {**SCORES, "accuracy": 0.6}, f"without_{modalities[1]}": {**SCORES, "accuracy": 0.4}
        }
        (tmp_path / "match_readers" / name).mkdir(parents=True)
        (tmp_path / "match_readers" / name / "metrics.json").write_text(json.dumps(results))
    table = other_relations(tmp_path)
    assert len(table) == 4 and table[0].startswith("| relation | fusion |")
    # text alone is the run without audio (0.400), audio alone the run without text (0.600)
    spoken = "| text + audio: does the note name the digit spoken? | comparator |"
    assert f"{spoken} 0.900 | 0.900 | 0.400 / 0.600 | 2.0 + 0.5 |" in table
    shown = "| text + image: does the note name the digit shown? | transformer |"
    assert f"{shown} 0.900 | 0.900 | 0.400 / 0.600 | - + 1.0 |" in table

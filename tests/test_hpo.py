"""Hyper-parameter search (`scripts/train.py --hpo_trials`): the search-space file and its errors, the default space,
the model card's trial table, and a 2-trial search on the tiny demo data whose best settings the final model has."""

from __future__ import annotations

import json

import optuna
import pytest

from hf_multimodal import FUSION_TYPES
from hf_multimodal.model_card import TrainingReport, build_model_card

from conftest import tiny_config
from hyperparameter_search import SEARCHABLE, default_search_space, load_search_space, parse_search_space
from test_training import TRAIN_SCRIPT, tiny_arguments, train_in_process
from train import parse_arguments


SCRIPTS = TRAIN_SCRIPT.parent


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"dropout": {"low": 0.0, "high": 0.5}}, "not searchable. Allowed settings: text_learning_rate, image_"),
        ([1, 2], "must be a non-empty JSON object"),
        ({}, "must be a non-empty JSON object"),
        ({"modality_dropout": [0.1, 0.2]}, "must be {'choices': \\[...\\]} or {'low': ..., 'high': ...}"),
        ({"modality_dropout": {"low": 0.1}}, "must be {'choices'"),
        ({"modality_dropout": {"low": 0.1, "high": 0.2, "scale": "log"}}, "must be {'choices'"),
        ({"modality_dropout": {"low": 0.5, "high": 0.2}}, "needs 0 <= low <= high"),
        ({"modality_dropout": {"low": 0.5, "high": 1.0}}, "a probability below 1"),
        ({"fusion_learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, "a log scale needs low > 0"),
        ({"fusion_hidden_size": {"low": 32.5, "high": 64}}, "'low' must be an integer"),
        ({"fusion_hidden_size": {"choices": [64, "128"]}}, "choice '128' is not an integer"),
        ({"fusion_type": {"choices": ["gated", "sum"]}}, r"unknown fusion types \['sum'\]; allowed: concat"),
        ({"fusion_type": {"low": 0, "high": 1}}, "takes {'choices'"),
        ({"fusion_type": {"choices": []}}, "'choices' must be a non-empty list"),
    ],
)
def test_bad_search_spaces_are_refused_with_what_is_allowed(space, message):
    with pytest.raises(ValueError, match=message):
        parse_search_space(space)


def test_space_files_are_read_checked_and_drawn_from(tmp_path):
    for name in ("hpo_space.json", "hpo_space_head.json"):  # the README's example files
        example = load_search_space(SCRIPTS / name)
        assert set(example) <= set(SEARCHABLE) and set(example["fusion_type"].choices) <= set(FUSION_TYPES)
    trial = optuna.trial.FixedTrial({"fusion_hidden_size": 128, "modality_dropout": 0.25, "fusion_type": "concat"})
    space = parse_search_space(
        {"fusion_hidden_size": {"choices": [64, 128]}, "modality_dropout": {"low": 0.0, "high": 0.5},
         "fusion_type": {"choices": ["concat", "gated"]}}
    )
    assert {name: dimension.suggest(trial) for name, dimension in space.items()} == {
        "fusion_hidden_size": 128, "modality_dropout": 0.25, "fusion_type": "concat"
    }
    assert parse_search_space({name: d.to_json() for name, d in space.items()}) == space  # round trip

    bad = tmp_path / "space.json"
    bad.write_text(json.dumps({"learning_rate": {"low": 1e-4, "high": 1e-2}}))
    with pytest.raises(ValueError, match=f"--hpo_space {bad} names 'learning_rate', which is not searchable"):
        parse_arguments(tiny_arguments(tmp_path, tmp_path / "run", hpo_trials=2, hpo_space=bad))
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON file"):
        parse_arguments(tiny_arguments(tmp_path, tmp_path / "run", hpo_trials=2, hpo_space=bad))
    width = tmp_path / "width.json"
    width.write_text(json.dumps({"fusion_hidden_size": {"choices": [64, 128]}}))
    with pytest.raises(ValueError, match="searches fusion_hidden_size, which a saved model"):
        parse_arguments(tiny_arguments(tmp_path, tmp_path / "run", hpo_space=width, model_name_or_path=tmp_path))


def test_default_space_searches_what_the_run_trains():
    demo = default_search_space(["text", "image", "audio"], frozen=["text"], new_model=True)
    assert set(demo) == {"image_learning_rate", "audio_learning_rate", "fusion_learning_rate", "fusion_type",
                         "fusion_hidden_size", "modality_dropout"}
    assert demo["fusion_type"].choices == FUSION_TYPES and demo["image_learning_rate"].log
    saved_single = default_search_space(["text"], frozen=[], new_model=False)
    assert set(saved_single) == {"text_learning_rate", "fusion_learning_rate", "fusion_type"}


def test_model_card_shows_the_trial_table():
    hpo = {
        "objective": "eval_loss",
        "trials": [
            {"number": n, "state": state, "params": {"fusion_type": head, "modality_dropout": p}, "objective": value}
            for n, state, head, p, value in [
                (0, "complete", "gated", 0.1, 0.71),
                (1, "complete", "concat", 0.4, 0.52),
                (2, "pruned", "attention", 0.2, 0.93),
            ]
        ],
        "best": {"number": 1, "objective": 0.52, "params": {"fusion_type": "concat", "modality_dropout": 0.4}},
    }
    card = str(build_model_card(tiny_config(fusion_type="concat"), TrainingReport(test={"accuracy": 0.9}, hpo=hpo)))
    assert "### Hyper-parameter search" in card and "among 3 trials" in card
    assert "| Trial | State | fusion_type | modality_dropout | eval_loss |" in card
    assert "| **1** (best) | complete | concat | 0.4 | 0.52 |" in card
    assert "| 2 | pruned | attention | 0.2 | 0.93 |" in card
    assert "### Hyper-parameter search" not in str(build_model_card(tiny_config(), TrainingReport()))


@pytest.mark.slow  # 2 search trials and the final run of scripts/train.py
def test_two_trial_search_records_trials_and_trains_the_best_settings(data, tmp_path):
    space = tmp_path / "space.json"
    # every value differs from the command line's (gated, width 32, no modality dropout, lr 3e-3)
    space.write_text(json.dumps({
        "fusion_type": {"choices": ["concat", "weighted_sum"]},
        "fusion_hidden_size": {"choices": [16, 64]},
        "modality_dropout": {"low": 0.1, "high": 0.3},
        "audio_learning_rate": {"low": 1e-3, "high": 2e-3, "log": True},
    }))
    output = tmp_path / "run"
    arguments = tiny_arguments(data, output, num_train_epochs=2, eval_strategy="epoch", save_strategy="epoch",
                               hpo_trials=2, hpo_epochs=1, hpo_space=space)
    _, printed = train_in_process(arguments)
    assert "| all modalities |" in printed

    metrics = json.loads((output / "metrics.json").read_text())
    hpo = metrics["hpo"]
    assert [trial["number"] for trial in hpo["trials"]] == [0, 1] and hpo["objective"] == "eval_loss"
    for trial in hpo["trials"]:
        assert trial["state"] in ("complete", "pruned") and set(trial["params"]) == set(json.loads(space.read_text()))
        assert trial["evaluations"] == 1 and trial["objective"] > 0
    assert hpo["epochs_per_trial"] == 1 and hpo["cpu_seconds"] > 0 and hpo["space"]["fusion_hidden_size"]["choices"]
    best = hpo["best"]["params"]
    assert hpo["best"]["objective"] == min(trial["objective"] for trial in hpo["trials"])

    config = json.loads((output / "config.json").read_text())
    assert config["fusion_type"] == best["fusion_type"] == metrics["fusion_type"]
    assert config["fusion_hidden_size"] == best["fusion_hidden_size"]
    assert config["modality_dropout"] == pytest.approx(best["modality_dropout"])
    assert metrics["hyperparameters"]["audio_learning_rate"] == pytest.approx(best["audio_learning_rate"])
    assert metrics["hyperparameters"]["epochs_trained"] == 2 and set(metrics["ablation"]) == {
        "without_text", "without_image", "without_audio"
    }
    card = (output / "README.md").read_text()
    assert "### Hyper-parameter search" in card and f"| **{hpo['best']['number']}** (best) |" in card
    assert not [path for path in output.iterdir() if path.name.startswith("hpo")]  # trials ran in a temporary folder


@pytest.mark.parametrize(("heads", "cached"), [(["concat", "comparator"], True), (["concat", "transformer"], False)])
def test_a_search_caches_a_frozen_encoder_when_every_head_it_tries_reads_what_the_run_reads(
    heads, cached, data, tmp_path
):
    from hyperparameter_search import HyperparameterSearch
    from train import build_trainer

    from hf_multimodal.feature_cache import FEATURE_ROW_COLUMNS

    arguments = tiny_arguments(data, tmp_path / "run", freeze_modalities="text", feature_cache_dir=tmp_path / "cache")
    model_args, data_args, training_args = parse_arguments(arguments)  # the run's head: gated, over pooled features
    space = parse_search_space({"fusion_type": {"choices": heads}})
    search = HyperparameterSearch(space, model_args, metric="loss", greater_is_better=False)
    assert search.fusion_types() == tuple(heads)
    trainer, _ = build_trainer(model_args, data_args, training_args, search=search)
    assert (FEATURE_ROW_COLUMNS["text"] in trainer.train_dataset.column_names) == cached

"""`scripts/train.py --streaming` (README: Streaming): a run trained from an `IterableDataset` read as it goes, the
options it refuses, label names without a pass over the data, local files with relative media paths, bounded
in-memory evaluation splits, a Parquet file held a few row groups at a time, a dataset streamed from the (local) Hub,
and the disjoint parts of the stream that accelerate gives each process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from accelerate.data_loader import prepare_data_loader
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from conftest import HUB_TOKENS, client_env
from test_training import ROOT, tiny_arguments
from train import build_trainer, load_splits, main, parse_arguments


STREAM = {"streaming": True, "max_steps": 20, "eval_strategy": "steps", "save_strategy": "steps"}
"""tiny_arguments options of a streamed run (its steps, and evaluations and checkpoints by steps)."""
DIGITS = datasets.ClassLabel(names=["zero", "one", "two"])


def text_splits(sizes: dict[str, int], labels: datasets.FeatureType = DIGITS) -> datasets.DatasetDict:
    """Text-only splits whose texts are unique ("<split> <index>") and whose labels cycle through three classes."""
    names = ["zero", "one", "two"]

    def rows(split, size):
        values = [index % 3 if isinstance(labels, datasets.ClassLabel) else names[index % 3] for index in range(size)]
        return {"text": [f"{split} {index}" for index in range(size)], "label": values}

    features = datasets.Features({"text": datasets.Value("string"), "label": labels})
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(rows(split, size), features=features) for split, size in sizes.items()}
    )


def parquet_folder(folder: Path, splits: datasets.DatasetDict) -> Path:
    folder.mkdir(parents=True)
    for name, split in splits.items():
        split.to_parquet(str(folder / f"{name}.parquet"))
    return folder


def streamed_arguments(data: Path, output: Path, **overrides) -> list[str]:
    return tiny_arguments(data, output, **{"modalities": ["text"], **STREAM, **overrides})


def test_streaming_refuses_options_that_need_the_length_of_the_data(tmp_path):
    refusals = [
        ({"max_steps": -1}, "--streaming needs --max_steps"),
        ({"save_strategy": "epoch", "eval_strategy": "epoch"}, "--eval_strategy epoch and --save_strategy epoch"),
        ({"hpo_trials": 2}, "--hpo_trials with --streaming"),
    ]
    for overrides, message in refusals:  # refused before any data is read (there is none here)
        with pytest.raises(ValueError, match=message):
            build_trainer(*parse_arguments(streamed_arguments(tmp_path / "no_data", tmp_path / "run", **overrides)))
    with pytest.raises(ValueError, match="--shuffle_buffer_size must be >= 1"):
        parse_arguments(streamed_arguments(tmp_path, tmp_path / "run", shuffle_buffer_size=0))
    # no validation split: a stream cannot be split without reading all of it
    data = parquet_folder(tmp_path / "no_validation", text_splits({"train": 12, "test": 6}))
    model_args, data_args, training_args = parse_arguments(streamed_arguments(data, tmp_path / "run"))
    with pytest.raises(ValueError, match="cannot hold out --validation_fraction.*pass --validation_split"):
        load_splits(data_args, model_args.modalities, training_args.seed)


def test_streamed_splits_shuffle_the_training_stream_and_bound_the_evaluation_splits(tmp_path):
    data = tmp_path / "saved"
    text_splits({"train": 40, "validation": 10, "test": 10}).save_to_disk(str(data))
    model_args, data_args, training_args = parse_arguments(
        streamed_arguments(data, tmp_path / "run", max_eval_samples=4, shuffle_buffer_size=8)
    )
    splits = load_splits(data_args, model_args.modalities, training_args.seed)
    assert isinstance(splits.train, datasets.IterableDataset)
    assert splits.labels == ["zero", "one", "two"] and splits.label_to_id is None  # from the ClassLabel feature
    # the evaluation splits are in memory, the validation split cut to --max_eval_samples
    assert isinstance(splits.validation, datasets.Dataset) and isinstance(splits.test, datasets.Dataset)
    assert splits.validation["text"] == [f"validation {index}" for index in range(4)] and len(splits.test) == 10
    in_file_order = [f"train {index}" for index in range(40)]
    first_pass = [row["text"] for row in splits.train]
    splits.train.set_epoch(1)  # what Trainer does at every pass through the data
    second_pass = [row["text"] for row in splits.train]
    for one_pass in (first_pass, second_pass):  # every example once per pass, shuffled
        assert sorted(one_pass) == sorted(in_file_order) and one_pass != in_file_order
    assert first_pass != second_pass


def test_a_streamed_parquet_file_is_held_a_few_row_groups_at_a_time_however_large(tmp_path, monkeypatch):
    """A Parquet file of 100 row groups (5 examples of 20 kB each) streamed by row group: the 10 readers that feed the
    shuffle buffer at once hold a row group or two each, not every row group they read (the whole file, when the
    filter of examples without modalities gathered 1,000-example batches)."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)  # no 5 s wait at the end of the pass
    rows, group = 500, 5
    data = parquet_folder(tmp_path / "data", text_splits({"validation": 3, "test": 3}))
    table = pa.table({
        "text": [f"train {index}" for index in range(rows)], "label": [index % 3 for index in range(rows)],
        "blob": [os.urandom(20_000) for _ in range(rows)],
    })
    pq.write_table(table, data / "train.parquet", row_group_size=group)
    row_group_bytes = table.nbytes * group / rows
    arguments = streamed_arguments(data, tmp_path / "run", class_names=["zero", "one", "two"], shuffle_buffer_size=8)
    train = load_splits(parse_arguments(arguments)[1], ["text"], 0).train
    arrow_baseline, arrow_peak, seen = pa.total_allocated_bytes(), 0, 0
    tracemalloc.start()
    try:
        for _ in train:  # the rows read ahead live in Python (formatted batches) and Arrow (tables being read)
            arrow_peak, seen = max(arrow_peak, pa.total_allocated_bytes() - arrow_baseline), seen + 1
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen == rows
    assert python_peak + arrow_peak < 50 * row_group_bytes  # half the file's 100 row groups (about 35 now)


def test_string_labels_need_class_names_and_relative_media_paths_resolve_in_the_stream(tmp_path):
    from PIL import Image

    folder = tmp_path / "jsonl"
    (folder / "media").mkdir(parents=True)
    Image.new("RGB", (20, 20), (200, 10, 10)).save(folder / "media" / "red.png")
    splits = text_splits({"train": 16, "validation": 4, "test": 4}, labels=datasets.Value("string"))
    for name, split in splits.items():
        split.map(lambda _: {"image": "media/red.png"}).to_json(str(folder / f"{name}.jsonl"))
    arguments = streamed_arguments(folder, tmp_path / "run", modalities=["text", "image"], per_device_train_batch_size=4)
    model_args, data_args, training_args = parse_arguments(arguments)
    with pytest.raises(ValueError, match="classes of label column 'label'.*pass --class_names"):
        load_splits(data_args, model_args.modalities, training_args.seed)

    trainer, splits = build_trainer(*parse_arguments([*arguments, "--class_names", "zero", "one", "two"]))
    assert splits.labels == ["zero", "one", "two"] and splits.label_to_id == {"zero": 0, "one": 1, "two": 2}
    assert Path(next(iter(splits.train))["image"]) == folder / "media" / "red.png"  # against the file's folder
    batch = next(iter(trainer.get_train_dataloader()))  # the dataloader Trainer trains from
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["input_ids"].shape[0] == 4
    assert set(batch["labels"].tolist()) <= {0, 1, 2}
    # every process reads its own part of the stream rather than process 0 dispatching every batch
    assert trainer.accelerator.dataloader_config.dispatch_batches is False
    data = parquet_folder(tmp_path / "parquet", text_splits({"train": 6, "validation": 3, "test": 3}))
    _, data_args, _ = parse_arguments(streamed_arguments(data, tmp_path / "run", class_names=["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"--class_names \['a', 'b', 'c'\] differ from the classes"):
        load_splits(data_args, ["text"], 0)


@pytest.mark.parametrize("source", ["saved_folder", "jsonl"])
def test_accelerate_gives_two_processes_disjoint_parts_of_the_stream(tmp_path, source):
    """As `Trainer` prepares the training dataloader under `accelerate launch` with 2 processes (dispatch_batches off,
    as --streaming sets it): a saved folder (64 shards) is split by shards, a single JSON Lines file (1 shard) batch
    by batch; either way the two processes see disjoint examples that together make the whole split."""
    splits, data = text_splits({"train": 40, "validation": 4, "test": 4}), tmp_path / "data"
    if source == "jsonl":
        data.mkdir()
        for name, split in splits.items():
            split.to_json(str(data / f"{name}.jsonl"))  # class indices: the names come from --class_names
    else:
        splits.save_to_disk(str(data))
    arguments = streamed_arguments(data, tmp_path / "run", class_names=["zero", "one", "two"])
    model_args, data_args, training_args = parse_arguments(arguments)
    train = load_splits(data_args, model_args.modalities, training_args.seed).train
    seen = []
    for rank in (0, 1):
        loader = prepare_data_loader(
            DataLoader(train, batch_size=4, collate_fn=lambda rows: [row["text"] for row in rows]),
            num_processes=2, process_index=rank, put_on_device=False, dispatch_batches=False,
        )
        seen.append([text for batch in loader for text in batch])
    assert len(seen[0]) == len(seen[1]) == 20 and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(f"train {index}" for index in range(40))


HUB_STREAM_SCRIPT = """
import sys
sys.path[:0] = ["tests", "scripts"]
from pathlib import Path
import huggingface_hub
from test_streaming import parquet_folder, streamed_arguments, text_splits
from train import load_splits, parse_arguments

work = Path(sys.argv[1])
folder = parquet_folder(work / "data", text_splits({"train": 40, "validation": 10, "test": 10}))
api = huggingface_hub.HfApi()
api.create_repo("alice/streamed", repo_type="dataset")
api.upload_folder(folder_path=str(folder), repo_id="alice/streamed", repo_type="dataset")
options = {"class_names": ["zero", "one", "two"], "shuffle_buffer_size": 8}
model_args, data_args, training_args = parse_arguments(streamed_arguments("alice/streamed", work / "run", **options))
splits = load_splits(data_args, model_args.modalities, training_args.seed)
print(type(splits.train).__name__, len(splits.validation), len(splits.test))
print(*sorted(row["text"] for row in splits.train), sep=",")
"""


@pytest.mark.slow
def test_a_hub_dataset_is_streamed_without_downloading_it_first(hub_server, tmp_path):
    """`--dataset <user>/<repo> --streaming` on the local Hub (tests/hub_server.py), in a fresh user's process: the
    training split is an `IterableDataset` read from the repo's Parquet files, the evaluation splits come in memory."""
    env = client_env(hub_server, tmp_path / "home", next(iter(HUB_TOKENS)), HF_HUB_OFFLINE="0",
                     PYTHONPATH=str(ROOT / "src"))
    result = subprocess.run([sys.executable, "-c", HUB_STREAM_SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    kind, texts = result.stdout.strip().splitlines()[-2:]
    assert kind == "IterableDataset 10 10"
    assert texts.split(",") == sorted(f"train {index}" for index in range(40))
    assert not list((tmp_path / "home").rglob("*.parquet")), "the training split was downloaded, not streamed"


@pytest.mark.slow
def test_streamed_run_trains_max_steps_and_reports_the_metrics_of_map_style_training(data, tmp_path):
    """The tiny demo dataset trained from a stream for 20 steps (15 steps per pass: the stream restarts): the same
    outputs and metrics as a map-style run, and the saved model is the best checkpoint."""
    output = tmp_path / "run"
    arguments = tiny_arguments(data, output, **STREAM, shuffle_buffer_size=50, max_eval_samples=8)
    metrics = main(arguments)
    assert metrics["hyperparameters"]["global_steps"] == 20 and metrics["hyperparameters"]["epochs_trained"] > 1
    assert metrics["hyperparameters"]["streaming"] is True
    assert json.loads((output / "metrics.json").read_text())["test"] == metrics["test"]
    assert set(metrics["ablation"]) == {"without_text", "without_image", "without_audio"}
    for values in [metrics["test"], *metrics["ablation"].values()]:
        assert set(values) == {"accuracy", "precision", "recall", "f1", "num_examples"}
        assert values["num_examples"] == 24
    assert (output / "confusion_matrix.png").is_file() and (output / "README.md").is_file()
    history = json.loads((output / "checkpoint-20" / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "eval_loss" in entry] == [10, 20]
    best = output / metrics["hyperparameters"]["best_checkpoint"]
    saved, best_weights = load_file(output / "model.safetensors"), load_file(best / "model.safetensors")
    assert saved.keys() == best_weights.keys() and all((saved[k] == best_weights[k]).all() for k in saved)

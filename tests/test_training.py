"""scripts/train.py end to end at tiny sizes: outputs and their consistency, 2-process DDP, kill + resume, and the
pieces (collator with raw columns, per-modality learning rates and freezing, metrics, examples without modality)."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoProcessor, BertConfig, BertModel, TrainingArguments

from hf_multimodal import MODALITIES, MultimodalImageProcessor, MultimodalProcessor
from hf_multimodal.data_collator import UNAVAILABLE_KEY, MultimodalDataCollator
from hf_multimodal.metrics import ClassificationMetrics
from hf_multimodal.processing_multimodal import default_tokenizer
from hf_multimodal.trainer import MultimodalTrainer

from compare_runs import compare_runs
from conftest import AUDIO_DIR, HUB_TOKENS, TINY_AUDIO, TINY_TEXT, TINY_VISION, tiny_image_processor, tiny_model
from make_demo_dataset import build_match_dataset, build_pairs_dataset, save_demo_dataset
from train import build_model_and_processor, build_trainer, load_splits, main, parse_arguments, parts_started_anew


pytestmark = pytest.mark.slow  # training runs, in-process or in subprocesses (DDP, kill and resume, Hub pushes)

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "scripts" / "train.py"
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
STEPS = 150  # 15 steps per epoch, 10 epochs; checkpoints every 10 steps (the reference run)
KILL_SCRIPT = """
import os, signal, sys
from transformers import TrainerCallback
sys.path.insert(0, "scripts")  # run from the repository root
from hf_multimodal.trainer import MultimodalTrainer
from train import main

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

class KillAtStep(TrainerCallback):  # SIGKILL at the end of a training step
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(os.environ.get("KILL_AT_STEP", -1)):
            kill()

save_rng_state = MultimodalTrainer._save_rng_state
def save_rng_state_or_die(self, output_dir):  # SIGKILL in the middle of writing a checkpoint
    if self.state.global_step == int(os.environ.get("KILL_IN_SAVE_AT", -1)):
        kill()
    save_rng_state(self, output_dir)
MultimodalTrainer._save_rng_state = save_rng_state_or_die

main(sys.argv[1:], callbacks=[KillAtStep()])
"""


def tiny_arguments(data: Path, output: Path, batch_size: int = 8, **overrides) -> list[str]:
    options = {
        "dataset": data,
        "output_dir": output,
        "text_config": json.dumps({**TINY_TEXT, **NO_DROPOUT}),
        "image_config": json.dumps(TINY_VISION),
        "audio_config": json.dumps({**TINY_AUDIO, "hidden_dropout": 0.0}),
        "fusion_hidden_size": 32,
        "image_size": 16,
        "max_text_tokens": 16,
        "max_audio_seconds": 1.0,
        "learning_rate": 3e-3,
        "num_train_epochs": 10,
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": 8,
        "eval_strategy": "steps",
        "save_strategy": "steps",
        "eval_steps": 10,
        "save_steps": 10,
        "logging_steps": 10,
        "save_total_limit": 20,
        "early_stopping_patience": 0,
        "dataloader_pin_memory": False,
        "disable_tqdm": True,
        **overrides,
    }
    arguments = []
    for key, value in options.items():
        if value is not None:  # an override of None drops the option
            arguments += [f"--{key}", *(value if isinstance(value, list) else [str(value)])]
    return arguments


def run(command: list[str], env_extra: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=ROOT, env={**env, **(env_extra or {})}, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{command[:4]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def train_in_process(arguments: list[str]) -> tuple[dict, str]:
    """`scripts/train.py` with `arguments`, run by its `main` in this process (a fresh interpreter would spend ~10 s
    importing torch and transformers; the runs that need one, killed or launched on two processes, use `run`).
    Returns the metrics and what the run printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        metrics = main(arguments)
    return metrics, printed.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """A tiny `pairs` dataset (48 / 8 / 10 examples of a note, a scan and a recording of one digit), saved once."""
    dataset = build_pairs_dataset(AUDIO_DIR, num_train=48, num_validation=8, num_test=10)
    return save_demo_dataset(dataset, tmp_path_factory.mktemp("pairs") / "data")


@pytest.fixture(scope="module")
def single_run(data, tmp_path_factory) -> Path:
    """One uninterrupted 1-process run (150 steps): the reference of the resume and the 2-process tests."""
    output = tmp_path_factory.mktemp("single") / "run"
    _, printed = train_in_process(tiny_arguments(data, output))
    assert "| all modalities |" in printed  # the table is printed
    return output


def read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_run_writes_model_processor_metrics_and_confusion_matrix(single_run):
    names = {path.name for path in single_run.iterdir()}
    assert {"model.safetensors", "config.json", "processor_config.json", "metrics.json", "confusion_matrix.png"} <= names
    assert (single_run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = read_metrics(single_run)
    assert set(metrics) >= {"dataset", "test", "ablation", "hyperparameters", "modalities", "fusion_type", "labels"}
    assert metrics["modalities"] == ["text", "image", "audio"] and metrics["fusion_type"] == "gated"
    assert metrics["labels"][7] == "seven"
    assert set(metrics["ablation"]) == {"without_text", "without_image", "without_audio"}
    for values in [metrics["test"], *metrics["ablation"].values()]:
        assert set(values) == {"accuracy", "precision", "recall", "f1", "num_examples"}
        assert values["num_examples"] == 24 and all(0.0 <= values[k] <= 1.0 for k in ("accuracy", "precision", "recall", "f1"))
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 24
    assert np.trace(matrix) / 24 == pytest.approx(metrics["test"]["accuracy"])
    assert metrics["hyperparameters"]["global_steps"] == STEPS and metrics["hyperparameters"]["num_devices"] == 1
    # clean text: the model learned (chance is 0.1), and it leans on text
    assert metrics["test"]["accuracy"] >= 0.3
    assert metrics["ablation"]["without_text"]["accuracy"] < metrics["test"]["accuracy"]


def test_saved_model_reloads_and_reproduces_test_and_ablation_metrics(single_run, data):
    metrics = read_metrics(single_run)
    model = AutoModelForSequenceClassification.from_pretrained(single_run).eval()
    processor = AutoProcessor.from_pretrained(single_run)
    assert processor.image_processor.size == {"shortest_edge": 16} and processor.max_text_length == 16
    # --image_size builds the package's image processor (its fast path), saved and reloaded as such
    assert type(processor.image_processor) is MultimodalImageProcessor
    assert processor.image_processor.crop_pct == 1.0
    test = datasets.load_from_disk(str(data))["test"]
    for drop, expected in [((), metrics["test"]), (("text",), metrics["ablation"]["without_text"])]:
        collator = MultimodalDataCollator(processor, model.config.modalities, drop_modalities=drop)
        batch = collator(list(test))
        with torch.no_grad():
            predictions = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1)
        assert (predictions == batch["labels"]).float().mean().item() == pytest.approx(expected["accuracy"])


def test_two_processes_finish_with_metrics_close_to_one_process(single_run, data, tmp_path):
    output = tmp_path / "ddp"
    config = ROOT / "scripts" / "accelerate" / "cpu_2proc.yaml"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    launch += ["--main_process_port", str(free_port()), str(TRAIN_SCRIPT)]
    # same global batch (2 x 4 = 8) and same data order as the 1-process run
    run([*launch, *tiny_arguments(data, output, batch_size=4)])
    single, ddp = read_metrics(single_run), read_metrics(output)
    assert ddp["hyperparameters"]["num_devices"] == 2 and ddp["hyperparameters"]["total_train_batch_size"] == 8
    assert ddp["hyperparameters"]["global_steps"] == single["hyperparameters"]["global_steps"] == 150
    assert ddp["test"]["num_examples"] == 24  # gathered from both processes, without duplicates
    assert abs(ddp["test"]["accuracy"] - single["test"]["accuracy"]) <= 0.125  # 3 of 24 examples
    states = [json.loads((folder / "checkpoint-150" / "trainer_state.json").read_text()) for folder in (single_run, output)]
    losses = [[entry["eval_loss"] for entry in state["log_history"] if "eval_loss" in entry] for state in states]
    # each process normalises its batch-norm layers over its own 4 rows (not 8), so the two paths differ (final
    # validation loss 1.30 vs 1.62 on the reference machine): both must learn, and end at close test accuracy (above)
    assert all(curve[-1] < 0.8 * curve[0] for curve in losses)


def test_augmented_runs_killed_mid_save_and_at_a_random_step_resume_to_bitwise_identical_weights(data, tmp_path):
    """3 epochs of 15 steps with text, image and audio augmentation (drawn per example and epoch) beside modality
    dropout and batch order (the global random state): killed while checkpoint-30 is half written, then at a random
    later step, resumed each time, the run ends with the weights and test metrics of an uninterrupted run, bit for
    bit."""
    options = {"num_train_epochs": 3, "augment": ["audio", "image", "text"]}
    steps = 3 * 15
    reference, output = tmp_path / "reference", tmp_path / "killed"
    run([sys.executable, str(TRAIN_SCRIPT), *tiny_arguments(data, reference, **options)])
    arguments = tiny_arguments(data, output, **options)
    kill = [sys.executable, "-c", KILL_SCRIPT, *arguments]

    # 1. SIGKILL while checkpoint-30 is half written (model and optimizer saved, RNG states and trainer state not yet)
    killed = run(kill, {"KILL_IN_SAVE_AT": "30"}, check=False)
    assert killed.returncode == -9 and not (output / "metrics.json").exists()
    partial = output / "checkpoint-30"
    assert (partial / "model.safetensors").is_file() and not (partial / "trainer_state.json").exists()
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    for checkpoint in (output / "checkpoint-10", output / "checkpoint-20"):  # the complete ones are whole
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        assert state["global_step"] == int(checkpoint.name.split("-")[1]) and (checkpoint / "rng_state.pth").is_file()
        AutoModelForSequenceClassification.from_pretrained(checkpoint)
    with pytest.raises(ValueError, match="--resume_from_checkpoint last"):  # not overwritten: refused (in-process)
        main(arguments)

    # 2. resumed from checkpoint-20, SIGKILL again at a random step (mid-epoch or at an epoch's end)
    step = random.Random().randint(21, steps - 1)
    killed = run([*kill, "--resume_from_checkpoint", "last"], {"KILL_AT_STEP": str(step)}, check=False)
    assert killed.returncode == -9, f"not killed at step {step}"
    assert all((p / "trainer_state.json").is_file() for p in output.glob("checkpoint-*")), f"killed at step {step}"
    last = max(int(p.name.split("-")[1]) for p in output.glob("checkpoint-*"))
    assert last == (step - 1) // 10 * 10, f"killed at step {step}"  # the save of step `step` never started

    # 3. resumed again, it finishes exactly where the uninterrupted run did
    run([sys.executable, str(TRAIN_SCRIPT), *arguments, "--resume_from_checkpoint", "last"])
    resumed, expected = load_file(output / "model.safetensors"), load_file(reference / "model.safetensors")
    assert resumed.keys() == expected.keys()
    differing = [name for name in expected if not torch.equal(resumed[name], expected[name])]
    assert not differing, f"killed at step {step}: {len(differing)} tensors differ, e.g. {differing[:3]}"
    assert read_metrics(output)["test"] == read_metrics(reference)["test"]
    # the augmentation was on (tests/test_data_augmentation.py shows that the options reach the collator and change
    # the training rows), and the filtered training split was augmented without a copy written beside the dataset
    assert read_metrics(reference)["hyperparameters"]["augment"] == options["augment"]
    assert not list(data.glob("*/cache-*.arrow")), "the runs wrote files beside the dataset"


def test_arguments_keep_raw_columns_and_refuse_dropping_them(data, tmp_path):
    _, _, training_args = parse_arguments(tiny_arguments(data, tmp_path / "a"))
    assert training_args.remove_unused_columns is False and training_args.load_best_model_at_end
    with pytest.raises(ValueError, match="raw text / image / audio columns"):
        parse_arguments([*tiny_arguments(data, tmp_path / "b"), "--remove_unused_columns", "True"])
    with pytest.raises(ValueError, match="fusion_type"):
        parse_arguments([*tiny_arguments(data, tmp_path / "c"), "--fusion_type", "sum"])
    with pytest.raises(ValueError, match="--modalities"):
        parse_arguments([*tiny_arguments(data, tmp_path / "d"), "--modalities", "text", "video"])


def test_trainer_gets_raw_columns_learning_rates_and_frozen_encoders(data, tmp_path):
    model_args, data_args, training_args = parse_arguments(
        [
            *tiny_arguments(data, tmp_path / "run"),
            "--freeze_modalities", "text",
            "--cache_frozen_features", "False",  # the encoder's own inputs (the cache: tests/test_feature_cache.py)
            "--audio_learning_rate", "0.01",
            "--fusion_learning_rate", "0.002",
        ]
    )
    trainer, splits = build_trainer(model_args, data_args, training_args)
    assert {"text", "image", "audio", "label", "speaker"} <= set(splits.train.column_names)  # raw columns kept
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))  # the dataloader Trainer trains from
    assert {"input_ids", "pixel_values", "input_values", "audio_attention_mask", "has_audio", "labels"} <= set(batch)
    assert batch["pixel_values"].shape[-2:] == (16, 16)

    optimizer = trainer.create_optimizer()
    text_ids = {id(p) for p in model.get_encoder("text").parameters()}
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not text_ids & optimized  # frozen: not optimized
    rates = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            part = next((m for m in ("image", "audio") if any(parameter is q for q in model.get_encoder(m).parameters())), "fusion")
            rates.setdefault(part, set()).add(group["lr"])
    assert rates == {"image": {3e-3}, "audio": {0.01}, "fusion": {0.002}}

    before = {name: p.detach().clone() for name, p in model.get_encoder("text").named_parameters()}
    model.train()
    trainer.compute_loss(model, dict(batch)).backward()
    optimizer.step()
    assert not model.get_encoder("text").training and model.get_encoder("audio").training
    assert all(torch.equal(p, before[name]) for name, p in model.get_encoder("text").named_parameters())


@pytest.mark.parametrize(
    ("fusion_type", "learning_rate", "fusion_learning_rate", "expected"),
    [
        ("transformer", 1e-3, None, 3e-4),  # the head's limit (README: The transformer head's learning rate)
        ("transformer", 1e-4, None, 1e-4),  # a lower default stays
        ("transformer", 1e-3, 2e-3, 2e-3),  # a rate given for the fusion part is used as given
        ("concat", 1e-3, None, 1e-3),  # no limit
    ],
)
def test_the_fusion_part_learns_at_most_at_its_heads_learning_rate(
    tmp_path, fusion_type, learning_rate, fusion_learning_rate, expected
):
    model = tiny_model(fusion_type=fusion_type)
    args = TrainingArguments(str(tmp_path), learning_rate=learning_rate, use_cpu=True, report_to="none")
    encoder_rates = {"text": 5e-5, "image": 2e-3, "audio": 3e-3}
    trainer = MultimodalTrainer(
        model=model, args=args, learning_rates={**encoder_rates, "fusion": fusion_learning_rate}
    )
    encoder_of = {id(p): m for m in MODALITIES for p in model.get_encoder(m).parameters()}
    rates = {}
    for group in trainer.create_optimizer().param_groups:
        for parameter in group["params"]:
            rates.setdefault(encoder_of.get(id(parameter), "fusion"), set()).add(group["lr"])
    assert rates == {**{m: {rate} for m, rate in encoder_rates.items()}, "fusion": {expected}}
    if fusion_type == "transformer" and fusion_learning_rate is None:  # an aligned model trains its projections as set
        aligned = MultimodalTrainer(model=model.multimodal, args=args, learning_rates=encoder_rates)
        rates_of_aligned = {group["lr"] for group in aligned.create_optimizer().param_groups}
        assert rates_of_aligned == {*encoder_rates.values(), learning_rate}


def test_a_part_of_an_encoder_learns_at_its_own_rate_and_the_rest_at_its_modalitys(tmp_path):
    audio = {**TINY_AUDIO, "frontend": "speech_embedding", "sampling_rate": 8000}
    model = tiny_model(("image", "audio"), audio_config=audio)
    args = TrainingArguments(str(tmp_path), learning_rate=1e-3, use_cpu=True, report_to="none")
    stack = {id(p) for p in model.get_encoder("audio").frontend.feature_encoder.parameters()}
    audio_ids = {id(p) for p in model.get_encoder("audio").parameters()}

    def rates(learning_rates):
        optimizer = MultimodalTrainer(model=model, args=args, learning_rates=learning_rates).create_optimizer()
        found = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                part = "stack" if id(p) in stack else "audio" if id(p) in audio_ids else "other"
                found.setdefault(part, set()).add(group["lr"])
        return found

    part = "audio.frontend.feature_encoder"
    assert rates({"audio": 3e-3, part: 3e-4}) == {"stack": {3e-4}, "audio": {3e-3}, "other": {1e-3}}
    assert rates({"audio": 3e-3, part: None}) == rates({"audio": 3e-3})  # None: the modality's rate
    with pytest.raises(ValueError, match=r"has no submodule 'frontend.stack': its modules are \['frontend', "):
        MultimodalTrainer(model=model, args=args, learning_rates={"audio.frontend.stack": 1e-4})
    with pytest.raises(ValueError, match=r"names 'text.encoder', but the model reads \['image', 'audio'\]"):
        MultimodalTrainer(model=model, args=args, learning_rates={"text.encoder": 1e-4})


def test_examples_without_the_models_modality_get_the_label_prior(data, tmp_path):
    model_args, data_args, training_args = parse_arguments(tiny_arguments(data, tmp_path / "run", modalities=["audio"]))
    splits = load_splits(data_args, model_args.modalities, training_args.seed)
    full_train = datasets.load_from_disk(str(data))["train"]
    assert len(splits.train) == sum(audio is not None for audio in full_train["audio"]) < len(full_train)
    model, processor = build_model_and_processor(model_args, data_args, splits.labels)
    assert model.config.modalities == ("audio",)
    prior = torch.zeros(10)
    prior[3] = 1.0
    trainer = MultimodalTrainer(model=model.eval(), args=training_args, eval_dataset=splits.validation, label_prior=prior)
    test = list(splits.test)
    rows = [row for row in test if row["audio"] is None][:3] + [row for row in test if row["audio"] is not None][:5]
    batch = MultimodalDataCollator(processor, ("audio",))(rows)
    unavailable = torch.tensor([row["audio"] is None for row in rows])
    assert unavailable.any() and torch.equal(batch[UNAVAILABLE_KEY], unavailable)
    assert batch["input_values"].shape[0] == int((~unavailable).sum()) and batch["labels"].shape[0] == len(rows)
    loss, logits, labels = trainer.prediction_step(model, dict(batch), prediction_loss_only=False)
    assert logits.shape == (len(rows), 10) and torch.equal(labels, batch["labels"])
    assert (logits[unavailable].argmax(-1) == 3).all() and torch.isfinite(loss)
    # dropping the only modality leaves nothing to run the model on
    nothing = MultimodalDataCollator(processor, ("audio",), drop_modalities=("audio",))(rows)
    assert set(nothing) == {"labels", UNAVAILABLE_KEY} and nothing[UNAVAILABLE_KEY].all()


def test_classification_metrics_match_scikit_learn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    predictions, references = [0, 2, 1, 2, 2, 0], [0, 1, 1, 2, 0, 0]
    result = ClassificationMetrics(keep_in_memory=True).compute(
        predictions=predictions, references=references, num_labels=4
    )
    labels = [0, 1, 2, 3]
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["precision"] == pytest.approx(precision_score(references, predictions, labels=labels, average="macro", zero_division=0))
    assert result["recall"] == pytest.approx(recall_score(references, predictions, labels=labels, average="macro", zero_division=0))
    assert result["f1"] == pytest.approx(f1_score(references, predictions, labels=labels, average="macro", zero_division=0))


def test_string_labels_decoded_columns_and_missing_validation_split(tmp_path):
    image = {"bytes": _png_bytes(), "path": None}
    rows = {"caption": ["a cat", "a dog", None, "two cats"] * 5, "picture": [image] * 20, "kind": ["cat", "dog", "dog", "cat"] * 5}
    folder = tmp_path / "hub_like"
    features = datasets.Features({"caption": datasets.Value("string"), "picture": datasets.Image(), "kind": datasets.Value("string")})
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features), "test": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(str(folder))
    model_args, data_args, training_args = parse_arguments(
        [*tiny_arguments(folder, tmp_path / "run", modalities=["text", "image"]), "--text_column", "caption", "--image_column", "picture", "--label_column", "kind"]
    )
    splits = load_splits(data_args, model_args.modalities, training_args.seed)
    assert splits.labels == ["cat", "dog"] and splits.label_to_id == {"cat": 0, "dog": 1}
    assert len(splits.validation) == 2 and len(splits.train) == 18  # 10% held out of the train split
    assert not splits.train.features["picture"].decode  # decoded by the collator, not by datasets
    _, processor = build_model_and_processor(model_args, data_args, splits.labels)
    collator = MultimodalDataCollator(
        processor,
        ("text", "image"),
        columns=data_args.columns(),
        label_column="kind",
        label_to_id=splits.label_to_id,
    )
    batch = collator(list(splits.test.select(range(4))))
    assert batch["labels"].tolist() == [0, 1, 1, 0] and batch["has_text"].tolist() == [True, True, False, True]


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_compare_runs_table(single_run):
    table = compare_runs([single_run])
    assert "| run | modalities | fusion |" in table
    assert f"| {single_run.name} | text + image + audio | gated | {read_metrics(single_run)['test']['accuracy']:.3f} |" in table


def test_early_stopping_keeps_the_best_checkpoint(data, tmp_path):
    # learning rate 0: only batch-norm statistics move the validation loss, by far less than the threshold, so no
    # evaluation improves on the first one enough and patience 1 stops at the second
    output = tmp_path / "run"
    arguments = tiny_arguments(data, output, learning_rate=0.0, early_stopping_patience=1,
                               early_stopping_threshold=0.5, max_test_samples=8)
    metrics = main(arguments)
    assert metrics["hyperparameters"]["global_steps"] == 20
    assert metrics["test"]["num_examples"] == 8 and (output / "metrics.json").is_file()
    # the best checkpoint is the one of lowest validation loss, and the saved model is that checkpoint
    history = json.loads((output / "checkpoint-20" / "trainer_state.json").read_text())["log_history"]
    best_step = min((entry["eval_loss"], entry["step"]) for entry in history if "eval_loss" in entry)[1]
    assert metrics["hyperparameters"]["best_checkpoint"] == f"checkpoint-{best_step}"
    saved, best = (load_file(folder / "model.safetensors") for folder in (output, output / f"checkpoint-{best_step}"))
    other = load_file(output / f"checkpoint-{30 - best_step}" / "model.safetensors")
    assert all(torch.equal(saved[name], best[name]) for name in best)
    assert any(not torch.equal(saved[name], other[name]) for name in other)  # batch-norm statistics moved


def test_early_stopping_and_model_selection_follow_the_validation_loss(single_run):
    """The default rule (README: Early stopping): the best checkpoint is the one with the lowest validation loss, so
    epochs whose accuracy ties an earlier one are still kept when their loss is lower."""
    state = json.loads((single_run / "checkpoint-150" / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_loss" in entry]
    best = min(evaluations, key=lambda entry: entry["eval_loss"])
    assert state["best_global_step"] == best["step"] and state["best_metric"] == pytest.approx(best["eval_loss"])
    tied = [
        (earlier, later) for earlier, later in itertools.combinations(evaluations, 2)
        if earlier["eval_accuracy"] == later["eval_accuracy"] and later["eval_loss"] < earlier["eval_loss"]
    ]
    assert tied, "the tiny run has accuracy ties whose loss improves"  # what kept the first of tied epochs before
    assert read_metrics(single_run)["hyperparameters"]["metric_for_best_model"] == "loss"


def test_a_streamed_contrastive_run_takes_its_query_bank_from_the_stream(pairs, tmp_path):
    """The query banks of an aligned model's evaluation come from the training split, here a stream."""
    stream = {"streaming": True, "max_steps": 4, "eval_steps": 2, "save_steps": 2}
    metrics, _ = train_in_process(tiny_arguments(pairs, tmp_path / "aligned", objective="contrastive", **stream))
    assert metrics["hyperparameters"]["streaming"] is True
    directions = {f"{a}_to_{b}" for a, b in itertools.permutations(MODALITIES, 2)}
    assert set(metrics["test"]["retrieval_query_bank"]) == set(metrics["test"]["retrieval"]) == directions


def test_contrastive_objective_aligns_and_a_classifier_starts_from_it(pairs, tmp_path):
    """--objective contrastive on unlabelled pairs: an aligned MultimodalModel with retrieval and zero-shot results,
    its card and both pipelines; then a comparator classifier on the relational task starts from its weights."""
    aligned = tmp_path / "aligned"
    options = {"num_train_epochs": 1, "eval_steps": 3, "save_steps": 3, "extra_test_splits": ["test_unseen_speaker"]}
    _, printed = train_in_process(tiny_arguments(pairs, aligned, objective="contrastive", **options))
    assert "| test | audio -> image |" in printed and "| test | audio -> image, query bank |" in printed
    metrics = read_metrics(aligned)
    assert metrics["objective"] == "contrastive" and metrics["labels"][7] == "seven"
    for results in (metrics["test"], metrics["extra_tests"]["test_unseen_speaker"]):
        for ranking in ("retrieval", "retrieval_query_bank"):  # by cosine, and with the training examples as bank
            assert set(results[ranking]) == {f"{a}_to_{b}" for a, b in itertools.permutations(MODALITIES, 2)}
            assert all(0.0 <= scores["recall@1"] <= scores["recall@5"] <= 1.0 for scores in results[ranking].values())
        assert set(results["zero_shot"]) == {"image", "audio"}
    config = json.loads((aligned / "config.json").read_text())
    assert config["architectures"] == ["MultimodalModel"]
    assert set(config["custom_pipelines"]) == {"multimodal-retrieval", "zero-shot-multimodal-classification"}
    card = (aligned / "README.md").read_text()
    assert "- multimodal-retrieval" in card and "| test | audio → image |" in card
    assert "| test | audio → image, query bank |" in card

    match = save_demo_dataset(build_match_dataset(AUDIO_DIR, num_train=48, num_validation=8, num_test=10), tmp_path / "match")
    classifier = tmp_path / "classifier"
    arguments = tiny_arguments(match, classifier, model_name_or_path=aligned, fusion_type="comparator",
                               modalities=["image", "audio"], modality_dropout_min_present=2, **options)
    train_in_process(_without_encoder_options(arguments))
    metrics = read_metrics(classifier)
    assert metrics["labels"] == ["different", "same"] and metrics["fusion_type"] == "comparator"
    assert metrics["modalities"] == ["image", "audio"] and set(metrics["ablation"]) == {"without_image", "without_audio"}
    assert set(metrics["extra_tests"]) == {"test_unseen_speaker"}
    aligned_weights, trained = load_file(aligned / "model.safetensors"), load_file(classifier / "model.safetensors")
    assert {f"multimodal.{name}" for name in aligned_weights if not name.startswith("fusion.")} <= set(trained)


def test_a_classifier_learns_its_head_on_frozen_digit_readers(data, pairs, tmp_path):
    """The README's "demo on frozen digit readers": readers of the three modalities trained on the paired digits, then
    the demo's task from them with every encoder frozen and another head: the encoders' weights are the readers'
    to the bit, the gated head is new."""
    readers = tmp_path / "readers"
    options = {"num_train_epochs": 1, "eval_steps": 3, "save_steps": 3}
    train_in_process(tiny_arguments(pairs, readers, fusion_type="concat", modality_loss_weight=1.0, **options))
    classifier = tmp_path / "classifier"
    arguments = tiny_arguments(data, classifier, model_name_or_path=readers, freeze_modalities=list(MODALITIES),
                               fusion_type="gated", modality_loss_weight=1.0, **options)
    train_in_process(_without_encoder_options(arguments))
    assert read_metrics(classifier)["fusion_type"] == "gated"
    before, after = load_file(readers / "model.safetensors"), load_file(classifier / "model.safetensors")
    encoders = [name for name in after if name.startswith(("multimodal.text_model.", "multimodal.vision_model.",
                                                            "multimodal.audio_model."))]
    assert len({name.split(".")[1] for name in encoders}) == 3
    assert all(torch.equal(before[name], after[name]) for name in encoders)
    gates = [name for name in after if name.startswith("multimodal.fusion.gates.")]
    assert gates and not any(name in before for name in gates)


def _without_encoder_options(arguments: list[str]) -> list[str]:
    """`arguments` without the options that describe new encoders (a saved model brings its own)."""
    kept, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
        elif argument in ("--text_config", "--image_config", "--audio_config"):
            skip = True
        else:
            kept.append(argument)
    return kept


def test_contrastive_objective_refuses_a_single_modality(tmp_path):
    with pytest.raises(ValueError, match="at least two in --modalities"):
        parse_arguments(tiny_arguments(tmp_path, tmp_path / "run", objective="contrastive", modalities=["audio"]))


def test_data_files_with_relative_media_paths_are_read_from_their_own_folder(tmp_path, monkeypatch):
    """CSV files naming PNG / WAV files relative to themselves work from any working directory; an ambiguous folder
    is refused with the files found and the options to use."""
    folder = tmp_path / "csv_data"
    (folder / "media").mkdir(parents=True)
    rows = []
    for index in range(12):
        (folder / "media" / f"{index}.png").write_bytes(_png_bytes())
        rows.append(f"caption {index},media/{index}.png,{'cat' if index % 2 else 'dog'}")
    table = "text,image,label\n" + "\n".join(rows) + "\n"
    for split in ("train", "validation", "test"):
        (folder / f"{split}.csv").write_text(table)
    monkeypatch.chdir(tmp_path / "csv_data" / "media")  # anywhere but the data folder
    for extra in ([], ["--train_file", str(folder / "train.csv"), "--test_file", str(folder / "test.csv")]):
        arguments = tiny_arguments(folder, tmp_path / "run", modalities=["text", "image"])
        if extra:
            arguments = arguments[2:] + extra  # --dataset replaced by the files
        model_args, data_args, training_args = parse_arguments(arguments)
        splits = load_splits(data_args, model_args.modalities, training_args.seed)
        assert splits.labels == ["cat", "dog"] and Path(splits.train[0]["image"]).is_absolute()
        _, processor = build_model_and_processor(model_args, data_args, splits.labels)
        collator = MultimodalDataCollator(processor, ("text", "image"), label_to_id=splits.label_to_id)
        assert collator(list(splits.test.select(range(2))))["pixel_values"].shape[0] == 2
    (folder / "extra.csv").write_text(table)
    _, data_args, _ = parse_arguments(tiny_arguments(folder, tmp_path / "run", modalities=["text", "image"]))
    with pytest.raises(ValueError, match=r"extra\.csv.*pass --train_file, --validation_file and --test_file"):
        load_splits(data_args, ["text", "image"], 0)
    with pytest.raises(ValueError, match="either --dataset .* or --train_file"):
        parse_arguments([*tiny_arguments(folder, tmp_path / "run"), "--train_file", str(folder / "train.csv")])


def test_a_pushed_run_from_relative_paths_leaks_neither_local_paths_nor_the_hub_token(data, tmp_path, hub_server):
    """Run as a user would (relative paths, a pretrained encoder from a folder of the machine, pushing every save with
    a token): no file of the output folder (checkpoints included) names the machine's folders (everything lives under
    `tmp_path`), and the token is used but never written, printed or pushed."""
    token, user = next(iter(HUB_TOKENS.items()))
    workdir, hf_home = tmp_path / "home" / "someone", tmp_path / "hf_home"
    text_model = workdir / ".venv" / "site-packages" / "tiny_bert"
    BertModel(BertConfig(**TINY_TEXT, vocab_size=30522)).save_pretrained(text_model)
    default_tokenizer().save_pretrained(text_model)
    arguments = tiny_arguments(
        Path(os.path.relpath(data, workdir)), Path("outputs/run"), max_steps=10, text_model=text_model,
        push_to_hub=True, hub_model_id=f"{user}/trained", hub_token=token, hub_strategy="checkpoint", log_level="debug",
    )
    arguments = _without_encoder_options(arguments) + ["--image_config", json.dumps(TINY_VISION),
                                                       "--audio_config", json.dumps(TINY_AUDIO)]
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"),
           "HF_ENDPOINT": hub_server.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(hf_home)}
    result = subprocess.run([sys.executable, str(TRAIN_SCRIPT), *arguments], cwd=workdir, capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    output = workdir / "outputs" / "run"
    files = [path for path in output.rglob("*") if path.is_file()]
    assert len(files) > 20
    leaks = [str(path.relative_to(output)) for path in files if str(tmp_path).encode() in path.read_bytes()]
    assert not leaks, f"absolute local paths in {leaks}"
    metrics = read_metrics(output)
    assert metrics["hyperparameters"]["text_model"] == "tiny_bert" and metrics["dataset"] == "hf_multimodal-digits"
    modes = {path.name: path.stat().st_mode & 0o777 for path in (output / "model.safetensors", output / "config.json")}
    assert set(modes.values()) == {0o666 & ~_umask()}

    listing = run([sys.executable, "-c", f"import huggingface_hub as h; print(*h.list_repo_files('{user}/trained'))"],
                  {**env, "HF_TOKEN": token})
    pushed = listing.stdout.split()
    assert {"model.safetensors", "config.json", "README.md", "metrics.json", "training_args.bin"} <= set(pushed)
    assert "last-checkpoint/optimizer.pt" in pushed  # the token was used: the writes went through
    card = (output / "README.md").read_text()
    assert "- hf_multimodal" in card and "| without image |" in card and "alice/trained" in card  # our card, with results
    written = [p for root in (output, hf_home, hub_server.storage.root) for p in Path(root).rglob("*") if p.is_file()]
    assert len(written) > 30
    token_leaks = [str(p) for p in written if token.encode() in p.read_bytes()]
    assert not token_leaks, f"the Hub token was written to {token_leaks}"
    assert token not in result.stdout + result.stderr
    saved_args = torch.load(output / "training_args.bin", weights_only=False)
    assert saved_args.hub_model_id == f"{user}/trained" and saved_args.hub_token is None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bf16_on_a_cpu_is_refused_without_bfloat16_units_and_trains_with_them(tmp_path, monkeypatch):
    from hf_multimodal import training_args
    from hf_multimodal.training_args import MultimodalTrainingArguments, cpu_has_bf16_units

    without, amx = tmp_path / "epyc", tmp_path / "sapphire_rapids"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu_has_bf16_units(str(without)) is False and cpu_has_bf16_units(str(amx)) is True
    assert cpu_has_bf16_units(str(tmp_path / "no_such_file")) is None  # another OS: not refused
    monkeypatch.setattr(training_args, "cpu_has_bf16_units", lambda: False)
    with pytest.raises(ValueError, match="--bf16 on a CPU without bfloat16 units .* Drop --bf16"):
        MultimodalTrainingArguments(str(tmp_path / "run"), bf16=True, use_cpu=True)
    assert not MultimodalTrainingArguments(str(tmp_path / "run"), use_cpu=True).bf16
    # with bfloat16 units and no GPU, --bf16 alone trains on the CPU (transformers wants use_cpu said)
    monkeypatch.setattr(training_args, "cpu_has_bf16_units", lambda: True)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    arguments = MultimodalTrainingArguments(str(tmp_path / "run"), bf16=True)
    assert arguments.bf16 and arguments.use_cpu and arguments.device.type == "cpu"


def test_a_run_started_from_a_saved_model_says_which_parts_start_anew(tmp_path, caplog):
    """A relational head over digit readers: another label set and another fusion head start anew, the encoders and
    projections are the saved model's, and the run says so in one line."""
    readers = tiny_model(("image", "audio"), fusion_type="concat", id2label={i: str(i) for i in range(10)})
    readers.save_pretrained(tmp_path / "readers")
    MultimodalProcessor(image_processor=tiny_image_processor()).save_pretrained(tmp_path / "readers")
    relation = {"fusion_type": "comparator", "id2label": {0: "different", 1: "same"}}
    model, loading = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "readers", ignore_mismatched_sizes=True, output_loading_info=True, **relation
    )
    assert parts_started_anew(model, loading) == ["classifier", "multimodal.fusion"]
    kept = {**dict(readers.multimodal.audio_model.named_parameters(prefix="audio_model")),
            **dict(readers.multimodal.projections.named_parameters(prefix="projections"))}  # fmt: skip
    for name, parameter in kept.items():
        assert torch.equal(model.multimodal.get_parameter(name), parameter), name

    arguments = ["--model_name_or_path", str(tmp_path / "readers"), "--modalities", "image", "audio", "--fusion_type",
                 "comparator", "--dataset", str(tmp_path), "--output_dir", str(tmp_path / "out")]  # fmt: skip
    with caplog.at_level("WARNING"):
        build_model_and_processor(*parse_arguments(arguments)[:2], labels=["different", "same"])
    said = [record.getMessage() for record in caplog.records if record.name == "train"]
    expected = (
        f"Started from {tmp_path / 'readers'}: new weights for classifier, multimodal.fusion (the saved model has "
        "none that fit the head or labels asked for; the load report lists them); every other weight is the saved "
        "model's."
    )
    assert said == [expected]
    # the same model asked for what it is: nothing starts anew, nothing is said
    caplog.clear()
    same = ["--model_name_or_path", str(tmp_path / "readers"), "--modalities", "image", "audio", "--fusion_type",
            "concat", "--dataset", str(tmp_path), "--output_dir", str(tmp_path / "again")]  # fmt: skip
    with caplog.at_level("WARNING"):
        build_model_and_processor(*parse_arguments(same)[:2], labels=[str(i) for i in range(10)])
    assert not [record for record in caplog.records if record.name == "train"]

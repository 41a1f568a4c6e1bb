"""Model cards: metadata through huggingface_hub's ModelCardData / EvalResult, the Jinja template's sections, the
usage snippet, a trained output folder, bad metrics files, and the TrainerCallback that fills the card."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import Trainer, TrainingArguments

from hf_multimodal import MultimodalProcessor
from hf_multimodal.model_card import (
    ModelCardCallback,
    TrainingReport,
    build_model_card,
    count_parameters,
    hyperparameters_from_args,
    model_card_from_output_folder,
    template_path,
)

from conftest import tiny_image_processor, tiny_model, write_trained_output_folder


@pytest.fixture(scope="module")
def card(trained_output_folder) -> ModelCard:
    return model_card_from_output_folder(trained_output_folder, repo_id="alice/av-digits-gated")


def test_template_is_a_jinja_file_in_model_cards():
    path = template_path()
    assert path.suffix == ".jinja" and path.parent.name == "model_cards"
    assert path.parent.parent == Path(__file__).resolve().parents[1]
    assert "{{ card_data }}" in path.read_text()


def test_metadata(card, trained_output_folder):
    metrics = json.loads((trained_output_folder / "metrics.json").read_text())
    data = ModelCard(card.content).data  # parsed back from the YAML header
    assert data.library_name == "transformers" and data.pipeline_tag == "other" and data.license == "apache-2.0"
    assert {"hf_multimodal", "multimodal-classification", "text", "image", "audio", "fusion-gated"} <= set(data.tags)
    assert data.datasets == ["alice/av-digits"]
    assert data.metrics == ["accuracy", "precision", "recall", "f1"]
    assert data.base_model == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert data.model_name == "av-digits-gated"
    results = {result.metric_type: result for result in data.eval_results}
    assert {name: result.metric_value for name, result in results.items()} == {
        name: round(metrics["test"][name], 4) for name in ("accuracy", "precision", "recall", "f1")
    }
    assert {result.dataset_type for result in data.eval_results} == {"alice/av-digits"}
    assert results["f1"].metric_args == {"average": "macro"} and results["accuracy"].dataset_split == "test"
    assert "model-index:" in card.content and "eval_results" not in card.content


def test_body_sections(card):
    text = card.text
    for expected in [
        "classifies examples made of **text + image + audio** into 3 classes\n(zero, one, two)",
        "## Model details",
        "| text | bert (width 32, 2 layers) | [sentence-transformers/all-MiniLM-L6-v2]"
        "(https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2) |",
        "| image | resnet (width 32, 2 stages) | random weights |",
        "| audio | wavenet (width 32, 2 x 2 dilated layers) | random weights |",
        "**Fusion:** `gated` (a gated multimodal unit with context-dependent gates), width 32",
        "**Modality dropout** during training: 0.2",
        "text up to 16 tokens",
        "mono audio at 16000 Hz (other rates are resampled), at most 10 s",
        "## How to use",
        'classifier = pipeline("multimodal-classification", model="alice/av-digits-gated", trust_remote_code=True)',
        'pipeline(model="alice/av-digits-gated", trust_remote_code=True)',
        'pipeline("multimodal-classification", model="alice/av-digits-gated")',
        "## Intended use and limitations",
        "trained and evaluated on alice/av-digits only",
        "Without image its test accuracy changes by -30.0 points",
        "### Training hyper-parameters",
        "| learning_rate | 0.0003 |",
        "### Training log",
        "| Epoch | Step | Training loss | Validation loss | Validation accuracy |",
        "| 2 | 16 | 0.61 | 0.55 | 0.88 |",
        "Test split of alice/av-digits, 60 examples",
        "| Accuracy | 0.9 |",
        "| F1 (macro) | 0.885 |",
        "### Per-modality ablation",
        "| all modalities | 0.9 | 0.885 | |",
        "| without text | 0.8 | 0.785 | -10.0 |",
        "| without image | 0.6 | 0.585 | -30.0 |",
        "| without audio | 0.85 | 0.835 | -5.0 |",
        "![Confusion matrix on the test split](confusion_matrix.png)",
        "## Framework versions",
    ]:
        assert expected in text, expected


def test_usage_snippet_runs_as_written(trained_output_folder):
    """A local model's card says it is local and names no folder of this machine; its snippet runs once the
    placeholder it explains is replaced by the folder."""
    local = model_card_from_output_folder(trained_output_folder)
    assert local.data.model_name == "Local multimodal classifier of text, image, audio"
    assert "saved locally, not on the Hub yet" in local.text and str(trained_output_folder) not in local.text
    snippet = re.search(r"```python\n(.*?)```", local.text, flags=re.S).group(1)
    snippet = snippet.replace("path/to/this/folder", str(trained_output_folder))
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(snippet, "<model card snippet>", "exec"), {})
    predictions = eval(output.getvalue())  # the snippet prints a list of {"label", "score"}
    assert len(predictions) == 3 and {entry["label"] for entry in predictions} == {"zero", "one", "two"}


def test_folder_without_metrics_gives_a_card_without_results(tmp_path):
    tiny_model(("text", "audio")).save_pretrained(tmp_path)
    MultimodalProcessor().save_pretrained(tmp_path)
    card = model_card_from_output_folder(tmp_path)
    assert card.data.eval_results is None and card.data.datasets is None and "model-index" not in card.content
    assert "No evaluation results were recorded with this model." in card.text
    assert "No training run was recorded with this model." in card.text
    assert '"image"' not in card.text and "text + audio" in card.text


def test_local_paths_do_not_leak_into_the_card(tmp_path):
    write_trained_output_folder(tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    metrics["dataset"] = "/home/someone/data/av_digits"
    metrics["hyperparameters"]["text_model"] = "/home/someone/models/minilm"
    metrics["hyperparameters"]["backbones"] = {"text": "/home/someone/models/minilm"}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    card = model_card_from_output_folder(tmp_path, repo_id="alice/x")
    assert "/home/someone" not in card.content
    assert "trained on **av_digits**" in card.text and "| text_model | minilm |" in card.text
    assert card.data.datasets is None
    # model-index: a local dataset is "custom" by type (the type is a Hub dataset id), named by its folder
    assert {(result.dataset_type, result.dataset_name) for result in card.data.eval_results} == {("custom", "av_digits")}


def test_an_encoder_copied_from_a_local_folder_is_no_base_model(tmp_path):
    """from_backbones records a local encoder folder by its name ("speech_embedding", as scripts/demo.sh's converted
    audio encoder); a bare name is no Hub repo to link to, unlike the namespaced MiniLM id given by --backbones."""
    write_trained_output_folder(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["backbones"] = {**config["backbones"], "audio": "speech_embedding"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    card = model_card_from_output_folder(tmp_path, repo_id="alice/x")
    assert card.data.base_model == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert "local checkpoint `speech_embedding`" in card.text and "huggingface.co/speech_embedding" not in card.text


def test_encoders_of_a_run_started_from_a_saved_model_are_said_to_come_from_it(tmp_path):
    """A classifier trained from a saved model (--model_name_or_path, e.g. scripts/demo.sh's digit readers) took every
    encoder from it: an encoder first trained there is no longer "random weights", a pretrained one went through it."""
    write_trained_output_folder(tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    metrics["hyperparameters"]["model_name_or_path"] = "/home/someone/outputs/demo/readers"
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    card = model_card_from_output_folder(tmp_path, repo_id="alice/x")
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in card.text.splitlines()
            if line.startswith(("| text |", "| image |", "| audio |"))}
    assert set(rows) == {"text", "image", "audio"}
    assert rows["image"] == "`readers`, the model its training started from"
    assert rows["text"].startswith("[sentence-transformers/all-MiniLM-L6-v2](")
    assert rows["text"].endswith(", through `readers`, the model its training started from")
    assert "random weights" not in card.text and "/home/someone" not in card.content


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"test": [0.9]}', "'test' must be a JSON object"),
        ('{"test": {"accuracy": "high"}}', "test metric 'accuracy' must be a number"),
    ],
)
def test_bad_metrics_files_are_refused(tmp_path, content, message):
    write_trained_output_folder(tmp_path)
    (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        model_card_from_output_folder(tmp_path)


def test_bad_arguments_are_refused(tmp_path, trained_output_folder):
    with pytest.raises(ValueError, match="not a saved model folder"):
        model_card_from_output_folder(tmp_path)
    with pytest.raises(ValueError, match="is not a Hub repo id"):
        model_card_from_output_folder(trained_output_folder, backbones={"text": "/local/bert"})
    with pytest.raises(ValueError, match="unknown modality 'video'"):
        model_card_from_output_folder(trained_output_folder, backbones={"video": "a/b"})
    assert build_model_card(tiny_model().config).data.model_name.startswith("Local multimodal classifier")


def test_parameter_counts_from_a_folder_match_the_model(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    counts = count_parameters(tmp_path)
    assert counts == count_parameters(model)
    assert counts["total"] == sum(tensor.numel() for tensor in model.state_dict().values())
    assert counts["text"] == sum(p.numel() for p in model.get_encoder("text").state_dict().values())


def test_callback_fills_the_card_during_training(tmp_path):
    model = tiny_model(("text", "image"), id2label={0: "no", 1: "yes"})
    processor = MultimodalProcessor(image_processor=tiny_image_processor(), max_text_length=16)
    rows = [{"text": word, "label": index % 2} for index, word in enumerate(["yes", "no", "maybe", "sure"] * 2)]

    def collate(batch):
        labels = torch.tensor([row["label"] for row in batch])
        return {**processor(text=[row["text"] for row in batch]), "labels": labels}

    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3,
        eval_strategy="steps", eval_steps=2, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, remove_unused_columns=False, disable_tqdm=True, seed=3,
    )
    written = []

    class Spy(ModelCardCallback):
        def on_evaluate(self, *positional, **keywords):
            super().on_evaluate(*positional, **keywords)
            written.append((tmp_path / "run" / "README.md").read_text())

    trainer = Trainer(
        model=model, args=args, train_dataset=rows, eval_dataset=rows[:4], data_collator=collate,
        processing_class=processor, callbacks=[Spy(dataset="alice/yes-no")],
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
    )
    trainer.train()
    # filled as training goes: after the first evaluation the log has its row (epoch, step, a loss), not the second's
    assert len(written) == 2 and re.search(r"\| 0\.5 \| 2 \| [0-9.]+ \|", written[0]) and "| 1 | 4 |" not in written[0]
    card = ModelCard.load(tmp_path / "run" / "README.md")
    # no --hub_model_id: the card says the model is local instead of naming it after its folder ("run")
    assert card.data.datasets == ["alice/yes-no"] and card.data.model_name.startswith("Local multimodal classifier")
    assert "| learning_rate | 0.001 |" in card.text and "| seed | 3 |" in card.text
    assert "| total_train_batch_size | 2 |" in card.text and "| training_steps | 4 |" in card.text
    assert "Validation accuracy" in card.text and "| 1 | 4 |" in card.text
    assert "text + image" in card.text
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "eval_loss" in entry] == [2, 4]
    assert hyperparameters_from_args(args)["optimizer"] == str(getattr(args.optim, "value", args.optim))


def test_report_reads_the_latest_checkpoint_log_when_the_folder_has_none(tmp_path):
    write_trained_output_folder(tmp_path)
    (tmp_path / "trainer_state.json").unlink()
    for step in (3, 12):
        (tmp_path / f"checkpoint-{step}").mkdir(exist_ok=True)
        log = [{"eval_loss": 1.0 / step, "epoch": step / 6, "step": step}]
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    assert TrainingReport.from_folder(tmp_path).log_history[0]["step"] == 12


def test_no_modality_is_said_to_be_relied_on_when_no_removal_lowers_accuracy(tmp_path):
    write_trained_output_folder(tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for row in metrics["ablation"].values():  # every removal leaves accuracy as it is, or raises it
        row["accuracy"] = metrics["test"]["accuracy"] + 0.01
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    text = " ".join(model_card_from_output_folder(tmp_path).text.split())
    assert "relies most" not in text
    assert "lowered no accuracy in the ablation: the test set does not show which modality the model relies on" in text
    assert "learned placeholder" in text and "never replaced by placeholders" not in text

"""`bash scripts/demo.sh`, the README's main command, end to end at a tiny size (the set-up step and the pretrained
MiniLM are swapped for the current environment and a tiny BERT): both datasets, the pretrained speech front-end
converted, the two stages (digit readers, then the classifier over them, frozen) with progress shown, each results
table printed once, the reload through the pipeline, and the reuse of finished stages; scripts/demo_results.sh
refuses a lane it does not have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

from hf_multimodal.processing_multimodal import default_tokenizer

from conftest import TINY_TEXT, TINY_VISION


ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--num_train_epochs", "1", "--fusion_hidden_size", "32", "--per_device_train_batch_size", "8"]


@pytest.mark.slow
def test_demo_script_end_to_end(tmp_path):
    text_model = tmp_path / "tiny-bert"
    BertModel(BertConfig(**TINY_TEXT, vocab_size=30522)).save_pretrained(text_model)
    default_tokenizer().save_pretrained(text_model)
    env = {
        **os.environ,
        "SETUP": "0",
        "PYTHON": sys.executable,
        "TEXT_MODEL": str(text_model),
        "DATA": str(tmp_path / "data"),
        "OUTPUT": str(tmp_path / "model"),
        "READERS": str(tmp_path / "readers"),
        "PAIRS": str(tmp_path / "pairs"),
        "READERS_ARGS": " ".join([*TINY_ARGS, "--image_config", json.dumps(TINY_VISION, separators=(",", ":"))]),
        "AUDIO_MODEL": str(tmp_path / "speech_embedding"),
        "DATA_ARGS": "--num_train 40 --num_validation 10 --num_test 10",
        "OMP_NUM_THREADS": "1",
    }
    first = subprocess.run(["bash", "scripts/demo.sh", *TINY_ARGS], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-4000:]
    assert first.stdout.count("| all modalities |") == 2  # the readers' results, then the classifier's, once each
    assert first.stdout.count("| test_unseen_speaker split |") == 1  # the classifier's only
    readers_at = first.stdout.index("Stage 1, digit readers: training into")
    assert readers_at < first.stdout.index("Stage 2, the demo's classifier: training into")
    assert "%|" in first.stderr and "it/s" in first.stderr  # Trainer's progress bar: the newcomer sees progress
    assert "Reloaded" in first.stdout and "Predicted: " in first.stdout
    audio_config = json.loads((tmp_path / "model" / "config.json").read_text())["audio_config"]
    assert audio_config["frontend"] == "speech_embedding"  # converted by the script, then trained around
    readers = load_file(tmp_path / "readers" / "model.safetensors")
    classifier = load_file(tmp_path / "model" / "model.safetensors")
    encoders = [name for name in readers if name.startswith(("multimodal.vision_model.", "multimodal.audio_model."))]
    assert encoders and all(torch.equal(readers[name], classifier[name]) for name in encoders)  # stage 2 kept them
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["dataset"] == "hf_multimodal-digits" and metrics["dataset_local"] is True

    again = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("holds a finished run: reusing it") == 2
    assert "| all modalities |" not in again.stdout and "Predicted: " in again.stdout


def test_demo_results_refuses_an_unknown_lane_before_any_work():
    env = {**os.environ, "SETUP": "0", "PYTHON": sys.executable, "LANES": "readers relation"}
    run = subprocess.run(["bash", "scripts/demo_results.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == ""
    assert "LANES: unknown lane 'relation'; choose among classification, relations, readers." in run.stderr

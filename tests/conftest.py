"""Shared tiny configurations and inputs: every model in the suite is random, small and built offline."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread per process, for this process and the subprocesses it starts: the suite's tensors are tiny, and on a
# shared 2-core machine every multi-threaded op waits for a thread that is off its core (often 10-100x slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# scripts/ holds the training CLI, the benchmark harness and the demo-data builder (not part of the package)
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The runs' dataset caches and cached encoder features (`datasets`' cache) go to a folder of this session, removed at
# exit, never into the user's ~/.cache (set before `datasets` is imported; subprocesses inherit it).
if "HF_DATASETS_CACHE" not in os.environ:
    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf_multimodal-tests-datasets-")
    atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)
from transformers import ConvNextImageProcessorPil

from hf_multimodal import MultimodalConfig, MultimodalForSequenceClassification, MultimodalProcessor


TINY_TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TINY_VISION = {"hidden_sizes": [16, 32], "depths": [1, 1], "embedding_size": 16, "layer_type": "basic"}
TINY_AUDIO = {"hidden_size": 32, "num_stacks": 2, "layers_per_stack": 2, "frontend_channels": [16, 32, 32, 32]}
TINY_SUB_CONFIGS = {"text_config": TINY_TEXT, "vision_config": TINY_VISION, "audio_config": TINY_AUDIO}


WITHOUT_THE_PACKAGE = textwrap.dedent(
    """
    import sys

    class RefuseHfMultimodal:  # this process must never import the package: its code comes from the saved folder
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hf_multimodal":
                raise ImportError("hf_multimodal must not be imported in this process")

    sys.meta_path.insert(0, RefuseHfMultimodal())
    """
)
"""The start of a script run in a subprocess that loads saved models through remote code only."""


START_FIRST = (
    "test_training.py",
    "test_exporting_onnx.py",
    "test_demo_app.py",
    "test_hub_faults.py",
    "test_hub.py",
    "test_demo_script.py",
    "test_transformers_common.py",
    "test_benchmark.py",
    "test_problem_types.py",
    "test_safe_loading.py",
)
"""The files that take longest (subprocess training runs, exports, a browser), longest first. `scripts/test.sh` runs
each file on one worker (`--dist loadfile --no-loadscope-reorder`) in collection order, so starting these first keeps
a long file from being the last one left running while the other worker idles."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Collect the files of `START_FIRST` first, in its order; the others keep pytest's order after them."""
    rank = {name: index for index, name in enumerate(START_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def tiny_config(modalities=("text", "image", "audio"), **kwargs) -> MultimodalConfig:
    """A MultimodalConfig with hidden sizes of 32 and 2 layers per encoder, for the given modalities."""
    keys = {"text": "text_config", "image": "vision_config", "audio": "audio_config"}
    sub_configs = {key: (TINY_SUB_CONFIGS[key] if modality in modalities else None) for modality, key in keys.items()}
    defaults = {"fusion_hidden_size": 32, "fusion_num_heads": 2}
    if "id2label" not in kwargs:
        defaults["num_labels"] = 3
    return MultimodalConfig(**{**sub_configs, **defaults, **kwargs})


def tiny_model(modalities=("text", "image", "audio"), seed: int = 0, **kwargs) -> MultimodalForSequenceClassification:
    torch.manual_seed(seed)
    return MultimodalForSequenceClassification(tiny_config(modalities, **kwargs)).eval()


def tiny_image_processor() -> ConvNextImageProcessorPil:
    return ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=1.0)


@pytest.fixture(scope="session")
def processor() -> MultimodalProcessor:
    return MultimodalProcessor(image_processor=tiny_image_processor(), max_text_length=32)


def random_image(seed: int, size: tuple[int, int] = (40, 36)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def random_audio(seed: int, seconds: float = 0.5, sampling_rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(int(seconds * sampling_rate)).astype(np.float32)


@pytest.fixture(scope="session")
def batch_inputs() -> dict:
    """Raw inputs of a 4-example batch in which every modality is missing somewhere."""
    return {
        "text": ["a loud red bird", None, "seven", "the quick brown fox jumps"],
        "images": [random_image(0), random_image(1), None, random_image(3, (64, 20))],
        "audio": [random_audio(0, 0.3), None, random_audio(2, 0.7), random_audio(3, 0.5)],
        "sampling_rate": 16000,
    }


HUB_TOKENS = {"hf_test_alice_write_0123": "alice", "hf_test_bob_write_4567": "bob"}
"""Tokens the local Hub server accepts, and their users."""


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    """A Hub-compatible HTTP server on 127.0.0.1 (tests/hub_server.py), shared by the whole session."""
    from hub_server import HubServer

    server = HubServer(tmp_path_factory.mktemp("hub"), tokens=HUB_TOKENS).start()
    yield server
    server.stop()


def client_env(hub_server, home: Path, token: str | None = None, **extra: str) -> dict[str, str]:
    """A fresh user's environment for a subprocess: the local Hub as endpoint, an empty cache, no Xet, the token if
    any, and `extra` variables."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "HF_HOME": str(home / "huggingface"),
        "HF_ENDPOINT": hub_server.endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",  # as this process: same kernels, bitwise-equal results
        **extra,
    }
    if token:
        env["HF_TOKEN"] = token
    return env


def write_trained_output_folder(folder, seed: int = 0, accuracy: float = 0.9) -> MultimodalForSequenceClassification:
    """A folder shaped like scripts/train.py's output (tiny model + processor, metrics.json, trainer_state.json,
    confusion_matrix.png, a checkpoint and training_args.bin that must stay local); returns the model."""
    model = tiny_model(seed=seed, id2label={0: "zero", 1: "one", 2: "two"}, fusion_type="gated", modality_dropout=0.2)
    model.config.backbones = {"text": "sentence-transformers/all-MiniLM-L6-v2"}
    model.save_pretrained(folder)
    MultimodalProcessor(image_processor=tiny_image_processor(), max_text_length=16).save_pretrained(folder)
    scores = {"accuracy": accuracy, "precision": accuracy - 0.01, "recall": accuracy - 0.02, "f1": accuracy - 0.015}
    ablation = {
        f"without_{modality}": {name: value - drop for name, value in scores.items()} | {"num_examples": 60}
        for modality, drop in (("text", 0.1), ("image", 0.3), ("audio", 0.05))
    }
    metrics = {
        "dataset": "alice/av-digits",
        "test": scores | {"num_examples": 60},
        "ablation": ablation,
        "hyperparameters": {"learning_rate": 3e-4, "num_train_epochs": 2, "per_device_train_batch_size": 8, "seed": 42},
        "modalities": ["text", "image", "audio"],
        "fusion_type": "gated",
        "labels": ["zero", "one", "two"],
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    log = [{"loss": 1.05, "epoch": 0.5, "step": 4}, {"eval_loss": 0.98, "eval_accuracy": 0.7, "epoch": 1.0, "step": 8},
           {"loss": 0.61, "epoch": 1.5, "step": 12}, {"eval_loss": 0.55, "eval_accuracy": 0.88, "epoch": 2.0, "step": 16}]
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    random_image(7, (12, 12)).save(folder / "confusion_matrix.png")
    (folder / "checkpoint-8").mkdir()
    (folder / "checkpoint-8" / "optimizer.pt").write_bytes(b"\0" * 64)
    (folder / "training_args.bin").write_bytes(b"\0" * 64)
    return model


AUDIO_DIR = SCRIPTS / "demo_assets" / "fsdd"
"""The spoken digits vendored for the demo datasets."""
EASY = {"text": {"clean": 1.0, "ambiguous": 0.0, "uninformative": 0.0, "missing": 0.0}}
"""Clean text in every example, so that a tiny random BERT learns the task within 150 steps."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny demo dataset saved to disk (120 train, 16 validation, 24 test examples, clean text), for training runs of
    scripts/train.py."""
    from make_demo_dataset import build_demo_dataset, save_demo_dataset

    dataset = build_demo_dataset(AUDIO_DIR, num_train=120, num_validation=16, num_test=24, probabilities=EASY)
    return save_demo_dataset(dataset, tmp_path_factory.mktemp("demo") / "data")


@pytest.fixture(scope="session")
def trained_output_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained") / "av-digits-gated"
    write_trained_output_folder(folder)
    return folder

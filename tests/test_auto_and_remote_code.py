"""Auto classes after `import hf_multimodal`, and `trust_remote_code=True` loading in a process that never imports it."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoProcessor,
)

from hf_multimodal import (
    MultimodalClassificationPipeline,
    MultimodalConfig,
    MultimodalForSequenceClassification,
    MultimodalModel,
    MultimodalProcessor,
    WaveNetFeatureExtractor,
)

from conftest import HUB_TOKENS, WITHOUT_THE_PACKAGE, client_env, tiny_image_processor, tiny_model


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory, batch_inputs):
    folder = tmp_path_factory.mktemp("saved")
    model = tiny_model(fusion_type="transformer", id2label={0: "bird", 1: "cat", 2: "dog"})
    processor = MultimodalProcessor(image_processor=tiny_image_processor(), max_text_length=16)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    logits = model(**processor(**batch_inputs)).logits.detach()
    torch.save({"logits": logits, "inputs": batch_inputs}, folder.parent / "expected.pt")
    return folder


def test_folder_holds_safetensors_code_and_auto_map(saved_folder):
    names = {path.name for path in saved_folder.iterdir()}
    assert "model.safetensors" in names and not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)
    for code_file in (
        "configuration_multimodal.py",
        "configuration_wavenet.py",
        "modeling_multimodal.py",
        "modeling_fusion.py",
        "modeling_wavenet.py",
        "processing_multimodal.py",
        "feature_extraction_wavenet.py",
    ):
        assert code_file in names
    auto_map = json.loads((saved_folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification"}
    processor_map = json.loads((saved_folder / "processor_config.json").read_text())["auto_map"]
    assert processor_map["AutoProcessor"] == "processing_multimodal.MultimodalProcessor"


def test_auto_classes_load_without_remote_code(saved_folder, batch_inputs):
    expected = torch.load(saved_folder.parent / "expected.pt", weights_only=False)["logits"]
    assert isinstance(AutoConfig.from_pretrained(saved_folder), MultimodalConfig)
    assert isinstance(AutoModel.from_pretrained(saved_folder), MultimodalModel)
    assert isinstance(AutoFeatureExtractor.from_pretrained(saved_folder), WaveNetFeatureExtractor)
    model = AutoModelForSequenceClassification.from_pretrained(saved_folder).eval()
    processor = AutoProcessor.from_pretrained(saved_folder)
    assert isinstance(model, MultimodalForSequenceClassification) and isinstance(processor, MultimodalProcessor)
    assert model.config.id2label == {0: "bird", 1: "cat", 2: "dog"}
    torch.testing.assert_close(model(**processor(**batch_inputs)).logits, expected)


REMOTE_CODE_SCRIPT = WITHOUT_THE_PACKAGE + textwrap.dedent(
    """
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoProcessor

    folder, expected_file = sys.argv[1], sys.argv[2]
    expected = torch.load(expected_file, weights_only=False)
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    logits = model(**processor(**expected["inputs"])).logits
    torch.testing.assert_close(logits, expected["logits"])
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
    assert type(base).__name__ == "MultimodalModel"
    assert not [name for name in sys.modules if name.startswith("hf_multimodal")]
    print("REMOTE-CODE-OK", type(model).__module__)
    """
)


@pytest.mark.slow
def test_remote_code_in_a_fresh_process_gives_the_same_logits(saved_folder, tmp_path):
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_CODE_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(saved_folder), str(saved_folder.parent / "expected.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-CODE-OK transformers_modules" in result.stdout


@pytest.mark.slow
def test_remote_code_is_not_run_without_trust(saved_folder, tmp_path):
    """In a process without the package, the saved code is refused unless trust_remote_code=True is given."""
    script = tmp_path / "refuse.py"
    script.write_text(
        WITHOUT_THE_PACKAGE
        + textwrap.dedent(
            """
            from transformers import AutoModelForSequenceClassification
            try:
                AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=False)
            except ValueError as error:
                print("REFUSED", "trust_remote_code" in str(error))
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script), str(saved_folder)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"},
    )
    assert "REFUSED True" in result.stdout, result.stderr[-3000:]
    assert not (tmp_path / "modules").exists() or not any((tmp_path / "modules").rglob("modeling_multimodal.py"))


HUB_USER_PACKAGES = ("torch", "transformers", "huggingface_hub", "numpy", "pillow", "soundfile")
"""What a Hub user who loads a model with `trust_remote_code=True` can be assumed to have (with their dependencies)."""


def hub_user_site(folder: Path) -> Path:
    """A folder of links to the importable modules of HUB_USER_PACKAGES and everything they require (no extras):
    the only packages a `python -S` subprocess with it as PYTHONPATH can import."""
    folder.mkdir()
    seen, pending = set(), list(HUB_USER_PACKAGES)
    while pending:
        name = re.sub(r"[-_.]+", "-", pending.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in map(Requirement, distribution.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
        # the modules, and the .dist-info folder that importlib.metadata reads versions from
        for top in {file.parts[0] for file in distribution.files or [] if file.parts[0] != ".."}:
            if not top.endswith(".pth") and top != "__pycache__" and not (folder / top).exists():
                (folder / top).symlink_to(distribution.locate_file(top))
    return folder


@pytest.mark.slow
def test_remote_code_runs_with_only_what_a_hub_user_has(saved_folder, tmp_path, hub_server):
    """A repo pushed to the (local) Hub, loaded where there is no scipy, scikit-learn, datasets, accelerate or
    hf_multimodal: the model, processor and pipeline load and predict through remote code; resampling, which needs
    scipy, says so when asked for."""
    script = tmp_path / "hub_user.py"
    script.write_text(
        REMOTE_CODE_SCRIPT
        + textwrap.dedent(
            """
            for package in ("scipy", "sklearn", "datasets", "accelerate"):
                try:
                    __import__(package)
                except ImportError:
                    continue
                raise AssertionError(f"{package} is importable: the environment is not a bare Hub user's")
            from transformers import pipeline

            classifier = pipeline(model=folder, trust_remote_code=True)
            example = {"text": "a red bird", "audio": expected["inputs"]["audio"][0]}
            print("PIPELINE", classifier(example, sampling_rate=16000)[0]["label"])
            try:
                classifier({"audio": {"array": expected["inputs"]["audio"][0], "sampling_rate": 8000}})
            except ImportError as error:
                print("RESAMPLE", error)
            """
        )
    )
    folder = tmp_path / "with_pipeline"  # what a push sends: with the pipeline's code and `custom_pipelines`
    model = AutoModelForSequenceClassification.from_pretrained(saved_folder)
    MultimodalClassificationPipeline(model=model, processor=AutoProcessor.from_pretrained(saved_folder)).save_pretrained(folder)
    repo = "alice/hub-user-remote-code"  # pushed by alice (this process runs offline, as the suite does)
    push = "import sys, huggingface_hub as hub; repo, folder = sys.argv[1:]; hub.create_repo(repo); " \
        "hub.upload_folder(repo_id=repo, folder_path=folder)"
    pusher = client_env(hub_server, tmp_path / "pusher", next(iter(HUB_TOKENS)))
    subprocess.run([sys.executable, "-c", push, repo, str(folder)], check=True, env=pusher)
    result = subprocess.run(
        [sys.executable, "-S", str(script), repo, str(saved_folder.parent / "expected.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        env=client_env(hub_server, tmp_path / "home", PYTHONPATH=str(hub_user_site(tmp_path / "site"))),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-CODE-OK transformers_modules" in result.stdout
    assert re.search(r"PIPELINE (bird|cat|dog)", result.stdout), result.stdout
    assert "RESAMPLE resampling audio from 8000 Hz to 16000 Hz needs scipy: pip install scipy" in result.stdout


def test_a_classifier_saved_by_version_0_1_loads_and_gives_the_same_logits():
    """tests/data/saved_by_0.1.0: a tiny image + audio classifier saved by hf_multimodal 0.1.0 (before the modules
    moved), with its logits on seeded inputs."""
    folder = Path(__file__).parent / "data" / "saved_by_0.1.0"
    expected = json.loads((folder / "expected_logits.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    torch.manual_seed(expected["seed"])
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32), "input_values": torch.randn(2, 4000),
              "has_image": torch.tensor([True, False])}
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, torch.tensor(expected["logits"]))

"""Safe loading: safetensors only unless explicitly opted out; no repository code runs without trust_remote_code."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, BertModel

from hf_multimodal import MultimodalForSequenceClassification, WaveNetConfig, WaveNetModel

from conftest import TINY_AUDIO, TINY_TEXT, tiny_model


ROOT = Path(__file__).resolve().parents[1]


def pickle_only(folder, model) -> None:
    """Turn a saved folder into one that holds only pickle weights."""
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def test_saved_weights_are_safetensors(tmp_path):
    tiny_model(("text", "audio")).save_pretrained(tmp_path)
    names = {path.name for path in tmp_path.iterdir()}
    assert "model.safetensors" in names
    assert not names & {"pytorch_model.bin", "model.pt", "model.ckpt"}


@pytest.mark.parametrize("auto_class", [AutoModelForSequenceClassification, MultimodalForSequenceClassification])
def test_pickle_only_folder_is_refused_unless_opted_in(tmp_path, auto_class):
    model = tiny_model(("text", "audio"))
    model.save_pretrained(tmp_path)
    pickle_only(tmp_path, model)
    with pytest.raises(OSError, match="holds pickle weights .* pass use_safetensors=False to load it anyway"):
        auto_class.from_pretrained(tmp_path)
    loaded = auto_class.from_pretrained(tmp_path, use_safetensors=False)
    torch.testing.assert_close(loaded.classifier.weight, model.classifier.weight)


def test_pickle_only_wavenet_is_refused(tmp_path):
    model = WaveNetModel(WaveNetConfig(**TINY_AUDIO))
    model.save_pretrained(tmp_path)
    pickle_only(tmp_path, model)
    with pytest.raises(OSError, match="holds pickle weights"):
        AutoModel.from_pretrained(tmp_path)


def test_pickle_only_backbone_is_refused_by_from_backbones(tmp_path):
    bert = BertModel(BertConfig(**TINY_TEXT))
    bert.save_pretrained(tmp_path)
    pickle_only(tmp_path, bert)
    with pytest.raises(OSError, match="holds pickle weights"):
        MultimodalForSequenceClassification.from_backbones(text=tmp_path, fusion_hidden_size=32, fusion_num_heads=2)


def test_missing_weights_keep_the_plain_error(tmp_path):
    tiny_model(("text",)).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(OSError, match="no file named model.safetensors"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)


def test_repository_code_does_not_run_when_the_package_is_imported(tmp_path):
    """A folder whose auto_map points at its own (malicious) code loads with the installed classes instead."""
    tiny_model(("text",)).save_pretrained(tmp_path)
    marker = tmp_path / "code-ran"
    payload = f"open({str(marker)!r}, 'w').write('pwned')\n"
    for code_file in tmp_path.glob("*.py"):
        code_file.write_text(payload + code_file.read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    assert "AutoModelForSequenceClassification" in config["auto_map"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(model) is MultimodalForSequenceClassification
    assert not marker.exists()


class TestStagedSaves:
    def test_saving_over_a_folder_keeps_other_files_and_drops_stale_shards(self, tmp_path, processor):
        processor.save_pretrained(tmp_path)
        (tmp_path / "metrics.json").write_text("{}")
        (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"stale shard")
        (tmp_path / "model.safetensors.index.json").write_text("{}")
        tiny_model(("text",)).save_pretrained(tmp_path)
        names = {path.name for path in tmp_path.iterdir()}
        assert {"processor_config.json", "tokenizer.json", "metrics.json", "model.safetensors", "config.json"} <= names
        assert not names & {"model-00001-of-00002.safetensors", "model.safetensors.index.json"}
        assert not any(name.startswith(".") for name in names)  # no staging folder left behind

    def test_interrupted_save_leaves_the_previous_weights_whole(self, tmp_path, monkeypatch):
        old, new = tiny_model(("text",), seed=1), tiny_model(("text",), seed=2)
        old.save_pretrained(tmp_path / "model")
        real_replace = os.replace

        def crash_on_weights(source, destination):
            if str(destination).endswith(".safetensors"):
                raise KeyboardInterrupt("killed while saving")
            real_replace(source, destination)

        monkeypatch.setattr(os, "replace", crash_on_weights)
        with pytest.raises(KeyboardInterrupt):
            new.save_pretrained(tmp_path / "model")
        monkeypatch.setattr(os, "replace", real_replace)
        loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
        for name, tensor in old.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
        assert [path.name for path in tmp_path.iterdir()] == ["model"]

    def test_weights_that_do_not_match_the_config_are_refused(self, tmp_path):
        tiny_model(("text",)).save_pretrained(tmp_path / "text_only")
        tiny_model(("text", "audio")).save_pretrained(tmp_path / "with_audio")
        os.replace(tmp_path / "text_only" / "model.safetensors", tmp_path / "with_audio" / "model.safetensors")
        with pytest.raises(ValueError, match="lacks .* weights of MultimodalForSequenceClassification .* interrupted"):
            AutoModelForSequenceClassification.from_pretrained(tmp_path / "with_audio")

    def test_missing_body_weights_are_initialised_only_when_allowed(self, tmp_path, caplog):
        """The switch to transformers' behaviour, which also makes `_init_weights` testable on a real load."""
        from safetensors.torch import load_file, save_file

        model = tiny_model(("text", "audio"), fusion_type="gated")
        model.save_pretrained(tmp_path)
        weights = load_file(tmp_path / "model.safetensors")
        dropped = [name for name in weights if name.startswith("multimodal.projections.audio.dense")]
        save_file({name: tensor for name, tensor in weights.items() if name not in dropped}, tmp_path / "model.safetensors",
                  metadata={"format": "pt"})
        with pytest.raises(ValueError, match="lacks 2 weights .* allow_missing_weights=True initialises them"):
            MultimodalForSequenceClassification.from_pretrained(tmp_path)
        with caplog.at_level("WARNING"):
            loaded = MultimodalForSequenceClassification.from_pretrained(tmp_path, allow_missing_weights=True)
        assert "lacks 2 weights" in caplog.text and "initialised at random" in caplog.text
        dense = loaded.multimodal.projections["audio"].dense
        assert not dense.bias.any() and 0 < dense.weight.std() < 3 * model.config.initializer_range  # _init_weights
        for name, tensor in loaded.state_dict().items():  # everything else as saved
            if name not in dropped:
                torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)

    def test_a_head_may_be_new_but_the_body_may_not(self, tmp_path):
        model = tiny_model(("text",))
        model.multimodal.save_pretrained(tmp_path)
        loaded = MultimodalForSequenceClassification.from_pretrained(tmp_path)
        torch.testing.assert_close(
            loaded.multimodal.fusion.gates["text"].weight, model.multimodal.fusion.gates["text"].weight
        )

    def test_truncated_weights_fail_loudly(self, tmp_path):
        tiny_model(("text",)).save_pretrained(tmp_path)
        weights = tmp_path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        with pytest.raises(Exception, match="(?i)safetensor|header|incomplete|invalid"):
            AutoModelForSequenceClassification.from_pretrained(tmp_path)


KILL_WHILE_SAVING = """
import sys, torch
sys.path.insert(0, sys.argv[2])
from conftest import tiny_model
model = tiny_model(("text", "image", "audio"))
for version in range(1, 10_000):
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float(version))
    model.save_pretrained(sys.argv[1])
    print(version, flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_saves_never_leaves_mixed_or_partial_weights(tmp_path):
    """Kill a process that saves again and again; the folder always loads one whole version."""
    script = tmp_path / "saver.py"
    script.write_text(KILL_WHILE_SAVING)
    folder = tmp_path / "model"
    rng = random.Random(0)
    for _ in range(3):
        process = subprocess.Popen(
            [sys.executable, str(script), str(folder), str(Path(__file__).parent)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout.readline().strip() == "1"  # at least one complete save before the kill
        time.sleep(rng.uniform(0.0, 0.8))
        process.send_signal(signal.SIGKILL)
        process.wait()
        loaded = AutoModelForSequenceClassification.from_pretrained(folder)
        values = {float(value) for parameter in loaded.parameters() for value in parameter.detach().unique()}
        assert len(values) == 1, f"mixed weights after a kill: {sorted(values)[:5]}"


@pytest.mark.slow
def test_saved_files_get_the_permissions_of_the_umask(tmp_path):
    """Weights are written through a private temporary file (mode 0600) by the serializer: the staged save gives
    every file the mode a new file gets under the process's umask, as the config and processor files have (two
    umasks, one process)."""
    umasks = (0o022, 0o027)
    script = (
        "import os, sys; sys.path.insert(0, 'tests')\n"
        "from conftest import tiny_model\n"
        "model = tiny_model()\n"
        "for umask, folder in zip((%d, %d), sys.argv[1:]):\n"
        "    os.umask(umask)\n"
        "    model.save_pretrained(folder)\n" % umasks
    )
    folders = [tmp_path / f"model-{umask:o}" for umask in umasks]
    subprocess.run([sys.executable, "-c", script, *map(str, folders)], cwd=ROOT, check=True, capture_output=True)
    for umask, folder in zip(umasks, folders):
        modes = {path.name: path.stat().st_mode & 0o777 for path in folder.iterdir()}
        assert set(modes.values()) == {0o666 & ~umask}, (oct(umask), modes)

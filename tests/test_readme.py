"""Every code block of the README runs as written: the Python blocks are executed in a folder holding tiny stand-ins
of the demo's outputs (`outputs/demo/{data,model}`, `outputs/pairs/{data,aligned}`), and every script the shell blocks
name exists and answers `--help`."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_multimodal import (
    MultimodalClassificationPipeline,
    MultimodalModel,
    MultimodalProcessor,
    MultimodalRetrievalPipeline,
    ZeroShotMultimodalClassificationPipeline,
)

from conftest import tiny_config, tiny_image_processor, tiny_model
from make_demo_dataset import DIGIT_WORDS, VENDORED_AUDIO_DIR, build_demo_dataset, build_pairs_dataset, save_demo_dataset


ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
SHELL_BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
TINY_LOG_MEL = {"frontend": "log_mel", "sampling_rate": 8000, "hidden_size": 32, "num_stacks": 1, "layers_per_stack": 2}
SIZES = {"num_train": 10, "num_validation": 10, "num_test": 10}


HELP_RUNNER = """
import contextlib, io, json, os, runpy, sys

answers = {}
for script in sys.argv[1:]:
    sys.argv = [script, "--help"]
    sys.path.insert(0, os.path.dirname(script))  # as `python script.py` does
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exit:
            code = exit.code or 0
    answers[script] = (code, output.getvalue())
print(json.dumps(answers))
"""
"""Runs each script given as an argument with `--help` in this one process: {script: (exit code, its output)}."""


@pytest.fixture(scope="module")
def demo_outputs(tmp_path_factory) -> Path:
    """A folder with tiny stand-ins of what `bash scripts/demo.sh` and the alignment run leave in `outputs/`."""
    root = tmp_path_factory.mktemp("readme")
    save_demo_dataset(build_demo_dataset(VENDORED_AUDIO_DIR, **SIZES), root / "outputs/demo/data")
    save_demo_dataset(build_pairs_dataset(VENDORED_AUDIO_DIR, **SIZES), root / "outputs/pairs/data")
    processor = MultimodalProcessor(image_processor=tiny_image_processor(), max_text_length=16)
    processor.feature_extractor.sampling_rate = 8000
    classifier = tiny_model(id2label=dict(enumerate(DIGIT_WORDS)), audio_config=TINY_LOG_MEL)
    MultimodalClassificationPipeline(model=classifier, processor=processor).save_pretrained(root / "outputs/demo/model")
    torch.manual_seed(0)
    aligned = MultimodalModel(tiny_config(audio_config=TINY_LOG_MEL)).eval()
    for pipeline_class in (MultimodalRetrievalPipeline, ZeroShotMultimodalClassificationPipeline):
        pipeline_class(model=aligned, processor=processor).save_pretrained(root / "outputs/pairs/aligned")
    return root


def test_the_readme_has_code_to_check():
    assert len(PYTHON_BLOCKS) >= 3 and len(SHELL_BLOCKS) >= 5


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs_as_written(index, demo_outputs, monkeypatch):
    monkeypatch.chdir(demo_outputs)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(PYTHON_BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    assert printed.getvalue().strip(), "every README block shows its result"


@pytest.mark.slow
def test_every_script_the_shell_blocks_name_exists_and_answers_help():
    scripts = sorted(set(re.findall(r"scripts/[\w/]+\.(?:py|sh|yaml)", "\n".join(SHELL_BLOCKS))))
    assert scripts
    for script in scripts:
        assert (ROOT / script).is_file(), f"the README names {script}, which does not exist"
    python_scripts = [str(ROOT / script) for script in scripts if script.endswith(".py")]
    # one process runs every script as `__main__` with --help (the heavy imports are paid once, not per script)
    result = subprocess.run(
        [sys.executable, "-c", HELP_RUNNER, *python_scripts], capture_output=True, text=True, timeout=300, cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.splitlines()[-1])
    for script in python_scripts:
        code, text = answers[script]
        assert code == 0 and "usage" in text.lower(), (script, code, text[-2000:])

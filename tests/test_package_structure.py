"""The package's layout: every module has one role named by its file, the model files never import the training
integration (edge) modules, there is no import cycle, `import hf_multimodal` needs only the core dependencies, and
`MultimodalTrainer` overrides public `Trainer` methods only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from hf_multimodal.trainer import MultimodalTrainer


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "hf_multimodal"

MODEL_ROLES = ("configuration_", "modeling_", "feature_extraction_", "image_processing_", "processing_", "pipeline_")
"""Files a saved model ships as remote code: transformers' model-folder roles."""
MODEL_MODULES = {"media_loading"}
"""Support of the model files (loading media for the pipeline), also shipped as remote code."""
EDGE_MODULES = {
    "data_augmentation", "data_collator", "exporting_onnx", "feature_cache", "hub", "metrics", "model_card", "trainer",
    "training_args",
}
"""The Trainer, Hub and ONNX integration: imported explicitly, never by `import hf_multimodal` or a model file."""
TRAIN_ONLY_PACKAGES = ("datasets", "evaluate", "sklearn", "matplotlib")


def local_imports(module: str) -> set[str]:
    """The package modules that `module` imports (relative imports, at any depth of the file)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
    return found


def modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")


def test_every_module_has_one_role_named_by_its_file():
    unnamed = [m for m in modules() if not m.startswith(MODEL_ROLES) and m not in MODEL_MODULES | EDGE_MODULES]
    assert not unnamed, f"modules without a role in their name: {unnamed}"


@pytest.mark.parametrize("module", [m for m in modules() if m.startswith(MODEL_ROLES) or m in MODEL_MODULES])
def test_model_files_never_import_the_edge(module):
    assert not local_imports(module) & EDGE_MODULES


def test_configuration_and_modeling_never_import_processing_or_pipeline():
    for module in modules():
        if module.startswith(("configuration_", "modeling_")):
            imported = local_imports(module)
            assert not {m for m in imported if m.startswith(("processing_", "pipeline_", "media_"))}, module


def test_no_import_cycle():
    graph = {module: local_imports(module) & set(modules()) for module in modules()}

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        for imported in graph[module]:
            visit(imported, (*path, module))

    for module in graph:
        visit(module, ())


def test_importing_the_package_needs_only_the_core_dependencies():
    code = "import sys, hf_multimodal; print(*sorted(m for m in %r if m in sys.modules))" % (TRAIN_ONLY_PACKAGES,)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == []
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(declared["dependencies"])
    assert not [name for name in ("datasets", "evaluate", "scikit-learn", "matplotlib") if name in core]
    assert {"train", "bench", "demo", "test"} <= set(declared["optional-dependencies"])


def test_trainer_overrides_public_methods_only():
    overridden = [name for name, value in vars(MultimodalTrainer).items() if callable(value) and name.startswith("_")]
    assert overridden == ["__init__"]


def test_the_files_the_suite_starts_first_exist():
    """`conftest.START_FIRST` orders the suite by file name: a renamed file would silently lose its place."""
    from conftest import START_FIRST

    assert all((Path(__file__).parent / name).is_file() for name in START_FIRST)

"""Safe model I/O: safetensors-only loading, loads that never fill missing weights silently, and staged saves that
never leave a folder with partial weights."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from transformers.utils import logging
from transformers.utils.hub import has_file


logger = logging.get_logger(__name__)


PICKLE_WEIGHT_FILES: tuple[str, ...] = ("pytorch_model.bin", "pytorch_model.bin.index.json")
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".safetensors.index.json")


def load_safetensors_only(
    load: Callable[..., Any], source: str | os.PathLike, use_safetensors: bool | None = None, **kwargs
) -> Any:
    """Call `load(source, use_safetensors=..., **kwargs)` (a `from_pretrained`) requiring safetensors weights.

    A checkpoint that holds only pickle weights (`pytorch_model.bin`, which can run arbitrary code when unpickled)
    is refused with an error naming the opt-in, `use_safetensors=False`.

    Example:

    ```python
    >>> from transformers import AutoModel
    >>> model = load_safetensors_only(AutoModel.from_pretrained, "path/to/folder")  # doctest: +SKIP
    ```
    """
    if use_safetensors is False:
        return load(source, use_safetensors=False, **kwargs)
    try:
        return load(source, use_safetensors=True, **kwargs)
    except OSError as error:
        lookup = {key: kwargs[key] for key in ("revision", "token") if key in kwargs}
        if any(has_file(source, name, **lookup) for name in PICKLE_WEIGHT_FILES):
            raise OSError(
                f"{source} holds pickle weights ({' / '.join(PICKLE_WEIGHT_FILES)}) but no model.safetensors. "
                "Unpickling can run arbitrary code, so hf_multimodal loads safetensors only: convert the checkpoint "
                "to safetensors, or, if you trust its source, pass use_safetensors=False to load it anyway."
            ) from error
        raise


def commit_staged_folder(staging: Path, target: Path) -> None:
    """Move every file of `staging` into `target` with atomic renames, weight files last, then drop `staging`.

    Until the weights are renamed, `target` still holds its previous weights whole; a weight file is never visible
    half-written. Weight files of an earlier save that this save did not write (e.g. old shards) are removed.
    """
    target.mkdir(parents=True, exist_ok=True)
    mode = _default_file_mode(staging)
    staged = sorted(staging.rglob("*"), key=lambda path: (path.name.endswith(WEIGHT_SUFFIXES), str(path)))
    for path in staged:
        if path.is_file():
            destination = target / path.relative_to(staging)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(path, mode)  # weights may be written through a private temporary file (mode 0600)
            os.replace(path, destination)
    written = {path.relative_to(staging) for path in staged}
    for old in target.iterdir():
        if old.is_file() and old.name.endswith(WEIGHT_SUFFIXES) and old.relative_to(target) not in written:
            old.unlink()
    shutil.rmtree(staging, ignore_errors=True)


def _default_file_mode(folder: Path) -> int:
    """The mode a new file gets in `folder` under the process's umask (read from a probe file: thread-safe, unlike
    setting and restoring `os.umask`)."""
    probe = folder / f".mode-probe-{uuid.uuid4().hex[:8]}"
    probe.touch()
    try:
        return probe.stat().st_mode & 0o777
    finally:
        probe.unlink()


class SafeSerializationMixin:
    """Safer `from_pretrained` / `save_pretrained` for a `PreTrainedModel`.

    - `from_pretrained` loads safetensors only (see `load_safetensors_only`) and refuses a checkpoint that lacks
      weights of the model body instead of silently initialising them at random: only parameters under
      `newly_initialized_prefixes` (a task head) may be missing. `allow_missing_weights=True` is the explicit opt-in
      for transformers' own behaviour (missing weights initialised by `_init_weights`, with a warning), as
      `ignore_mismatched_sizes=True` is for re-initialising mismatched ones.
    - `save_pretrained` writes into a staging folder beside `save_directory`, then moves the files in with atomic
      renames, weights last (see `commit_staged_folder`): an interrupted save never leaves partial weights, and a
      folder whose config and weights disagree is refused at load time.
    """

    newly_initialized_prefixes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        use_safetensors: bool | None = None,
        allow_missing_weights: bool = False,
        **kwargs,
    ):
        parent_load = super().from_pretrained
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = load_safetensors_only(
            lambda source, **load_kwargs: parent_load(source, *model_args, output_loading_info=True, **load_kwargs),
            pretrained_model_name_or_path,
            use_safetensors,
            **kwargs,
        )
        missing = [key for key in info["missing_keys"] if not key.startswith(cls.newly_initialized_prefixes)]
        if missing:
            lacks = (
                f"{pretrained_model_name_or_path} lacks {len(missing)} weights of {cls.__name__} (e.g. "
                f"{', '.join(sorted(missing)[:4])})"
            )
            if not allow_missing_weights:
                raise ValueError(
                    f"{lacks}: its weights do not match its config (a different architecture or an interrupted "
                    "save). Load it with the class it was saved from, or pass the right config; "
                    "allow_missing_weights=True initialises them at random instead, as transformers does."
                )
            logger.warning(f"{lacks}: initialised at random (allow_missing_weights=True); train before use.")
        return (model, info) if wants_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        target = Path(save_directory)
        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", target.name)
        staging = target.parent / f".{target.name}.saving-{uuid.uuid4().hex[:12]}"
        try:
            result = super().save_pretrained(staging, *args, **kwargs)
            commit_staged_folder(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return result


__all__ = ["SafeSerializationMixin", "commit_staged_folder", "load_safetensors_only"]

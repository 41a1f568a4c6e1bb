"""Pushing a trained output folder to the Hub in one all-or-nothing commit, with errors that say what failed, where
the repo stands and what to do."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.errors import HfHubHTTPError
from transformers import AutoProcessor

from .model_card import CONFUSION_MATRIX_FILE, DEFAULT_LICENSE, METRICS_FILE, checked_model_folder, model_card_from_output_folder
from .configuration_multimodal import MultimodalConfig
from .modeling_multimodal import MultimodalForSequenceClassification, MultimodalModel
from .pipeline_multimodal import MultimodalClassificationPipeline
from .pipeline_retrieval import MultimodalRetrievalPipeline
from .pipeline_zero_shot import ZeroShotMultimodalClassificationPipeline

try:  # huggingface_hub 2.x sends its requests through httpx2, 1.x through httpx
    from httpx2 import TimeoutException as HubTimeoutError
    from httpx2 import TransportError as HubTransportError
except ImportError:
    from httpx import TimeoutException as HubTimeoutError
    from httpx import TransportError as HubTransportError


EXTRA_FILES: tuple[str, ...] = (METRICS_FILE, CONFUSION_MATRIX_FILE)
"""Files of a trained output folder that are pushed beside the model, processor, code and card."""


class HubPushError(OSError):
    r"""
    A push of a trained output folder failed after its repo existed: the Hub answered an error, or the connection
    dropped or timed out, beyond what the `huggingface_hub` client retries by itself. The message says which repo,
    what failed (the Hub's status and message, or the broken connection, and the request), where the repo stands
    (normally still at its previous commit: the Hub applies a commit whole or not at all) and what to do. It never
    holds the token; the client's original error is chained as `__cause__`.

    Attributes:
        repo_id (`str`): The repo pushed to.
        previous_commit (`str`, *optional*): The repo's commit when the push started.
        current_commit (`str`, *optional*): Its commit read back after the failure; None when that failed too.
        status (`int`, *optional*): The Hub's HTTP status; None when the connection failed.

    Example:

    ```python
    >>> try:
    ...     push_output_folder_to_hub("outputs/demo", "me/demo-classifier")  # doctest: +SKIP
    ... except HubPushError as error:
    ...     print(error.repo_id, error.current_commit == error.previous_commit)  # doctest: +SKIP
    me/demo-classifier True
    ```
    """

    def __init__(
        self,
        message: str,
        repo_id: str | None = None,
        previous_commit: str | None = None,
        current_commit: str | None = None,
        status: int | None = None,
    ):
        super().__init__(message)
        self.repo_id = repo_id
        self.previous_commit = previous_commit
        self.current_commit = current_commit
        self.status = status


def push_output_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    license: str = DEFAULT_LICENSE,
    backbones: dict[str, str] | None = None,
) -> CommitInfo:
    """
    Push a trained output folder to the Hub in one commit: the model (safetensors + config with `auto_map` and
    `custom_pipelines`), its processor, the code of model, processor and pipelines (classification, or retrieval and
    zero-shot classification for an aligned model), the generated model card
    (`README.md`), `metrics.json` and the confusion matrix. Checkpoints and other training files stay local.

    The model and processor are loaded first (a folder whose weights do not load is refused before anything is
    sent) and saved again by the installed package. The repo is created if needed (`private` applies then). The
    commit is made on top of the commit the repo is at when the upload starts, so it either lands whole on exactly
    that commit or not at all.

    Raises:
        [`HubPushError`]: The upload or the commit failed (an HTTP error, or a dropped or timed-out connection, after
            the client's own retries). The message says what failed, that the repo is still at its previous commit
            (or where it stands) and to rerun the push, which sends only what the Hub does not store yet.
        [`~huggingface_hub.errors.HfHubHTTPError`]: The repo could not be created or reached (e.g. no or a wrong
            token, or no write access to the namespace): nothing was sent.

    Example:

    ```python
    >>> info = push_output_folder_to_hub("outputs/demo", "me/demo-classifier", private=True)  # doctest: +SKIP
    >>> info.commit_url  # doctest: +SKIP
    ```
    """
    folder = checked_model_folder(folder)
    config = MultimodalConfig.from_pretrained(folder)
    aligned = (config.architectures or [None])[0] == MultimodalModel.__name__
    model = (MultimodalModel if aligned else MultimodalForSequenceClassification).from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    pipelines = [MultimodalClassificationPipeline]
    if aligned:
        pipelines = [MultimodalRetrievalPipeline]
        if "text" in config.modalities:
            pipelines.append(ZeroShotMultimodalClassificationPipeline)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    card = model_card_from_output_folder(
        folder, repo_id=repo_id, license=license, backbones=backbones, processor=processor
    )
    with tempfile.TemporaryDirectory() as staging:
        # Through the pipelines: the model, the processor, their code and the pipelines' code with `custom_pipelines`.
        for pipeline_class in pipelines:
            pipeline_class(model=model, processor=processor).save_pretrained(staging)
        card.save(os.path.join(staging, "README.md"))
        for name in EXTRA_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, os.path.join(staging, name))
        previous_commit = None
        try:
            previous_commit = api.repo_info(repo_id).sha
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                commit_message=commit_message or f"Upload {folder.name}: model, processor, code and model card",
                delete_patterns=["*.safetensors", "*.safetensors.index.json", "*.py"],  # no stale shards or code
                parent_commit=previous_commit,
            )
        except Exception as error:
            failure = _hub_failure(error)
            if failure is None:
                raise
            raise _push_error(api, folder, repo_id, previous_commit, error, failure) from error


def _hub_failure(error: BaseException | None) -> HfHubHTTPError | HubTransportError | None:
    """The HTTP error answer or broken connection behind `error` (`huggingface_hub` wraps failed LFS uploads in a
    `RuntimeError`), or None when `error` is no Hub failure."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (HfHubHTTPError, HubTransportError)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _push_error(
    api: HfApi,
    folder: Path,
    repo_id: str,
    previous_commit: str | None,
    error: BaseException,
    failure: HfHubHTTPError | HubTransportError,
) -> HubPushError:
    """A [`HubPushError`] saying what failed, where `repo_id` stands now (read back from the Hub) and what to do."""
    if isinstance(failure, HfHubHTTPError):
        status, request = failure.response.status_code, failure.response.request
        what = f"the Hub answered {status} {failure.response.reason_phrase}"
        if failure.server_message:
            what += f" ({' '.join(failure.server_message.split())})"
    else:
        status = None
        what = "the request timed out" if isinstance(failure, HubTimeoutError) else "the connection dropped"
        what += f" ({type(failure).__name__}: {failure})"
        try:
            request = failure.request
        except RuntimeError:  # httpx attaches the request to most, not all, transport errors
            request = None
    if request is not None:  # without the query: presigned storage URLs carry signatures there
        what += f" during {request.method} {str(request.url).split('?', 1)[0]}"
    if error is not failure:  # e.g. which file an LFS upload was sending
        what += f" ({' '.join(str(error).split())})"
    try:
        current_commit = api.repo_info(repo_id).sha
    except Exception as check_error:  # the Hub may still be failing: report that, never mask the push's error
        current_commit = None
        state = f"Its commit could not be read back ({type(check_error).__name__})"
        state += f"; it was at commit {previous_commit} when this push started." if previous_commit else "."
    if current_commit is not None and current_commit == previous_commit:
        state = f"The repo is unchanged: {repo_id} is still at commit {previous_commit}."
    elif current_commit is not None:
        state = f"{repo_id} is now at commit {current_commit}, not at the commit this push started from "
        state += f"({previous_commit or 'unknown'}): check it before pushing again."
    if status in (401, 403):
        advice = f"Check that the token in use (token=..., HF_TOKEN or `hf auth login`) may write to {repo_id}."
    elif status == 412:
        advice = "Someone else pushed to the repo meanwhile: rerun the push to commit on top of their commit."
    elif status is None or status in (408, 429) or status >= 500:
        advice = "This looks transient: rerun the push to retry (files the Hub already stored are not sent again)."
    else:
        advice = "Fix the cause above, then rerun the push."
    message = f"Pushing {folder} to {repo_id} failed: {what}. {state} {advice}"
    return HubPushError(message, repo_id, previous_commit, current_commit, status)


__all__ = ["HubPushError", "push_output_folder_to_hub"]

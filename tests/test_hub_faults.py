"""Hub faults and token hygiene on the push / download path, against the local Hub server (tests/hub_server.py).

Faults: the server answers 500s (commit, preupload, LFS batch) or drops the connection in the middle of the weights'
upload. A transient fault is retried by the `huggingface_hub` client and the push just succeeds; a persistent one
makes `push_output_folder_to_hub` (and `scripts/push_to_hub.py`) fail with a `HubPushError` saying what failed, that
the repo is still at its previous commit and to rerun; the server's repo is checked to be unchanged, and a rerun once
the fault is cleared pushes a new commit that `from_pretrained` loads.

Tokens: every push and download path (the script with `HF_TOKEN`, `model.push_to_hub`, `processor.push_to_hub`,
`from_pretrained`, `pipeline` on a private repo, a wrong token, a 500, no token), with DEBUG logging, must leave the
token in no captured output, no exception (str, repr, traceback, pickle) and no file written anywhere.

The real clients run unpatched: in this process they are only pointed at the server (`huggingface_hub.constants`,
as `HF_ENDPOINT`, `HF_HUB_DISABLE_XET=1` and `HF_HOME` would at import), and the waits of the client's retry back-off
are recorded instead of slept (`backoff_waits`: 1, 2, 4, 8 and 8 s before it gives up on a persistent dropped
connection, 23 s of a test's time that would show nothing more); the script and the token worker run in fresh
processes configured by environment variables, in a background thread while the fault tests run; they only push
content the server already stores, so they never reach the upload path whose faults are global.
"""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
import textwrap
import threading
import traceback
import types
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, constants
from huggingface_hub.utils import _http as client_http

from hf_multimodal import MultimodalForSequenceClassification
from hf_multimodal.hub import HubPushError, push_output_folder_to_hub
from hub_server import Fault

from conftest import HUB_TOKENS, client_env, write_trained_output_folder

pytestmark = pytest.mark.slow  # Hub pushes with injected faults and client retries


ALICE = next(token for token, user in HUB_TOKENS.items() if user == "alice")
WRONG = "hf_test_wrong_token_89ab"
TOKENS = (*HUB_TOKENS, WRONG)
ROOT = Path(__file__).resolve().parents[1]
PERSISTENT = 10**6
"""`Fault.times` of a fault that hits every matching request until the test clears it."""


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def hub(hub_server, tmp_path_factory):
    """This process's `huggingface_hub` / `transformers` pointed at the local server with an empty cache (what
    `HF_ENDPOINT`, `HF_HUB_DISABLE_XET=1`, `HF_HOME`, `HF_DEBUG=1` and no `HF_HUB_OFFLINE` would set at import); no
    `HF_TOKEN`."""
    cache = tmp_path_factory.mktemp("hub_faults_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "ENDPOINT", hub_server.endpoint)
        url_template = hub_server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        patch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url_template)
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        patch.setattr(constants, "HF_HUB_CACHE", str(cache))
        patch.setattr(constants, "HF_DEBUG", True)  # DEBUG logs print every request as a curl command
        patch.delenv("HF_TOKEN", raising=False)
        yield hub_server


@pytest.fixture
def add_fault(hub_server):
    """`add_fault(**Fault fields)` injects a fault for this test; all are removed when it ends."""
    added = []

    def add(**fields) -> Fault:
        added.append(hub_server.add_fault(Fault(**fields)))
        return added[-1]

    yield add
    for fault in added:
        clear(hub_server, fault)


@pytest.fixture
def backoff_waits(monkeypatch) -> list[float]:
    """The seconds the `huggingface_hub` client waits before each retry of this test, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(client_http, "time", types.SimpleNamespace(sleep=waits.append))
    return waits


def clear(hub_server, fault: Fault) -> None:
    if fault in hub_server.faults:
        hub_server.faults.remove(fault)


def uploads(hub_server) -> int:
    """LFS uploads (file contents) the server has been sent so far."""
    return sum(record.path.startswith("/lfs-upload/") for record in hub_server.requests)


def same_weights(repo_id: str, revision: str, folder: Path) -> bool:
    remote = MultimodalForSequenceClassification.from_pretrained(repo_id, revision=revision, token=ALICE)
    local = MultimodalForSequenceClassification.from_pretrained(folder)
    local_state = local.state_dict()
    return remote.state_dict().keys() == local_state.keys() and all(
        torch.equal(tensor, local_state[name]) for name, tensor in remote.state_dict().items()
    )


def error_texts(error: BaseException) -> str:
    """Everything an exception shows: str, repr, the formatted traceback with its causes, and its pickle."""
    return "\n".join([str(error), repr(error), "".join(traceback.format_exception(error)), repr(pickle.dumps(error))])


def token_leaks(texts: dict[str, str], roots: list[Path]) -> tuple[list[str], list[Path]]:
    """Where any test token appears in `texts` or in a file under `roots`, and the files searched."""
    files = sorted({path for root in roots for path in Path(root).rglob("*") if path.is_file()})
    leaks = [f"{name}: {token}" for name, text in texts.items() for token in TOKENS if token in text]
    for path in files:
        content = path.read_bytes()
        leaks += [f"{path}: {token}" for token in TOKENS if token.encode() in content]
    return leaks, files


# ------------------------------------------------------------------------------- subprocesses, in the background

WORKER = textwrap.dedent(
    """
    import importlib, json, os, sys, traceback
    from pathlib import Path
    import huggingface_hub, transformers
    from huggingface_hub import hf_hub_download
    from transformers import AutoModelForSequenceClassification as AutoClassifier, AutoProcessor, pipeline

    transformers.logging.set_verbosity_debug()
    huggingface_hub.logging.set_verbosity_debug()
    token, wrong = os.environ.pop("TEST_TOKEN"), os.environ.pop("TEST_WRONG_TOKEN")  # never written to disk
    folder, out = sys.argv[1], Path(sys.argv[2])
    repo, example, outcomes = "alice/tokens-private", {"text": "seven"}, {}

    def attempt(name, call):
        try:
            result = call()
        except Exception as error:
            outcomes[name] = type(error).__name__
            print(f"--- {name}\\n{error}\\n{error!r}\\n" + "".join(traceback.format_exception(error)), flush=True)
            return None
        outcomes[name] = "ok"
        return result

    class RefuseHfMultimodal:  # the remote-code read runs before the package is imported, as a plain user's would
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hf_multimodal":
                raise ImportError("hf_multimodal must not be imported yet")

    sys.meta_path.insert(0, RefuseHfMultimodal())
    remote = attempt("pipeline remote code", lambda: pipeline(model="alice/tokens-remote", token=token,
                                                              trust_remote_code=True))
    outcomes["remote prediction"], outcomes["remote module"] = remote(example), type(remote).__module__
    remote.save_pretrained(out / "remote-pipeline")
    del sys.meta_path[0]
    hf_multimodal = importlib.import_module("hf_multimodal")
    push_output_folder_to_hub = importlib.import_module("hf_multimodal.hub").push_output_folder_to_hub

    # writes, with the token given explicitly
    model = hf_multimodal.MultimodalForSequenceClassification.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    attempt("model.push_to_hub", lambda: model.push_to_hub(repo, private=True, token=token))
    attempt("processor.push_to_hub", lambda: processor.push_to_hub(repo, token=token))
    attempt("push_output_folder_to_hub", lambda: push_output_folder_to_hub(folder, "alice/tokens-card", token=token))
    # reads of the private repo with the token, and everything they save locally
    loaded = attempt("from_pretrained", lambda: AutoClassifier.from_pretrained(repo, token=token))
    loaded.save_pretrained(out / "reloaded")
    reloaded_processor = attempt("AutoProcessor", lambda: AutoProcessor.from_pretrained(repo, token=token))
    reloaded_processor.save_pretrained(out / "reloaded")
    classifier = attempt("pipeline", lambda: pipeline("multimodal-classification", model=repo, token=token))
    outcomes["prediction"] = classifier(example)
    classifier.save_pretrained(out / "pipeline")
    # failures: a wrong token, a 500 (injected by the test on alice/tokens-500's commits), no token
    fresh = out / "empty-cache"  # (huggingface_hub falls back to cached files when the Hub refuses a request)
    attempt("from_pretrained wrong token", lambda: AutoClassifier.from_pretrained(repo, token=wrong, cache_dir=fresh))
    attempt("push wrong token", lambda: push_output_folder_to_hub(folder, "alice/tokens-wrong", token=wrong))
    attempt("model.push_to_hub wrong token", lambda: model.push_to_hub("alice/tokens-wrong", token=wrong))
    attempt("push 500", lambda: push_output_folder_to_hub(folder, "alice/tokens-500", token=token))
    attempt("from_pretrained no token", lambda: AutoClassifier.from_pretrained(repo, cache_dir=fresh))
    attempt("pipeline no token", lambda: pipeline("multimodal-classification", model=repo))
    attempt("download no token", lambda: hf_hub_download(repo, "config.json", cache_dir=fresh))
    (out / "outcomes.json").write_text(json.dumps(outcomes))
    """
)


def debug_client_env(hub_server, home: Path, token: str | None = None) -> dict[str, str]:
    """`client_env` with DEBUG logging of both libraries (`HF_DEBUG=1` also logs every request as a curl command)."""
    return client_env(hub_server, home, token, HF_DEBUG="1", TRANSFORMERS_VERBOSITY="debug")


class Background:
    """Runs `steps` (callables) one after the other in a thread; `result()` waits for them and re-raises a failure."""

    def __init__(self, steps):
        self.results, self._error = {}, None
        self._thread = threading.Thread(target=self._run, args=(steps,), daemon=True)
        self._thread.start()

    def _run(self, steps) -> None:
        try:
            for step in steps:
                step(self.results)
        except BaseException as error:  # handed to the test that waits for the results
            self._error = error

    def result(self) -> dict:
        self._thread.join(timeout=300)
        if self._thread.is_alive():
            raise TimeoutError("the background Hub runs did not finish within 300 s")
        if self._error is not None:
            raise self._error
        return self.results


@pytest.fixture(scope="module", autouse=True)
def background(hub, trained_output_folder, tmp_path_factory):
    """`scripts/push_to_hub.py` (HF_TOKEN set) fails on a persistent 500 of the commit endpoint, then succeeds once it
    is cleared; then the token worker runs. Everything they push is stored on the server beforehand."""
    work = tmp_path_factory.mktemp("hub_background")
    script_folder = work / "script-v2"
    write_trained_output_folder(script_folder, seed=201, accuracy=0.93)
    base = push_output_folder_to_hub(trained_output_folder, "alice/tokens-script", token=ALICE).oid
    push_output_folder_to_hub(trained_output_folder, "alice/tokens-remote", private=True, token=ALICE)
    push_output_folder_to_hub(script_folder, "alice/tokens-stash", token=ALICE)  # stores the new weights' contents
    commit_fault = hub.add_fault(Fault(path=r"^/api/models/alice/tokens-script/commit/", times=PERSISTENT))
    worker_fault = hub.add_fault(Fault(path=r"^/api/models/alice/tokens-500/commit/", times=PERSISTENT))
    script = [sys.executable, "scripts/push_to_hub.py", str(script_folder), "alice/tokens-script"]
    env = debug_client_env(hub, work / "script-user", token=ALICE)

    def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)

    def failing_push(results: dict) -> None:
        results["failed"] = run(script, env)
        results["head_after_failure"] = hub.head("alice/tokens-script")
        clear(hub, commit_fault)

    def rerun(results: dict) -> None:
        results["rerun"] = run(script, env)

    def token_worker(results: dict) -> None:
        (work / "worker.py").write_text(WORKER)
        command = [sys.executable, str(work / "worker.py"), str(trained_output_folder), str(work / "out")]
        worker_env = {**debug_client_env(hub, work / "worker-user"), "TEST_TOKEN": ALICE, "TEST_WRONG_TOKEN": WRONG}
        results["worker"] = run(command, worker_env)

    runs = Background([failing_push, rerun, token_worker])
    yield {"runs": runs, "work": work, "base": base, "script_folder": script_folder, "worker_fault": worker_fault}
    runs.result()
    clear(hub, commit_fault)
    clear(hub, worker_fault)


# ------------------------------------------------------------------------------------------------------ faults


PERSISTENT_FAULTS = {
    "commit-500": lambda repo: {"path": rf"^/api/models/{repo}/commit/", "method": "POST"},
    "preupload-500": lambda repo: {"path": rf"^/api/models/{repo}/preupload/", "method": "POST", "retry_after": 0},
    "upload-dropped": lambda repo: {"path": r"^/lfs-upload/", "method": "PUT", "kind": "drop", "after_bytes": 2**20},
}


@pytest.mark.parametrize("case", list(PERSISTENT_FAULTS))
def test_a_persistent_fault_fails_clearly_leaves_the_repo_unchanged_and_a_rerun_succeeds(
    hub, trained_output_folder, tmp_path, add_fault, backoff_waits, capfd, caplog, case
):
    repo = f"alice/faults-{case}"
    previous = push_output_folder_to_hub(trained_output_folder, repo, token=ALICE).oid
    files_before = hub.files(repo)
    new_version = tmp_path / "v2"
    write_trained_output_folder(new_version, seed=100 + list(PERSISTENT_FAULTS).index(case), accuracy=0.95)
    fault = add_fault(times=PERSISTENT, **PERSISTENT_FAULTS[case](repo))
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")

    with pytest.raises(HubPushError) as caught:
        push_output_folder_to_hub(new_version, repo, token=ALICE)

    error = caught.value
    message = str(error)
    assert message.startswith(f"Pushing {new_version} to {repo} failed: ")
    if case == "upload-dropped":
        assert "the connection dropped (RemoteProtocolError" in message and "during PUT " in message
        assert "'model.safetensors'" in message and error.status is None
        assert fault.hits == 6 and backoff_waits == [1, 2, 4, 8, 8]  # the client retried, backing off, then gave up
    else:
        endpoint = case.split("-")[0]
        assert "the Hub answered 500 Internal Server Error (injected fault) during POST" in message
        assert f"/api/models/{repo}/{endpoint}/main" in message and error.status == 500
    assert f"The repo is unchanged: {repo} is still at commit {previous}." in message
    assert "rerun the push to retry" in message and "\n" not in message
    assert (error.repo_id, error.previous_commit, error.current_commit) == (repo, previous, previous)
    assert HfApi().model_info(repo).sha == previous == hub.head(repo)
    assert hub.files(repo) == files_before  # the server's repo: still the previous commit with the previous files
    captured = capfd.readouterr()
    texts = {"error": error_texts(error), "output": captured.out + captured.err, "logs": caplog.text}
    assert token_leaks(texts, [])[0] == []
    assert "authorization: <TOKEN>" in caplog.text  # the DEBUG logs showed every request, with the token masked

    clear(hub, fault)
    uploads_before_rerun = uploads(hub)
    info = push_output_folder_to_hub(new_version, repo, token=ALICE)
    assert info.oid == hub.head(repo) != previous and hub.commits(repo)[1] == previous
    assert same_weights(repo, info.oid, new_version) and not same_weights(repo, previous, new_version)
    if case == "commit-500":  # the weights reached the server before the commit failed: the rerun did not resend them
        assert uploads(hub) == uploads_before_rerun


def test_transient_faults_are_retried_by_the_client_and_the_push_succeeds(
    hub, trained_output_folder, tmp_path, add_fault, backoff_waits
):
    repo = "alice/faults-transient"
    previous = push_output_folder_to_hub(trained_output_folder, repo, token=ALICE).oid
    new_version = tmp_path / "v2"
    write_trained_output_folder(new_version, seed=110, accuracy=0.95)
    faults = [
        add_fault(path=rf"^/api/models/{repo}/preupload/", method="POST", retry_after=0),
        add_fault(path=rf"^/{repo}\.git/info/lfs/objects/batch$", method="POST", retry_after=0),
        add_fault(path=r"^/lfs-upload/", method="PUT", kind="drop", after_bytes=2**20),
    ]

    info = push_output_folder_to_hub(new_version, repo, token=ALICE)

    assert [fault.hits for fault in faults] == [1, 1, 1]  # each call failed once, and the client retried it
    assert backoff_waits == [1, 1, 1]  # after waiting its first back-off each time
    assert info.oid == hub.head(repo) != previous
    assert same_weights(repo, info.oid, new_version)


def test_a_single_500_on_the_commit_is_not_retried_by_the_client_and_fails_clearly(
    hub, trained_output_folder, tmp_path, add_fault
):
    """`huggingface_hub` 2.4 does not retry the commit call (`_send_commit` without `retry_on_error`): one 500 there
    fails the push, with the same clear error, and a rerun succeeds since the fault is gone."""
    repo = "alice/faults-commit-once"
    previous = push_output_folder_to_hub(trained_output_folder, repo, token=ALICE).oid
    new_version = tmp_path / "v2"
    write_trained_output_folder(new_version, seed=111, accuracy=0.95)
    fault = add_fault(path=rf"^/api/models/{repo}/commit/", method="POST", status=503)

    with pytest.raises(HubPushError, match=f"503 Service Unavailable .* still at commit {previous}"):
        push_output_folder_to_hub(new_version, repo, token=ALICE)

    assert fault.hits == 1 and hub.head(repo) == previous
    assert push_output_folder_to_hub(new_version, repo, token=ALICE).oid == hub.head(repo) != previous


def test_push_script_reports_a_failed_push_in_one_paragraph_and_a_rerun_succeeds(hub, background):
    results = background["runs"].result()
    failed, rerun, base = results["failed"], results["rerun"], background["base"]
    assert failed.returncode == 1 and results["head_after_failure"] == base
    message = failed.stderr.strip().splitlines()[-1]
    assert message.startswith(f"push_to_hub.py: error: Pushing {background['script_folder']} to alice/tokens-script")
    assert "the Hub answered 500 Internal Server Error (injected fault) during POST" in message
    assert f"The repo is unchanged: alice/tokens-script is still at commit {base}. This looks transient" in message
    assert "Traceback" not in failed.stderr and "pushed" not in failed.stdout
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    head = hub.head("alice/tokens-script")
    assert head != base and f"to alice/tokens-script at commit {head}" in rerun.stdout
    assert same_weights("alice/tokens-script", head, background["script_folder"])


# ------------------------------------------------------------------------------------------------------ tokens


def test_no_token_in_any_output_error_or_written_file(hub, background, trained_output_folder):
    results = background["runs"].result()
    worker = results["worker"]
    assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-4000:]
    outcomes = json.loads((background["work"] / "out" / "outcomes.json").read_text())
    succeeded = ["model.push_to_hub", "processor.push_to_hub", "push_output_folder_to_hub", "from_pretrained",
                 "AutoProcessor", "pipeline", "pipeline remote code"]
    assert {name: outcomes[name] for name in succeeded} == dict.fromkeys(succeeded, "ok")
    assert outcomes["prediction"] == outcomes["remote prediction"] and len(outcomes["prediction"]) == 3
    assert outcomes["remote module"].startswith("transformers_modules")
    assert outcomes["from_pretrained wrong token"] == "OSError"
    assert outcomes["push wrong token"] == outcomes["model.push_to_hub wrong token"] == "HfHubHTTPError"
    assert outcomes["push 500"] == "HubPushError" and background["worker_fault"].hits == 1
    assert outcomes["from_pretrained no token"] == "OSError"  # transformers' error for a repo it cannot see
    assert outcomes["pipeline no token"] == outcomes["download no token"] == "RepositoryNotFoundError"
    assert hub.storage.state("model", "alice/tokens-private")["private"] is True

    texts = {f"{name} {stream}": getattr(results[name], stream)
             for name in ("failed", "rerun", "worker") for stream in ("stdout", "stderr")}
    assert "authorization: <TOKEN>" in texts["worker stderr"]  # DEBUG logs of every request, token masked
    roots = [background["work"], hub.storage.root, trained_output_folder, Path(constants.HF_HUB_CACHE)]
    leaks, files = token_leaks(texts, roots)
    assert leaks == []
    names = {path.name for path in files}
    assert {"README.md", "config.json", "tokenizer_config.json", "processor_config.json", "state.json"} <= names
    assert any("modules" in path.parts for path in files)  # the remote code the pipeline downloaded

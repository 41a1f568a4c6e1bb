"""Hub round trips against the local Hub-compatible server (tests/hub_server.py).

The server is checked over raw HTTP (tokens, atomic commits, download headers, private repos, fault hook). The round
trips run the real `huggingface_hub` and `transformers` clients, unpatched, in fresh processes configured only by
environment variables (`HF_ENDPOINT`, `HF_HUB_DISABLE_XET=1`, a fresh `HF_HOME`), as a user would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import soundfile
import torch
from huggingface_hub import ModelCard
from transformers import pipeline

from hf_multimodal import MultimodalForSequenceClassification, MultimodalProcessor
from hub_server import Fault, git_blob_oid

from conftest import HUB_TOKENS, client_env, random_audio, random_image, write_trained_output_folder

pytestmark = pytest.mark.slow  # round trips with the real Hub clients against the local server


ALICE, BOB = list(HUB_TOKENS)
ROOT = Path(__file__).resolve().parents[1]


def http(server, method: str, path: str, body=None, token: str | None = None, headers: dict | None = None):
    """A raw request to the server: (status, headers, body)."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    request = urllib.request.Request(server.endpoint + path, data=data, method=method, headers=dict(headers or {}))
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None and "Content-Type" not in (headers or {}):
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def commit_payload(*operations: dict, summary: str = "test", parent: str | None = None) -> bytes:
    header = {"key": "header", "value": {"summary": summary, "description": ""}}
    if parent:
        header["value"]["parentCommit"] = parent
    return b"".join(json.dumps(line).encode() + b"\n" for line in (header, *operations))


def add_file(path: str, content: bytes) -> dict:
    encoded = base64.b64encode(content).decode()
    return {"key": "file", "value": {"path": path, "content": encoded, "encoding": "base64"}}


def create(server, name: str, token: str = ALICE, private: bool = False) -> str:
    payload = {"name": name, "type": "model", "private": private}
    status, _, body = http(server, "POST", "/api/repos/create", payload, token)
    assert status == 200, body
    return json.loads(body)["name"]


# --------------------------------------------------------------------------------------------- the server itself


def test_writes_need_a_valid_token_with_rights_on_the_namespace(hub_server):
    payload = {"name": "guarded", "type": "model"}
    status, headers, _ = http(hub_server, "POST", "/api/repos/create", payload)
    assert status == 401
    status, headers, _ = http(hub_server, "POST", "/api/repos/create", payload, token="hf_not_a_real_token")
    assert status == 401 and headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    status, _, _ = http(hub_server, "POST", "/api/repos/create", {**payload, "organization": "alice"}, token=BOB)
    assert status == 403
    assert create(hub_server, "guarded") == "alice/guarded"
    status, _, body = http(hub_server, "POST", "/api/repos/create", payload, token=ALICE)
    assert status == 409 and json.loads(body)["url"].endswith("/alice/guarded")
    commit = commit_payload(add_file("a.txt", b"a"))
    assert http(hub_server, "POST", "/api/models/alice/guarded/commit/main", commit)[0] == 401
    assert http(hub_server, "POST", "/api/models/alice/guarded/commit/main", commit, token=BOB)[0] == 403
    assert hub_server.files("alice/guarded").keys() == {".gitattributes"}


def test_commits_apply_whole_or_not_at_all(hub_server):
    repo = create(hub_server, "atomic")
    url = f"/api/models/{repo}/commit/main"
    assert http(hub_server, "POST", url, commit_payload(add_file("a.txt", b"first")), ALICE)[0] == 200
    head = hub_server.head(repo)
    missing_lfs = {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": "0" * 64, "size": 3}}
    bad_base64 = {"key": "file", "value": {"path": "c.txt", "content": "%%%", "encoding": "base64"}}
    for payload, expected_status in [
        (commit_payload(add_file("b.txt", b"second"), missing_lfs), 400),
        (commit_payload(add_file("b.txt", b"second"), bad_base64), 400),
        (commit_payload(add_file("b.txt", b"second"), {"key": "deletedFile", "value": {"path": "nope.txt"}}), 404),
        (commit_payload(add_file("../escape", b"x")), 400),
        (commit_payload(add_file("b.txt", b"second"), parent="f" * 40), 412),
        (b"not json\n", 400),
    ]:
        status, _, body = http(hub_server, "POST", url, payload, ALICE, {"Content-Type": "application/x-ndjson"})
        assert status == expected_status, body
        assert hub_server.head(repo) == head  # the branch did not move
        files = hub_server.files(repo)
        assert files.keys() == {".gitattributes", "a.txt"} and files["a.txt"] == b"first"
    delete_and_add = commit_payload(
        {"key": "deletedFile", "value": {"path": "a.txt"}}, add_file("dir/b.txt", b"second"), parent=head
    )
    status, _, body = http(hub_server, "POST", url, delete_and_add, ALICE)
    assert status == 200 and json.loads(body)["commitOid"] == hub_server.head(repo) != head
    assert set(hub_server.files(repo)) == {".gitattributes", "dir/b.txt"}
    assert hub_server.files(repo, revision=head)["a.txt"] == b"first"  # old commits stay readable
    assert hub_server.commits(repo)[:2] == [hub_server.head(repo), head]


def test_lfs_upload_and_downloads_carry_the_headers_the_client_checks(hub_server):
    repo = create(hub_server, "downloads")
    content = bytes(range(256)) * 40
    sha256 = hashlib.sha256(content).hexdigest()
    batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": sha256, "size": len(content)}]}
    assert http(hub_server, "POST", f"/{repo}.git/info/lfs/objects/batch", batch)[0] == 401
    status, _, body = http(hub_server, "POST", f"/{repo}.git/info/lfs/objects/batch", batch, ALICE)
    actions = json.loads(body)["objects"][0]["actions"]
    upload_path = actions["upload"]["href"].removeprefix(hub_server.endpoint)
    binary = {"Content-Type": "application/octet-stream"}
    assert http(hub_server, "PUT", upload_path, content[:-1], headers=binary)[0] == 400  # wrong size: refused
    status, _, body = http(hub_server, "POST", f"/{repo}.git/info/lfs/objects/batch", batch, ALICE)
    upload_path = json.loads(body)["objects"][0]["actions"]["upload"]["href"].removeprefix(hub_server.endpoint)
    assert http(hub_server, "PUT", upload_path, content, headers=binary)[0] == 200
    verify = actions["verify"]["href"].removeprefix(hub_server.endpoint)
    assert http(hub_server, "POST", verify, {"oid": sha256, "size": len(content)}, ALICE)[0] == 200
    status, _, body = http(hub_server, "POST", f"/{repo}.git/info/lfs/objects/batch", batch, ALICE)
    assert "actions" not in json.loads(body)["objects"][0]  # already stored: nothing to upload
    lfs_file = {"path": "model.safetensors", "algo": "sha256", "oid": sha256, "size": len(content)}
    lfs_line = {"key": "lfsFile", "value": lfs_file}
    commit = commit_payload(lfs_line, add_file("config.json", b"{}"))
    assert http(hub_server, "POST", f"/api/models/{repo}/commit/main", commit, ALICE)[0] == 200
    head = hub_server.head(repo)

    status, headers, body = http(hub_server, "HEAD", f"/{repo}/resolve/main/config.json")
    assert status == 200 and body == b""
    assert headers["X-Repo-Commit"] == head and headers["ETag"] == f'"{git_blob_oid(b"{}")}"'
    assert headers["Content-Length"] == "2"
    status, headers, body = http(hub_server, "GET", f"/{repo}/resolve/{head}/model.safetensors")
    assert status == 200 and body == content and headers["X-Linked-Etag"] == f'"{sha256}"'
    assert headers["X-Linked-Size"] == str(len(content)) == headers["Content-Length"]
    url = f"/{repo}/resolve/main/model.safetensors"
    status, headers, body = http(hub_server, "GET", url, headers={"Range": "bytes=100-"})
    assert status == 206 and body == content[100:]
    assert headers["Content-Range"] == f"bytes 100-{len(content) - 1}/{len(content)}"
    for path, code in [
        (f"/{repo}/resolve/main/missing.bin", "EntryNotFound"),
        (f"/{repo}/resolve/no-such-branch/config.json", "RevisionNotFound"),
        ("/alice/no-such-repo/resolve/main/config.json", "RepoNotFound"),
        ("/api/models/alice/no-such-repo", "RepoNotFound"),
    ]:
        status, headers, _ = http(hub_server, "GET", path)
        assert status in (401, 404) and headers["X-Error-Code"] == code, path
    status, _, body = http(hub_server, "GET", f"/api/models/{repo}/tree/main?recursive=true")
    entries = {entry["path"]: entry for entry in json.loads(body)}
    assert entries["model.safetensors"]["lfs"]["oid"] == sha256 and "lfs" not in entries["config.json"]


def test_private_repos_are_unreadable_without_the_token(hub_server):
    repo = create(hub_server, "secret", private=True)
    for path in (f"/api/models/{repo}", f"/{repo}/resolve/main/.gitattributes", f"/api/models/{repo}/tree/main"):
        status, headers, _ = http(hub_server, "GET", path)
        assert status == 401 and headers["X-Error-Code"] == "RepoNotFound"
        status, headers, _ = http(hub_server, "GET", path, token=BOB)
        assert status == 404 and headers["X-Error-Code"] == "RepoNotFound"
        assert http(hub_server, "GET", path, token=ALICE)[0] == 200
    status, _, body = http(hub_server, "GET", f"/api/models/{repo}", token=ALICE)
    assert json.loads(body)["private"] is True


def test_faults_can_be_injected(hub_server):
    repo = create(hub_server, "faulty")
    head = hub_server.head(repo)
    fault = hub_server.add_fault(Fault(path=r"/commit/", method="POST", status=503))
    commit = commit_payload(add_file("a.txt", b"a"))
    assert http(hub_server, "POST", f"/api/models/{repo}/commit/main", commit, ALICE)[0] == 503
    assert fault.hits == 1 and hub_server.head(repo) == head
    hub_server.add_fault(Fault(path=r"/commit/", kind="drop", after_bytes=10))
    with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
        http(hub_server, "POST", f"/api/models/{repo}/commit/main", commit, ALICE)
    assert hub_server.head(repo) == head
    assert http(hub_server, "POST", f"/api/models/{repo}/commit/main", commit, ALICE)[0] == 200  # the retry succeeds
    assert [record.fault for record in hub_server.requests if record.path.endswith(f"{repo}/commit/main")] == [
        "error", "drop", None
    ]


# ------------------------------------------------------------------------- round trips with the real clients

WORKER = textwrap.dedent(
    """
    import json, sys, torch
    from huggingface_hub import hf_hub_download
    from transformers import AutoModelForSequenceClassification, AutoProcessor, pipeline
    import hf_multimodal
    from hf_multimodal.hub import push_output_folder_to_hub

    job = json.load(open(sys.argv[1]))
    inputs = torch.load(job["inputs"], weights_only=False)
    alice, bob, repo = job["alice"], job["bob"], "alice/av-digits"
    out = {}

    def logits(source, **kwargs):
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs).eval()
        processor = AutoProcessor.from_pretrained(source, **kwargs)
        with torch.no_grad():
            return model(**processor(**inputs["batch"])).logits

    def error_name(call):
        try:
            call()
        except Exception as error:
            return type(error).__name__
        return None

    # anonymous loads of what scripts/push_to_hub.py pushed (v1)
    out["v1_logits"] = logits(repo)
    out["v1_pipeline"] = pipeline("multimodal-classification", model=repo)(inputs["examples"], batch_size=2)
    # a second push (v2, with the token given explicitly) updates the repo
    out["v2_commit"] = push_output_folder_to_hub(job["v2"], repo, token=alice).oid
    out["v2_logits"] = logits(repo)
    out["v1_logits_by_revision"] = logits(repo, revision=job["v1_commit"])
    out["v2_pipeline"] = pipeline("multimodal-classification", model=repo)(inputs["examples"], batch_size=2)
    # model.push_to_hub / processor.push_to_hub
    model = hf_multimodal.MultimodalForSequenceClassification.from_pretrained(job["v1"])
    processor = AutoProcessor.from_pretrained(job["v1"])
    out["api_commits"] = [model.push_to_hub("api-pushed", token=alice).oid,
                          processor.push_to_hub("alice/api-pushed", token=alice).oid]
    out["api_logits"] = logits("alice/api-pushed")
    classifier = pipeline("multimodal-classification", model=model, processor=processor)
    out["pipeline_commit"] = classifier.push_to_hub("alice/api-pipeline", token=alice).oid
    # a private repo is not readable without the token
    push_output_folder_to_hub(job["v1"], "alice/av-private", private=True, token=alice)
    out["private_anonymous"] = error_name(lambda: hf_hub_download("alice/av-private", "config.json"))
    out["private_from_pretrained"] = error_name(lambda: logits("alice/av-private"))
    out["private_other_user"] = error_name(lambda: hf_hub_download("alice/av-private", "config.json", token=bob))
    out["private_logits"] = logits("alice/av-private", token=alice)
    # writes without a token, or to another user's namespace, are refused
    out["push_without_token"] = error_name(
        lambda: push_output_folder_to_hub(job["v1"], "alice/anonymous", token=False)
    )
    out["push_other_namespace"] = error_name(lambda: model.push_to_hub("alice/from-bob", token=bob))
    torch.save(out, job["output"])
    """
)

REMOTE = textwrap.dedent(
    """
    import json, re, sys, io, contextlib, torch

    class RefuseHfMultimodal:  # this process never imports the package: everything comes from the Hub repo
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hf_multimodal":
                raise ImportError("hf_multimodal must not be imported in this process")

    sys.meta_path.insert(0, RefuseHfMultimodal())
    from huggingface_hub import hf_hub_download
    from transformers import AutoModelForSequenceClassification, AutoProcessor, pipeline

    job = json.load(open(sys.argv[1]))
    inputs = torch.load(job["inputs"], weights_only=False)
    repo, out = "alice/av-digits", {}
    classifier = pipeline(model=repo, trust_remote_code=True)
    out["pipeline_module"], out["task"] = type(classifier).__module__, classifier.task
    out["pipeline"] = classifier(inputs["examples"], batch_size=2)
    model = AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
    with torch.no_grad():
        out["logits"] = model(**processor(**inputs["batch"])).logits
    card = open(hf_hub_download(repo, "README.md")).read()
    snippet = re.search(r"```python\\n(.*?)```", card, flags=re.S).group(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, "<README snippet>", "exec"), {})
    out["snippet_output"] = printed.getvalue()
    out["imported"] = [name for name in sys.modules if name.startswith("hf_multimodal")]
    torch.save(out, job["output"])
    """
)


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def round_trip(hub_server, trained_output_folder, tmp_path_factory):
    """scripts/push_to_hub.py pushes v1; a fresh process loads it, pushes v2, pushes with the API and to a private
    repo; another fresh process, without the package, uses the repo through remote code."""
    work = tmp_path_factory.mktemp("round_trip")
    v1, v2 = trained_output_folder, work / "v2"
    write_trained_output_folder(v2, seed=1, accuracy=0.95)
    random_image(5).save(work / "image.png")
    soundfile.write(work / "audio8k.wav", random_audio(6, 0.4, 8000), 8000, subtype="FLOAT")
    examples = [
        {"text": "seven", "image": str(work / "image.png"), "audio": str(work / "audio8k.wav")},
        {"text": "two"},
    ]
    batch = {"text": ["seven", None], "images": [random_image(8), random_image(9)], "audio": [random_audio(10), None],
             "sampling_rate": 16000}
    torch.save({"examples": examples, "batch": batch}, work / "inputs.pt")

    script = run(
        [sys.executable, "scripts/push_to_hub.py", str(v1), "av-digits", "--commit-message", "Add the v1 model"],
        client_env(hub_server, work / "pusher", ALICE),
    )
    job = {"inputs": str(work / "inputs.pt"), "v1": str(v1), "v2": str(v2), "alice": ALICE, "bob": BOB,
           "v1_commit": hub_server.head("alice/av-digits")}
    (work / "worker.py").write_text(WORKER)
    (work / "worker.json").write_text(json.dumps({**job, "output": str(work / "worker.pt")}))
    run([sys.executable, str(work / "worker.py"), str(work / "worker.json")], client_env(hub_server, work / "user"))
    (work / "remote.py").write_text(REMOTE)
    (work / "remote.json").write_text(json.dumps({**job, "output": str(work / "remote.pt")}))
    run(
        [sys.executable, str(work / "remote.py"), str(work / "remote.json")],
        client_env(hub_server, work / "no-package"),
    )

    expected = {}
    for name, folder in (("v1", v1), ("v2", v2)):
        model = MultimodalForSequenceClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            expected[f"{name}_logits"] = model(**MultimodalProcessor.from_pretrained(folder)(**batch)).logits
        expected[f"{name}_pipeline"] = pipeline("multimodal-classification", model=str(folder))(examples, batch_size=2)
    return {
        "script_output": script.stdout,
        "job": job,
        "worker": torch.load(work / "worker.pt", weights_only=False),
        "remote": torch.load(work / "remote.pt", weights_only=False),
        "expected": expected,
    }


def test_push_script_sends_model_processor_code_and_card_in_one_commit(hub_server, round_trip):
    repo, v1_commit = "alice/av-digits", round_trip["job"]["v1_commit"]
    assert f"pushed {round_trip['job']['v1']} to {repo} at commit {v1_commit}" in round_trip["script_output"]
    history = hub_server.commits(repo)
    assert history[-2] == v1_commit and len(history) == 3  # initial commit, the script's push, the second push
    files = hub_server.files(repo, revision=v1_commit)
    assert {
        "model.safetensors", "config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
        "README.md", "metrics.json", "confusion_matrix.png", "configuration_multimodal.py", "configuration_wavenet.py",
        "modeling_multimodal.py", "modeling_fusion.py", "modeling_wavenet.py", "processing_multimodal.py",
        "feature_extraction_wavenet.py", "pipeline_multimodal.py",
    } <= set(files)
    assert not {"trainer_state.json", "training_args.bin"} & set(files) and not any("checkpoint" in f for f in files)
    config = json.loads(files["config.json"])
    auto_map = config["auto_map"]
    assert auto_map["AutoModelForSequenceClassification"] == "modeling_multimodal.MultimodalForSequenceClassification"
    assert "multimodal-classification" in config["custom_pipelines"]
    state = hub_server.storage.state("model", repo)
    assert state["commits"][v1_commit]["tree"]["model.safetensors"].get("lfs")  # weights went through LFS
    assert state["commits"][v1_commit]["title"] == "Add the v1 model"
    card = ModelCard(files["README.md"].decode())
    assert card.data.model_name == "av-digits" and card.data.eval_results[0].metric_value == 0.9
    assert 'pipeline("multimodal-classification", model="alice/av-digits", trust_remote_code=True)' in card.text
    stored = b"".join(hub_server.files(repo).values()) + b"".join(files.values())
    assert not any(token.encode() in stored for token in HUB_TOKENS)  # no token in any pushed file


def test_from_pretrained_and_pipeline_from_the_hub_predict_exactly_as_the_local_model(round_trip):
    worker, expected = round_trip["worker"], round_trip["expected"]
    assert torch.equal(worker["v1_logits"], expected["v1_logits"])
    assert worker["v1_pipeline"] == expected["v1_pipeline"]
    assert torch.equal(worker["v2_logits"], expected["v2_logits"])
    assert worker["v2_pipeline"] == expected["v2_pipeline"]


def test_a_second_push_updates_the_repo_and_old_revisions_stay(hub_server, round_trip):
    worker, expected = round_trip["worker"], round_trip["expected"]
    assert hub_server.head("alice/av-digits") == worker["v2_commit"] != round_trip["job"]["v1_commit"]
    assert not torch.equal(worker["v2_logits"], worker["v1_logits"])
    assert torch.equal(worker["v1_logits_by_revision"], expected["v1_logits"])
    card = ModelCard(hub_server.files("alice/av-digits")["README.md"].decode())
    assert card.data.eval_results[0].metric_value == 0.95


def test_model_and_processor_push_to_hub(hub_server, round_trip):
    worker = round_trip["worker"]
    assert len(set(worker["api_commits"])) == 2 and hub_server.head("alice/api-pushed") == worker["api_commits"][1]
    files = hub_server.files("alice/api-pushed")
    expected = {"model.safetensors", "config.json", "processor_config.json", "tokenizer.json"}
    assert expected | {"modeling_multimodal.py", "processing_multimodal.py"} <= set(files)
    assert torch.equal(worker["api_logits"], round_trip["expected"]["v1_logits"])
    # the pipeline's own push adds its code and the config's custom_pipelines entry
    assert hub_server.head("alice/api-pipeline") == worker["pipeline_commit"]
    files = hub_server.files("alice/api-pipeline")
    assert expected | {"pipeline_multimodal.py", "media_loading.py"} <= set(files)
    custom = json.loads(files["config.json"])["custom_pipelines"]["multimodal-classification"]
    assert custom["impl"] == "pipeline_multimodal.MultimodalClassificationPipeline"
    # both pushes wrote the project's model card, not transformers' generic one (issue 15, item 6)
    for repo in ("alice/api-pushed", "alice/api-pipeline"):
        card = ModelCard(hub_server.files(repo)["README.md"].decode())
        assert "More Information Needed" not in card.text and f'pipeline("multimodal-classification", model="{repo}")' in card.text
        assert {"hf_multimodal", "multimodal-classification", "fusion-gated"} <= set(card.data.tags)
        assert card.data.base_model == ["sentence-transformers/all-MiniLM-L6-v2"]


def test_private_repos_and_refused_writes(hub_server, round_trip):
    worker = round_trip["worker"]
    assert hub_server.storage.state("model", "alice/av-private")["private"] is True
    assert worker["private_anonymous"] == "RepositoryNotFoundError"
    assert worker["private_other_user"] == "RepositoryNotFoundError"
    assert worker["private_from_pretrained"] == "OSError"  # transformers' error for a repo it cannot see
    assert torch.equal(worker["private_logits"], round_trip["expected"]["v1_logits"])
    assert worker["push_without_token"] == "HfHubHTTPError" and worker["push_other_namespace"] == "HfHubHTTPError"
    assert hub_server.storage.state("model", "alice/anonymous") is None
    assert hub_server.storage.state("model", "alice/from-bob") is None


def test_remote_code_from_the_hub_in_a_process_without_the_package(round_trip):
    remote, expected = round_trip["remote"], round_trip["expected"]
    assert remote["imported"] == []
    assert remote["pipeline_module"].startswith("transformers_modules")
    assert remote["task"] == "multimodal-classification"
    assert remote["pipeline"] == expected["v2_pipeline"]
    assert torch.equal(remote["logits"], expected["v2_logits"])
    printed = eval(remote["snippet_output"])  # the card's usage snippet ran as written and printed its predictions
    assert {entry["label"] for entry in printed} == {"zero", "one", "two"}

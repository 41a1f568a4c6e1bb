"""A Hugging Face Hub-compatible HTTP server for tests: repos on disk, atomic commits, LFS uploads, downloads with
the headers `huggingface_hub` checks, tokens, private repos, revisions, and injectable faults.

It implements the Hub API as the real `huggingface_hub` 2.x client calls it with `HF_HUB_DISABLE_XET=1` (see
`../shared/README.md`), so that the real `huggingface_hub` and `transformers` clients run unpatched against it with
`HF_ENDPOINT=server.endpoint`.

Example:

```python
server = HubServer(tmp_path, tokens={"hf_secret": "alice"}).start()
env = {"HF_ENDPOINT": server.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_secret"}
server.add_fault(Fault(method="POST", path=r"/commit/", status=500))  # the next commit fails with a 500
server.stop()
```
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


REPO_TYPES = ("model", "dataset", "space")
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_EXTENSIONS = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".npy", ".npz", ".pkl", ".zip",
    ".gz", ".tar", ".wav", ".flac", ".mp3", ".ogg", ".parquet", ".arrow", ".model",
)
LFS_THRESHOLD = 10 * 2**20
GITATTRIBUTES = "".join(f"*{extension} filter=lfs diff=lfs merge=lfs -text\n" for extension in LFS_EXTENSIONS)
_NAME = r"[A-Za-z0-9][\w.-]*"
_REPO = rf"(?P<repo>{_NAME}/{_NAME})"
_TYPE_PREFIX = r"(?:(?P<type_prefix>datasets|spaces)/)?"


class HubError(Exception):
    """An HTTP error answer: status, message, and the `X-Error-Code` the client maps to its exceptions."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class Fault:
    r"""
    A fault the server injects into matching requests (for retry / atomicity tests).

    Args:
        path (`str`): Regex searched in the request path (e.g. `r"/commit/"`, `r"^/lfs-upload/"`).
        method (`str`, *optional*): Only requests with this HTTP method; any method when None.
        kind (`str`, defaults to `"error"`): `"error"` answers `status` without handling the request; `"drop"` reads
            `after_bytes` of the request body, then closes the connection without any answer.
        status (`int`, defaults to 500): Status of an `"error"` answer.
        times (`int`, defaults to 1): How many matching requests it hits.
        after_bytes (`int`, defaults to 0): Body bytes read before a `"drop"`.
        retry_after (`int`, *optional*): `Retry-After` header (seconds) of an `"error"` answer, as a busy Hub or
            storage backend sends; `huggingface_hub`'s retrying calls then wait that long (+1 s) instead of their
            exponential backoff, which keeps tests of persistent faults short.
    """

    path: str
    method: str | None = None
    kind: str = "error"
    status: int = 500
    times: int = 1
    after_bytes: int = 0
    retry_after: int | None = None
    hits: int = 0

    def __post_init__(self):
        if self.kind not in ("error", "drop"):
            raise ValueError(f"Fault.kind must be 'error' or 'drop', got {self.kind!r}.")


@dataclass
class RequestRecord:
    """One handled request, as logged by the server (no headers: tokens never enter the log)."""

    method: str
    path: str
    status: int | None
    fault: str | None = None


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob, as the Hub reports it for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HubStorage:
    """Repos on disk. Each repo is one `state.json` (visibility, refs and every commit's full file tree) replaced
    atomically (`os.replace`) after every change; file contents are content-addressed objects (git blob ids for
    regular files, sha256 for LFS files) written before the state that refers to them, so a failed commit leaves
    the repo exactly at its previous commit."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.lock = threading.RLock()
        for folder in ("repos", "objects/git", "objects/lfs", "tmp"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    # --- objects
    def _write_atomic(self, path: Path, data: bytes) -> None:
        temporary = self.root / "tmp" / uuid.uuid4().hex
        temporary.write_bytes(data)
        os.replace(temporary, path)

    def put_git_object(self, content: bytes) -> str:
        oid = git_blob_oid(content)
        path = self.root / "objects/git" / oid
        if not path.exists():
            self._write_atomic(path, content)
        return oid

    def lfs_path(self, sha256: str) -> Path:
        return self.root / "objects/lfs" / sha256

    def put_lfs_object(self, sha256: str, size: int, content: bytes) -> None:
        if len(content) != size or hashlib.sha256(content).hexdigest() != sha256:
            raise HubError(400, f"uploaded content does not match oid {sha256} / size {size}")
        if not self.lfs_path(sha256).exists():
            self._write_atomic(self.lfs_path(sha256), content)

    def has_lfs_object(self, sha256: str, size: int | None = None) -> bool:
        path = self.lfs_path(sha256)
        return path.exists() and (size is None or path.stat().st_size == size)

    def read(self, entry: dict) -> bytes:
        if entry.get("lfs"):
            return self.lfs_path(entry["lfs"]["oid"]).read_bytes()
        return (self.root / "objects/git" / entry["oid"]).read_bytes()

    def content_path(self, entry: dict) -> Path:
        if entry.get("lfs"):
            return self.lfs_path(entry["lfs"]["oid"])
        return self.root / "objects/git" / entry["oid"]

    # --- repos
    def _state_path(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / repo_id / "state.json"

    def state(self, repo_type: str, repo_id: str) -> dict | None:
        path = self._state_path(repo_type, repo_id)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def save_state(self, repo_type: str, repo_id: str, state: dict) -> None:
        path = self._state_path(repo_type, repo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write_atomic(path, json.dumps(state).encode())

    def delete(self, repo_type: str, repo_id: str) -> None:
        path = self._state_path(repo_type, repo_id)
        if path.exists():
            os.replace(path, self.root / "tmp" / f"deleted-{uuid.uuid4().hex}.json")

    def new_commit(self, state: dict, branch: str, tree: dict, title: str, message: str, author: str) -> str:
        """Add a commit on `branch` to `state` (in memory) and return its id."""
        parent = state["refs"].get(branch)
        payload = json.dumps([parent, sorted(tree.items()), title, message, time.time_ns(), secrets.token_hex(4)])
        oid = hashlib.sha1(payload.encode()).hexdigest()
        state["commits"][oid] = {
            "parent": parent,
            "tree": tree,
            "title": title,
            "message": message,
            "author": author,
            "date": _now(),
        }
        state["refs"][branch] = oid
        return oid


class HubServer:
    r"""
    The server: `start()` it, point the clients at `endpoint`, `stop()` it.

    Args:
        root (`str` or `os.PathLike`): Folder for repos and objects.
        tokens (`dict[str, str]`, *optional*): Valid tokens and the user each belongs to.
        orgs (`dict[str, list[str]]`, *optional*): Organisations and their members (who may write to their repos).
    """

    def __init__(self, root: str | os.PathLike, tokens: dict[str, str] | None = None, orgs: dict | None = None):
        self.storage = HubStorage(root)
        self.tokens = dict(tokens or {"hf_test_write_token": "test-user"})
        self.orgs = {name: list(members) for name, members in (orgs or {}).items()}
        self.faults: list[Fault] = []
        self.requests: list[RequestRecord] = []
        self._uploads: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not started: call start() first.")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        handler = type("BoundHubHandler", (HubRequestHandler,), {"hub": self})
        self._httpd = _QuietHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.hits < fault.times and (fault.method in (None, method)) and re.search(fault.path, path):
                    fault.hits += 1
                    return fault
        return None

    def log(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    # --- helpers used by tests
    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str | None:
        """The commit id `revision` points to (None for an unknown repo or revision)."""
        state = self.storage.state(repo_type, repo_id)
        if state is None:
            return None
        return state["refs"].get(revision) or (revision if revision in state["commits"] else None)

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Every file of `repo_id` at `revision`, read straight from disk."""
        state = self.storage.state(repo_type, repo_id)
        tree = state["commits"][self.head(repo_id, revision, repo_type)]["tree"]
        return {path: self.storage.read(entry) for path, entry in tree.items()}

    def commits(self, repo_id: str, repo_type: str = "model") -> list[str]:
        """Commit ids of the main branch, newest first."""
        state = self.storage.state(repo_type, repo_id)
        oid, history = state["refs"]["main"], []
        while oid is not None:
            history.append(oid)
            oid = state["commits"][oid]["parent"]
        return history

    def user_for(self, authorization: str | None) -> str | None:
        """The user of a `Bearer` token; HubError 401 for an invalid one, None for none."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))


class _QuietHTTPServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # dropped connections (injected faults) are expected
        pass


class HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer  # set on the bound subclass
    server_version = "hf-multimodal-test-hub/1.0"

    ROUTES = [
        ("GET", r"^/api/whoami-v2$", "whoami"),
        ("POST", r"^/api/repos/create$", "create_repo"),
        ("DELETE", r"^/api/repos/delete$", "delete_repo"),
        ("POST", r"^/api/validate-yaml$", "validate_yaml"),
        ("PUT", rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/settings$", "settings"),
        ("GET", rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),
        ("GET", rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree"),
        ("POST", rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/paths-info/(?P<rev>[^/]+)$", "paths_info"),
        ("GET", rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/refs$", "refs"),
        ("GET", rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/commits/(?P<rev>[^/]+)$", "list_commits"),
        ("POST", rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/branch/(?P<branch>[^/]+)$", "create_branch"),
        ("POST", rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/preupload/(?P<rev>[^/]+)$", "preupload"),
        ("POST", rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/commit/(?P<rev>[^/]+)$", "commit"),
        ("POST", rf"^/{_TYPE_PREFIX}{_REPO}\.git/info/lfs/objects/batch$", "lfs_batch"),
        ("POST", rf"^/{_TYPE_PREFIX}{_REPO}\.git/info/lfs/objects/verify$", "lfs_verify"),
        ("PUT", r"^/lfs-upload/(?P<ticket>[0-9a-f]+)$", "lfs_upload"),
        ("GET", rf"^/{_TYPE_PREFIX}{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
        ("HEAD", rf"^/{_TYPE_PREFIX}{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
    ]

    def log_message(self, format, *args):  # keep test output quiet; requests go to `hub.requests`
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # --- plumbing
    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.url_path, self.query = url.path, parse_qs(url.query)
        self._method, self._fault = method, None
        self._status, self._body = None, None  # one handler serves every request of a keep-alive connection
        fault = self.hub.take_fault(method, url.path)
        if fault is not None:
            self._fault = fault.kind
            if fault.kind == "drop":
                self.hub.log(RequestRecord(method, url.path, None, fault.kind))
                self._drop_connection(fault.after_bytes)
            else:
                self._read_body()
                retry_after = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
                self._error(HubError(fault.status, "injected fault"), retry_after)
            return
        try:
            for route_method, pattern, name in self.ROUTES:
                match = re.match(pattern, url.path)
                if route_method == method and match:
                    getattr(self, f"handle_{name}")(**match.groupdict())
                    break
            else:
                self._read_body()
                raise HubError(404, f"no route for {method} {url.path}")
        except HubError as error:
            self._error(error)
        except Exception as error:  # a bug of the server: answer 500 rather than hang the client
            self._error(HubError(500, f"server error: {type(error).__name__}: {error}"))

    def _drop_connection(self, after_bytes: int) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if after_bytes and length:
            self.rfile.read(min(after_bytes, length))
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_body(self) -> bytes:
        if self._body is not None:
            return self._body
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self._body = b"".join(chunks)
        else:
            self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return self._body

    def _json_body(self) -> Any:
        body = self._read_body()
        if "application/x-www-form-urlencoded" in (self.headers.get("Content-Type") or ""):
            form = parse_qs(body.decode())
            return {key: values if len(values) > 1 or key == "paths" else values[0] for key, values in form.items()}
        try:
            return json.loads(body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"invalid JSON body: {error}") from error

    def _send(
        self, status: int, body: Any = b"", headers: dict | None = None, content_type: str = "application/json"
    ) -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self._respond(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _respond(self, status: int) -> None:
        """Log the request, then start the response: a client that has seen the answer always finds its request in
        `hub.requests` (logging after the reply raced with tests reading the log)."""
        self._status = status
        self.hub.log(RequestRecord(self._method, self.url_path, status, self._fault))
        self.send_response(status)

    def _error(self, error: HubError, headers: dict | None = None) -> None:
        headers = {**(headers or {}), "X-Error-Message": error.message}
        if error.code:
            headers["X-Error-Code"] = error.code
        self._send(error.status, {"error": error.message}, headers)

    def _user(self) -> str | None:
        return self.hub.user_for(self.headers.get("Authorization"))

    def _writer(self, namespace: str) -> str:
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to write: pass a token (Authorization: Bearer ...).")
        if not self.hub.can_write(user, namespace):
            raise HubError(403, f"{user} may not write to the namespace {namespace}.")
        return user

    @staticmethod
    def _repo_type(type_segment: str | None) -> str:
        return {"models": "model", "datasets": "dataset", "spaces": "space", None: "model"}[type_segment]

    def _readable_state(self, repo_type: str, repo_id: str) -> dict:
        """The repo's state; RepoNotFound (as the Hub answers) when it is missing or private to someone else."""
        state = self.hub.storage.state(repo_type, repo_id)
        user = self._user()
        if state is None or (state["private"] and not self.hub.can_write(user, repo_id.split("/")[0])):
            status = 401 if user is None else 404
            raise HubError(status, f"Repository Not Found for {repo_type} {repo_id}.", "RepoNotFound")
        return state

    def _writable_state(self, repo_type: str, repo_id: str) -> tuple[dict, str]:
        user = self._writer(repo_id.split("/")[0])
        state = self.hub.storage.state(repo_type, repo_id)
        if state is None:
            raise HubError(404, f"Repository Not Found for {repo_type} {repo_id}.", "RepoNotFound")
        return state, user

    @staticmethod
    def _resolve(state: dict, revision: str) -> tuple[str, dict]:
        revision = unquote(revision)
        oid = state["refs"].get(revision) or (revision if revision in state["commits"] else None)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return oid, state["commits"][oid]["tree"]

    def _url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.hub.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"

    # --- account and repos
    def handle_whoami(self) -> None:
        user = self._user()
        if user is None:
            raise HubError(401, "Invalid username or password.")
        orgs = [{"name": name, "type": "org"} for name, members in self.hub.orgs.items() if user in members]
        self._send(200, {
            "type": "user", "name": user, "fullname": user, "orgs": orgs,
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
        })

    def handle_create_repo(self) -> None:
        payload = self._json_body()
        user = self._user()
        namespace = payload.get("organization") or user
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo: pass a token.")
        name, repo_type = payload.get("name") or "", payload.get("type") or "model"
        if repo_type not in REPO_TYPES or not re.fullmatch(_NAME, name) or len(name) > 96:
            raise HubError(400, f"invalid repo name {name!r} or type {repo_type!r}")
        self._writer(namespace)
        repo_id = f"{namespace}/{name}"
        private = payload.get("private") is True or payload.get("visibility") == "private"
        with self.hub.storage.lock:
            if self.hub.storage.state(repo_type, repo_id) is not None:
                self._send(409, {"error": "You already created this model repo", "url": self._url(repo_type, repo_id)})
                return
            state = {"private": private, "created": _now(), "refs": {}, "commits": {}}
            oid = self.hub.storage.put_git_object(GITATTRIBUTES.encode())
            tree = {".gitattributes": {"oid": oid, "size": len(GITATTRIBUTES)}}
            self.hub.storage.new_commit(state, "main", tree, "initial commit", "", user)
            self.hub.storage.save_state(repo_type, repo_id, state)
        self._send(200, {"url": self._url(repo_type, repo_id), "name": repo_id, "id": uuid.uuid4().hex})

    def handle_delete_repo(self) -> None:
        payload = self._json_body()
        user = self._user()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
        self._writer(repo_id.split("/")[0])
        with self.hub.storage.lock:
            if self.hub.storage.state(repo_type, repo_id) is None:
                raise HubError(404, f"Repository Not Found for {repo_type} {repo_id}.", "RepoNotFound")
            self.hub.storage.delete(repo_type, repo_id)
        self._send(200, {})

    def handle_settings(self, type: str, repo: str) -> None:
        repo_type = self._repo_type(type)
        payload = self._json_body()
        with self.hub.storage.lock:
            state, _ = self._writable_state(repo_type, repo)
            if "private" in payload:
                state["private"] = bool(payload["private"])
            if "visibility" in payload:
                state["private"] = payload["visibility"] == "private"
            self.hub.storage.save_state(repo_type, repo, state)
        self._send(200, {"private": state["private"]})

    def handle_validate_yaml(self) -> None:
        content = self._json_body().get("content") or ""
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.S)
        if not match:
            self._send(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
            return
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as error:
            self._send(400, {"errors": [{"message": f"invalid YAML: {error}"}], "warnings": []})
            return
        if metadata is not None and not isinstance(metadata, dict):
            self._send(400, {"errors": [{"message": "metadata must be a YAML mapping"}], "warnings": []})
            return
        self._send(200, {"errors": [], "warnings": []})

    # --- read API
    def handle_repo_info(self, type: str, repo: str, rev: str | None = None) -> None:
        repo_type = self._repo_type(type)
        state = self._readable_state(repo_type, repo)
        oid, tree = self._resolve(state, rev or "main")
        card = self._card_data(tree)
        with_blobs = self.query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path, entry in sorted(tree.items()):
            sibling = {"rfilename": path}
            if with_blobs:
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if entry.get("lfs"):
                    sibling["lfs"] = self._lfs_json(entry)
            siblings.append(sibling)
        info = {
            "_id": hashlib.md5(repo.encode()).hexdigest()[:24],
            "id": repo,
            "author": repo.split("/")[0],
            "sha": oid,
            "lastModified": state["commits"][oid]["date"],
            "createdAt": state["created"],
            "private": state["private"],
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card.get("tags") or []),
            "siblings": siblings,
        }
        if repo_type == "model":
            info["modelId"] = repo
            info.update({key: card[key] for key in ("pipeline_tag", "library_name") if key in card})
        if card:
            info["cardData"] = card
        self._send(200, info)

    def _card_data(self, tree: dict) -> dict:
        if "README.md" not in tree:
            return {}
        text = self.hub.storage.read(tree["README.md"]).decode("utf-8", errors="replace")
        match = re.match(r"^---\s*\n(.*?)\n---", text, flags=re.S)
        try:
            data = yaml.safe_load(match.group(1)) if match else None
        except yaml.YAMLError:
            data = None
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _entry_json(path: str, entry: dict) -> dict:
        item = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
        if entry.get("lfs"):
            item["lfs"] = HubRequestHandler._lfs_json(entry)
        return item

    @staticmethod
    def _lfs_json(entry: dict) -> dict:
        lfs = {"oid": entry["lfs"]["oid"], "size": entry["size"], "pointerSize": entry["lfs"]["pointerSize"]}
        return {**lfs, "sha256": lfs["oid"]}

    @staticmethod
    def _folder_json(path: str) -> dict:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}

    def handle_tree(self, type: str, repo: str, rev: str, path: str | None = None) -> None:
        repo_type = self._repo_type(type)
        state = self._readable_state(repo_type, repo)
        _, tree = self._resolve(state, rev)
        prefix = unquote(path).strip("/") + "/" if path else ""
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        if prefix and not any(p.startswith(prefix) for p in tree):
            raise HubError(404, f"{prefix.rstrip('/')} does not exist in {repo}", "EntryNotFound")
        items, folders = [], set()
        for file_path, entry in sorted(tree.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    items.append(self._folder_json(folder))
            if recursive or len(parts) == 1:
                items.append(self._entry_json(file_path, entry))
        self._send(200, items)

    def handle_paths_info(self, type: str, repo: str, rev: str) -> None:
        repo_type = self._repo_type(type)
        payload = self._json_body()
        state = self._readable_state(repo_type, repo)
        _, tree = self._resolve(state, rev)
        paths = payload.get("paths") or []
        paths = [paths] if isinstance(paths, str) else paths
        items = []
        for path in paths:
            path = path.strip("/")
            if path in tree:
                items.append(self._entry_json(path, tree[path]))
            elif any(p.startswith(path + "/") for p in tree):
                items.append(self._folder_json(path))
        self._send(200, items)

    def handle_refs(self, type: str, repo: str) -> None:
        state = self._readable_state(self._repo_type(type), repo)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid} for name, oid in state["refs"].items()
        ]
        self._send(200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def handle_list_commits(self, type: str, repo: str, rev: str) -> None:
        state = self._readable_state(self._repo_type(type), repo)
        oid, _ = self._resolve(state, rev)
        history = []
        while oid is not None:
            commit = state["commits"][oid]
            history.append({
                "id": oid, "title": commit["title"], "message": commit["message"], "date": commit["date"],
                "authors": [{"user": commit["author"]}],
            })
            oid = commit["parent"]
        self._send(200, history)

    def handle_resolve(self, repo: str, rev: str, path: str, type_prefix: str | None = None) -> None:
        repo_type = {"datasets": "dataset", "spaces": "space", None: "model"}[type_prefix]
        state = self._readable_state(repo_type, repo)
        oid, tree = self._resolve(state, rev)
        path = unquote(path)
        entry = tree.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path} at {oid}", "EntryNotFound")
        size = entry["size"]
        headers = {"X-Repo-Commit": oid, "Accept-Ranges": "bytes"}
        if entry.get("lfs"):
            etag = f'"{entry["lfs"]["oid"]}"'
            headers.update({"ETag": etag, "X-Linked-Etag": etag, "X-Linked-Size": str(size)})
        else:
            headers["ETag"] = f'"{entry["oid"]}"'
        start = 0
        range_header = self.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())
            if not match or int(match.group(1)) > size:
                raise HubError(416, f"invalid range {range_header!r} for {size} bytes")
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else size - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if self.command == "HEAD":
            self._respond(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            return
        content = self.hub.storage.read(entry)
        if range_header:
            self._send(206, content[start : end + 1], headers, content_type="application/octet-stream")
        else:
            self._send(200, content, headers, content_type="application/octet-stream")

    # --- write API
    def handle_create_branch(self, type: str, repo: str, branch: str) -> None:
        repo_type = self._repo_type(type)
        payload = self._json_body()
        branch = unquote(branch)
        with self.hub.storage.lock:
            state, _ = self._writable_state(repo_type, repo)
            if branch in state["refs"]:
                raise HubError(409, f"branch {branch} already exists")
            oid, _ = self._resolve(state, payload.get("startingPoint") or "main")
            state["refs"][branch] = oid
            self.hub.storage.save_state(repo_type, repo, state)
        self._send(200, {})

    def handle_preupload(self, type: str, repo: str, rev: str) -> None:
        repo_type = self._repo_type(type)
        payload = self._json_body()
        state, _ = self._writable_state(repo_type, repo)
        _, tree = self._resolve(state, rev)
        files = []
        for item in payload.get("files") or []:
            path, size = item.get("path"), int(item.get("size") or 0)
            sample = base64.b64decode(item.get("sample") or "")
            is_lfs = size > LFS_THRESHOLD or path.lower().endswith(LFS_EXTENSIONS) or b"\0" in sample[:8000]
            existing = tree.get(path)
            remote_oid = None
            if existing is not None:
                remote_oid = existing["lfs"]["oid"] if existing.get("lfs") else existing["oid"]
            mode = "lfs" if is_lfs else "regular"
            files.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": remote_oid})
        self._send(200, {"files": files, "commitOid": self._resolve(state, rev)[0]})

    def handle_lfs_batch(self, repo: str, type_prefix: str | None = None) -> None:
        repo_type = {"datasets": "dataset", "spaces": "space", None: "model"}[type_prefix]
        payload = self._json_body()
        self._writable_state(repo_type, repo)
        if payload.get("operation") != "upload":
            raise HubError(400, "only the upload operation is supported")
        objects = []
        for item in payload.get("objects") or []:
            oid, size = str(item.get("oid")), int(item.get("size") or 0)
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "invalid oid"}})
                continue
            result = {"oid": oid, "size": size, "authenticated": True}
            if not self.hub.storage.has_lfs_object(oid, size):
                ticket = secrets.token_hex(16)
                with self.hub._lock:
                    self.hub._uploads[ticket] = (oid, size)
                result["actions"] = {
                    "upload": {"href": f"{self.hub.endpoint}/lfs-upload/{ticket}", "header": {}},
                    "verify": {"href": f"{self._url(repo_type, repo)}.git/info/lfs/objects/verify", "header": {}},
                }
            objects.append(result)
        answer = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        self._send(200, answer, content_type="application/vnd.git-lfs+json")

    def handle_lfs_upload(self, ticket: str) -> None:
        body = self._read_body()
        with self.hub._lock:
            upload = self.hub._uploads.pop(ticket, None)
        if upload is None:
            raise HubError(403, "unknown or used upload ticket")
        oid, size = upload
        self.hub.storage.put_lfs_object(oid, size, body)
        self._send(200, b"", content_type="text/plain")

    def handle_lfs_verify(self, repo: str, type_prefix: str | None = None) -> None:
        repo_type = {"datasets": "dataset", "spaces": "space", None: "model"}[type_prefix]
        payload = self._json_body()
        self._writable_state(repo_type, repo)
        if not self.hub.storage.has_lfs_object(str(payload.get("oid")), payload.get("size")):
            raise HubError(404, f"LFS object {payload.get('oid')} was not uploaded")
        self._send(200, {})

    def handle_commit(self, type: str, repo: str, rev: str) -> None:
        repo_type = self._repo_type(type)
        body = self._read_body()
        if self.query.get("create_pr", ["0"])[0] == "1":
            raise HubError(400, "pull requests are not supported by this test server")
        branch = unquote(rev)
        try:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise HubError(400, f"invalid NDJSON commit payload: {error}") from error
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the commit payload must start with a header line")
        header = lines[0].get("value") or {}
        with self.hub.storage.lock:
            state, user = self._writable_state(repo_type, repo)
            if branch not in state["refs"]:
                raise HubError(404, f"Invalid rev id: {branch} (commits go to a branch)", "RevisionNotFound")
            parent = header.get("parentCommit")
            if parent and parent != state["refs"][branch]:
                raise HubError(412, f"A commit has happened since {parent}: the branch is at {state['refs'][branch]}.")
            tree = dict(state["commits"][state["refs"][branch]]["tree"])
            for line in lines[1:]:
                self._apply(tree, line.get("key"), line.get("value") or {})
            oid = self.hub.storage.new_commit(
                state, branch, tree, header.get("summary") or "update", header.get("description") or "", user
            )
            self.hub.storage.save_state(repo_type, repo, state)  # the single atomic step that publishes the commit
        commit_url = f"{self._url(repo_type, repo)}/commit/{oid}"
        self._send(200, {"success": True, "commitOid": oid, "commitUrl": commit_url, "pullRequestUrl": None})

    def _apply(self, tree: dict, key: str | None, value: dict) -> None:
        """Apply one operation of a commit to the in-memory `tree`; HubError on anything invalid."""
        path = str(value.get("path") or "")
        if key != "deletedFolder" and (not path or path.startswith("/") or ".." in path.split("/") or "//" in path):
            raise HubError(400, f"invalid path in commit: {path!r}")
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
            try:
                content = base64.b64decode(value.get("content") or "", validate=True)
            except ValueError as error:
                raise HubError(400, f"invalid base64 content for {path}: {error}") from error
            tree[path] = {"oid": self.hub.storage.put_git_object(content), "size": len(content)}
        elif key == "lfsFile":
            sha256, size = str(value.get("oid")), value.get("size")
            if not self.hub.storage.has_lfs_object(sha256, size):
                raise HubError(400, f"LFS object {sha256} for {path} was not uploaded: upload it before committing")
            size = self.hub.storage.lfs_path(sha256).stat().st_size
            pointer = lfs_pointer(sha256, size)
            lfs = {"oid": sha256, "pointerSize": len(pointer)}
            tree[path] = {"oid": git_blob_oid(pointer), "size": size, "lfs": lfs}
        elif key == "deletedFile":
            if tree.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            prefix = path.strip("/") + "/"
            removed = [file_path for file_path in tree if file_path.startswith(prefix)]
            if not removed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for file_path in removed:
                del tree[file_path]
        else:
            raise HubError(400, f"unknown commit operation {key!r}")


__all__ = ["Fault", "HubError", "HubServer", "HubStorage", "RequestRecord", "git_blob_oid"]

"""A small Hugging Face Hub-compatible HTTP server for offline tests.

It implements the endpoints ``huggingface_hub.HfApi``, ``hf_hub_download`` and
``snapshot_download`` call for model repositories, read off the client's source
(``hf_api.py``, ``_commit_api.py``, ``file_download.py``):

- ``POST /api/repos/create``, ``POST /api/validate-yaml``
- ``GET  /api/models/{repo}[/revision/{rev}]`` (repo info with ``sha`` and ``siblings``)
- ``POST /api/models/{repo}/preupload/{rev}`` (every file ``"uploadMode": "regular"``, so the
  client sends bodies inline, base64, in the commit)
- ``POST /api/models/{repo}/commit/{rev}`` (NDJSON: a header with ``parentCommit``, then
  ``file``/``deletedFile``/``deletedFolder`` lines); a ``parentCommit`` that is not the
  branch head is refused with 412, as the Hub does
- ``GET  /api/models/{repo}/refs``, ``POST|DELETE /api/models/{repo}/branch/{branch}``,
  ``POST /api/models/{repo}/tag/{rev}``, ``GET /api/models/{repo}/tree/{rev}[/{path}]``
- ``HEAD|GET /{repo}/resolve/{rev}/{path}`` with ``ETag``, ``X-Repo-Commit`` and
  ``Content-Length``; errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound,
  EntryNotFound) so the client raises its own typed errors.

Each repository has a real commit graph (commit → parent, file snapshot) and branch and
tag refs. ``HubServer.state`` lets a test look inside, count bytes, plant files a real Hub
would never accept (``../x``), or tamper with a stored file in place.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
HF_ERROR_CODES = {"repo": "RepoNotFound", "revision": "RevisionNotFound", "entry": "EntryNotFound"}


def blob_oid(data: bytes) -> str:
    """git's blob id: sha1 of ``blob <size>\\0`` + content (what the Hub reports as ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubCommit:
    oid: str
    parent: str | None
    files: dict[str, bytes]
    message: str


@dataclass
class HubRepo:
    id: str
    commits: dict[str, HubCommit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        rev = rev.removeprefix("refs/heads/").removeprefix("refs/tags/")
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        return rev if rev in self.commits else None


class HubState:
    """Everything the server holds; every access takes ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.repos: dict[str, HubRepo] = {}
        self.bytes_in = 0  # request bodies received (what clients uploaded)
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str] = []  # Authorization headers received (tests check tokens travel)
        self._counter = itertools.count()

    def new_commit(self, repo: HubRepo, parent: str | None, files: dict[str, bytes], message: str) -> str:
        h = hashlib.sha1(f"{repo.id}\0{parent}\0{message}\0{next(self._counter)}".encode())
        for path in sorted(files):
            h.update(f"{path}\0{blob_oid(files[path])}\0".encode())
        oid = h.hexdigest()
        repo.commits[oid] = HubCommit(oid, parent, dict(files), message)
        return oid

    def create_repo(self, repo_id: str) -> HubRepo:
        with self.lock:
            repo = HubRepo(repo_id)
            repo.branches["main"] = self.new_commit(repo, None, {".gitattributes": GITATTRIBUTES}, "initial commit")
            self.repos[repo_id] = repo
            return repo

    # -- helpers for tests: things a real Hub would refuse or never do ------------------------------------

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        with self.lock:
            repo = self.repos[repo_id]
            return dict(repo.commits[repo.resolve(rev)].files)

    def plant(self, repo_id: str, branch: str, files: dict[str, bytes], message: str = "planted") -> str:
        """Commit ``files`` (any names, no checks) on top of ``branch``."""
        with self.lock:
            repo = self.repos[repo_id]
            head = repo.branches[branch]
            snapshot = {**repo.commits[head].files, **files}
            repo.branches[branch] = self.new_commit(repo, head, snapshot, message)
            return repo.branches[branch]

    def tamper(self, repo_id: str, branch: str, path: str, data: bytes) -> None:
        """Replace a stored file's bytes in place, keeping the commit id (a compromised host)."""
        with self.lock:
            repo = self.repos[repo_id]
            repo.commits[repo.branches[branch]].files[path] = data


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra: object) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            data = b"".join(chunks)
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.state.lock:
            self.server.state.bytes_in += len(data)
        return data

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        state = self.server.state
        with state.lock:
            state.requests.append((self.command, url.path))
            if self.headers.get("Authorization"):
                state.authorizations.append(self.headers["Authorization"])
        body = self._body() if self.command in ("POST", "PUT", "DELETE") else b""
        try:
            if parts[:1] == ["api"]:
                self._api(parts[1:], query, body)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            else:
                raise _HubError(404, f"no route for {self.command} {url.path}")
        except _HubError as exc:
            headers = {"X-Error-Message": exc.message}
            if exc.code:
                headers["X-Error-Code"] = exc.code
            self._json(exc.status, {"error": exc.message, **exc.extra}, headers)

    do_GET = do_POST = do_HEAD = do_DELETE = do_PUT = _dispatch

    # -- routes ------------------------------------------------------------------------------------------------

    def _repo(self, repo_id: str) -> HubRepo:
        repo = self.server.state.repos.get(repo_id)
        if repo is None:
            raise _HubError(404, f"Repository Not Found for url: {repo_id}", HF_ERROR_CODES["repo"])
        return repo

    def _commit_of(self, repo: HubRepo, rev: str) -> HubCommit:
        oid = repo.resolve(rev)
        if oid is None:
            raise _HubError(404, f"Invalid rev id: {rev}", HF_ERROR_CODES["revision"])
        return repo.commits[oid]

    def _api(self, parts: list[str], query: dict[str, str], body: bytes) -> None:
        state, method = self.server.state, self.command
        if parts == ["repos", "create"] and method == "POST":
            payload = json.loads(body or b"{}")
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            with state.lock:
                if repo_id in state.repos:
                    raise _HubError(409, "You already created this model repo", url=f"{self.server.url}/{repo_id}")
                state.create_repo(repo_id)
            return self._json(200, {"url": f"{self.server.url}/{repo_id}", "name": repo_id, "id": repo_id})
        if parts == ["validate-yaml"] and method == "POST":
            return self._json(200, {"errors": [], "warnings": []})
        if len(parts) < 3 or parts[0] != "models":
            raise _HubError(404, f"no API route /{'/'.join(parts)}")
        repo_id, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        with state.lock:
            repo = self._repo(repo_id)
            if not rest or rest[0] == "revision" and method == "GET":
                commit = self._commit_of(repo, rest[1] if rest else "main")
                return self._json(200, {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": commit.oid,
                                        "private": False, "tags": [], "siblings": [{"rfilename": p} for p in
                                                                                 sorted(commit.files)]})
            op, arg = rest[0], "/".join(rest[1:])
            if op == "refs" and method == "GET":
                def refs(kind: str, d: dict[str, str]) -> list[dict[str, str]]:
                    return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": t} for n, t in sorted(d.items())]
                return self._json(200, {"branches": refs("heads", repo.branches), "converts": [],
                                        "tags": refs("tags", repo.tags), "pullRequests": []})
            if op == "tree" and method == "GET":
                return self._tree(repo, rest[1], "/".join(rest[2:]), query.get("recursive", "").lower() == "true")
            if op == "preupload" and method == "POST":
                commit = self._commit_of(repo, arg)
                files = json.loads(body)["files"]
                return self._json(200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                     "oid": blob_oid(commit.files[f["path"]]) if f["path"] in commit.files else None}
                    for f in files]})
            if op == "commit" and method == "POST":
                return self._commit(repo, arg, body)
            if op == "branch" and method == "POST":
                if arg in repo.branches:
                    raise _HubError(409, f"Reference already exists: refs/heads/{arg}")
                start = json.loads(body or b"{}").get("startingPoint") or "main"
                repo.branches[arg] = self._commit_of(repo, start).oid
                return self._json(200, {})
            if op == "branch" and method == "DELETE":
                if repo.branches.pop(arg, None) is None:
                    raise _HubError(404, f"Invalid rev id: {arg}", HF_ERROR_CODES["revision"])
                return self._json(200, {})
            if op == "tag" and method == "POST":
                payload = json.loads(body or b"{}")
                target = self._commit_of(repo, arg).oid
                if payload["tag"] in repo.tags:
                    raise _HubError(409, f"Tag {payload['tag']} already exists")
                repo.tags[payload["tag"]] = target
                return self._json(200, {})
        raise _HubError(404, f"no API route {method} /{'/'.join(parts)}")

    def _tree(self, repo: HubRepo, rev: str, path: str, recursive: bool) -> None:
        commit = self._commit_of(repo, rev)
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries, folders = [], set()
        for name in sorted(commit.files):
            if not name.startswith(prefix):
                continue
            rel = name[len(prefix):]
            if not recursive and "/" in rel:
                folders.add(prefix + rel.split("/")[0])
                continue
            if recursive:
                bits = rel.split("/")[:-1]
                folders.update(prefix + "/".join(bits[: i + 1]) for i in range(len(bits)))
            data = commit.files[name]
            entries.append({"type": "file", "oid": blob_oid(data), "size": len(data), "path": name})
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
        self._json(200, entries)

    def _commit(self, repo: HubRepo, branch: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        if branch not in repo.branches:
            raise _HubError(404, f"Invalid rev id: {branch}", HF_ERROR_CODES["revision"])
        head = repo.branches[branch]
        parent = header.get("parentCommit")
        if parent is not None and parent != head:
            raise _HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[head].files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise _HubError(400, "file content must be base64")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise _HubError(404, f"A file with this name doesn't exist: {value['path']}",
                                    HF_ERROR_CODES["entry"])
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {k: v for k, v in files.items() if not k.startswith(folder)}
            else:
                raise _HubError(400, f"this test Hub takes only inline files, got {key!r}")
        oid = self.server.state.new_commit(repo, head, files, header.get("summary", ""))
        repo.branches[branch] = oid
        self._json(200, {"success": True, "commitOid": oid, "commitUrl": f"{self.server.url}/{repo.id}/commit/{oid}"})

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        if self.command not in ("GET", "HEAD"):
            raise _HubError(405, "resolve takes GET or HEAD")
        with self.server.state.lock:
            commit = self._commit_of(self._repo(repo_id), rev)
            data = commit.files.get(path)
        if data is None:
            raise _HubError(404, f"Entry not found: {path}", HF_ERROR_CODES["entry"])
        self._send(200, data, {"ETag": f'"{blob_oid(data)}"', "X-Repo-Commit": commit.oid,
                               "Accept-Ranges": "bytes"}, content_type="application/octet-stream")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState
    url: str


class HubServer:
    """``with HubServer() as hub:`` a Hub on ``hub.url`` (127.0.0.1, a free port)."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state = HubState()
        self._server.url = self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-server", daemon=True)

    def start(self) -> "HubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

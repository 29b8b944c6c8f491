"""The Hugging Face Hub as a remote (``hf://org/name``), through huggingface_hub's ``HfApi``.

Branches are Hub branches, tags Hub tags. A push is one ``create_commit`` with
``parent_commit`` set to the revision the caller read, so the Hub itself refuses (HTTP
412) a commit onto a branch that moved meanwhile. Downloads use ``hf_hub_download`` at a
pinned commit. The token and endpoint come from huggingface_hub's own settings
(``HF_TOKEN``, ``hf auth login``, ``HF_ENDPOINT``); romevc never reads, prints or stores a
token, and ``endpoint=`` (tests: a local Hub-compatible server) overrides only the endpoint.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from romevc.remotes.errors import RemoteAccessError, RemoteMovedError, RemoteRefError
from romevc.remotes.protocol import RemoteEntry, RemoteRefs, hub_repo_id

log = logging.getLogger(__name__)

PLUMBING = (".gitattributes",)  # the Hub's own files: kept when a push replaces a branch's files


class _NoRepoError(RemoteRefError):
    """The repository does not exist (yet): ``refs`` reports it instead of raising."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class HubRemote:
    """A model repository on the Hub (or on any Hub-compatible ``endpoint``)."""

    def __init__(self, url: str, *, endpoint: str | None = None) -> None:
        from huggingface_hub import HfApi, constants

        repo_id = hub_repo_id(url)
        if repo_id is None:
            raise RemoteAccessError(f"cannot read {url!r} as a Hub repository: write hf://org/name")
        self.url, self.repo_id = url, repo_id
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self._api = HfApi(endpoint=self.endpoint)  # token: huggingface_hub's settings

    def __repr__(self) -> str:
        return f"HubRemote({self.url!r}, endpoint={self.endpoint!r})"

    def _error(self, what: str, exc: BaseException) -> Exception:
        """romevc's error for an HfApi failure (never echoing headers or tokens); ``exc`` itself if unknown."""
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

        if isinstance(exc, RepositoryNotFoundError):
            return _NoRepoError(f"no Hub repository {self.repo_id} at {self.endpoint} (or it is private: log in "
                                "with `hf auth login`)")
        if isinstance(exc, RevisionNotFoundError):
            return RemoteRefError(f"{self.url} has no such revision (to {what} it); fetch to see its branches")
        if isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else None
            if status in (409, 412) and what == "commit to":
                return RemoteMovedError(f"the remote branch of {self.url} moved while pushing: fetch and merge "
                                        "first, then push again")
            return RemoteAccessError(f"the Hub refused to {what} {self.repo_id} (HTTP {status}): {_first_line(exc)}")
        if isinstance(exc, (httpx2.HTTPError, OSError)):
            return RemoteAccessError(f"cannot reach {self.endpoint} to {what} {self.repo_id}: {_first_line(exc)}")
        return exc

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - translated, or re-raised as it is
            error = self._error(what, exc)
            if error is exc:
                raise
            raise error from None

    # -- reading -------------------------------------------------------------------------------------------

    def refs(self) -> RemoteRefs:
        try:
            refs = self._call("list the refs of", self._api.list_repo_refs, self.repo_id)
        except _NoRepoError:
            return RemoteRefs(exists=False)
        branches = {b.name: b.target_commit for b in refs.branches}
        return RemoteRefs(branches, {t.name: t.target_commit for t in refs.tags},
                          "main" if "main" in branches else None)

    def entries(self, revision: str) -> list[RemoteEntry]:
        from huggingface_hub import RepoFile

        items = self._call("list the files of", lambda: list(
            self._api.list_repo_tree(self.repo_id, recursive=True, revision=revision)))
        return [RemoteEntry(i.path, i.size, "file") if isinstance(i, RepoFile) else RemoteEntry(i.path, None, "dir")
                for i in items]

    def download(self, revision: str, names: Sequence[str], folder: Path) -> None:
        """``hf_hub_download`` each file at ``revision`` into a scratch folder, then move it to ``folder``
        (the scratch folder also receives huggingface_hub's ``.cache`` bookkeeping)."""
        from huggingface_hub import hf_hub_download

        folder.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".romevc-download-", dir=folder.parent))
        try:
            for name in names:
                path = self._call(f"download {name} of", hf_hub_download, self.repo_id, name, revision=revision,
                                  local_dir=scratch, endpoint=self.endpoint)
                os.replace(path, folder / name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # -- writing -------------------------------------------------------------------------------------------

    def publish(self, branch: str, folder: Path, *, parent: str | None, message: str,
                author: str | None = None, time: int | None = None, tz: int = 0) -> str:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        if parent is None:
            parent = self._start_branch(branch)
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
        stale = [e.path for e in self.entries(parent)
                 if e.kind == "file" and e.path not in names and e.path not in PLUMBING]
        ops = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(folder / n)) for n in names]
        ops += [CommitOperationDelete(path_in_repo=p) for p in stale]
        info = self._call("commit to", self._api.create_commit, self.repo_id, ops, commit_message=message,
                          revision=branch, parent_commit=parent)
        log.info("pushed %s to %s@%s (%d file(s), %d deleted)", info.oid, self.repo_id, branch, len(names), len(stale))
        return info.oid

    def _start_branch(self, branch: str) -> str:
        """The revision a new branch starts from, creating the repository and the branch.

        A new Hub repository already has ``main``, holding only ``.gitattributes``: that
        commit is the parent. A branch that exists already is someone else's push.
        """
        from huggingface_hub.errors import HfHubHTTPError

        before = self.refs()
        if branch in before.branches:
            raise RemoteMovedError(f"branch {branch} of {self.url} exists already (pushed meanwhile?): fetch and "
                                   "merge first")
        if not before.exists:
            self._call("create", self._api.create_repo, self.repo_id, exist_ok=True)
        head = self.refs().branches.get(branch)
        if head is not None:  # the initial main of a repository made just now
            if any(e.kind == "file" and e.path not in PLUMBING for e in self.entries(head)):
                raise RemoteMovedError(f"branch {branch} of {self.url} was published meanwhile: fetch and merge first")
            return head
        try:
            self._api.create_branch(self.repo_id, branch=branch)
        except Exception as exc:  # noqa: BLE001 - translated below
            if isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code == 409:
                raise RemoteMovedError(f"someone created branch {branch} of {self.url} meanwhile: fetch and "
                                       "merge first") from None
            error = self._error("create a branch in", exc)
            if error is exc:
                raise
            raise error from None
        head = self.refs().branches.get(branch)
        if head is None:
            raise RemoteAccessError(f"the Hub did not create branch {branch} of {self.repo_id}; try again")
        return head

    def tag(self, name: str, revision: str) -> bool:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            self._api.create_tag(self.repo_id, tag=name, revision=revision)
            return True
        except Exception as exc:  # noqa: BLE001 - translated below
            if not (isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code == 409):
                error = self._error(f"tag {name} in", exc)
                if error is exc:
                    raise
                raise error from None
        return self.refs().tags.get(name) == revision

    def close(self) -> None:
        pass

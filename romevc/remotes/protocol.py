"""The ``Remote`` protocol: what romevc needs from a place that stores published edit sets.

A remote is a set of branches and tags, each pointing at a *revision* (a Hub or git
commit id) that holds a folder of files. romevc needs five things of it: list the refs,
list a revision's files, download some of them, publish a folder as one new commit on a
branch, and tag a revision. ``publish`` is a compare-and-swap: it names the revision the
caller last read (``parent``) and fails with :class:`RemoteMovedError` when the branch is
elsewhere, so a concurrent push is detected, never overwritten.

Three implementations: :class:`romevc.remotes.hub.HubRemote` (``hf://org/name``, through
huggingface_hub), :class:`romevc.remotes.git.GitRemote` (any URL git can push to) and
:class:`MemoryRemote` (in memory, for tests and as the reference behaviour).
"""
from __future__ import annotations

import hashlib
import itertools
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

from romevc import paths
from romevc.remotes.errors import RemoteAccessError, RemoteMovedError, RemoteRefError

HUB_SCHEME = "hf://"
_HUB_URL = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)/?$")


@dataclass(frozen=True)
class RemoteRefs:
    """The branches and tags of a remote, each → a remote revision id."""

    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    default_branch: str | None = None  # what a clone checks out (the remote's HEAD)
    exists: bool = True  # False: nothing at that URL yet (a push creates it)


@dataclass(frozen=True)
class RemoteEntry:
    """One entry of a revision's tree."""

    path: str
    size: int | None = None
    kind: str = "file"  # "file", "dir", "link" (a symlink) or "submodule"


@runtime_checkable
class Remote(Protocol):
    url: str

    def refs(self) -> RemoteRefs:
        """Branches and tags now (an empty, ``exists=False`` value when the remote is not created yet)."""

    def entries(self, revision: str) -> list[RemoteEntry]:
        """Every entry of ``revision``'s tree, recursively."""

    def download(self, revision: str, names: Sequence[str], folder: Path) -> None:
        """Write the files ``names`` of ``revision`` into ``folder`` (names already checked)."""

    def publish(self, branch: str, folder: Path, *, parent: str | None, message: str,
                author: str | None = None, time: int | None = None, tz: int = 0) -> str:
        """Make ``branch`` hold exactly the files of ``folder`` (plus the host's plumbing), as one
        commit on ``parent``; ``parent=None`` creates the branch. Returns the new revision.
        Raises :class:`RemoteMovedError` when the branch is not at ``parent``."""

    def tag(self, name: str, revision: str) -> bool:
        """Tag ``revision``; True if the tag now points there, False if it exists elsewhere."""

    def close(self) -> None:
        """Release temporary files and connections."""


def hub_repo_id(url: str) -> str | None:
    """``org/name`` for ``hf://org/name``, None for any other URL."""
    m = _HUB_URL.match(url)
    return m.group("repo") if m else None


def check_url(url: str) -> str:
    """``url`` if romevc can use it as a remote: ``hf://org/name`` or anything git accepts."""
    if not url or not url.strip():
        raise RemoteAccessError("a remote needs a URL: hf://org/name, a git URL or a path to a git repository")
    if url.startswith(HUB_SCHEME) and hub_repo_id(url) is None:
        raise RemoteAccessError(f"cannot read {url!r} as a Hub repository: write hf://org/name")
    return url.strip()


def open_remote(url: str, *, endpoint: str | None = None) -> Remote:
    """The remote at ``url``: the Hub for ``hf://org/name`` (``endpoint`` overrides
    huggingface_hub's ``HF_ENDPOINT``), git for everything else."""
    url = check_url(url)
    if url.startswith(HUB_SCHEME):
        from romevc.remotes.hub import HubRemote

        return HubRemote(url, endpoint=endpoint)
    from romevc.remotes.git import GitRemote

    return GitRemote(url)


class MemoryRemote:
    """A remote held in memory: commits are (parent, files) snapshots; thread-safe."""

    PLUMBING = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.Lock()
        self._commits: dict[str, tuple[str | None, dict[str, bytes]]] = {}
        self._branches: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._counter = itertools.count()

    def refs(self) -> RemoteRefs:
        with self._lock:
            default = "main" if "main" in self._branches else None
            return RemoteRefs(dict(self._branches), dict(self._tags), default, exists=bool(self._commits))

    def _files(self, revision: str) -> dict[str, bytes]:
        if revision not in self._commits:
            raise RemoteRefError(f"{self.url} has no revision {revision!r}")
        return self._commits[revision][1]

    def entries(self, revision: str) -> list[RemoteEntry]:
        with self._lock:
            return [RemoteEntry(p, len(b)) for p, b in sorted(self._files(revision).items())]

    def download(self, revision: str, names: Sequence[str], folder: Path) -> None:
        with self._lock:
            files = self._files(revision)
            for name in names:
                paths.atomic_write_bytes(folder / name, files[name])

    def publish(self, branch: str, folder: Path, *, parent: str | None, message: str,
                author: str | None = None, time: int | None = None, tz: int = 0) -> str:
        files = dict(self.PLUMBING)
        files.update({p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()})
        with self._lock:
            if self._branches.get(branch) != parent:
                raise RemoteMovedError(f"the remote branch {branch} moved: fetch and merge first")
            oid = hashlib.sha1(f"{parent}\0{message}\0{next(self._counter)}".encode()).hexdigest()
            self._commits[oid] = (parent, files)
            self._branches[branch] = oid
            return oid

    def tag(self, name: str, revision: str) -> bool:
        with self._lock:
            return self._tags.setdefault(name, revision) == revision

    def close(self) -> None:
        pass

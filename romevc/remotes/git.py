"""Any git repository as a remote (a server, a Hub repo over https, a local bare repository).

It carries the same files as the Hub: one git commit per push, romevc branches as git
branches, tags as git tags. Nothing is checked out: objects are fetched into a private
bare repository in a temporary folder, files are read from git's object store, and a push
builds its tree with ``hash-object``/``update-index``/``write-tree``/``commit-tree`` and pushes
the commit without force, so git itself refuses a non-fast-forward. Tree entries keep
their modes, so a symlink or a submodule in a published revision is seen, and refused.
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from romevc import paths
from romevc.remotes.errors import RemoteAccessError, RemoteMovedError, RemoteRefError
from romevc.remotes.protocol import RemoteEntry, RemoteRefs

log = logging.getLogger(__name__)

_KINDS = {0o120000: "link", 0o160000: "submodule", 0o040000: "dir"}
_AUTHOR = re.compile(r"^\s*(?P<name>[^<]*?)\s*<(?P<email>[^>]*)>\s*$")
_REJECTED = ("[rejected]", "non-fast-forward", "fetch first", "already exists", "stale info")


def _git_module():
    try:
        import git
    except ImportError as exc:  # gitpython raises ImportError when the git executable is missing
        raise RemoteAccessError(f"git remotes need git and gitpython: {exc}".splitlines()[0]) from None
    return git


def _stderr(exc) -> str:
    text = (getattr(exc, "stderr", "") or str(exc)).strip()
    lines = [line.strip().removeprefix("stderr: ").strip("'").strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("hint:", "To "))]
    rejected = [line for line in lines if "[rejected]" in line]
    return (rejected or lines or [type(exc).__name__])[-1 if not rejected else 0]


def _ident(author: str | None) -> tuple[str, str]:
    m = _AUTHOR.match(author or "")
    if m and m.group("name"):
        return m.group("name"), m.group("email")
    return (author or "romevc").strip() or "romevc", "romevc@localhost"


class GitRemote:
    """A git URL (``https://…``, ``ssh://…``, ``git@host:…``, ``file://…`` or a path)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._tmp: Path | None = None
        self._repo = None

    def __repr__(self) -> str:
        return f"GitRemote({self.url!r})"

    def _local(self):
        """A private bare repository that fetched objects land in (created on first use)."""
        if self._repo is None:
            git = _git_module()
            self._tmp = Path(tempfile.mkdtemp(prefix="romevc-git-"))
            self._repo = git.Repo.init(self._tmp, bare=True)
        return self._repo

    def _run(self, what: str, *args: str, env: dict[str, str] | None = None) -> str:
        git = _git_module()
        repo = self._local()
        try:
            if env:
                with repo.git.custom_environment(**env):
                    return getattr(repo.git, args[0])(*args[1:])
            return getattr(repo.git, args[0])(*args[1:])
        except git.GitCommandError as exc:
            message = _stderr(exc)
            if what == "push" and any(r in str(exc.stderr) for r in _REJECTED):
                raise RemoteMovedError(f"the remote branch moved ({message}): fetch and merge first") from None
            raise RemoteAccessError(f"git could not {what} {self.url}: {message}") from None

    # -- reading -------------------------------------------------------------------------------------------

    def refs(self) -> RemoteRefs:
        out = self._run("list the refs of", "ls_remote", "--symref", self.url)
        branches, tags, default = {}, {}, None
        for line in out.splitlines():
            target, _, name = line.partition("\t")
            if target.startswith("ref: ") and name == "HEAD":
                default = target[5:].removeprefix("refs/heads/")
            elif name.startswith("refs/heads/"):
                branches[name[len("refs/heads/"):]] = target
            elif name.startswith("refs/tags/") and not name.endswith("^{}"):
                tags[name[len("refs/tags/"):]] = target
        if default not in branches:
            default = "main" if "main" in branches else None
        return RemoteRefs(branches, tags, default, exists=True)

    def _commit(self, revision: str):
        """The commit ``revision``, fetching the remote's branches and tags if it is not here yet."""
        repo = self._local()
        try:
            return repo.commit(revision)
        except Exception:  # noqa: BLE001 - gitpython/gitdb raise several types for a missing object
            pass
        self._run("fetch", "fetch", "--quiet", "--no-tags", self.url, "+refs/heads/*:refs/remotes/origin/*",
                  "+refs/tags/*:refs/tags/*")
        try:
            return repo.commit(revision)
        except Exception:  # noqa: BLE001
            raise RemoteRefError(f"{self.url} has no commit {revision[:12]} (the branch moved?); fetch again") from None

    def entries(self, revision: str) -> list[RemoteEntry]:
        out = []
        for item in self._commit(revision).tree.traverse():
            kind = _KINDS.get(item.mode & 0o170000, "file")
            out.append(RemoteEntry(item.path, getattr(item, "size", None) if kind == "file" else None, kind))
        return out

    def download(self, revision: str, names: Sequence[str], folder: Path) -> None:
        tree = self._commit(revision).tree
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            item = tree / name
            if item.type != "blob" or item.mode & 0o170000 != 0o100000:
                raise RemoteRefError(f"{name} at {revision[:12]} of {self.url} is not a regular file")
            paths.atomic_write_bytes(folder / name, item.data_stream.read())

    # -- writing -------------------------------------------------------------------------------------------

    def publish(self, branch: str, folder: Path, *, parent: str | None, message: str,
                author: str | None = None, time: int | None = None, tz: int = 0) -> str:
        """One commit whose tree is exactly ``folder``'s files, on ``parent``, pushed without force."""
        if parent is not None:
            self._commit(parent)  # the parent object must be here to build on it
        repo = self._local()
        index = Path(repo.git_dir) / "romevc-index"
        index.unlink(missing_ok=True)
        name, email = _ident(author)
        env = {"GIT_INDEX_FILE": str(index), "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
               "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
        if time is not None:
            sign = "+" if tz >= 0 else "-"
            date = f"@{int(time)} {sign}{abs(tz) // 3600:02d}{abs(tz) % 3600 // 60:02d}"
            env.update(GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
        for file in sorted(p for p in folder.iterdir() if p.is_file()):
            blob = self._run("store", "hash_object", "-w", str(file))
            self._run("stage", "update_index", "--add", "--cacheinfo", f"100644,{blob},{file.name}", env=env)
        tree = self._run("write a tree for", "write_tree", env=env)
        args = ["commit_tree", tree, "-m", message] + (["-p", parent] if parent else [])
        commit = self._run("commit for", *args, env=env)
        self._run("push", "push", "--quiet", self.url, f"{commit}:refs/heads/{branch}")
        index.unlink(missing_ok=True)
        log.info("pushed %s to %s %s", commit, self.url, branch)
        return commit

    def tag(self, name: str, revision: str) -> bool:
        try:
            self._run("push", "push", "--quiet", self.url, f"{revision}:refs/tags/{name}")
            return True
        except RemoteMovedError:
            return self.refs().tags.get(name) == revision

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

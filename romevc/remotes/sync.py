"""push, fetch, pull and clone: moving edit sets between a repository and its remotes.

Each branch of a remote holds the edit set of that branch (``romevc.json`` lists it under
``branches``). The rules are git's:

- **push** publishes a branch when the remote's tip of it is one this branch contains (a
  fast-forward) or absent. The remote's tip is read from its ``romevc.json`` at the
  remote revision ``R``, and the new commit is made with ``parent = R``, so a push that
  lands between that read and the commit is refused by the remote itself. The tip is
  then recorded with ``set_remote_seen`` and as ``refs/remotes/<remote>/<branch>``.
- **fetch** downloads a branch's edit set at a pinned revision into a temporary folder,
  verifies it (:func:`read_editset`: names, format version, every hash), refuses another
  base, and only then imports its edits and commits and moves the remote-tracking ref, in
  one ledger transaction. A refused fetch writes nothing.
- **pull** is fetch, then :meth:`Repo.merge` of the remote-tracking ref.
- **clone** reads the edit set first, loads the base it names (id + pinned revision),
  checks the fingerprint, then makes the repository and checks the branch out.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from romevc.ledger import ANY, Ledger, branch_ref, tag_ref
from romevc.ledger.errors import UnknownObjectError, UnknownRefError
from romevc.remotes.editset import (
    MANIFEST, TENSORS, EditSet, Manifest, base_shapes, check_base, check_file_name, check_fits, collect, read_editset,
    read_manifest, write_files,
)
from romevc.remotes.errors import (
    RemoteBaseMismatchError, RemoteError, RemoteMovedError, RemoteRefError, UnsafeEditSetError,
)
from romevc.remotes.protocol import Remote, RemoteRefs, check_url, open_remote

log = logging.getLogger(__name__)


def tracking_ref(remote: str, branch: str) -> str:
    return f"refs/remotes/{remote}/{branch}"


# -- results -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PushResult:
    remote: str
    branch: str
    commit: str  # the romevc commit the remote branch now holds
    revision: str | None  # the remote's commit id (Hub/git); None when nothing was pushed
    status: str  # "created", "fast-forward", "up-to-date" or "materialized"
    commits: int = 0  # commits in the published edit set
    edits: int = 0
    bytes: int = 0  # bytes of the files published
    tags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FetchedBranch:
    branch: str
    old: str | None  # the remote-tracking ref before
    new: str
    revision: str
    new_commits: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FetchResult:
    remote: str
    branches: tuple[FetchedBranch, ...] = ()
    tags: tuple[str, ...] = ()  # tags created locally
    skipped: tuple[str, ...] = ()  # remote branches that hold no edit set, or tags that clash

    def to_dict(self) -> dict[str, Any]:
        return {"remote": self.remote, "branches": [b.to_dict() for b in self.branches], "tags": list(self.tags),
                "skipped": list(self.skipped)}


@dataclass(frozen=True)
class PullResult:
    fetch: FetchResult
    merge: Any  # romevc.porcelain.reports.MergeResult

    def to_dict(self) -> dict[str, Any]:
        return {"fetch": self.fetch.to_dict(), "merge": self.merge.to_dict()}


# -- remotes of a repository ---------------------------------------------------------------------------

def add_remote(repo, name: str, url: str):
    """Configure remote ``name`` at ``url`` (``hf://org/name`` or a git URL)."""
    return repo.ledger.add_remote(name, check_url(url))


def remove_remote(repo, name: str) -> None:
    """Forget remote ``name`` and its remote-tracking refs, in one transaction."""
    ledger: Ledger = repo.ledger
    with ledger.transaction():
        for ref in ledger.list_refs(f"refs/remotes/{name}/"):
            ledger.delete_ref(ref.name)
        ledger.remove_remote(name)


@contextlib.contextmanager
def _opened(url: str, remote: Remote | None, endpoint: str | None) -> Iterator[Remote]:
    if remote is not None:
        yield remote
        return
    opened = open_remote(url, endpoint=endpoint)
    try:
        yield opened
    finally:
        opened.close()


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="romevc-remote-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- reading a remote --------------------------------------------------------------------------------------

def _published_names(remote: Remote, revision: str) -> set[str]:
    """The files of a revision, refusing unsafe entries before anything is downloaded."""
    names = set()
    for entry in remote.entries(revision):
        if entry.kind == "link":
            raise UnsafeEditSetError(f"{remote.url} holds a symlink, {entry.path!r}: romevc follows no links; "
                                     "nothing was imported")
        if entry.kind == "submodule":
            raise UnsafeEditSetError(f"{remote.url} holds a submodule, {entry.path!r}; nothing was imported")
        if entry.kind == "file":
            check_file_name(entry.path)
            names.add(entry.path)
    return names


def _remote_manifest(remote: Remote, revision: str, scratch: Path) -> Manifest | None:
    """The manifest at ``revision`` (None when the revision holds no edit set)."""
    if MANIFEST not in _published_names(remote, revision):
        return None
    folder = scratch / f"manifest-{revision}"
    remote.download(revision, [MANIFEST], folder)
    return read_manifest(folder)


def _remote_editset(remote: Remote, revision: str, scratch: Path) -> EditSet | None:
    """The verified edit set at ``revision`` (None when it holds none)."""
    names = _published_names(remote, revision)
    if MANIFEST not in names:
        return None
    if TENSORS not in names:
        raise RemoteRefError(f"{remote.url} at {revision[:12]} has {MANIFEST} but no {TENSORS}: an incomplete push?")
    folder = scratch / f"editset-{revision}"
    remote.download(revision, [MANIFEST, TENSORS], folder)
    return read_editset(folder)


def _contains(ledger: Ledger, tip: str, other: str) -> bool:
    try:
        return other == tip or ledger.is_ancestor(other, tip)
    except (UnknownRefError, UnknownObjectError):
        return False  # a commit this ledger never saw


# -- fetch ---------------------------------------------------------------------------------------------------

def _import(ledger: Ledger, name: str, branch: str, revision: str,
            editset: EditSet) -> tuple[FetchedBranch, list[str], list[str]]:
    """Store a verified edit set and move the remote-tracking ref (inside the caller's transaction)."""
    tip = editset.manifest.branches[branch]
    old = ledger.get_ref(tracking_ref(name, branch))
    ledger.put_edits(editset.edits)
    new = ledger.put_commits(editset.commits)
    ledger.update_ref(tracking_ref(name, branch), tip, ANY)
    ledger.set_remote_seen(name, branch, tip)
    made, clashed = [], []
    for tag, commit in sorted(editset.manifest.tags.items()):
        local = ledger.get_ref(tag_ref(tag))
        if local is None:
            ledger.update_ref(tag_ref(tag), commit, None)
            made.append(tag)
        elif local.target != commit:
            log.warning("tag %s of %s points elsewhere than the local tag; kept the local one", tag, name)
            clashed.append(f"tag {tag}")
    return FetchedBranch(branch, old.target if old else None, tip, revision, new), made, clashed


def _fetch_into(repo, name: str, remote: Remote, refs: RemoteRefs, wanted: list[str], explicit: bool,
                scratch: Path, *, extra: list[tuple[str, str, EditSet]] = ()) -> FetchResult:
    """Download and verify every wanted branch first, then import them all in one transaction."""
    ledger: Ledger = repo.ledger
    info = ledger.repo_info()
    sets, skipped = list(extra), []
    shapes = None  # the base's weight shapes, read once if a branch needs them
    for branch in wanted:
        revision = refs.branches.get(branch)
        if revision is None:
            known = ", ".join(sorted(refs.branches)) or "none"
            raise RemoteRefError(f"{name} has no branch {branch!r}; its branches: {known}")
        editset = _remote_editset(remote, revision, scratch)
        if editset is None or branch not in editset.manifest.branches:
            if explicit:
                raise RemoteRefError(f"branch {branch} of {name} holds no romevc edit set of its own; push one first")
            skipped.append(branch)
            continue
        check_base(editset.manifest.base, info)
        if shapes is None:
            shapes = base_shapes(info)
        check_fits(editset.edits, shapes)
        sets.append((branch, revision, editset))
    fetched, tags, clashes = [], [], []
    with ledger.transaction():
        for branch, revision, editset in sets:
            done, made, clashed = _import(ledger, name, branch, revision, editset)
            fetched.append(done)
            tags += made
            clashes += clashed
    return FetchResult(name, tuple(fetched), tuple(tags), tuple(skipped + clashes))


def fetch(repo, name: str, branch: str | None = None, *, remote: Remote | None = None,
          endpoint: str | None = None) -> FetchResult:
    """Fetch ``branch`` (every branch when None) of remote ``name`` into ``refs/remotes/<name>/``."""
    record = repo.ledger.get_remote(name)
    with _opened(record.url, remote, endpoint) as r, _scratch() as scratch:
        refs = r.refs()
        if not refs.exists:
            raise RemoteRefError(f"{record.url} does not exist yet; push to it first")
        wanted = [branch] if branch else sorted(refs.branches)
        return _fetch_into(repo, name, r, refs, wanted, branch is not None, scratch)


def pull(repo, name: str, branch: str | None = None, *, remote: Remote | None = None, endpoint: str | None = None,
         resolve: str | None = None, recompute: bool = False, author: str | None = None, time: int | None = None,
         tz: int | None = None) -> PullResult:
    """Fetch ``branch`` (default: the current branch's name) of ``name`` and merge it into HEAD's branch."""
    head = repo.ledger.head()
    if head.branch is None:
        raise RemoteRefError("HEAD is detached: check out the branch to pull into (`romevc checkout BRANCH`)")
    branch = branch or head.branch
    fetched = fetch(repo, name, branch, remote=remote, endpoint=endpoint)
    merged = repo.merge(tracking_ref(name, branch), resolve=resolve, recompute=recompute,
                        message=f"Merge {name}/{branch} into {head.branch}", author=author, time=time, tz=tz)
    return PullResult(fetched, merged)


# -- push ------------------------------------------------------------------------------------------------------

def _message(ledger: Ledger, tip: str, branch: str) -> str:
    title = (ledger.get_commit(tip).message.splitlines() or [""])[0]
    return f"romevc: {branch} at {tip[:12]}" + (f" ({title})" if title else "")


def push(repo, name: str, branch: str | None = None, *, materialize: bool = False, remote: Remote | None = None,
         endpoint: str | None = None, message: str | None = None) -> PushResult:
    """Publish ``branch`` (default: HEAD's) to remote ``name`` as one commit on its branch of that name.

    Refused with :class:`RemoteMovedError` ("fetch and merge first") when the remote branch
    holds commits this branch does not contain, or moves while the push is under way.
    """
    ledger: Ledger = repo.ledger
    branch = (branch or ledger.head().branch or "").removeprefix("refs/heads/") or None
    if branch is None:
        raise RemoteRefError("HEAD is detached: name the branch to push (`romevc push REMOTE BRANCH`)")
    local = ledger.get_ref(branch_ref(branch))
    if local is None or local.target is None:
        raise RemoteRefError(f"no local branch {branch!r} with commits to push; see `romevc branch`")
    tip, record = local.target, ledger.get_remote(name)
    with _opened(record.url, remote, endpoint) as r, _scratch() as scratch:
        if materialize:
            return _push_checkpoint(repo, name, branch, tip, r, scratch, message)
        refs = r.refs()
        revision = refs.branches.get(branch)
        manifest = _remote_manifest(r, revision, scratch) if revision else None
        if manifest is not None:
            check_base(manifest.base, ledger.repo_info())
        theirs = manifest.branches.get(branch) if manifest else None
        if theirs is not None and not _contains(ledger, tip, theirs):
            raise RemoteMovedError(
                f"the remote branch {name}/{branch} moved: it is at {theirs[:12]}, which your {branch} does not "
                f"contain; fetch and merge first (`romevc pull {name} {branch}`), then push"
            )
        editset = collect(ledger, [branch])
        at_tip = tuple(sorted(t for t, c in editset.manifest.tags.items() if c == tip))
        if theirs == tip:
            status, size = "up-to-date", 0
        else:
            out = scratch / "publish"
            out.mkdir()
            write_files(editset, out, url=record.url)
            size = sum(p.stat().st_size for p in out.iterdir())
            head = ledger.get_commit(tip)
            revision = r.publish(branch, out, parent=revision, message=message or _message(ledger, tip, branch),
                                 author=head.author, time=head.time, tz=head.tz)
            status = "created" if theirs is None else "fast-forward"
        tags = tuple(t for t in at_tip if refs.tags.get(t) != revision and r.tag(t, revision))  # the new ones
    with ledger.transaction():
        ledger.update_ref(tracking_ref(name, branch), tip, ANY)
        ledger.set_remote_seen(name, branch, tip)
    return PushResult(name, branch, tip, revision, status, len(editset.commits), len(editset.edits), size, tags)


def _push_checkpoint(repo, name: str, branch: str, tip: str, remote: Remote, scratch: Path,
                     message: str | None) -> PushResult:
    """``push --materialize``: the full edited checkpoint, with its model card, instead of deltas."""
    from romevc.remotes.exports import export

    revision = remote.refs().branches.get(branch)
    if revision and MANIFEST in _published_names(remote, revision):
        raise RemoteError(f"{name}/{branch} holds a romevc edit set; publish the full checkpoint to a remote of "
                          "its own (`romevc remote add models hf://ORG/NAME-full`, then `romevc push models "
                          "--materialize`)")
    out = export(repo, tip, scratch / "checkpoint", "full")
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    head = repo.ledger.get_commit(tip)
    new = remote.publish(branch, out, parent=revision, author=head.author, time=head.time, tz=head.tz,
                         message=message or f"romevc: full checkpoint of {branch} at {tip[:12]}")
    edits = len(head.edit_ids)
    return PushResult(name, branch, tip, new, "materialized", 0, edits, size)


# -- clone --------------------------------------------------------------------------------------------------------

def clone(url: str, path: str | Path, *, branch: str | None = None, name: str = "origin",
          remote: Remote | None = None, endpoint: str | None = None, loaded=None, **init_kwargs):
    """A new repository at ``path`` holding the edit sets of ``url``, with ``branch`` (the remote's
    default) checked out. Returns the open :class:`Repo` (close it).

    The base named by the edit set (id and pinned revision) is loaded (or ``loaded`` is
    used) and its fingerprint checked before anything is created; on any error the new
    folder is removed again.
    """
    from romevc.model import BaseSpec, load_base
    from romevc.porcelain.config import repo_info
    from romevc.porcelain.errors import RepositoryExistsError
    from romevc.repo import Repo

    url = check_url(url)
    target = Path(path).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise RepositoryExistsError(f"{target} exists and is not an empty folder; clone into a new folder")
    with _opened(url, remote, endpoint) as r, _scratch() as scratch:
        refs = r.refs()
        if not refs.exists or not refs.branches:
            raise RemoteRefError(f"{url} has no branches: nothing to clone")
        branch = branch or refs.default_branch or sorted(refs.branches)[0]
        if branch not in refs.branches:
            raise RemoteRefError(f"{url} has no branch {branch!r}; its branches: {', '.join(sorted(refs.branches))}")
        editset = _remote_editset(r, refs.branches[branch], scratch)
        if editset is None or branch not in editset.manifest.branches:
            raise RemoteRefError(f"branch {branch} of {url} holds no romevc edit set; nothing to clone")
        base = editset.manifest.base
        loaded = loaded or load_base(BaseSpec(base.id, base.revision), dtype=base.dtype)
        if loaded.fingerprint != base.fingerprint:
            raise RemoteBaseMismatchError(
                f"the base {base.spec} has weights {loaded.fingerprint[:12]} here, but the edit set was made on "
                f"{base.fingerprint[:12]}; get the exact base checkpoint the edits were made on"
            )
        check_base(base, repo_info(loaded, created=0))  # the family, module and layout it claims are the loaded ones
        check_fits(editset.edits, {n: tuple(p.shape) for n, p in loaded.model.named_parameters()})
        made = not target.exists()
        repo = None
        try:
            repo = Repo.init(target, base.spec, loaded=loaded, initial_branch=branch, **init_kwargs)
            repo.ledger.add_remote(name, url)
            others = sorted(b for b in refs.branches if b != branch)
            extra = [(branch, refs.branches[branch], editset)]
            _fetch_into(repo, name, r, refs, others, False, scratch, extra=extra)
            repo.ledger.update_ref(branch_ref(branch), editset.manifest.branches[branch], None)
            return repo
        except BaseException:
            if repo is not None:
                repo.close()
            shutil.rmtree(target if made else target / ".romevc", ignore_errors=True)
            raise

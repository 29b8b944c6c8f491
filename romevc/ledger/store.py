"""``Ledger``: the one object the porcelain talks to for storage.

Every public method is exactly one transaction: it validates its inputs, does its work in
one session, and commits, or rolls back and raises. Calls made inside
``with ledger.transaction():`` join that transaction instead, so the porcelain can make
several calls (store the edit, then commit and move the branch) all-or-nothing.

Methods return the frozen records of :mod:`romevc.ledger.objects`, never live rows.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time as _time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, TypeVar

from sqlalchemy import delete, insert, inspect, select, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from romevc.ledger import queries as _q
from romevc.ledger import refs as _refs
from romevc.ledger.engine import (
    WRITE_OPTION, check_reachable, is_locked_error, make_engine, sqlite_foreign_keys_off, sqlite_path,
)
from romevc.ledger.errors import (
    CorruptObjectError, LedgerError, LedgerExistsError, LedgerVersionError, NotARepositoryError, RefConflictError,
    RemoteExistsError, UnknownObjectError, UnknownRemoteError,
)
from romevc.ledger.graph import CommitGraph
from romevc.ledger.models import SqlCommitEdit, SqlEdit, SqlRef, SqlRemote, SqlRepo, SqlStats, check_storable
from romevc.ledger.objects import (
    FORMAT_VERSION, BlameEntry, CommitRecord, EditRecord, Head, RefRecord, RemoteRecord, RepoInfo, StatsMeta,
    StoredDelta, VerifyReport, canonical_json, edit_id_from_stored, is_full_id, normalise_json,
)
from romevc.ledger.refs import ANY, HEAD, Expected, branch_ref, check_head_name, check_ref_name, is_head_name
from romevc.ledger.schema import current_revision, ensure_current, upgrade
from romevc.ledger.verify import verify_all as _verify_all

log = logging.getLogger(__name__)
T = TypeVar("T")

LEDGER_DIR, LEDGER_FILE = ".romevc", "ledger.db"
RETRIES = 5  # attempts of a transaction that hit a transient lock error (engine.is_locked_error)


def default_url(repo_root: str | Path) -> str:
    """``sqlite:///<repo_root>/.romevc/ledger.db``, the ledger of a repository folder."""
    return f"sqlite:///{Path(repo_root).resolve() / LEDGER_DIR / LEDGER_FILE}"


class Ledger:
    """A romevc ledger at any SQLAlchemy URL (SQLite file by default; PostgreSQL for teams).

    ``Ledger(url)`` opens an existing ledger, upgrading an older schema in place and
    refusing a newer one; ``Ledger.create(url, info)`` makes a new one.

    ``head_name`` is the HEAD this object reads and moves: ``HEAD`` for the folder that
    created the ledger, ``worktrees/<id>/HEAD`` for a folder that joined it (see
    :mod:`romevc.ledger.refs`); ``"HEAD"`` and ``"@"`` in revisions mean that row.
    """

    def __init__(self, url: str | URL, *, head_name: str = HEAD) -> None:
        check_head_name(head_name)
        path = sqlite_path(url)
        if path is not None and not path.is_file():
            raise NotARepositoryError(f"no romevc ledger at {path}; create one with `romevc init`")
        self._setup(url, head_name)
        try:
            ensure_current(self._engine, self._where)
            info = self.repo_info()
            if info.format_version > FORMAT_VERSION:
                raise LedgerVersionError(
                    f"this ledger was written by a newer romevc (object format {info.format_version}); upgrade romevc"
                )
        except BaseException:
            self.close()
            raise

    def _setup(self, url: str | URL, head_name: str = HEAD) -> None:
        self.head_name = head_name
        self.url = make_url(url)
        self._where = str(sqlite_path(self.url) or self.url.render_as_string(hide_password=True))
        self._engine = make_engine(self.url)
        self._writer = self._engine.execution_options(**{WRITE_OPTION: True})
        self._local = threading.local()
        check_reachable(self._engine, self._where)

    @classmethod
    def create(cls, url: str | URL, info: RepoInfo, *, initial_branch: str = "main") -> "Ledger":
        """A new ledger: the schema at head, the repo row, HEAD → ``refs/heads/<initial_branch>`` (unborn)."""
        head_target = branch_ref(initial_branch)
        check_storable(SqlRepo, dataclasses.asdict(info))
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        ledger = cls.__new__(cls)
        ledger._setup(url)
        try:
            with ledger._engine.connect() as conn, sqlite_foreign_keys_off(conn):
                conn.execution_options(**{WRITE_OPTION: True})
                with conn.begin():
                    if current_revision(conn) is not None or inspect(conn).has_table("repo"):
                        raise LedgerExistsError(f"{ledger._where} already holds a romevc ledger; open it instead")
                    upgrade(conn)
                    conn.execute(insert(SqlRepo).values(
                        id=1, format_version=info.format_version, base_id=info.base_id, revision=info.revision,
                        architecture=info.architecture, dtype=info.dtype, base_fingerprint=info.base_fingerprint,
                        module_template=info.module_template, layout=info.layout,
                        created=info.created or int(_time.time()),
                    ))
                    conn.execute(insert(SqlRef).values(name=HEAD, target=None, symbolic=head_target))
        except BaseException:
            ledger.close()
            raise
        log.info("created a ledger at %s", ledger._where)
        return ledger

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({self._where!r})"

    # -- transactions --------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """One write transaction: commits on success, rolls back on any error.

        Ledger calls inside the block join it. It holds the write lock from the start (SQLite's
        ``BEGIN IMMEDIATE``, PostgreSQL's advisory lock): other writers wait, readers do not.
        Its body is not retried on a transient lock error; the single-call methods are.
        """
        active = getattr(self._local, "session", None)
        if active is not None:
            yield active
            return
        with self._session(write=True) as session:
            yield session

    @contextlib.contextmanager
    def _session(self, *, write: bool) -> Iterator[Session]:
        session = Session(bind=self._writer if write else self._engine, expire_on_commit=False)
        self._local.session = session
        try:
            with session.begin():
                yield session
        finally:
            self._local.session = None
            session.close()

    def _run(self, fn: Callable[[Session], T], *, write: bool) -> T:
        active = getattr(self._local, "session", None)
        if active is not None:
            return fn(active)
        for attempt in range(RETRIES):
            try:
                with self._session(write=write) as session:
                    return fn(session)
            except OperationalError as exc:
                if not is_locked_error(exc) or attempt == RETRIES - 1:
                    raise
                log.warning("ledger busy (%s); retrying", exc.orig)
                _time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def _read(self, fn: Callable[[Session], T]) -> T:
        return self._run(fn, write=False)

    def _write(self, fn: Callable[[Session], T]) -> T:
        return self._run(fn, write=True)

    # -- repo ---------------------------------------------------------------------------

    def repo_info(self) -> RepoInfo:
        def op(s: Session) -> RepoInfo:
            row = s.get(SqlRepo, 1)
            if row is None:
                raise NotARepositoryError(f"{self._where} has no repo row; restore the ledger from a backup")
            return row.to_record()
        return self._read(op)

    # -- edits --------------------------------------------------------------------------

    def put_edit(self, record: EditRecord) -> str:
        """Store an edit (verified first); storing it again is a no-op. Returns its id."""
        return self.put_edits([record])[0]

    def put_edits(self, records: Iterable[EditRecord]) -> list[str]:
        """Store many edits in one transaction, skipping those already stored."""
        records = list(records)
        for r in records:
            r.verify()

        def op(s: Session) -> list[str]:
            _q.insert_edits(s, records)
            return [r.id for r in records]
        return self._write(op)

    def get_edit(self, edit_id: str) -> EditRecord:
        """The edit with this full id, verified against its hash (:class:`CorruptObjectError`)."""
        def op(s: Session) -> EditRecord:
            row = s.get(SqlEdit, edit_id)
            if row is None:
                raise UnknownObjectError(f"edit {edit_id!r} is not in this ledger")
            return row.to_record()
        record = self._read(op)
        record.verify()
        return record

    def resolve_edit(self, prefix: str) -> str:
        """The full id of the one edit whose id starts with ``prefix`` (≥ 4 hex digits)."""
        return self._read(lambda s: _refs.resolve_prefix(s, SqlEdit.id, prefix, "edit"))

    def set_edit_notes(self, edit_id: str, notes: Mapping[str, object]) -> EditRecord:
        """Replace an edit's notes (metadata outside its id, e.g. ``{"stale": true}``)."""
        text = canonical_json(normalise_json(dict(notes), "notes")) if notes else None

        def op(s: Session) -> None:
            if s.execute(update(SqlEdit).where(SqlEdit.id == edit_id).values(notes_json=text)).rowcount != 1:
                raise UnknownObjectError(f"edit {edit_id!r} is not in this ledger")
        self._write(op)
        return self.get_edit(edit_id)

    # -- commits ------------------------------------------------------------------------

    def put_commit(self, record: CommitRecord) -> str:
        """Store a commit whose parents and edits are stored; again is a no-op. Returns its id."""
        self.put_commits([record])
        return record.id

    def put_commits(self, records: Iterable[CommitRecord]) -> int:
        """Store many commits (e.g. a pull) in one transaction; returns how many were new.

        Parents may come from the same batch in any order; every other parent and every
        edit must already be stored, else :class:`UnknownObjectError`.
        """
        records = list(records)
        for r in records:
            r.verify()
        return self._write(lambda s: _q.insert_commits(s, records))

    def get_commit(self, commit_id: str) -> CommitRecord:
        """The commit with this full id (use :meth:`resolve` for names and short ids)."""
        def op(s: Session) -> CommitRecord:
            found = _q.load_commits(s, [commit_id]) if is_full_id(commit_id) else {}
            if commit_id not in found:
                raise UnknownObjectError(f"commit {commit_id!r} is not in this ledger; see `romevc log`")
            return found[commit_id]
        return self._read(op)

    def edit_ids_of(self, commit_id: str) -> tuple[str, ...]:
        """The ordered active edit set of a commit (a snapshot: no history walk)."""
        return self.get_commit(commit_id).edit_ids

    def edits_of(self, commit_id: str) -> list[EditRecord]:
        """The active edits of a commit in order, each verified: what checkout applies."""
        def op(s: Session) -> list[EditRecord]:
            _refs.require_commit(s, commit_id)
            rows = s.execute(select(SqlEdit).join(SqlCommitEdit, SqlCommitEdit.edit_id == SqlEdit.id)
                             .where(SqlCommitEdit.commit_id == commit_id).order_by(SqlCommitEdit.position)).scalars()
            return [row.to_record() for row in rows]
        records = self._read(op)
        for r in records:
            r.verify()
        return records

    def deltas_of(self, commit_id: str) -> list[StoredDelta]:
        """The blobs of a commit's edit set in order, each verified against its id: what checkout needs."""
        e = SqlEdit

        def op(s: Session) -> list:
            _refs.require_commit(s, commit_id)
            return s.connection().execute(  # Core rows: no ORM step per row for a 1,000-edit set
                select(e.id, e.request_json, e.method, e.hparams_json, e.seed, e.templates_json, e.layer, e.module,
                       e.layout, e.rank, e.d_in, e.d_out, e.u, e.v)
                .join(SqlCommitEdit, SqlCommitEdit.edit_id == e.id)
                .where(SqlCommitEdit.commit_id == commit_id).order_by(SqlCommitEdit.position)).all()
        out = []
        for row in self._read(op):
            (edit, request_json, method, hparams_json, seed, templates_json, layer, module, layout,
             rank, d_in, d_out, u, v) = row
            u, v = bytes(u), bytes(v)
            if len(u) != 4 * rank * d_in or len(v) != 4 * rank * d_out or edit_id_from_stored(
                    request_json=request_json, method=method, hparams_json=hparams_json, seed=seed,
                    templates_json=templates_json, layer=layer, module=module, layout=layout, rank=rank,
                    d_in=d_in, d_out=d_out, u=u, v=v) != edit:
                self.get_edit(edit)  # the full check says what is wrong
                raise CorruptObjectError(f"edit {edit} is corrupt; restore the ledger from a backup or re-pull it")
            out.append(StoredDelta(edit, module, layout, rank, d_in, d_out, u, v))
        return out

    def commit_on_branch(self, branch: str, record: CommitRecord) -> CommitRecord:
        """Store ``record`` and advance ``branch`` to it, in one transaction.

        The branch must still be at ``record.parents[0]`` (unborn when there are no
        parents), else :class:`RefConflictError`: another writer committed first, and
        nothing is stored.
        """
        name = branch_ref(branch)
        record.verify()

        def op(s: Session) -> CommitRecord:
            _q.insert_commits(s, [record])
            _refs.compare_and_swap(s, name, record.id, record.parents[0] if record.parents else None)
            return record
        return self._write(op)

    def commit_on_head(self, record: CommitRecord) -> CommitRecord:
        """Like :meth:`commit_on_branch` on HEAD's branch; on a detached HEAD, HEAD itself moves.

        A detached HEAD commit is allowed, as in git: the commit is only reachable from
        HEAD until the porcelain points a branch or tag at it.
        """
        record.verify()

        def op(s: Session) -> CommitRecord:
            head = _refs.read_head(s, self.head_name)
            _q.insert_commits(s, [record])
            expected = record.parents[0] if record.parents else None
            if head.branch is not None:
                _refs.compare_and_swap(s, branch_ref(head.branch), record.id, expected)
            elif s.execute(update(SqlRef).where(SqlRef.name == self.head_name, SqlRef.target == expected)
                           .values(target=record.id)).rowcount != 1:
                raise RefConflictError(f"HEAD moved: expected it at {str(expected)[:12]}; try again")
            return record
        return self._write(op)

    # -- history ------------------------------------------------------------------------

    def log(self, start: str | None = None, *, first_parent: bool = False, limit: int | None = None) -> list[CommitRecord]:
        """Commits reachable from ``start`` (a refish; HEAD when None), newest first.

        Children always come before their parents; among ready commits the newest goes
        first (git's ``--date-order``). ``first_parent`` follows only first parents, the
        history of one branch. An unborn HEAD gives an empty list. The whole graph is
        loaded in one query; only the returned commits' records are read.
        """
        def op(s: Session) -> list[CommitRecord]:
            if start is None and _refs.read_head(s, self.head_name).commit is None:
                return []
            tip = _refs.resolve(s, HEAD if start is None else start, self.head_name)
            graph = CommitGraph.load(s)
            ids = graph.first_parent_chain(tip, limit) if first_parent else graph.date_order(tip, limit)
            records = _q.load_commits(s, ids)
            return [records[c] for c in ids]
        return self._read(op)

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Whether ``ancestor`` (a refish) is reachable from ``descendant``: a fast-forward test."""
        def op(s: Session) -> bool:
            a, d = _refs.resolve(s, ancestor, self.head_name), _refs.resolve(s, descendant, self.head_name)
            return CommitGraph.load(s).is_ancestor(a, d)
        return self._read(op)

    def merge_bases(self, a: str, b: str) -> list[str]:
        """The best common ancestors of two refishes, newest first (empty when unrelated)."""
        def op(s: Session) -> list[str]:
            return CommitGraph.load(s).merge_bases(_refs.resolve(s, a, self.head_name),
                                                   _refs.resolve(s, b, self.head_name))
        return self._read(op)

    def blame(self, *, subject: str | None = None, layer: int | None = None,
              start: str | None = None) -> list[BlameEntry]:
        """Commits on the first-parent history of ``start`` (HEAD) that added or removed a
        matching edit, oldest first. Matching: the request's subject equals ``subject`` and/or
        the edit's layer equals ``layer`` (no filter: every edit).
        """
        def op(s: Session) -> list[BlameEntry]:
            if start is None and _refs.read_head(s, self.head_name).commit is None:
                return []
            tip = _refs.resolve(s, HEAD if start is None else start, self.head_name)
            return _q.blame(s, CommitGraph.load(s).first_parent_chain(tip)[::-1], subject=subject, layer=layer)
        return self._read(op)

    # -- refs ---------------------------------------------------------------------------

    def resolve(self, refish: str) -> str:
        """A full commit id for HEAD, a branch, a tag, a full or ≥ 4-digit short id, with ``~N``/``^N``.

        Raises :class:`UnknownRefError` or :class:`AmbiguousRefError` (with ``candidates``).
        """
        return self._read(lambda s: _refs.resolve(s, refish, self.head_name))

    def head(self) -> Head:
        """``Head(branch, commit)`` of this folder's HEAD: branch is None when detached, commit None when unborn."""
        return self._read(lambda s: _refs.read_head(s, self.head_name))

    def heads(self) -> dict[str, Head]:
        """Every folder's HEAD by row name (``HEAD``, ``worktrees/<id>/HEAD``), this one's included."""
        return self._read(_refs.heads)

    def add_head(self) -> Head:
        """Create this object's HEAD row, a copy of the main ``HEAD`` (attached to the same branch,
        or detached at the same commit): what a folder joining a shared ledger starts from."""
        if self.head_name == HEAD:
            raise LedgerError("the main HEAD is made with the ledger; only a worktree HEAD is added")

        def op(s: Session) -> Head:
            main = s.get(SqlRef, HEAD)
            if main is None:
                raise LedgerError("this ledger has no HEAD; run `romevc verify` and restore it from a backup")
            if s.get(SqlRef, self.head_name) is not None:
                raise RefConflictError(f"{self.head_name} already exists; pick another worktree id")
            s.add(SqlRef(name=self.head_name, target=main.target, symbolic=main.symbolic))
            s.flush()
            return _refs.read_head(s, self.head_name)
        return self._write(op)

    def remove_head(self) -> None:
        """Delete this object's worktree HEAD row (a folder leaving the ledger); the main HEAD stays."""
        if self.head_name == HEAD:
            raise LedgerError("the main HEAD cannot be removed; only a worktree HEAD can")
        self._write(lambda s: s.execute(delete(SqlRef).where(SqlRef.name == self.head_name)))

    def _move_head(self, s: Session, **values: str | None) -> None:
        if s.execute(update(SqlRef).where(SqlRef.name == self.head_name).values(**values)).rowcount != 1:
            _refs.read_head(s, self.head_name)  # raises: the row is missing

    def set_head_symbolic(self, branch: str) -> None:
        """Attach HEAD to a branch (``main`` or ``refs/heads/main``), which may be unborn."""
        name = branch_ref(branch)
        self._write(lambda s: self._move_head(s, target=None, symbolic=name))

    def set_head_detached(self, commit_id: str) -> None:
        """Detach HEAD at a commit (full id)."""
        def op(s: Session) -> None:
            _refs.require_commit(s, commit_id)
            self._move_head(s, target=commit_id, symbolic=None)
        self._write(op)

    def get_ref(self, name: str) -> RefRecord | None:
        """The ref with this full name (``refs/heads/main``, ``HEAD``), None if it does not exist."""
        return self._read(lambda s: _refs.get_ref(s, name))

    def update_ref(self, name: str, new: str, expected_old: Expected) -> RefRecord:
        """Compare-and-swap a branch or tag: point ``name`` at commit ``new`` if it is at
        ``expected_old`` (None: it must not exist yet; :data:`ANY`: whatever it is).
        Raises :class:`RefConflictError` when the ref moved. HEAD moves with ``set_head_*``.
        """
        check_ref_name(name)
        return self._write(lambda s: _refs.compare_and_swap(s, name, new, expected_old))

    def delete_ref(self, name: str, expected_old: Expected = ANY) -> None:
        """Delete a branch or tag (CAS like :meth:`update_ref`); not a branch any folder's HEAD is on."""
        check_ref_name(name)
        self._write(lambda s: _refs.delete_ref(s, name, expected_old, self.head_name))

    def list_refs(self, prefix: str = "refs/") -> list[RefRecord]:
        """Refs whose name starts with ``prefix`` (``refs/heads/``, ``refs/tags/``), by name."""
        def op(s: Session) -> list[RefRecord]:
            rows = s.execute(select(SqlRef).where(SqlRef.name.startswith(prefix, autoescape=True))).scalars()
            # Filtered and sorted here: SQLite's LIKE ignores ASCII case, and a server's collation
            # may not sort by code point.
            return sorted((row.to_record() for row in rows
                           if not is_head_name(row.name) and row.name.startswith(prefix)), key=lambda r: r.name)
        return self._read(op)

    # -- remotes ------------------------------------------------------------------------

    def add_remote(self, name: str, url: str) -> RemoteRecord:
        check_ref_name(f"refs/remotes/{name}/x")
        if not url:
            raise ValueError("`url` must not be empty")
        check_storable(SqlRemote, {"name": name, "url": url})

        def op(s: Session) -> RemoteRecord:
            if s.get(SqlRemote, name) is not None:
                raise RemoteExistsError(f"remote {name!r} already exists; remove it first or pick another name")
            s.add(SqlRemote(name=name, url=url, seen_json="{}"))
            return RemoteRecord(name=name, url=url)
        return self._write(op)

    def get_remote(self, name: str) -> RemoteRecord:
        def op(s: Session) -> RemoteRecord:
            row = s.get(SqlRemote, name)
            if row is None:
                raise UnknownRemoteError(f"no remote named {name!r}; add it with `romevc remote add`")
            return row.to_record()
        return self._read(op)

    def list_remotes(self) -> list[RemoteRecord]:
        rows = self._read(lambda s: [r.to_record() for r in s.execute(select(SqlRemote)).scalars()])
        return sorted(rows, key=lambda r: r.name)  # by code point, whatever the server's collation

    def remove_remote(self, name: str) -> None:
        def op(s: Session) -> None:
            row = s.get(SqlRemote, name)
            if row is None:
                raise UnknownRemoteError(f"no remote named {name!r}")
            s.delete(row)
        self._write(op)

    def set_remote_seen(self, name: str, branch: str, remote_commit: str | None) -> RemoteRecord:
        """Record the tip last seen on ``branch`` of remote ``name`` (None forgets it)."""
        if remote_commit is not None and not is_full_id(remote_commit):
            raise ValueError(f"`remote_commit` must be a full id, got {remote_commit!r}")

        def op(s: Session) -> RemoteRecord:
            row = s.get(SqlRemote, name)
            if row is None:
                raise UnknownRemoteError(f"no remote named {name!r}; add it with `romevc remote add`")
            record = row.to_record()
            seen = {k: v for k, v in record.seen.items() if k != branch}
            if remote_commit is not None:
                seen[branch] = remote_commit
            row.seen_json = canonical_json(seen)
            return RemoteRecord(name=name, url=record.url, seen=seen)
        return self._write(op)

    # -- statistics metadata ------------------------------------------------------------

    def put_stats_meta(self, meta: StatsMeta) -> None:
        """Insert or replace the metadata of one statistics entry."""
        check_storable(SqlStats, dataclasses.asdict(meta))

        def op(s: Session) -> None:
            s.merge(SqlStats(id=meta.id, model_fingerprint=meta.model_fingerprint, module=meta.module,
                             corpus_id=meta.corpus_id, token_count=meta.token_count, dtype=meta.dtype,
                             location=meta.location, created=meta.created or int(_time.time())))
        self._write(op)

    def get_stats_meta(self, stats_id: str) -> StatsMeta:
        def op(s: Session) -> StatsMeta:
            row = s.get(SqlStats, stats_id)
            if row is None:
                raise UnknownObjectError(f"no statistics {stats_id!r} in this ledger")
            return row.to_record()
        return self._read(op)

    def list_stats_meta(self) -> list[StatsMeta]:
        rows = self._read(lambda s: [r.to_record() for r in s.execute(select(SqlStats)).scalars()])
        return sorted(rows, key=lambda r: r.id)  # by code point, whatever the server's collation

    # -- integrity ----------------------------------------------------------------------

    def verify_all(self) -> VerifyReport:
        """Recompute every id, check every reference; report problems instead of raising."""
        return self._read(lambda s: _verify_all(s, self.head_name))

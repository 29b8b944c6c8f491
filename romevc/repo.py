"""The porcelain: a repository of ROME edits on one base checkpoint, with git's verbs.

``Repo.init(path, base)`` records the base (id, pinned revision, architecture, dtype,
fingerprint) in a new ledger under ``path/.romevc``; ``Repo.open(path)`` finds ``.romevc`` in
``path`` or a parent, like git. Verbs take ``author``/``time``/``tz`` so tests fix them and
ids are reproducible, and return records from :mod:`romevc.ledger` or the plain values
of :mod:`romevc.porcelain.reports`.

Choices where git offers several:

- Committing verbs refuse a detached HEAD (:class:`DetachedHeadError`): a commit that no
  branch reaches is easy to lose, and an edit costs seconds to minutes to compute.
- ``edit_memit`` computes a whole request file as one MEMIT batch and makes one commit of
  it, stored as one rank-one piece per (request, layer) so the ledger keeps one request
  per edit; the pieces recompute only together (``recompute_batch``).
- ``edit_batch`` makes one commit per request line (so ``revert`` and ``blame`` can name
  one fact), all written in one transaction after every line is computed; a bad line
  refuses the whole batch, naming the line. ``apply`` of the same file makes one commit.
- Every change is computed first and written in one ledger transaction, so an error
  leaves the ledger as it was.
- When another writer moves the branch while ``edit``/``edit_batch``/``apply`` computes,
  the change is recomputed on the new tip and committed there (see
  :mod:`romevc.porcelain.writers`); the ledger's compare-and-swap never lets it overwrite.
"""
from __future__ import annotations

import getpass
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from tqdm.auto import tqdm

from romevc.editing.hparams import METHODS, RomeHyperParams
from romevc.editing.memit_hparams import BATCH_METHODS, MemitHyperParams
from romevc.editing.request import EditRequest
from romevc.errors import RomevcError
from romevc.ledger import (
    KIND_EDIT, KIND_REVERT, CommitRecord, EditRecord, Head, Ledger, RepoInfo, StatsMeta, branch_ref,
    default_url,
)
from romevc.ledger.objects import canonical_json
from romevc.porcelain import batch, branches, history, reading
from romevc.porcelain.config import CONFIG_FILE, DOT_DIR, RepoConfig, clock, create, find_root, repo_info
from romevc.porcelain.errors import (
    DetachedHeadError, EditSetError, NothingToDoError, RecomputeError, RepositoryExistsError,
)
from romevc.porcelain.materialize import BATCH, Workspace, batch_id, record_from_result, records_from_memit, stale_flags
from romevc.porcelain.merge import DEFAULT_THRESHOLD, recompute_stale
from romevc.porcelain.reading import summaries
from romevc.porcelain.reports import (
    BranchInfo, Committed, DiffReport, EditSummary, MergeResult, Prediction, ShowReport, Status, collapse, layer_range,
    short,
)
from romevc.porcelain.staging import new_repository_folder
from romevc.porcelain.writers import CommitLock, commit_on_moving_branch

__all__ = ["Repo", "RepoConfig", "find_root"]

log = logging.getLogger(__name__)
T = TypeVar("T")

KIND_APPLY = "apply"  # one commit of a whole edit set


def preserved_requests(records: Sequence[EditRecord]) -> list[EditRequest]:
    """The distinct requests of ``records`` in order: what an AlphaEdit batch on their
    weights protects (a MEMIT batch's pieces share one request per fact)."""
    seen: dict[str, EditRequest] = {}
    for record in records:
        request = EditRequest.from_dict(record.request)
        seen.setdefault(canonical_json(request.to_dict()), request)
    return list(seen.values())


def _request(value: EditRequest | Mapping[str, Any]) -> EditRequest:
    return value if isinstance(value, EditRequest) else EditRequest.from_dict(dict(value))


class Repo:
    """An open romevc repository. Use :meth:`init` or :meth:`open`; close with :meth:`close`."""

    def __init__(self, root: Path, ledger: Ledger, config: RepoConfig, *, loaded=None, stats=None,
                 device_map: str | dict | None = None) -> None:
        self.root = root
        self.ledger = ledger
        self.config = config
        self.info: RepoInfo = ledger.repo_info()
        self.commit_lock = CommitLock.of(ledger)
        self._stats = stats
        self.workspace = Workspace(self.info, self._make_stats, loaded=loaded, device_map=device_map)
        self._sets: dict[str, list[EditRecord]] = {}  # commit id -> its edit records

    # -- creating and opening ----------------------------------------------------------------------

    @classmethod
    def init(cls, path: str | Path = ".", base: str | None = None, *, ledger_url: str | None = None,
             dtype: str = "float32", author: str | None = None, stats_corpus: str | None = None,
             stats_tokens: int | None = None, stats_root: str | None = None, initial_branch: str = "main",
             loaded=None, stats=None, device_map: str | dict | None = None, time: int | None = None) -> "Repo":
        """A new repository in ``path`` on ``base`` (a Hub id ``org/name@rev``, a folder, or the demo model).

        The base is loaded once to record what every edit will apply to (pass ``loaded``
        to reuse a :class:`romevc.model.LoadedModel`, ``stats`` a ``StatsCache``). With
        ``ledger_url`` naming an existing shared ledger, the folder joins it instead,
        provided the base fingerprints agree, with a HEAD of its own that starts where the
        ledger's main HEAD is (checkouts here never move another folder's HEAD).
        """
        from romevc.model import load_base

        root = Path(path).expanduser().resolve()
        if (root / DOT_DIR / CONFIG_FILE).exists():
            raise RepositoryExistsError(f"{root} is already a romevc repository")
        loaded = loaded or load_base(base, dtype=dtype, device_map=device_map)
        config = RepoConfig(ledger=ledger_url, author=author, stats_corpus=stats_corpus, stats_tokens=stats_tokens,
                            stats_root=stats_root)
        with new_repository_folder(root) as folder:  # a killed init leaves no half repository
            ledger, config = create(folder, repo_info(loaded, created=clock(time, None)[0]), config, initial_branch)
            ledger.close()
        return cls.open(root, loaded=loaded, stats=stats, device_map=device_map)

    @classmethod
    def open(cls, path: str | Path = ".", *, loaded=None, stats=None, device_map: str | dict | None = None) -> "Repo":
        """The repository at ``path`` or its nearest parent (:class:`NotARepositoryError` if none)."""
        root = find_root(path)
        config = RepoConfig.read(root / DOT_DIR / CONFIG_FILE)
        ledger = Ledger(config.ledger or default_url(root), head_name=config.head_name)
        try:
            return cls(root, ledger, config, loaded=loaded, stats=stats, device_map=device_map)
        except BaseException:
            ledger.close()
            raise

    def close(self) -> None:
        self.ledger.close()

    def __enter__(self) -> "Repo":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Repo({str(self.root)!r})"

    # -- helpers -----------------------------------------------------------------------------------

    def _make_stats(self):
        from romevc.editing.stats import DEFAULT_CHUNK, DEFAULT_TOKENS, StatsCache

        if self._stats is not None:
            return self._stats
        config = self.workspace.loaded.model.config
        positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        chunk = min(DEFAULT_CHUNK, positions) if positions else DEFAULT_CHUNK  # tiny models: short contexts
        c = self.config
        return StatsCache(root=c.stats_root, corpus=c.stats_corpus, n_tokens=c.stats_tokens or DEFAULT_TOKENS,
                          chunk=chunk)

    def _author(self, author: str | None) -> str:
        return author or self.config.author or os.environ.get("ROMEVC_AUTHOR") or getpass.getuser()

    def records(self, ref: str | None) -> list[EditRecord]:
        """The ordered edit set of a commit (a refish; None: the empty set before the first commit)."""
        if ref is None:
            return []
        commit = self.ledger.resolve(ref)
        if commit not in self._sets:
            self._sets[commit] = self.ledger.edits_of(commit)
        return list(self._sets[commit])

    def _branch_head(self) -> tuple[str, str | None]:
        """(branch, tip) of HEAD for a committing verb; refuses a detached HEAD."""
        head = self.ledger.head()
        if head.branch is None:
            raise DetachedHeadError(
                f"HEAD is detached at {short(head.commit)}: romevc commits only on a branch; "
                "make one here with `romevc checkout -b NAME`"
            )
        return head.branch, head.commit

    def _commit(self, parents: Sequence[str | None], edits: Sequence[EditRecord], message: str, kind: str,
                author: str | None, time: int | None, tz: int | None) -> CommitRecord:
        t, offset = clock(time, tz)
        return CommitRecord.create(parents=[p for p in parents if p], edit_ids=[e.id for e in edits],
                                   message=message, author=self._author(author), time=t, tz=offset, kind=kind)

    def _write(self, branch: str, expected: str | None, new_edits: Iterable[EditRecord],
               commits: Sequence[CommitRecord]) -> None:
        """Store edits and commits and move ``branch`` from ``expected`` to the last commit: one transaction."""
        new_edits = list({e.id: e for e in new_edits}.values())
        with self.commit_lock.held(), self.ledger.transaction():
            if new_edits:
                self.ledger.put_edits(new_edits)
                for meta in self._stats_metas(new_edits):
                    self.ledger.put_stats_meta(meta)
            self.ledger.put_commits(commits)
            self.ledger.update_ref(branch_ref(branch), commits[-1].id, expected)

    def _on_moving_branch(self, branch: str, what: str, attempt: Callable[[str | None], T]) -> T:
        """``attempt(tip of branch)``, recomputed on the new tip when another writer commits first."""
        def tip() -> str | None:
            ref = self.ledger.get_ref(branch_ref(branch))
            return ref.target if ref else None
        return commit_on_moving_branch(attempt, tip, self.commit_lock, branch=branch, what=what)

    def _stats_metas(self, edits: Iterable[EditRecord]) -> list[StatsMeta]:
        """Where the statistics of freshly computed edits live (for `romevc verify --recompute`)."""
        if not self.workspace.ready:
            return []
        stats, model = self.workspace.editor.stats, self.workspace.loaded.model
        metas = {}
        for e in edits:
            key = stats.key(model, e.layer)
            if key.id == e.stats_id:
                metas[key.id] = StatsMeta(id=key.id, model_fingerprint=key.fingerprint, module=key.module,
                                          corpus_id=key.corpus_id, token_count=key.n_tokens,
                                          location=str(stats.path(key)))
        return list(metas.values())

    def _compute(self, request: EditRequest, on: Sequence[EditRecord], hparams, author: str, time: int) -> EditRecord:
        self.workspace.checkout(on)
        if not isinstance(hparams, RomeHyperParams):
            hparams = self.workspace.editor.hparams(**dict(hparams or {}))
        return record_from_result(self.workspace.compute(request, hparams), author=author, time=time)

    def recompute(self, record: EditRecord, on: Sequence[EditRecord]) -> EditRecord:
        """``record`` recomputed from its request, hyperparameters, seed and templates on base + ``on``."""
        if batch_id(record) is not None:
            raise RecomputeError(f"edit {short(record.id)} is a piece of a MEMIT batch, which is recomputed only "
                                 "as a whole batch (recompute_batch)")
        if record.method not in METHODS:
            raise RecomputeError(f"edit {short(record.id)} used method {record.method!r}, which romevc cannot recompute")
        self.workspace.checkout(on)
        result = self.workspace.compute(EditRequest.from_dict(record.request),
                                        RomeHyperParams.from_dict(record.hparams), templates=record.templates)
        return record_from_result(result, author=record.author, time=record.time)

    def recompute_batch(self, pieces: Sequence[EditRecord], on: Sequence[EditRecord]) -> list[EditRecord]:
        """The pieces of one MEMIT batch recomputed together on base + ``on`` (the edits before its
        first piece), returned in the order given. Refuses a batch with pieces missing."""
        ids = {batch_id(p) for p in pieces}
        if len(ids) != 1 or None in ids:
            raise RecomputeError("recompute_batch takes the pieces of one MEMIT batch")
        first = min(pieces, key=lambda p: (p.hparams[BATCH]["index"], p.layer))
        size, layers = first.hparams[BATCH]["size"], first.hparams.get("layers") or []
        requests: dict[int, dict] = {p.hparams[BATCH]["index"]: p.request for p in pieces}
        have = {(p.hparams[BATCH]["index"], p.layer) for p in pieces}
        if sorted(requests) != list(range(size)) or have != {(i, l) for i in range(size) for l in layers}:
            raise RecomputeError(f"MEMIT batch {short(first.hparams[BATCH]['id'])} is incomplete here "
                                 f"({len(have)} of {size} × {len(layers)} pieces); it can be recomputed only whole")
        settings = {k: v for k, v in first.hparams.items() if k != BATCH}
        batch_requests = [EditRequest.from_dict(requests[i]) for i in range(size)]
        self.workspace.checkout(on)
        if first.method == "alphaedit":
            from romevc.editing.alphaedit import AlphaEditHyperParams

            result = self.workspace.compute_alphaedit(batch_requests, AlphaEditHyperParams.from_dict(settings),
                                                      preserve=preserved_requests(on), templates=first.templates)
        else:
            result = self.workspace.compute_memit(batch_requests, MemitHyperParams.from_dict(settings),
                                                  templates=first.templates)
        again = {(r.hparams[BATCH]["index"], r.layer): r
                 for r in records_from_memit(result, author=first.author, time=first.time)}
        return [again[p.hparams[BATCH]["index"], p.layer] for p in pieces]

    def stale(self, records: Sequence[EditRecord]) -> list[bool]:
        return stale_flags(self.info.base_fingerprint, records)

    # -- the model at a commit -----------------------------------------------------------------------

    def model(self, ref: str | None = "HEAD"):
        """The base with ``ref``'s edit set applied (a :class:`romevc.model.LoadedModel`, cached)."""
        if ref is None:
            self.workspace.checkout([])
        else:
            commit = self.ledger.resolve(ref)
            # Materialising needs only the blobs: skip decoding the records unless they are at hand.
            self.workspace.checkout(self._sets[commit] if commit in self._sets else self.ledger.deltas_of(commit))
        return self.workspace.loaded

    def predictions(self, prompts: Sequence[str], targets: Sequence[str | None], ref: str | None = "HEAD",
                    *, records: Sequence[EditRecord] | None = None) -> list[Prediction]:
        """Top-1 next token (and p(target) where given) for each prompt at ``ref`` (or on ``records``)."""
        self.workspace.checkout(records if records is not None else self.records(ref))
        editor = self.workspace.editor
        out = []
        for prompt, target in zip(prompts, targets):
            top = editor.predict(prompt, 1)[0]
            out.append(Prediction(top.token, top.probability,
                                  editor.probability(prompt, target) if target else None))
        return out

    def predict(self, ref: str | None, prompt: str, k: int = 5):
        """The ``k`` most likely next tokens after ``prompt`` at ``ref`` (None: the base), as
        :class:`romevc.predict.Choice` values."""
        self.model(ref)
        return self.workspace.editor.predict(prompt, k)

    def generate(self, ref: str, prompt: str, max_new_tokens: int = 30) -> str:
        """Greedy continuation of ``prompt`` at ``ref`` (the new text only)."""
        return reading.generate(self.model(ref), prompt, max_new_tokens)

    # -- committing verbs --------------------------------------------------------------------------

    def edit(self, request: EditRequest | Mapping[str, Any], hparams: Mapping[str, Any] | RomeHyperParams | None = None,
             *, message: str | None = None, author: str | None = None, time: int | None = None,
             tz: int | None = None) -> Committed:
        """Compute one edit on HEAD's weights and commit HEAD's edit set + it on HEAD's branch."""
        request = _request(request)
        branch, _ = self._branch_head()
        t, offset = clock(time, tz)

        def attempt(parent: str | None) -> Committed:
            records = self.records(parent)
            record = self._compute(request, records, hparams, self._author(author), t)
            commit = self._commit([parent], records + [record], message or request.fact(), KIND_EDIT, author, t,
                                  offset)
            self._write(branch, parent, [record], [commit])
            return Committed(commit, summaries([record], [False]), branch)
        return self._on_moving_branch(branch, "the edit", attempt)

    def edit_batch(self, path: str | Path, *, author: str | None = None, time: int | None = None,
                   tz: int | None = None) -> list[Committed]:
        """One commit per request line of a JSONL file, each computed on the weights of the one before."""
        lines = batch.read_requests(path)
        branch, _ = self._branch_head()
        t, offset = clock(time, tz)
        self.workspace.editor  # load the base first: a load error is not a line's fault

        def attempt(parent: str | None) -> list[Committed]:
            records = self.records(parent)
            commits, made, new, tip = [], [], [], parent
            for line in tqdm(lines, desc="edits", unit="edit", disable=len(lines) < 2):
                try:
                    record = self._compute(line.request, records, line.hparams, self._author(author), t)
                except RomevcError as exc:
                    raise EditSetError(f"{path}:{line.line}: {exc}; nothing was written") from None
                records = records + [record]
                new.append(record)
                commit = self._commit([tip], records, line.message or line.request.fact(), KIND_EDIT, author, t,
                                      offset)
                commits.append(commit)
                made.append(Committed(commit, summaries([record], [False]), branch))
                tip = commit.id
            self._write(branch, parent, new, commits)
            return made
        return self._on_moving_branch(branch, f"the edits of {Path(path).name}", attempt)

    def edit_memit(self, requests: str | Path | Sequence[EditRequest | Mapping[str, Any]],
                   hparams: Mapping[str, Any] | MemitHyperParams | None = None, *, message: str | None = None,
                   author: str | None = None, time: int | None = None, tz: int | None = None,
                   method: str = "memit") -> Committed:
        """Compute ``requests`` (a JSONL file or a list) as one MEMIT batch on HEAD's weights; commit it once.

        The commit adds one rank-one record per (request, layer), request-major; together
        they are exactly the batch's update. Batch-wide settings come from ``hparams``
        (MEMIT's family defaults otherwise); a file line carrying hyperparameters is refused.
        ``method="alphaedit"``: an AlphaEdit batch, which also leaves the keys of every edit
        HEAD already carries alone (:func:`preserved_requests`).
        """
        if method not in BATCH_METHODS:
            raise EditSetError(f"unknown batch method {method!r}: use one of {', '.join(BATCH_METHODS)}")
        if isinstance(requests, (str, Path)):
            lines = batch.read_requests(requests)
            for line in lines:
                if line.hparams:
                    raise EditSetError(
                        f"{requests}:{line.line}: a MEMIT batch takes its hyperparameters for the whole batch "
                        f"(--layers, --mom2-update-weight, --seed), not per line; this line sets "
                        f"{', '.join(sorted(line.hparams))}; nothing was written")
            requests = [line.request for line in lines]
        requests = [_request(r) for r in requests]
        if not requests:
            raise EditSetError("a MEMIT batch needs at least one request; nothing was written")
        branch, _ = self._branch_head()
        t, offset = clock(time, tz)
        editor = self.workspace.editor  # load the base first: a load error is not a request's fault
        make = editor.alphaedit_hparams if method == "alphaedit" else editor.memit_hparams
        hp = hparams if isinstance(hparams, MemitHyperParams) else make(**dict(hparams or {}))

        def attempt(parent: str | None) -> Committed:
            records = self.records(parent)
            self.workspace.checkout(records)
            if method == "alphaedit":
                result = self.workspace.compute_alphaedit(requests, hp, preserve=preserved_requests(records))
            else:
                result = self.workspace.compute_memit(requests, hp)
            new = records_from_memit(result, author=self._author(author), time=t)
            name = "AlphaEdit" if method == "alphaedit" else "MEMIT"
            title = (requests[0].fact() if len(requests) == 1
                     else f"Edit {len(requests)} facts with {name} (layers {layer_range(result.layers)})")
            default = title + "\n\n" + "\n".join(f"- {r.fact()}" for r in requests) if len(requests) > 1 else title
            commit = self._commit([parent], records + new, message or default, KIND_EDIT, author, t, offset)
            self._write(branch, parent, new, [commit])
            return Committed(commit, collapse(new, [False] * len(new)), branch)
        return self._on_moving_branch(branch, f"the {method} batch", attempt)

    def apply(self, editset: str | Path, *, recompute: bool = False, message: str | None = None,
              author: str | None = None, time: int | None = None, tz: int | None = None) -> Committed:
        """Commit the edits of an edit set onto HEAD's branch as one commit.

        A JSONL of requests is computed here, each on the weights of the ones before (so
        none is stale and ``recompute`` changes nothing). An edit-set folder (the published
        format: ``romevc.json`` + ``edits.safetensors``) contributes the edit set of its head
        commit through :meth:`apply_records`: stored deltas as they are, flagged stale where
        computed on other weights, or recomputed here with ``recompute``.
        """
        editset = Path(editset)
        if editset.is_dir():
            return self._apply_folder(editset, recompute=recompute, message=message, author=author, time=time, tz=tz)
        lines = batch.read_requests(editset)
        branch, _ = self._branch_head()
        t, offset = clock(time, tz)

        def attempt(parent: str | None) -> Committed:
            records = self.records(parent)
            new = []
            for line in tqdm(lines, desc="edits", unit="edit", disable=len(lines) < 2):
                new.append(self._compute(line.request, records + new, line.hparams, self._author(author), t))
            commit = self._commit([parent], records + new, message or f"Apply {editset.name}: {len(new)} edit(s)",
                                  KIND_APPLY, author, t, offset)
            self._write(branch, parent, new, [commit])
            return Committed(commit, summaries(new, [False] * len(new)), branch)
        return self._on_moving_branch(branch, f"the edits of {editset.name}", attempt)

    def _apply_folder(self, folder: Path, **kwargs) -> Committed:
        if not (folder / "romevc.json").is_file():
            raise EditSetError(f"{folder} holds no romevc.json: not an edit set; give an edit-set folder or a JSONL "
                               "file of requests")
        try:
            from romevc.remotes.editset import base_shapes, check_base, check_fits, read_editset
        except ImportError:
            raise EditSetError("edit-set folders arrive with the remotes feature; for now apply a JSONL file of "
                               "requests") from None
        edit_set = read_editset(folder)  # verified: every id is recomputed, nothing but JSON and safetensors read
        check_base(edit_set.manifest.base, self.info)
        check_fits(edit_set.edits, base_shapes(self.info))  # a borrowed fingerprint on edits of another width
        if edit_set.manifest.head is None:
            raise NothingToDoError(f"the edit set in {folder} names no head commit; nothing to apply")
        kwargs["message"] = kwargs["message"] or f"Apply {folder.name}"
        return self.apply_records(edit_set.edits_of(edit_set.manifest.head), **kwargs)

    def apply_records(self, edits: Sequence[EditRecord], *, recompute: bool = False, message: str | None = None,
                      author: str | None = None, time: int | None = None, tz: int | None = None) -> Committed:
        """Commit stored edits as they are (stale where computed on other weights), or recomputed here."""
        for e in edits:
            e.verify()
            if e.module != self.info.module_template.format(e.layer) or e.layout != self.info.layout:
                raise EditSetError(f"edit {short(e.id)} writes {e.module} ({e.layout}), which this base "
                                   f"({self.info.architecture}) does not have; it was made for another architecture")
        branch, _ = self._branch_head()
        t, offset = clock(time, tz)

        def attempt(parent: str | None) -> Committed:
            records = self.records(parent)
            have = {r.id for r in records}
            new = [e for e in dict.fromkeys(edits) if e.id not in have]
            if not new:
                raise NothingToDoError("every edit of this edit set is already at HEAD; nothing to apply")
            result = records + new
            if recompute:
                result, _ = recompute_stale(self.info.base_fingerprint, result, self.recompute,
                                            only={e.id for e in new}, recompute_batch=self.recompute_batch)
            landed = result[len(records):]
            commit = self._commit([parent], result, message or f"Apply {len(landed)} edit(s)", KIND_APPLY,
                                  author, t, offset)
            self._write(branch, parent, landed, [commit])
            return Committed(commit, summaries(landed, self.stale(result)[len(records):]), branch)
        return self._on_moving_branch(branch, "the applied edits", attempt)

    def revert(self, ref: str, *, message: str | None = None, author: str | None = None,
               time: int | None = None, tz: int | None = None) -> Committed:
        """A new commit whose edit set lacks the edits ``ref`` added (and regains those it removed).

        Materialising it gives weights bit-identical to never having made those edits.
        """
        target = self.ledger.get_commit(self.ledger.resolve(ref))
        branch, head = self._branch_head()
        now = self.records(head)
        before = self.records(target.parents[0]) if target.parents else []
        after = self.records(target.id)
        added = {e.id for e in after} - {e.id for e in before}
        removed = [e for e in before if e.id not in {a.id for a in after}]
        result = [e for e in now if e.id not in added] + [e for e in removed if e.id not in {n.id for n in now}]
        if [e.id for e in result] == [e.id for e in now]:
            raise NothingToDoError(f"nothing to revert: the edits of {short(target.id)} are not at HEAD")
        title = target.message.splitlines()[0] if target.message else short(target.id)
        commit = self._commit([head], result, message or f'Revert "{title}"\n\nThis reverts commit {target.id}.',
                              KIND_REVERT, author, time, tz)
        self._write(branch, head, [], [commit])
        gone = [e for e in now if e.id in added]
        return Committed(commit, summaries(gone), branch)

    def merge(self, ref: str, *, resolve: str | None = None, recompute: bool = False,
              threshold: float = DEFAULT_THRESHOLD, no_ff: bool = False, message: str | None = None,
              author: str | None = None, time: int | None = None, tz: int | None = None) -> MergeResult:
        """Merge ``ref`` into HEAD's branch (see :mod:`romevc.porcelain.merge` for conflicts).

        Fast-forwards when HEAD is an ancestor of ``ref`` (unless ``no_ff``); otherwise a
        merge commit with parents (HEAD, ref) whose edit set is the three-way merge.
        ``recompute`` recomputes every edit that lands stale; otherwise they are reported.
        """
        return history.merge_into(self, ref, resolve=resolve, recompute=recompute, threshold=threshold, no_ff=no_ff,
                                  message=message, author=author, time=time, tz=tz)

    def rebase(self, onto: str | None = None, *, author: str | None = None, time: int | None = None,
               tz: int | None = None) -> MergeResult:
        """Without ``onto``: one commit recomputing HEAD's stale edits where they sit.

        With ``onto``: replay the branch's commits since its merge base on top of ``onto``,
        recomputing the replayed edits so none is stale (history with merges is refused).
        """
        if onto is None:
            return history.recompute_head(self, author=author, time=time, tz=tz)
        return history.rebase_onto(self, onto)

    # -- refs ----------------------------------------------------------------------------------------

    def branches(self) -> list[BranchInfo]:
        return branches.branches(self.ledger)

    def branch(self, name: str, start: str = "HEAD") -> BranchInfo:
        """A new branch at ``start`` (refuses an existing name)."""
        return branches.branch(self.ledger, name, start)

    def delete_branch(self, name: str, *, force: bool = False) -> str:
        """Delete a branch; unless ``force``, only one whose tip HEAD already contains; never one that
        any folder sharing the ledger has checked out. Returns its tip."""
        return branches.delete_branch(self.ledger, name, force=force)

    def checkout(self, ref: str | None, *, create: str | None = None, orphan: str | None = None) -> Head:
        """Attach HEAD to a branch, or detach it at a commit; ``create`` makes a branch at ``ref``
        first; ``orphan`` attaches HEAD to a new, unborn branch (its first commit has no parent).

        Only HEAD moves: the weights are materialised when a command needs them.
        """
        return branches.checkout(self.ledger, ref, create=create, orphan=orphan)

    def tags(self) -> list[BranchInfo]:
        return branches.tags(self.ledger)

    def tag(self, name: str, ref: str = "HEAD") -> BranchInfo:
        return branches.tag(self.ledger, name, ref)

    def delete_tag(self, name: str) -> str:
        return branches.delete_tag(self.ledger, name)

    # -- reading -------------------------------------------------------------------------------------

    def log(self, ref: str | None = None, *, first_parent: bool = False, limit: int | None = None) -> list[CommitRecord]:
        """Commits reachable from ``ref`` (HEAD), newest first."""
        return self.ledger.log(ref, first_parent=first_parent, limit=limit)

    def decorations(self) -> dict[str, list[str]]:
        """commit id -> labels as git prints them: ``HEAD -> main``, ``tag: v1``, ``feature``."""
        return history.decorations(self.ledger)

    def status(self) -> Status:
        """Branch, HEAD, edit count, stale edits and the base (reads the ledger only)."""
        return reading.status(self)

    def show(self, ref: str = "HEAD", *, predictions: bool = True) -> ShowReport:
        """What a commit changed against its first parent, with predictions on each changed prompt."""
        return reading.show(self, ref, predictions=predictions)

    def diff(self, a: str, b: str = "HEAD", *, probe: str | Path | None = None) -> DiffReport:
        """Edits added and removed from ``a`` to ``b``; with ``probe``, the top prediction of each prompt at both."""
        return reading.diff(self, a, b, probe=probe)

    def blame(self, subject: str | None = None, *, layer: int | None = None, ref: str | None = None):
        """Commits on ``ref``'s first-parent history that added or removed edits of ``subject``/``layer``."""
        return history.blame(self, subject=subject, layer=layer, ref=ref)

    def verify(self, *, recompute: bool = False):
        """Hashes and references (``ledger.verify_all``); with ``recompute``, each edit recomputed
        from its request on the weights it was computed against, compared with its stored delta."""
        return history.verify(self, recompute=recompute)

    def export(self, ref: str, out: str | Path, *, force: bool = False) -> Path:
        """A full checkpoint of ``ref``'s weights that plain ``from_pretrained`` loads."""
        from romevc import __version__
        from romevc.porcelain.export import check_target, export_checkpoint

        check_target(out, force=force)
        commit = self.ledger.resolve(ref)
        records = self.records(commit)
        loaded = self.model(commit)
        i = self.info
        manifest = {"romevc": __version__, "base": i.base_id, "revision": i.revision,
                    "base_fingerprint": i.base_fingerprint, "commit": commit, "edits": [e.id for e in records],
                    "facts": [EditSummary.of(e).fact for e in records]}
        return export_checkpoint(loaded.model, loaded.tokenizer, out, manifest, force=force)

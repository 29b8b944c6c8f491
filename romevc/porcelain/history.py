"""The verbs of :class:`romevc.repo.Repo` that walk or combine history: decorations, blame,
verify, merge, rebase.

They live here to keep ``repo.py`` short; each takes the open ``Repo`` as its first argument.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from romevc.ledger import KIND_MERGE, EditRecord, Ledger, branch_ref
from romevc.ledger.errors import CorruptObjectError
from romevc.porcelain.errors import MergeConflictError, NothingToDoError, RecomputeError, RepoError
from romevc.porcelain.materialize import batch_id, fingerprints_before
from romevc.porcelain.merge import DEFAULT_THRESHOLD, conflict_message, find_conflicts, plan_merge, recompute_stale
from romevc.porcelain.reading import summaries
from romevc.porcelain.reports import (BlameLine, EditSummary, MergeResult, RecomputeCheck, VerifyResult, collapse,
                                     short)

if TYPE_CHECKING:
    from romevc.repo import Repo

KIND_REBASE = "rebase"  # a commit that recomputes stale edits

def decorations(ledger: Ledger) -> dict[str, list[str]]:
    """commit id -> labels as git prints them: ``HEAD -> main``, ``tag: v1``, ``feature``."""
    head = ledger.head()
    out: dict[str, list[str]] = {}
    if head.branch is None and head.commit is not None:
        out.setdefault(head.commit, []).append("HEAD")
    for ref in ledger.list_refs():
        if ref.target is None:
            continue
        if ref.name.startswith("refs/heads/"):
            label = f"HEAD -> {ref.short_name}" if ref.short_name == head.branch else ref.short_name
            labels = out.setdefault(ref.target, [])
            labels.insert(0, label) if label.startswith("HEAD") else labels.append(label)
        elif ref.name.startswith("refs/tags/"):
            out.setdefault(ref.target, []).append(f"tag: {ref.short_name}")
        else:
            out.setdefault(ref.target, []).append(ref.name.removeprefix("refs/remotes/"))
    return out


def blame(repo: "Repo", *, subject: str | None, layer: int | None, ref: str | None) -> list[BlameLine]:
    entries = repo.ledger.blame(subject=subject, layer=layer, start=ref)
    cache: dict[str, EditRecord] = {}

    def records(edit_ids) -> tuple[EditSummary, ...]:
        for edit_id in edit_ids:
            if edit_id not in cache:
                cache[edit_id] = repo.ledger.get_edit(edit_id)
        return collapse([cache[e] for e in edit_ids])  # a MEMIT request's pieces as one fact

    return [BlameLine(e.commit, records(e.added), records(e.removed)) for e in entries]


# -- verify -------------------------------------------------------------------------------------------

def _contexts(repo: "Repo") -> tuple[dict[str, tuple[str, int]], set[str]]:
    """For each edit reachable from a ref, one (commit, position) where the edits before it are
    exactly the weights it was computed against; and the edits that have no such place."""
    ledger = repo.ledger
    tips = {r.target for r in ledger.list_refs() if r.target}
    tips |= {h.commit for h in ledger.heads().values() if h.commit}  # every folder's HEAD, detached ones too
    commits: dict[str, object] = {}
    for tip in sorted(tips):
        for c in ledger.log(tip):
            commits.setdefault(c.id, c)
    found: dict[str, tuple[str, int]] = {}
    seen: set[str] = set()
    for cid, c in commits.items():
        if all(e in found for e in c.edit_ids):
            continue
        try:
            records = repo.records(cid)
        except CorruptObjectError:
            continue  # reported by verify_all
        for i, (record, fp) in enumerate(zip(records, fingerprints_before(repo.info.base_fingerprint, records))):
            seen.add(record.id)
            if record.id not in found and record.weights_fingerprint == fp:
                found[record.id] = (cid, i)
    return found, seen - set(found)


def _compare(edit_id: str, stored, again) -> RecomputeCheck:
    if again.u == stored.u and again.v == stored.v:
        return RecomputeCheck(edit_id, "identical")
    diff = max(float(np.abs(np.frombuffer(x, "<f4") - np.frombuffer(y, "<f4")).max())
               for x, y in ((again.u, stored.u), (again.v, stored.v)))
    return RecomputeCheck(edit_id, "differs", f"max |Δ| {diff:.3g} between stored and recomputed u/v", diff)


def verify(repo: "Repo", *, recompute: bool) -> VerifyResult:
    report = repo.ledger.verify_all()
    if not recompute:
        return VerifyResult(report)
    found, nowhere = _contexts(repo)
    checks = [RecomputeCheck(e, "skipped", "computed on weights this ledger does not hold (applied from elsewhere)")
              for e in sorted(nowhere)]
    singles = {e: place for e, place in found.items() if batch_id(repo.records(place[0])[place[1]]) is None}
    batches: dict[str, tuple[str, int]] = {}  # batch id -> a (commit, position) of one of its pieces
    for edit_id, (commit, position) in sorted(found.items()):
        if edit_id not in singles:
            batches.setdefault(batch_id(repo.records(commit)[position]), (commit, position))
    for edit_id, (commit, position) in tqdm(sorted(singles.items()), desc="recomputing", unit="edit"):
        records = repo.records(commit)
        checks.append(_compare(edit_id, records[position], repo.recompute(records[position], records[:position])))
    # A MEMIT batch is recomputed as a unit, on the weights before its first piece, and each
    # piece is compared; every piece of it (in any commit) is then checked.
    done: set[str] = set()
    for bid, (commit, _) in tqdm(sorted(batches.items()), desc="recomputing MEMIT batches", unit="batch"):
        records = repo.records(commit)
        first = next(i for i, r in enumerate(records) if batch_id(r) == bid)
        pieces = [r for r in records if batch_id(r) == bid]
        try:
            again = repo.recompute_batch(pieces, records[:first])
        except RecomputeError as exc:
            checks += [RecomputeCheck(p.id, "skipped", str(exc)) for p in pieces if p.id not in done]
            done |= {p.id for p in pieces}
            continue
        for stored, new in zip(pieces, again):
            if stored.id not in done:
                checks.append(_compare(stored.id, stored, new))
                done.add(stored.id)
    left = {e for e in found if e not in singles} - done  # pieces seen elsewhere only (never expected)
    checks += [RecomputeCheck(e, "skipped", "a MEMIT piece whose batch could not be gathered") for e in sorted(left)]
    return VerifyResult(report, tuple(checks))


# -- merge and rebase ---------------------------------------------------------------------------------------

def merge_into(repo: "Repo", ref: str, *, resolve: str | None = None, recompute: bool = False,
               threshold: float = DEFAULT_THRESHOLD, no_ff: bool = False, message: str | None = None,
               author: str | None = None, time: int | None = None, tz: int | None = None) -> MergeResult:
    """Merge ``ref`` into HEAD's branch (see :mod:`romevc.porcelain.merge` for conflicts).

    Fast-forwards when HEAD is an ancestor of ``ref`` (unless ``no_ff``); otherwise a
    merge commit with parents (HEAD, ref) whose edit set is the three-way merge.
    ``recompute`` recomputes every edit that lands stale; otherwise they are reported.
    """
    branch, ours = repo._branch_head()
    theirs = repo.ledger.resolve(ref)
    if ours is not None and (ours == theirs or repo.ledger.is_ancestor(theirs, ours)):
        return MergeResult("up-to-date", ours)
    if ours is None or (not no_ff and repo.ledger.is_ancestor(ours, theirs)):
        have = {e.id for e in repo.records(ours)}
        landed = [e for e in repo.records(theirs) if e.id not in have]
        repo.ledger.update_ref(branch_ref(branch), theirs, ours)
        return MergeResult("fast-forward", theirs, added=summaries(landed))
    bases = repo.ledger.merge_bases(ours, theirs)
    plan = plan_merge(repo.records(bases[0] if bases else None), repo.records(ours), repo.records(theirs),
                      resolve=resolve, threshold=threshold)
    result, pairs = list(plan.result), []
    if recompute:
        with tqdm(desc="recomputing stale edits", unit="edit") as bar:
            def again(record, on):
                bar.update(1)
                return repo.recompute(record, on)
            result, pairs = recompute_stale(repo.info.base_fingerprint, result, again,
                                            recompute_batch=repo.recompute_batch)
    stale = repo.stale(result)
    commit = repo._commit([ours, theirs], result, message or f"Merge {ref} into {branch}", KIND_MERGE,
                          author, time, tz)
    repo._write(branch, ours, result, [commit])
    return MergeResult("merge", commit.id, added=summaries(plan.added), dropped=summaries(plan.dropped),
                       conflicts=plan.conflicts, stale=tuple(EditSummary.of(r, True) for r, s in zip(result, stale) if s),
                       recomputed=tuple(pairs))



def recompute_head(repo: "Repo", *, author: str | None, time: int | None, tz: int | None) -> MergeResult:
    """One commit on HEAD's branch that recomputes HEAD's stale edits where they sit."""
    branch, head = repo._branch_head()
    if head is None:
        raise NothingToDoError("no commits yet; nothing to rebase")
    result, pairs = recompute_stale(repo.info.base_fingerprint, repo.records(head), repo.recompute,
                                    recompute_batch=repo.recompute_batch)
    if not pairs:
        raise NothingToDoError("no stale edits at HEAD; nothing to rebase")
    commit = repo._commit([head], result, f"Recompute {len(pairs)} stale edit(s)", KIND_REBASE, author, time, tz)
    repo._write(branch, head, result, [commit])
    return MergeResult("rebase", commit.id, recomputed=tuple(pairs))


# -- rebase onto another commit ------------------------------------------------------------------------

def rebase_onto(repo: "Repo", onto: str) -> MergeResult:
    """Replay HEAD's branch since its merge base with ``onto`` as new commits on ``onto``.

    Each replayed commit keeps its message, author and time; its edits are recomputed on
    the weights they now land on, so the rebased branch has no stale edits of its own.
    """
    ledger = repo.ledger
    branch, head = repo._branch_head()
    if head is None:
        raise NothingToDoError("no commits yet; nothing to rebase")
    target = ledger.resolve(onto)
    if head == target or ledger.is_ancestor(target, head):
        raise NothingToDoError(f"{branch} already contains {onto}; nothing to rebase")
    if ledger.is_ancestor(head, target):
        ledger.update_ref(branch_ref(branch), target, head)
        return MergeResult("fast-forward", target)
    bases = ledger.merge_bases(head, target)
    base = bases[0] if bases else None
    chain = []
    for c in ledger.log(head, first_parent=True):
        if c.id == base:
            break
        if len(c.parents) > 1:
            raise RepoError(f"commit {short(c.id)} is a merge: rebasing across merges is not supported; "
                            f"use `romevc merge {onto}`")
        chain.append(c)
    base_ids = {e.id for e in repo.records(base)}
    ours_new = [e for e in repo.records(head) if e.id not in base_ids]
    theirs_new = [e for e in repo.records(target) if e.id not in base_ids]
    conflicts, _ = find_conflicts(ours_new, theirs_new)
    if conflicts:
        raise MergeConflictError(conflict_message(conflicts, "rebase").replace(
            "keep one side with --ours or --theirs", "use `romevc merge` with --ours or --theirs"), conflicts)

    current = repo.records(target)
    origin: dict[str, str] = {}  # id in the rebased sets -> id it replays
    commits, made, recomputed = [], [], []
    parent = target
    bar = tqdm(desc="recomputing replayed edits", unit="edit")
    for c in reversed(chain):
        before = {e.id for e in repo.records(c.parents[0])} if c.parents else set()
        after = repo.records(c.id)
        removed = before - {e.id for e in after}
        current = [e for e in current if origin.get(e.id, e.id) not in removed]
        present = {origin.get(e.id, e.id) for e in current}
        current += [e for e in after if e.id not in before and e.id not in present]
        mine = {e.id for e in current if e.id in origin or e.id not in {t.id for t in repo.records(target)}}

        def again(record, on):
            bar.update(1)
            return repo.recompute(record, on)

        current, pairs = recompute_stale(repo.info.base_fingerprint, current, again, only=mine,
                                         recompute_batch=repo.recompute_batch)
        for old, new in pairs:
            origin[new] = origin.get(old, old)
            recomputed.append((old, new))
        made += [e for e in current if e.id in {n for _, n in pairs}]
        commit = repo._commit([parent], current, c.message, c.kind, c.author, c.time, c.tz)
        commits.append(commit)
        parent = commit.id
    bar.close()
    repo._write(branch, head, made, commits)
    return MergeResult("rebase", parent, recomputed=tuple(recomputed))

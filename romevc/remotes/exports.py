"""``export REF --format full|peft|romevc``: the three things a commit can be written as.

- ``full``: the edited checkpoint (:meth:`Repo.export`, plain ``from_pretrained``) plus
  its model card;
- ``peft``: a LoRA adapter (:mod:`romevc.remotes.peft_export`);
- ``romevc``: the published edit-set folder (:mod:`romevc.remotes.editset`).

Each folder is built under a temporary name and renamed into place.
"""
from __future__ import annotations

from pathlib import Path

from romevc import paths

FORMATS = ("full", "peft", "romevc")


def export(repo, ref: str, out: str | Path, fmt: str = "full", *, force: bool = False) -> Path:
    """Write ``ref`` of ``repo`` to ``out`` in format ``fmt``; returns the folder."""
    from romevc.porcelain.export import check_target

    if fmt == "peft":
        from romevc.remotes.peft_export import export_peft

        return export_peft(repo, ref, out, force=force)
    if fmt == "romevc":
        from romevc.remotes.editset import write_editset

        return write_editset(repo, [ref], out, force=force)
    if fmt != "full":
        raise ValueError(f"`fmt` must be one of {FORMATS}, got {fmt!r}")
    from romevc.remotes.card import checkpoint_card
    from romevc.remotes.editset import BaseRef

    out = check_target(out, force=force)
    commit = repo.ledger.resolve(ref)
    with paths.staging_dir(out) as staging:
        repo.export(commit, staging)  # an empty folder: Repo.export fills it (its own rename inside)
        card = checkpoint_card(BaseRef.of(repo.info), repo.records(commit), commit)
        paths.atomic_write_text(staging / "README.md", card)
    return out

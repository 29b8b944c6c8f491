"""Commands that talk to remotes: remote add/remove/list, push, fetch, pull, clone.

A remote is ``hf://org/name`` (a Hugging Face Hub model repository) or any URL git can
push to. Tokens and the Hub endpoint come from huggingface_hub's own settings
(``HF_TOKEN``, ``hf auth login``, ``HF_ENDPOINT``); no command reads or prints a token.
Each command parses, makes one call into :mod:`romevc.remotes.sync` and prints.
"""
from __future__ import annotations

from pathlib import Path

import click

from romevc.cli.ledger_commands import SHORT, _render_merge, with_repo
from romevc.cli.output import emit, guarded, json_option


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


# -- remote ---------------------------------------------------------------------------------------------

@click.group(invoke_without_command=True)
@click.option("--repo", "repo_path", default=".", metavar="PATH", show_default=True,
              help="A folder inside the repository (for the listing; subcommands take their own).")
@json_option
@click.pass_context
def remote(ctx, repo_path, as_json) -> None:
    """List, add or remove remotes (`romevc remote` alone lists them).

    Example: romevc remote add origin hf://my-org/my-edits
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_, repo_path=repo_path, as_json=as_json)


def _remote_rows(repo) -> list[dict]:
    return [{"name": r.name, "url": r.url, "seen": r.seen} for r in repo.ledger.list_remotes()]


@remote.command("list")
@json_option
@guarded
@with_repo
def list_(repo, as_json) -> None:
    """List remotes with their URLs and the last commit seen on each branch.

    Example: romevc remote list --json
    """
    emit(_remote_rows(repo), as_json, lambda rows: "\n".join(f"{r['name']}\t{r['url']}" for r in rows))


@remote.command("add")
@click.argument("name")
@click.argument("url")
@json_option
@guarded
@with_repo
def add(name, url, repo, as_json) -> None:
    """Add remote NAME at URL: hf://org/name for the Hub, or a git URL or path.

    Example: romevc remote add origin hf://my-org/my-edits
    """
    from romevc.remotes.sync import add_remote

    record = add_remote(repo, name, url)
    emit({"name": record.name, "url": record.url}, as_json, lambda d: f"Added remote {d['name']} ({d['url']})")


@remote.command("remove")
@click.argument("name")
@json_option
@guarded
@with_repo
def remove(name, repo, as_json) -> None:
    """Remove remote NAME and its remote-tracking refs.

    Example: romevc remote remove origin
    """
    from romevc.remotes.sync import remove_remote

    remove_remote(repo, name)
    emit({"removed": name}, as_json, lambda d: f"Removed remote {d['removed']}")


# -- push, fetch, pull -----------------------------------------------------------------------------------

def _render_push(d: dict) -> str:
    if d["status"] == "up-to-date":
        line = f"Everything up-to-date ({d['remote']}/{d['branch']} at {d['commit'][:SHORT]})"
    elif d["status"] == "materialized":
        line = (f"Published the full checkpoint of {d['branch']} at {d['commit'][:SHORT]} to {d['remote']}/"
                f"{d['branch']} ({d['edits']} edit(s), {_size(d['bytes'])})")
    else:
        line = (f"Pushed {d['branch']} to {d['remote']}: {d['status']} at {d['commit'][:SHORT]} "
                f"({d['commits']} commit(s), {d['edits']} edit(s), {_size(d['bytes'])})")
    return "\n".join([line] + [f"tag {t} -> {d['remote']}" for t in d["tags"]])


@click.command()
@click.argument("name", default="origin")
@click.argument("branch", required=False)
@click.option("--materialize", is_flag=True, help="Publish the full edited checkpoint instead of the edit set.")
@click.option("-m", "--message", default=None, help="Message of the remote commit.")
@json_option
@guarded
@with_repo
def push(name, branch, materialize, message, repo, as_json) -> None:
    """Publish BRANCH (default: the current one) to remote NAME (default: origin) as one commit.

    Refused when the remote branch has commits this branch lacks: pull first.

    Example: romevc push origin main
    """
    from romevc.remotes.sync import push as push_

    emit(push_(repo, name, branch, materialize=materialize, message=message).to_dict(), as_json, _render_push)


def _fetch_lines(d: dict) -> list[str]:
    lines = []
    for b in d["branches"]:
        where = f"{d['remote']}/{b['branch']}"
        if b["old"] is None:
            lines.append(f" * [new branch] {where} at {b['new'][:SHORT]}")
        elif b["old"] == b["new"]:
            lines.append(f"   {where} up to date at {b['new'][:SHORT]}")
        else:
            lines.append(f"   {b['old'][:SHORT]}..{b['new'][:SHORT]} {where} ({b['new_commits']} new commit(s))")
    lines += [f" * [new tag] {t}" for t in d["tags"]]
    lines += [f"   skipped {s} (no edit set of its own, or a clashing tag)" for s in d["skipped"]]
    return lines


@click.command()
@click.argument("name", default="origin")
@click.argument("branch", required=False)
@json_option
@guarded
@with_repo
def fetch(name, branch, repo, as_json) -> None:
    """Download and verify BRANCH (default: all) of remote NAME into refs/remotes/NAME/.

    Example: romevc fetch origin
    """
    from romevc.remotes.sync import fetch as fetch_

    emit(fetch_(repo, name, branch).to_dict(), as_json, lambda d: "\n".join(_fetch_lines(d)) or "Nothing to fetch")


@click.command()
@click.argument("name", default="origin")
@click.argument("branch", required=False)
@click.option("--ours", "resolve", flag_value="ours", help="On conflict keep our edits, drop theirs.")
@click.option("--theirs", "resolve", flag_value="theirs", help="On conflict keep their edits, drop ours.")
@click.option("--recompute", is_flag=True, help="Recompute edits that land on other weights than they were made on.")
@json_option
@guarded
@with_repo
def pull(name, branch, resolve, recompute, repo, as_json) -> None:
    """Fetch BRANCH (default: the current branch's name) of remote NAME and merge it.

    Example: romevc pull origin main --recompute
    """
    from romevc.remotes.sync import pull as pull_

    result = pull_(repo, name, branch, resolve=resolve, recompute=recompute).to_dict()
    emit(result, as_json, lambda d: "\n".join(_fetch_lines(d["fetch"]) + [_render_merge(d["merge"])]))


# -- clone -----------------------------------------------------------------------------------------------

def _default_folder(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return name.removesuffix(".git") or "edits"


@click.command()
@click.argument("url")
@click.argument("folder", required=False, type=click.Path(file_okay=False))
@click.option("-b", "--branch", default=None, help="Branch to check out (default: the remote's default).")
@click.option("--author", default=None, help="Default author of commits in the new repository.")
@json_option
@guarded
def clone(url, folder, branch, author, as_json) -> None:
    """A new repository in FOLDER from the edit sets at URL, on the base they name.

    Example: romevc clone hf://my-org/my-edits my-edits
    """
    from romevc.remotes.sync import clone as clone_

    folder = Path(folder or _default_folder(url))
    with clone_(url, folder, branch=branch, author=author) as repo:
        head = repo.ledger.head()
        data = {"url": url, "path": str(repo.root), "branch": head.branch, "commit": head.commit,
                "edits": len(repo.ledger.edit_ids_of(head.commit)), "base": repo.info.base_id,
                "branches": [b.name.removeprefix("refs/remotes/") for b in repo.ledger.list_refs("refs/remotes/")]}
    emit(data, as_json, lambda d: f"Cloned {d['url']} into {d['path']}: {d['branch']} at {d['commit'][:SHORT]} "
                                  f"({d['edits']} edit(s) on {d['base']})")


COMMANDS = [remote, push, fetch, pull, clone]

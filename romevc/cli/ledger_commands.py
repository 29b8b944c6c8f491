"""Commands that work on a repository: init, edit, log, show, status, diff, revert, apply,
branch, checkout, tag, merge, rebase, blame, verify, export, generate.

Each parses, makes one ``Repo`` call and prints: text that reads like git's (7-character
short ids), or JSON with ``--json``. ``--repo PATH`` points at a repository other than the
one around the current folder.
"""
from __future__ import annotations

import datetime as _dt
import functools
from typing import Callable

import click

from romevc.cli.output import UserError, emit, guarded, json_option, model_options

SHORT = 7


def repo_option(func: Callable) -> Callable:
    return click.option("--repo", "repo_path", default=".", metavar="PATH", show_default=True,
                        help="A folder inside the repository.")(func)


def with_repo(func: Callable) -> Callable:
    """Open the repository named by ``--repo`` and pass it as ``repo``; close it afterwards."""
    @repo_option
    @functools.wraps(func)
    def wrapper(*args, repo_path: str, **kwargs):
        from romevc.repo import Repo

        with Repo.open(repo_path) as repo:
            return func(*args, repo=repo, **kwargs)
    return wrapper


def _percent(p: float | None) -> str:
    return "-" if p is None else f"{100 * p:.1f}%"


def _date(time: int, tz: int) -> str:
    moment = _dt.datetime.fromtimestamp(time, _dt.timezone(_dt.timedelta(seconds=tz)))
    return moment.strftime("%a %b %d %H:%M:%S %Y %z")


def _decorate(labels: list[str] | None) -> str:
    return f" ({', '.join(labels)})" if labels else ""


def _title(message: str) -> str:
    return message.splitlines()[0] if message else ""


def _fact_line(sign: str, e: dict) -> str:
    stale = "  [stale]" if e.get("stale") else ""
    layers = e.get("layers") or e["layer"]
    where = f"layers {layers}" if isinstance(layers, str) and not layers.isdigit() else f"layer {layers}"
    return f"{sign} {e['short']}  {where}  {e['fact']}  ‖ΔW‖ {e['norm']:.3g}{stale}"


def _commit_block(c: dict, labels: list[str] | None) -> list[str]:
    lines = [f"commit {c['id']}{_decorate(labels)}"]
    if len(c["parents"]) > 1:
        lines.append("Merge: " + " ".join(p[:SHORT] for p in c["parents"]))
    lines += [f"Author: {c['author']}", f"Date:   {_date(c['time'], c['tz'])}", ""]
    lines += [f"    {line}" for line in c["message"].splitlines()] or ["    "]
    return lines


# -- init and edit -------------------------------------------------------------------------------------

@click.command()
@click.argument("path", default=".", type=click.Path(file_okay=False))
@model_options
@click.option("--ledger", "ledger_url", default=None, metavar="URL",
              help="An SQLAlchemy URL for a shared ledger (default: PATH/.romevc/ledger.db).")
@click.option("--author", default=None, help="Default author of commits (else $ROMEVC_AUTHOR, else your login).")
@click.option("--stats-corpus", default=None, help="Corpus for second-moment statistics (default: romevc's).")
@click.option("--stats-tokens", type=click.IntRange(min=1), default=None, help="Tokens of statistics per layer.")
@click.option("-b", "--initial-branch", default="main", show_default=True)
@json_option
@guarded
def init(path, base, dtype, device_map, ledger_url, author, stats_corpus, stats_tokens, initial_branch, as_json):
    """Create a repository on a base model, recording its id, revision and fingerprint.

    Example: romevc init --base HuggingFaceTB/SmolLM2-135M@main
    """
    from romevc.repo import Repo

    with Repo.init(path, base, ledger_url=ledger_url, dtype=dtype, author=author, stats_corpus=stats_corpus,
                   stats_tokens=stats_tokens, initial_branch=initial_branch, device_map=device_map) as repo:
        i = repo.info
        data = {"root": str(repo.root), "base": i.base_id, "revision": i.revision, "architecture": i.architecture,
                "dtype": i.dtype, "base_fingerprint": i.base_fingerprint, "branch": initial_branch}
    emit(data, as_json, lambda d: (
        f"Initialized empty romevc repository in {d['root']}/.romevc\n"
        f"base {d['base']}{'@' + d['revision'] if d['revision'] else ''} ({d['architecture']}, {d['dtype']}, "
        f"fingerprint {d['base_fingerprint'][:12]})"))


def edit_outside_repository(loaded, request, hparams_overrides: dict) -> dict:
    """Compute one edit on a freshly loaded base and report predictions before and after (nothing saved)."""
    from romevc.editor import Editor

    editor = Editor(loaded)
    hp = editor.hparams(**hparams_overrides)
    before = editor.predict(request.text, 1)[0]
    p_before = editor.probability(request.text, request.target_new)
    result = editor.compute(request, hp)
    editor.apply([result])
    after = editor.predict(request.text, 1)[0]
    p_after = editor.probability(request.text, request.target_new)
    editor.restore()
    return {
        "fact": request.fact(), "method": result.method, "layer": result.layer, "module": result.module,
        "delta_norm": result.delta.norm(), "seconds": result.seconds,
        "before": {"top": before.token, "p_top": before.probability, "p_target": p_before},
        "after": {"top": after.token, "p_top": after.probability, "p_target": p_after},
    }


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """"3-5" or "3,4,5" as (3, 4, 5); a malformed range is a one-line user error."""
    if text is None:
        return None
    try:
        if "-" in text:
            start, stop = (int(x) for x in text.split("-"))
            layers = tuple(range(start, stop + 1))
        else:
            layers = tuple(int(x) for x in text.split(","))
    except ValueError:
        layers = ()
    if not layers or any(a >= b for a, b in zip(layers, layers[1:])):
        raise UserError(f"--layers must be an ascending range like 3-5 or a list like 3,4,5, got {text!r}")
    return layers


def render_edit(d: dict) -> str:
    return "\n".join([
        f"edit: {d['fact']}  ({d['method']}, {d['module']}, ‖ΔW‖ = {d['delta_norm']:.3f}, {d['seconds']:.1f} s)",
        f"before: {d['before']['top']!r} ({_percent(d['before']['p_top'])}), p(target) {_percent(d['before']['p_target'])}",
        f"after:  {d['after']['top']!r} ({_percent(d['after']['p_top'])}), p(target) {_percent(d['after']['p_target'])}",
    ])


def _render_committed(items: list[dict], sign: str = "+") -> str:
    """git commit's summary line, then each edit the commit added (or, for a revert, removed)."""
    lines = []
    for d in items:
        c = d["commit"]
        lines.append(f"[{d['branch']} {c['short']}] {_title(c['message'])}")
        lines += [f"  {_fact_line(sign, e)}" for e in d["edits"]]
    return "\n".join(lines)


@click.command()
@click.option("--prompt", default=None, help="The fact's prompt, with {} for the subject.")
@click.option("--subject", default=None, help="The subject, as it appears in the prompt.")
@click.option("--target", "target_new", default=None, help="The new object.")
@click.option("--target-true", default=None, help="The current object (for reports).")
@click.option("--method", type=click.Choice(["r-rome", "rome", "memit", "alphaedit"]), default=None,
              help="Edit method (default r-rome); memit and alphaedit compute all requests as one batch, one "
                   "commit (alphaedit also protects the keys of the edits HEAD carries).")
@click.option("--layer", type=int, default=None, help="Layer to edit (default: the family's).")
@click.option("--layers", "layers_text", default=None, metavar="RANGE",
              help="memit/alphaedit: the layers to spread the batch over, as 3-5 or 3,4,5 (default: the family's).")
@click.option("--mom2-update-weight", type=float, default=None,
              help="memit: λ, how hard the update protects ordinary text's keys (default: the family's).")
@click.option("--null-space-energy", type=float, default=None,
              help="alphaedit: the share of ordinary text's key energy an update may touch (default 0.1).")
@click.option("--seed", type=int, default=None, help="Seed of the context templates (default 0).")
@click.option("--prompt-key/--no-prompt-key", default=None,
              help="r-rome: also map the bare prompt's own key (default on; off = Gupta et al.'s single key).")
@click.option("-m", "--message", default=None, help="Commit message (default: the fact).")
@click.option("--batch", "batch_file", default=None, type=click.Path(dir_okay=False),
              help="A JSONL file of requests: one commit per line, all or nothing (memit: one commit).")
@model_options
@repo_option
@json_option
@guarded
def edit(prompt, subject, target_new, target_true, method, layer, layers_text, mom2_update_weight, null_space_energy,
         seed, prompt_key, message, batch_file, base, dtype, device_map, repo_path, as_json):
    """Rewrite one fact and commit it on the current branch.

    Outside a repository the edit is computed on --base and shown before/after, not saved.
    With --method memit --batch FILE, all of FILE's requests are computed as one MEMIT batch
    on HEAD's weights and committed as one commit (-m sets its message); --method alphaedit
    does the same with AlphaEdit's null-space projection, protecting the keys of every edit
    HEAD already carries.

    Example: romevc edit --prompt "{} is located in the city of" --subject "The Eiffel Tower" --target Rome
    """
    from romevc.editing.request import EditRequest
    from romevc.ledger.errors import NotARepositoryError
    from romevc.repo import Repo

    from romevc.editing.memit_hparams import BATCH_METHODS

    memit = method in BATCH_METHODS
    overrides = {"method": method, "layer": layer, "seed": seed, "prompt_key": prompt_key}
    if batch_file is None and not (prompt and subject and target_new):
        raise click.UsageError("give --prompt, --subject and --target (or --batch FILE)")
    if batch_file is not None and (prompt or subject or target_new or (message and not memit)):
        raise click.UsageError("--batch takes its requests and messages from the file; drop --prompt/--subject/--target/-m")
    if memit and layer is not None:
        raise click.UsageError(f"--method {method} spreads the batch over --layers (e.g. 3-5); drop --layer")
    if prompt_key is not None and method in ("rome", *BATCH_METHODS):
        raise click.UsageError("--prompt-key/--no-prompt-key is an r-rome setting")
    if not memit and layers_text is not None:
        raise click.UsageError("--layers is a memit/alphaedit setting; add --method memit or --method alphaedit")
    if mom2_update_weight is not None and method != "memit":
        raise click.UsageError("--mom2-update-weight is a memit setting; add --method memit")
    if null_space_energy is not None and method != "alphaedit":
        raise click.UsageError("--null-space-energy is an alphaedit setting; add --method alphaedit")
    try:
        repo = Repo.open(repo_path)
    except NotARepositoryError:
        repo = None
    if repo is None:
        if batch_file is not None or memit:
            raise UserError(f"{'--batch' if batch_file else '--method ' + method} needs a repository to commit to; "
                            "run `romevc init` first")
        from romevc.cli.model_commands import _load

        request = EditRequest(prompt, subject, target_new, target_true)
        data = edit_outside_repository(_load(base, dtype, device_map), request, overrides)
        data["saved"] = False
        emit(data, as_json, render_edit)
        if not as_json:
            click.echo("note: not inside a romevc repository, so nothing was saved; "
                       "run `romevc init` to record edits", err=True)
        return
    with repo:
        if base is not None:
            raise UserError(f"this repository's base is {repo.info.base_id}; --base only applies outside a repository")
        if memit:
            settings = {"layers": parse_layers(layers_text), "mom2_update_weight": mom2_update_weight,
                        "null_space_energy": null_space_energy, "seed": seed}
            requests = batch_file if batch_file is not None else [EditRequest(prompt, subject, target_new, target_true)]
            made = repo.edit_memit(requests, {k: v for k, v in settings.items() if v is not None}, message=message,
                                   method=method)
            emit(made.to_dict(), as_json, lambda d: _render_committed([d]))
            return
        if batch_file is not None:
            made = repo.edit_batch(batch_file)
        else:
            request = EditRequest(prompt, subject, target_new, target_true)
            made = [repo.edit(request, {k: v for k, v in overrides.items() if v is not None}, message=message)]
    data = [m.to_dict() for m in made]
    emit(data if batch_file else data[0], as_json, lambda d: _render_committed(d if batch_file else [d]))


# -- reading ------------------------------------------------------------------------------------------

@click.command("log")
@click.argument("ref", required=False)
@click.option("--oneline", is_flag=True, help="One line per commit: short id, refs, title.")
@click.option("--first-parent", is_flag=True, help="Follow only first parents (the branch's own history).")
@click.option("-n", "--max-count", "limit", type=click.IntRange(min=1), default=None, help="Show at most N commits.")
@json_option
@guarded
@with_repo
def log_(ref, oneline, first_parent, limit, repo, as_json):
    """Show the commit history of REF (default HEAD), newest first.

    Example: romevc log --oneline
    """
    from romevc.porcelain.reports import commit_dict

    # An explicit REF, even "", must name a commit: only a missing REF means HEAD.
    commits = repo.log(None if ref is None else repo.ledger.resolve(ref), first_parent=first_parent, limit=limit)
    decor = repo.decorations()
    data = [{**commit_dict(c), "refs": decor.get(c.id, [])} for c in commits]

    def render(rows) -> str:
        if oneline:
            return "\n".join(f"{c['short']}{_decorate(c['refs'])} {_title(c['message'])}" for c in rows)
        return "\n\n".join("\n".join(_commit_block(c, c["refs"])) for c in rows)

    emit(data, as_json, render)


@click.command()
@click.argument("ref", default="HEAD")
@click.option("--no-predict", is_flag=True, help="Skip the before/after predictions (no model is loaded).")
@json_option
@guarded
@with_repo
def show(ref, no_predict, repo, as_json):
    """Show what a commit changed: facts, layers, ‖ΔW‖, predictions before and after.

    Example: romevc show HEAD~1
    """
    report = repo.show(ref, predictions=not no_predict)
    decor = repo.decorations()

    def render(d) -> str:
        lines = _commit_block(d["commit"], decor.get(d["commit"]["id"])) + [""]
        effects = {(x["edit"]["id"], x["change"]): x for x in d["effects"]}
        for sign, change in (("+", "added"), ("-", "removed")):
            for e in d[change]:
                lines.append(_fact_line(sign, e))
                x = effects.get((e["id"], change))
                if x:
                    for when in ("before", "after"):
                        p = x[when]
                        lines.append(f"    {when + ':':7} {p['token']!r} {_percent(p['probability'])}, "
                                     f"p({e['target_new']}) {_percent(p['p_target'])}")
        if not d["added"] and not d["removed"]:
            lines.append("(no edits changed)")
        return "\n".join(lines)

    emit(report.to_dict(), as_json, render)


@click.command()
@json_option
@guarded
@with_repo
def status(repo, as_json):
    """Show the branch, HEAD, its edit count, stale edits and the base.

    Example: romevc status
    """
    def render(d) -> str:
        if d["branch"] is None:
            lines = [f"HEAD detached at {d['head'][:SHORT]}"]
        else:
            lines = [f"On branch {d['branch']}"]
        if d["head"] is None:
            lines.append("No commits yet")
        else:
            lines.append(f"HEAD {d['head'][:SHORT]}: {d['edits']} edit(s), {len(d['stale'])} stale")
        rev = f"@{d['revision']}" if d["revision"] else ""
        lines.append(f"base {d['base']}{rev} ({d['architecture']}, {d['dtype']}, fingerprint {d['base_fingerprint'][:12]})")
        if d["stale"]:
            lines.append("stale edits (computed on other weights; recompute them with `romevc rebase`):")
            lines += [f"  {e['short']}  {e['fact']}" for e in d["stale"]]
        return "\n".join(lines)

    emit(repo.status().to_dict(), as_json, render)


@click.command()
@click.argument("a")
@click.argument("b", default="HEAD")
@click.option("--probe", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Prompts (one per line, or JSONL with 'prompt'): list those whose top prediction differs.")
@json_option
@guarded
@with_repo
def diff(a, b, probe, repo, as_json):
    """Show the edits added and removed from A to B (default HEAD), per layer.

    Example: romevc diff main feature --probe prompts.txt
    """
    report = repo.diff(a, b, probe=probe)

    def render(d) -> str:
        lines = [f"diff {d['a'][:SHORT]}..{d['b'][:SHORT]}"]
        for layer, change in d["by_layer"].items():  # in layer order
            lines.append(f"layer {layer}")
            lines += [f"+ {fact}" for fact in change["added"]] + [f"- {fact}" for fact in change["removed"]]
        if not d["by_layer"]:
            lines.append("(same edit set)")
        if d["probes"] is not None:
            changed = [p for p in d["probes"] if p["changed"]]
            lines.append(f"probes: {len(changed)} of {len(d['probes'])} prompt(s) change their top prediction")
            lines += [f"  {p['prompt']!r}: {p['before']['token']!r} -> {p['after']['token']!r}" for p in changed]
        return "\n".join(lines)

    emit(report.to_dict(), as_json, render)


@click.command()
@click.argument("subject", required=False)
@click.option("--layer", type=int, default=None, help="Edits of this layer instead of (or besides) a subject.")
@click.option("--ref", default=None, help="Walk the history of this ref (default HEAD).")
@json_option
@guarded
@with_repo
def blame(subject, layer, ref, repo, as_json):
    """Show which commits added or removed edits of SUBJECT (or of --layer L).

    Example: romevc blame "The Eiffel Tower"
    """
    if subject is None and layer is None:
        raise click.UsageError("give a SUBJECT or --layer L")
    lines_ = repo.blame(subject, layer=layer, ref=ref)

    def render(rows) -> str:
        out = []
        for r in rows:
            c = r["commit"]
            when = _dt.datetime.fromtimestamp(c["time"], _dt.timezone.utc).strftime("%Y-%m-%d")
            for sign, change in (("+", "added"), ("-", "removed")):
                out += [f"{c['short']} ({c['author']} {when}) {sign} layer {e['layers']}  {e['fact']}" for e in r[change]]
        return "\n".join(out) or "no commit changed a matching edit"

    emit([r.to_dict() for r in lines_], as_json, render)


@click.command()
@click.option("--recompute", is_flag=True, help="Also recompute every edit from its request and compare.")
@json_option
@click.pass_context
@guarded
@with_repo
def verify(ctx, recompute, repo, as_json):
    """Check every hash and reference; with --recompute, that each edit recomputes to its stored delta.

    Example: romevc verify --recompute
    """
    result = repo.verify(recompute=recompute)

    def render(d) -> str:
        lines = [f"checked {d['edits']} edit(s), {d['commits']} commit(s), {d['refs']} ref(s)"]
        if d["recomputed"]:
            counts = {s: sum(c["status"] == s for c in d["recomputed"]) for s in ("identical", "differs", "skipped")}
            lines.append("recomputed: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        lines += [f"problem: {p}" for p in d["problems"]]
        lines.append("ok" if d["ok"] else f"{len(d['problems'])} problem(s) found")
        return "\n".join(lines)

    emit(result.to_dict(), as_json, render)
    if not result.ok:
        ctx.exit(1)


# -- changing history ----------------------------------------------------------------------------------

@click.command()
@click.argument("ref")
@click.option("-m", "--message", default=None, help="Commit message (default: Revert \"<title>\").")
@json_option
@guarded
@with_repo
def revert(ref, message, repo, as_json):
    """Commit the current edit set without the edits REF added: exact, as if never made.

    Example: romevc revert HEAD~2
    """
    emit(repo.revert(ref, message=message).to_dict(), as_json, lambda d: _render_committed([d], "-"))


@click.command()
@click.argument("editset", type=click.Path(exists=True))
@click.option("--recompute", is_flag=True, help="Recompute a folder's stale edits on this branch's weights.")
@click.option("-m", "--message", default=None, help="Commit message.")
@json_option
@guarded
@with_repo
def apply(editset, recompute, message, repo, as_json):
    """Commit the edits of an edit set onto the current branch, as one commit.

    EDITSET is a JSONL file of requests (computed here) or a published edit-set folder
    (its stored deltas taken as they are, flagged stale where made on other weights;
    --recompute recomputes those here).

    Example: romevc apply facts.jsonl
    """
    emit(repo.apply(editset, recompute=recompute, message=message).to_dict(), as_json,
         lambda d: _render_committed([d]))


def _render_merge(d: dict) -> str:
    if d["kind"] == "up-to-date":
        return "Already up to date."
    head = {"fast-forward": "Fast-forward to", "merge": "Merge made:", "rebase": "Rebased:"}[d["kind"]]
    lines = [f"{head} {d['commit'][:SHORT]}"]
    lines += [f"+ {e['short']}  layer {e['layer']}  {e['fact']}" for e in d["added"]]
    lines += [f"dropped {e['short']}  {e['fact']}" for e in d["dropped"]]
    lines += [f"recomputed {o[:SHORT]} -> {n[:SHORT]}" for o, n in ((r["old"], r["new"]) for r in d["recomputed"])]
    if d["stale"]:
        lines.append(f"{len(d['stale'])} edit(s) are stale (computed on other weights): recompute them with "
                     "`romevc rebase`, or merge with --recompute")
    return "\n".join(lines)


@click.command()
@click.argument("ref")
@click.option("--ours", "resolve", flag_value="ours", help="On conflict keep our edits, drop theirs.")
@click.option("--theirs", "resolve", flag_value="theirs", help="On conflict keep their edits, drop ours.")
@click.option("--recompute", is_flag=True, help="Recompute edits that land on other weights than they were made on.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="|cos| of update directions counted as a conflict (default 0.9).")
@click.option("--no-ff", is_flag=True, help="Make a merge commit even when a fast-forward is possible.")
@click.option("-m", "--message", default=None, help="Commit message (default: Merge REF into BRANCH).")
@json_option
@guarded
@with_repo
def merge(ref, resolve, recompute, threshold, no_ff, message, repo, as_json):
    """Merge REF into the current branch: the union of both edit sets, refusing conflicts.

    Example: romevc merge feature --recompute
    """
    from romevc.porcelain.merge import DEFAULT_THRESHOLD

    result = repo.merge(ref, resolve=resolve, recompute=recompute, no_ff=no_ff, message=message,
                        threshold=DEFAULT_THRESHOLD if threshold is None else threshold)
    emit(result.to_dict(), as_json, _render_merge)


@click.command()
@click.argument("onto", required=False)
@json_option
@guarded
@with_repo
def rebase(onto, repo, as_json):
    """Recompute stale edits at HEAD, or replay this branch onto ONTO with its edits recomputed.

    Example: romevc rebase main
    """
    emit(repo.rebase(onto).to_dict(), as_json, _render_merge)


# -- refs ---------------------------------------------------------------------------------------------

@click.command()
@click.argument("name", required=False)
@click.argument("start", default="HEAD")
@click.option("-d", "--delete", is_flag=True, help="Delete branch NAME (only if merged into HEAD).")
@click.option("-D", "force_delete", is_flag=True, help="Delete branch NAME even if not merged.")
@json_option
@guarded
@with_repo
def branch(name, start, delete, force_delete, repo, as_json):
    """List branches, create NAME at START (default HEAD), or delete NAME with -d.

    Example: romevc branch feature
    """
    if delete or force_delete:
        if name is None:
            raise click.UsageError("-d needs a branch NAME")
        tip = repo.delete_branch(name, force=force_delete)
        emit({"deleted": name, "commit": tip}, as_json, lambda d: f"Deleted branch {name} (was {tip[:SHORT]}).")
    elif name is not None:  # "" is a name, and refused as one
        made = repo.branch(name, start)
        emit(made.to_dict(), as_json, lambda d: f"Created branch {name} at {made.commit[:SHORT]}")
    else:
        rows = [b.to_dict() for b in repo.branches()]
        emit(rows, as_json, lambda rs: "\n".join(f"{'*' if r['current'] else ' '} {r['name']}" for r in rs))


@click.command()
@click.argument("ref", required=False)
@click.option("-b", "new_branch", default=None, metavar="NAME", help="Create branch NAME at REF (default HEAD) and switch.")
@click.option("--orphan", default=None, metavar="NAME", help="Switch to a new branch NAME with no commits yet.")
@json_option
@guarded
@with_repo
def checkout(ref, new_branch, orphan, repo, as_json):
    """Switch HEAD to a branch, or detach it at a commit (weights follow on demand).

    Example: romevc checkout -b feature
    """
    if ref is None and new_branch is None and orphan is None:
        raise click.UsageError("give a REF, -b NAME or --orphan NAME")
    head = repo.checkout("HEAD" if ref is None else ref, create=new_branch, orphan=orphan)
    data = {"branch": head.branch, "commit": head.commit, "detached": head.branch is None}

    def render(d) -> str:
        if new_branch or orphan:
            return f"Switched to a new branch '{new_branch or orphan}'"
        if d["detached"]:
            title = _title(repo.ledger.get_commit(d["commit"]).message)
            return f"HEAD is now at {d['commit'][:SHORT]} {title} (detached: commit on a branch with -b NAME)"
        return f"Switched to branch '{d['branch']}'"

    emit(data, as_json, render)


@click.command()
@click.argument("name", required=False)
@click.argument("ref", default="HEAD")
@click.option("-d", "--delete", is_flag=True, help="Delete tag NAME.")
@json_option
@guarded
@with_repo
def tag(name, ref, delete, repo, as_json):
    """List tags, tag REF (default HEAD) as NAME, or delete NAME with -d.

    Example: romevc tag v1 HEAD~1
    """
    if delete:
        if name is None:
            raise click.UsageError("-d needs a tag NAME")
        tip = repo.delete_tag(name)
        emit({"deleted": name, "commit": tip}, as_json, lambda d: f"Deleted tag '{name}' (was {tip[:SHORT]})")
    elif name is not None:
        made = repo.tag(name, ref)
        emit(made.to_dict(), as_json, lambda d: f"Tagged {made.commit[:SHORT]} as {name}")
    else:
        emit([t.to_dict() for t in repo.tags()], as_json, lambda rs: "\n".join(r["name"] for r in rs))


# -- the model at a commit ------------------------------------------------------------------------------

@click.command()
@click.argument("ref")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write (must not hold files).")
@click.option("--format", "fmt", type=click.Choice(["full", "peft", "romevc"]), default="full", show_default=True,
              help="full: a transformers checkpoint with its model card; peft: a LoRA adapter that "
                   "PeftModel.from_pretrained loads; romevc: the published edit-set folder.")
@click.option("--force", is_flag=True, help="Replace an existing folder.")
@json_option
@guarded
@with_repo
def export(ref, out, fmt, force, repo, as_json):
    """Write REF as a transformers checkpoint (default), a PEFT LoRA adapter or an edit-set folder in --out.

    Example: romevc export main --format peft --out edits-lora
    """
    from romevc.remotes.exports import export as export_as

    folder = export_as(repo, ref, out, fmt, force=force)
    commit = repo.ledger.resolve(ref)
    data = {"commit": commit, "out": str(folder), "format": fmt, "edits": len(repo.ledger.edit_ids_of(commit))}
    emit(data, as_json, lambda d: f"Exported {d['commit'][:SHORT]} ({d['edits']} edit(s)) to {d['out']}"
                                  + ("" if d["format"] == "full" else f" as {d['format']}"))


@click.command()
@click.argument("ref")
@click.argument("prompt")
@click.option("--max-new-tokens", type=click.IntRange(1, 1000), default=30, show_default=True)
@json_option
@guarded
@with_repo
def generate(ref, prompt, max_new_tokens, repo, as_json):
    """Continue PROMPT greedily with the model at REF.

    Example: romevc generate main "The Eiffel Tower is located in"
    """
    text = repo.generate(ref, prompt, max_new_tokens)
    emit({"ref": ref, "prompt": prompt, "completion": text}, as_json, lambda d: d["prompt"] + d["completion"])


COMMANDS = [init, edit, log_, show, status, diff, revert, apply, branch, checkout, tag, merge, rebase, blame,
            verify, export, generate]

"""Property-based fuzzing of everything a user types or a file holds (hypothesis).

Each property runs on generated inputs under a fixed seed (``derandomize=True``), so CI sees
the same cases on every run:

- edit requests: any prompt, subject and target either build a request whose text puts the
  subject in its slot (and whose last subject token the tokeniser finds), or raise
  ``EditRequestError``; a request assembled from valid parts always builds;
- refs: ``check_ref_name`` never accepts what ``git check-ref-format`` refuses, and
  ``resolve`` either finds exactly the commit a walk over parents finds or raises a
  ``RomevcError``, for HEAD, names, short ids and ``~N``/``^N`` suffixes alike;
- the CLI: ``log``, ``show``, ``diff``, ``checkout``, ``branch``, ``tag``, ``blame``,
  ``remote add`` and ``edit`` on a real repository of the tiny GPT-2, with arbitrary refs,
  names and strings (lone surrogates included, as undecodable argv bytes arrive), exit 0
  doing what the library says, or 1 with one ``error:`` line and no traceback, leaving
  every table of the ledger as it was;
- JSONL batch files and probe files: arbitrary lines parse to checked requests or raise
  ``EditSetError`` naming the line, and ``romevc apply`` of a refused file changes nothing;
- remote manifests: ``romevc.json`` with any field replaced, dropped or garbled is read
  back verified, or refused with an ``InvalidEditSetError``; ``romevc apply`` of it changes
  nothing.

Every property counts its cases; the counts print at the end of the module (``-s``), and the
last test checks that at least 1,000 ran.
"""
from __future__ import annotations

import collections
import functools
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from romevc.cli import cli
from romevc.editing.hparams import RomeHyperParams
from romevc.editing.request import EditRequest, subject_last_token_index
from romevc.errors import EditRequestError, RomevcError
from romevc.ledger import Ledger, default_url
from romevc.ledger.errors import RefFormatError
from romevc.ledger.refs import HEADS, TAGS, check_ref_name
from romevc.porcelain.batch import read_probes, read_requests
from romevc.porcelain.errors import EditSetError
from romevc.remotes.editset import (
    MANIFEST,
    TENSORS,
    parse_manifest,
    read_editset,
    write_editset,
)
from romevc.remotes.errors import InvalidEditSetError
from romevc.repo import Repo
from tests.fault_report import report as report_counts
from tests.ledger_dump import dump
from tests.tiny_facts import AUTHOR, FIXTURE, A, B, C

pytestmark = pytest.mark.usefixtures("one_thread")

# Derandomized: the same cases on every run and every machine; no example database on disk.
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow])


def fuzz(max_examples: int) -> settings:
    return settings(FUZZ, max_examples=max_examples)


CASES: collections.Counter[str] = collections.Counter()  # property -> generated cases run
PROPERTIES = ("request-parts", "request-any", "request-dict", "ref-name", "revision", "cli", "batch-file",
              "probe-file", "manifest")


# -- the repository every property runs against ------------------------------------------------------

@dataclass
class Fuzzed:
    root: Path  # the repository folder
    ledger: Ledger  # an open handle for oracles (reads only; restores after a successful CLI change)
    commits: list[str]  # every commit id
    tokenizer: object
    folder: Path  # an edit-set folder of main (the manifest property starts from it)
    scratch: Path


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, tiny, one_thread):
    """main: A, B (tag v1 at B); side: A, C; old: at A (merged into main, so `branch -d old` works)."""
    root = tmp_path_factory.mktemp("fuzz")
    with Repo.init(root / "repo", str(FIXTURE), loaded=tiny, author=AUTHOR, stats_corpus=str(FIXTURE / "corpus.txt"),
                   stats_tokens=3000, stats_root=str(root / "stats"), time=0) as repo:
        repo.edit(A, time=1)
        repo.branch("old")
        repo.checkout("HEAD", create="side")
        repo.edit(C, time=2)
        repo.checkout("main")
        repo.edit(B, time=3)
        repo.tag("v1")
        folder = write_editset(repo, ["main"], root / "editset")
    ledger = Ledger(default_url(root / "repo"))
    commits = sorted({c.id for ref in ("main", "side") for c in ledger.log(ref)})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROMEVC_CACHE", str(root / "cache"))
        yield Fuzzed(root / "repo", ledger, commits, tiny.tokenizer, folder, root / "scratch")
    ledger.close()


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    width = max(map(len, PROPERTIES))
    report_counts("fuzzing", "fuzz cases per property:", *(f"  {name:<{width}}  {CASES[name]:>5}" for name in PROPERTIES),
           f"  {'total':<{width}}  {sum(CASES.values()):>5}")


RUNNER = CliRunner()


def romevc(*args: str):
    return RUNNER.invoke(cli, list(args))


def assert_one_line_error(result, args) -> None:
    """Exit 1, nothing but one ``error:`` line on stderr, and no exception but click's exit."""
    assert result.exit_code == 1, (args, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (args, result.stderr)
    assert "Traceback" not in result.output


# -- strategies ---------------------------------------------------------------------------------------

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
NASTY = st.sampled_from(["{}", "{", "}", "{0}", "{{}}", " ", "\n", "\t", "\x00", "\x7f", "~", "^", ":", "..", "@{",
                         ".lock", "/", "\\", "*", "[", "é", "→", "\u2028", "\ufeff", "ß", "İ"])


def texts(max_size: int = 12) -> st.SearchStrategy[str]:
    """Arbitrary text, biased towards the characters parsers trip on, sometimes a lone surrogate."""
    pieces = st.one_of(st.text(max_size=4), NASTY, st.sampled_from(["Tomas Varek", "main", "HEAD", "x"]))
    plain = st.lists(pieces, max_size=max_size // 2).map("".join)
    return st.one_of(plain, plain, plain, st.text(max_size=max_size),
                     st.tuples(plain, SURROGATES, plain).map("".join))


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=8), NASTY)
JSON = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                    max_leaves=8)


def suffixes() -> st.SearchStrategy[str]:
    number = st.one_of(st.just(""), st.integers(0, 3).map(str), st.integers(0, 10**30).map(str),
                       st.just("٣"), st.just("-1"))
    return st.lists(st.tuples(st.sampled_from("~^"), number), max_size=3).map(lambda ops: "".join(a + b for a, b in ops))


NAMES = ["HEAD", "@", "main", "side", "old", "v1", "refs/heads/main", "refs/tags/v1", "refs/heads/side", "nope",
         "refs/heads/nope", "refs/remotes/origin/main", "origin/main", "heads/main", ""]


def refish(commits: list[str]) -> st.SearchStrategy[str]:
    """Refs as users write them (names, ids of any length, suffixes), and anything at all."""
    ids = st.sampled_from(commits).flatmap(lambda c: st.integers(0, 64).map(lambda n: c[:n]))
    hex_ = st.text(alphabet="0123456789abcdefABCDEF", max_size=12)
    base = st.one_of(st.sampled_from(NAMES), ids, hex_, texts(8))
    return st.one_of(st.tuples(base, suffixes()).map("".join), st.tuples(base, suffixes()).map("".join), texts(16))


@functools.cache
def _refish(commits: tuple[str, ...]) -> st.SearchStrategy[str]:
    return refish(list(commits))


def refish_of(fuzzed: Fuzzed) -> st.SearchStrategy[str]:
    """One strategy per repository (hypothesis is slow to set up a strategy it has not seen)."""
    return _refish(tuple(fuzzed.commits))


def parents_walk(ledger: Ledger, base: str | None, ops: list[tuple[str, int]]) -> str | None:
    """The commit git would name by ``base`` then ``ops`` (None when a step passes the root)."""
    commit = base
    for op, n in ops:
        for _ in range(n if op == "~" else min(n, 1)):
            parents = ledger.get_commit(commit).parents
            index = 0 if op == "~" else n - 1
            if index >= len(parents):
                return None
            commit = parents[index]
    return commit


# -- edit requests ---------------------------------------------------------------------------------------

BRACELESS = st.text(st.characters(blacklist_characters="{}", blacklist_categories=("Cs",)), max_size=20)


@fuzz(100)
@given(before=BRACELESS, after=BRACELESS, subject=BRACELESS.filter(str.strip), target=BRACELESS.filter(str.strip))
def test_a_request_built_from_valid_parts_always_builds(fuzzed, before, after, subject, target):
    CASES["request-parts"] += 1
    request = EditRequest(before + "{}" + after, subject, target)
    assert request.text == before + subject.strip() + after
    assert request.subject == subject.strip() and request.target_new == target.strip()
    try:
        index = subject_last_token_index(fuzzed.tokenizer, request.prompt, request.subject)
    except EditRequestError:
        return  # a subject the tokeniser cannot separate from its context is refused, not guessed
    assert 0 <= index < len(fuzzed.tokenizer(request.text)["input_ids"])


@fuzz(200)
@given(prompt=texts(), subject=texts(), target=texts(), target_true=st.one_of(st.none(), texts(), JSON_SCALARS))
def test_any_request_builds_or_raises_an_edit_request_error(prompt, subject, target, target_true):
    CASES["request-any"] += 1
    try:
        request = EditRequest(prompt, subject, target, target_true)
    except EditRequestError:
        return
    assert request.prompt.count("{}") == 1 and "{" not in request.prompt.replace("{}", "")
    assert request.subject and request.subject == request.subject.strip() and request.target_new.strip()
    assert request.text == request.prompt.replace("{}", request.subject)
    (request.text + request.target_new + (request.target_true or "")).encode("utf-8")  # storable
    assert EditRequest.from_dict(request.to_dict()) == request  # a stored request reads back as itself


@fuzz(100)
@given(data=st.one_of(JSON, st.dictionaries(st.sampled_from(["prompt", "subject", "target", "target_new",
                                                              "target_true", "ground_truth", "x"]),
                                             st.one_of(JSON_SCALARS, texts()), max_size=5)))
def test_a_request_from_any_json_value_builds_or_raises_an_edit_request_error(data):
    CASES["request-dict"] += 1
    try:
        request = EditRequest.from_dict(data)
    except EditRequestError:
        return
    assert isinstance(request, EditRequest) and isinstance(data, dict)


# -- refs -------------------------------------------------------------------------------------------------------

@fuzz(100)
@given(name=st.one_of(st.tuples(st.sampled_from(["refs/heads/", "refs/tags/", "refs/", "refs/remotes/o/"]), texts(10))
                      .map("".join), texts(14)))
def test_check_ref_name_never_accepts_what_git_refuses(name):
    CASES["ref-name"] += 1
    try:
        accepted = check_ref_name(name) == name
    except RefFormatError:
        accepted = False
    if accepted:
        git = subprocess.run(["git", "check-ref-format", name], capture_output=True, check=False)
        assert git.returncode == 0, f"romevc accepts {name!r}, git refuses it"
        assert name.encode("utf-8") and len(name) <= 255


@fuzz(150)
@given(data=st.data())
def test_resolve_finds_what_a_walk_over_parents_finds_or_raises(fuzzed, data):
    CASES["revision"] += 1
    ledger = fuzzed.ledger
    known = {"HEAD": ledger.resolve("main"), "main": ledger.resolve("main"), "side": ledger.resolve("side"),
             "v1": ledger.resolve("main"), "old": ledger.resolve("old"), "refs/heads/side": ledger.resolve("side")}
    if data.draw(st.booleans()):  # a well-formed revision: the oracle knows the answer
        base = data.draw(st.one_of(st.sampled_from(sorted(known)), st.sampled_from(fuzzed.commits)
                                   .flatmap(lambda c: st.integers(4, 64).map(lambda n: c[:n]))))
        ops = data.draw(st.lists(st.tuples(st.sampled_from("~^"), st.integers(0, 4)), max_size=4))
        refish = base + "".join(op + str(n) for op, n in ops)
        start = known.get(base) or next((c for c in fuzzed.commits if c.startswith(base)), None)
        matches = [c for c in fuzzed.commits if c.startswith(base)]
        expected = parents_walk(ledger, start, ops) if base in known or len(matches) == 1 else None
    else:
        refish, expected = data.draw(refish_of(fuzzed)), "unknown"
    try:
        got = ledger.resolve(refish)
    except RomevcError:
        assert expected in (None, "unknown"), (refish, expected)
        return
    assert got in fuzzed.commits and expected in (got, "unknown"), (refish, got, expected)


# -- the CLI --------------------------------------------------------------------------------------------------

COMMANDS = ("log", "show", "diff", "checkout", "checkout-b", "branch", "branch-d", "tag", "tag-d", "blame",
            "remote-add", "edit")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _resolves(ledger: Ledger, refish: str) -> str | None:
    try:
        return ledger.resolve(refish)
    except RomevcError:
        return None


def _valid_ref(full: str) -> bool:
    try:
        check_ref_name(full)
        return True
    except RefFormatError:
        return False


def _cli_case(fuzzed: Fuzzed, command: str, a: str, b: str, c: str):
    """(args, whether the library says it succeeds, a check of the success, how to undo it)."""
    ledger, repo = fuzzed.ledger, ["--repo", str(fuzzed.root)]
    ra, rb = _resolves(ledger, a), _resolves(ledger, b)
    nothing, noop = (lambda result: None), (lambda: None)
    if command == "log":
        def check(result):
            assert len(result.stdout.splitlines()) == len(ledger.log(ra))
        return ["log", "--oneline", *repo, "--", a], ra is not None, check, noop
    if command == "show":
        def check(result):
            assert json.loads(result.stdout)["commit"]["id"] == ra
        return ["show", "--no-predict", "--json", *repo, "--", a], ra is not None, check, noop
    if command == "diff":
        def check(result):
            d = json.loads(result.stdout)
            assert (d["a"], d["b"]) == (ra, rb)
        return ["diff", "--json", *repo, "--", a, b], None not in (ra, rb), check, noop
    if command == "checkout":
        on_branch = a not in ("", "HEAD") and _valid_ref(a if a.startswith(HEADS) else HEADS + a) and \
            ledger.get_ref(a if a.startswith(HEADS) else HEADS + a) is not None

        def check(result):
            d = json.loads(result.stdout)
            assert d["commit"] == ra or on_branch
        return ["checkout", "--json", *repo, "--", a], on_branch or ra is not None, check, \
            lambda: ledger.set_head_symbolic("main")
    if command == "checkout-b":
        name = a if a.startswith(HEADS) else HEADS + a
        ok = a not in ("HEAD", "@") and _valid_ref(name) and ledger.get_ref(name) is None and rb is not None

        def undo():
            ledger.set_head_symbolic("main")
            ledger.delete_ref(name)
        def check(result):
            assert ledger.get_ref(name).target == rb and ledger.head().branch == name.removeprefix(HEADS)
        return ["checkout", "--json", *repo, "-b", a, "--", b], ok, check, undo
    if command in ("branch", "tag"):
        prefix = HEADS if command == "branch" else TAGS
        name = a if a.startswith(prefix) else prefix + a
        ok = a not in ("", "HEAD", "@") and _valid_ref(name) and ledger.get_ref(name) is None and rb is not None

        def check(result):
            assert ledger.get_ref(name).target == rb
        return [command, *repo, "--", a, b], ok, check, lambda: ledger.delete_ref(name)
    if command in ("branch-d", "tag-d"):
        prefix = HEADS if command == "branch-d" else TAGS
        name = a if a.startswith(prefix) else prefix + a
        before = ledger.get_ref(name) if _valid_ref(name) else None
        merged = before is not None and (prefix == TAGS or ledger.is_ancestor(before.target, ledger.resolve("HEAD")))
        ok = a != "" and before is not None and merged and name != HEADS + "main"

        def undo():
            ledger.update_ref(name, before.target, None)
        def check(result):
            assert ledger.get_ref(name) is None
        return [command[:-2], "-d", *repo, "--", a], ok, check, undo
    if command == "blame":
        return ["blame", "--json", *repo, f"--ref={b}", "--", a], rb is not None, nothing, noop
    if command == "remote-add":
        from romevc.remotes.protocol import check_url

        try:
            check_url(b)
            url_ok = True
        except RomevcError:
            url_ok = False
        ok = url_ok and a != "" and _valid_ref(f"refs/remotes/{a}/x") and b.strip().encode("utf-8", "strict") != b"" \
            and a not in {r.name for r in ledger.list_remotes()}
        def check(result):
            assert ledger.get_remote(a).url == b.strip()
        return ["remote", "add", *repo, "--", a, b], ok, check, lambda: ledger.remove_remote(a)
    # edit: only requests the library refuses (a valid one would cost an edit's computation)
    return ["edit", *repo, f"--prompt={a}", f"--subject={b}", f"--target={c}"], False, nothing, noop


@fuzz(250)
@given(data=st.data(), command=st.sampled_from(COMMANDS))
def test_the_cli_succeeds_as_the_library_says_or_prints_one_error_line_and_changes_nothing(fuzzed, data, command):
    CASES["cli"] += 1
    a, b = data.draw(refish_of(fuzzed), label="a"), data.draw(refish_of(fuzzed), label="b")
    c = data.draw(texts(), label="c")
    if command == "edit":
        try:
            EditRequest(a, b, c)
            return  # valid: computing it is the repository tests' job
        except EditRequestError:
            pass
    args, ok, check, undo = _cli_case(fuzzed, command, a, b, c)
    texts_ok = all(map(_utf8, args))  # else refused before the command runs
    before = dump(fuzzed.root)
    result = romevc(*args)
    if command == "edit" and texts_ok and not (a and b and c):
        assert result.exit_code == 2 and "Traceback" not in result.output  # click's usage error
        assert dump(fuzzed.root) == before
        return
    if ok and texts_ok:
        try:
            assert result.exit_code == 0, (args, result.output, result.exception)
            check(result)
        finally:
            if result.exit_code == 0:
                undo()
    else:
        assert_one_line_error(result, args)
    assert dump(fuzzed.root) == before, args


# -- JSONL batch files and probe files ----------------------------------------------------------------------

def valid_lines() -> st.SearchStrategy[dict]:
    request = st.fixed_dictionaries({"prompt": st.tuples(BRACELESS, BRACELESS).map(lambda p: p[0] + "{}" + p[1]),
                                     "subject": BRACELESS.filter(str.strip), "target": BRACELESS.filter(str.strip)},
                                    optional={"target_true": BRACELESS, "message": BRACELESS,
                                              "layer": st.integers(0, 3), "seed": st.integers(0, 2**63 - 1),
                                              "method": st.sampled_from(["rome", "r-rome"]),
                                              "hparams": st.fixed_dictionaries({}, optional={
                                                  "v_steps": st.integers(1, 50), "kl_factor": st.floats(0, 1),
                                                  "templates": st.lists(st.tuples(st.integers(1, 20),
                                                                                  st.integers(0, 5)).map(list),
                                                                        max_size=2)})})
    counterfact = st.builds(lambda r: {"requested_rewrite": {"prompt": r["prompt"], "subject": r["subject"],
                                                             "target_new": {"str": r["target"]}}}, request)
    return st.one_of(request, request, counterfact)


def mutated(line: dict) -> st.SearchStrategy[dict]:
    keys = sorted(line) + ["hparams", "layer", "seed", "method", "message", "requested_rewrite", "extra"]
    return st.tuples(st.sampled_from(keys), st.one_of(JSON, texts())).map(lambda kv: {**line, kv[0]: kv[1]})


def lines() -> st.SearchStrategy[str]:
    as_json = lambda v: json.dumps(v, ensure_ascii=False)
    return st.one_of(
        valid_lines().map(as_json),
        valid_lines().flatmap(mutated).map(as_json),
        JSON.map(json.dumps),
        texts(20),
        st.sampled_from(["", "   ", "[" * 5000, '{"prompt": "\\ud800 {}", "subject": "x", "target": "y"}',
                         '{"prompt": "{} a", "subject": "x", "target": "y", "layer": 1e400}',
                         '{"prompt": "{} a", "subject": "x", "target": "y", "hparams": {"seed": NaN}}']),
    )


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


@fuzz(150)
@given(content=st.lists(lines(), min_size=0, max_size=4), all_valid=st.lists(valid_lines(), min_size=1, max_size=3))
def test_a_batch_file_parses_to_checked_requests_or_is_refused_by_line_and_changes_nothing(fuzzed, content,
                                                                                           all_valid):
    CASES["batch-file"] += 1
    good = _write(fuzzed.scratch, "good.jsonl", "\n".join(json.dumps(v, ensure_ascii=False) for v in all_valid))
    assert [r.line for r in read_requests(good)] == list(range(1, len(all_valid) + 1))  # valid input works
    path = _write(fuzzed.scratch, "batch.jsonl", "\n".join(content))
    try:
        parsed = read_requests(path)
    except EditSetError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        before = dump(fuzzed.root)
        result = romevc("apply", "--repo", str(fuzzed.root), str(path))
        assert_one_line_error(result, content)
        assert dump(fuzzed.root) == before
        return
    assert [r.line for r in parsed] == [i for i, line in enumerate(content, 1) if line.strip()]
    for r in parsed:
        assert isinstance(r.request, EditRequest) and (r.message is None or isinstance(r.message, str))
        RomeHyperParams(**r.hparams)  # already checked: every line is valid before anything is computed
        json.dumps([r.request.to_dict(), r.hparams, r.message], ensure_ascii=False).encode("utf-8")


@fuzz(60)
@given(content=st.lists(st.one_of(texts(20), JSON.map(json.dumps),
                                  st.fixed_dictionaries({"prompt": st.one_of(texts(), JSON_SCALARS)},
                                                        optional={"subject": st.one_of(texts(), JSON_SCALARS)})
                                  .map(json.dumps)), max_size=4))
def test_a_probe_file_gives_non_empty_prompts_or_is_refused_by_line(fuzzed, content):
    CASES["probe-file"] += 1
    path = _write(fuzzed.scratch, "probes.txt", "\n".join(content))
    try:
        prompts = read_probes(path)
    except EditSetError as exc:
        assert "\n" not in str(exc)
        return
    assert prompts and all(isinstance(p, str) and p.strip() for p in prompts)


# -- remote manifests ---------------------------------------------------------------------------------------

def _paths(value, at=()):
    """Every path into a JSON value (tuples of keys and indices), the root included."""
    yield at
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, at + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, at + (i,))


def _replace(value, at, new, drop: bool):
    if not at:
        return new
    copy = json.loads(json.dumps(value))
    holder = copy
    for key in at[:-1]:
        holder = holder[key]
    if drop:
        del holder[at[-1]]
    else:
        holder[at[-1]] = new
    return copy


@fuzz(150)
@given(data=st.data())
def test_a_garbled_manifest_is_read_back_verified_or_refused_and_apply_changes_nothing(fuzzed, data):
    CASES["manifest"] += 1
    original = json.loads((fuzzed.folder / MANIFEST).read_text())
    kind = data.draw(st.sampled_from(["replace", "replace", "drop", "bytes"]), label="kind")
    if kind == "bytes":
        raw = data.draw(st.one_of(st.binary(max_size=64), JSON.map(lambda v: json.dumps(v).encode()),
                                  st.just(b"[" * 100_000), st.just(b'{"format": "romevc-editset", "x": "\\udc80"}')))
    else:
        paths = sorted(_paths(original), key=repr)
        at = data.draw(st.sampled_from(paths if kind == "replace" else paths[1:]), label="at")
        raw = json.dumps(_replace(original, at, data.draw(st.one_of(JSON, texts()), label="new"), kind == "drop"),
                         ensure_ascii=False).encode("utf-8", "surrogatepass")
    folder = Path(tempfile.mkdtemp(dir=fuzzed.scratch))
    try:
        shutil.copy(fuzzed.folder / TENSORS, folder / TENSORS)
        (folder / MANIFEST).write_bytes(raw)
        try:
            parse_manifest(raw)
            editset = read_editset(folder)
        except InvalidEditSetError as exc:
            assert "\n" not in str(exc)
        else:
            for record in editset.edits + editset.commits:
                record.verify()  # what was read back is exactly what was stored
        before = dump(fuzzed.root)
        result = romevc("apply", "--repo", str(fuzzed.root), str(folder))
        assert_one_line_error(result, raw[:200])  # refused, or every edit already at HEAD
        assert dump(fuzzed.root) == before
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- the count ------------------------------------------------------------------------------------------------

def test_at_least_a_thousand_generated_cases_ran():
    missing = [name for name in PROPERTIES if not CASES[name]]
    if missing:
        pytest.skip(f"not every property ran in this session (missing {', '.join(missing)})")
    assert sum(CASES.values()) >= 1000, dict(CASES)

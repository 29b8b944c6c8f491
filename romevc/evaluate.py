"""CounterFact-style scores of an edit (Meng et al. 2022, section 3 and appendix).

Efficacy (ES): p(new) > p(true) on the edited prompt; paraphrase (PS): the same on a
rephrased prompt; neighbourhood (NS): p(true neighbour object) > p(new) on a prompt
about a different subject with the same relation. Probabilities are exp(−mean per-token
NLL), teacher-forced, so multi-token objects are compared fairly.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from statistics import mean
from typing import Callable, Iterable, Sequence

from romevc.editing.request import EditRequest
from romevc.errors import EditRequestError, RomevcError
from romevc.predict import target_nll

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CounterFactCase:
    case_id: int
    request: EditRequest  # target_true = the real object
    paraphrases: tuple[str, ...]
    neighbours: tuple[tuple[str, str], ...]  # (prompt, its true object)


def _from_simplified(record: dict) -> CounterFactCase:
    request = EditRequest(record["prompt"], record["subject"], record["target_new"], record["ground_truth"])
    return CounterFactCase(int(record["case_id"]), request, (record["rephrase_prompt"],),
                           ((record["locality_prompt"], record["locality_ground_truth"]),))


def _from_original(record: dict) -> CounterFactCase:
    rewrite = record["requested_rewrite"]
    request = EditRequest(rewrite["prompt"], rewrite["subject"], rewrite["target_new"]["str"],
                          rewrite["target_true"]["str"])
    true = rewrite["target_true"]["str"]
    return CounterFactCase(int(record["case_id"]), request, tuple(record.get("paraphrase_prompts", ())),
                           tuple((p, true) for p in record.get("neighborhood_prompts", ())))


def load_counterfact(path: str | Path, n: int | None = None) -> list[CounterFactCase]:
    """CounterFact in the original format (requested_rewrite, …) or the simplified split format."""
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RomevcError(f"cannot read CounterFact file {path}: {exc}") from None
    if not isinstance(records, list):
        raise RomevcError(f"{path}: expected a JSON list of CounterFact records")
    cases = []
    for record in records[: n if n is not None else len(records)]:
        try:
            cases.append(_from_original(record) if "requested_rewrite" in record else _from_simplified(record))
        except (KeyError, TypeError) as exc:
            raise RomevcError(f"{path}: record {record.get('case_id', '?')} lacks field {exc}") from None
    return cases


@dataclass
class CaseScores:
    """Per-case outcomes; probabilities are exp(−mean token NLL)."""

    case_id: int
    efficacy: bool
    paraphrase: float  # share of paraphrases where p(new) > p(true)
    neighbourhood: float  # share of neighbours where p(true) > p(new)
    efficacy_margin: float  # p(new) − p(true) on the prompt
    paraphrase_margin: float
    neighbourhood_margin: float  # p(true) − p(new) on neighbours


def _pairs_nll(model, tokenizer, prompts: Sequence[str], first: str, second: Sequence[str]) -> list[tuple[float, float]]:
    """(nll(first), nll(second_i)) for each prompt, in one batch."""
    n = len(prompts)
    nll = target_nll(model, tokenizer, list(prompts) * 2, [first] * n + list(second))
    return list(zip(nll[:n], nll[n:]))


def score_case(model, tokenizer, case: CounterFactCase) -> CaseScores:
    """Score ``case`` on the model as it is now (edited or not)."""
    request = case.request
    new, true = request.target_new, request.target_true or ""
    prompts = [request.text, *case.paraphrases]
    rewrite = _pairs_nll(model, tokenizer, prompts, new, [true] * len(prompts))
    neighbour_prompts = [p for p, _ in case.neighbours]
    neighbour = _pairs_nll(model, tokenizer, neighbour_prompts, new, [t for _, t in case.neighbours]) \
        if neighbour_prompts else []
    prob = lambda x: math.exp(-x)  # noqa: E731
    para = rewrite[1:]
    return CaseScores(
        case_id=case.case_id,
        efficacy=rewrite[0][0] < rewrite[0][1],
        paraphrase=mean(a < b for a, b in para) if para else float("nan"),
        neighbourhood=mean(b < a for a, b in neighbour) if neighbour else float("nan"),
        efficacy_margin=prob(rewrite[0][0]) - prob(rewrite[0][1]),
        paraphrase_margin=mean(prob(a) - prob(b) for a, b in para) if para else float("nan"),
        neighbourhood_margin=mean(prob(b) - prob(a) for a, b in neighbour) if neighbour else float("nan"),
    )


@dataclass
class Summary:
    """Percentages over cases, as the paper reports them."""

    n: int
    ES: float
    PS: float
    NS: float
    EM: float
    PM: float
    NM: float
    S: float  # harmonic mean of ES, PS, NS
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _harmonic(values: Iterable[float]) -> float:
    values = list(values)
    return 0.0 if any(v <= 0 for v in values) else len(values) / sum(1 / v for v in values)


def summarise(scores: Sequence[CaseScores]) -> Summary:
    def pct(values) -> float:
        values = [float(v) for v in values if not math.isnan(float(v))]
        return 100 * mean(values) if values else float("nan")

    es, ps, ns = pct(s.efficacy for s in scores), pct(s.paraphrase for s in scores), pct(s.neighbourhood for s in scores)
    return Summary(
        n=len(scores), ES=es, PS=ps, NS=ns,
        EM=pct(s.efficacy_margin for s in scores), PM=pct(s.paraphrase_margin for s in scores),
        NM=pct(s.neighbourhood_margin for s in scores), S=_harmonic([es, ps, ns]),
    )


NEUTRAL_TEXT = (
    "The history of the region goes back many centuries. Farmers grew wheat and barley in the valleys, "
    "while traders carried salt and cloth along the rivers to the coast. Over time small villages grew "
    "into market towns, and the towns built schools, churches and bridges that are still used today."
)


def neutral_nll(model, tokenizer, text: str = NEUTRAL_TEXT) -> float:
    """Mean token NLL of a paragraph unrelated to any edit: it rises when an edit damages the model."""
    import torch

    device = next(model.parameters()).device
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    ids = torch.tensor([tokenizer(text, verbose=False)["input_ids"][:limit]], device=device)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids, use_cache=False).loss)


@dataclass
class EvalRun:
    method: str
    layer: int
    sequential: bool
    summary: dict  # Summary.to_dict() for CounterFact, summarise_zsre() for zsRE
    seconds_per_edit: float
    mean_delta_norm: float
    mean_relative_norm: float  # ‖ΔW‖ / ‖W‖
    neutral_nll: float  # after the edits (sequential) or averaged over single edits
    checkpoints: list = field(default_factory=list)  # sequential: scores after the first n edits
    cases: list = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("cases")
        return data


def _scoring(cases) -> tuple[Callable, Callable[[list], dict]]:
    """(score one case, summarise scores) for the dataset the cases came from."""
    if cases and isinstance(cases[0], ZsreCase):
        return score_zsre, summarise_zsre
    return score_case, lambda scores: summarise(scores).to_dict()


def evaluate_unedited(editor, cases: Sequence, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    score, summary = _scoring(cases)
    editor.restore()
    return summary([score(editor.model, editor.tokenizer, c)
                    for c in tqdm(cases, desc="unedited", disable=not progress, leave=False)])


def evaluate_edits(editor, cases: Sequence, hparams, *, sequential: bool = False,
                   progress: bool = True, checkpoints: Sequence[int] = (),
                   on_record: Callable[[dict], None] | None = None, done: Sequence[dict] = ()) -> EvalRun:
    """Edit each case and score it: one at a time from the base, or all in sequence.

    One at a time: edit, score, restore. Sequential: each edit is computed on the model
    carrying all earlier edits, and every case is scored once at the end — and, at each
    count in ``checkpoints``, the cases edited so far, to show where a method degrades.
    ``on_record`` receives one JSON-able dict per edit and per checkpoint as they happen,
    so a long run leaves its partial results behind; one at a time, those records of
    this method and layer passed back as ``done`` are reused instead of recomputed.
    """
    from tqdm.auto import tqdm

    score, summary = _scoring(cases)
    emit = on_record or (lambda record: None)
    reuse = {} if sequential else {r["index"]: r for r in done if r.get("kind") == "edit"
                                   and r.get("method") == hparams.method and r.get("layer") == hparams.layer}
    editor.restore()
    results, seconds, norms, scores, fluency, reached = [], [], [], [], [], []
    for index, case in enumerate(tqdm(cases, desc=f"{hparams.method} edits", disable=not progress, leave=False)):
        if index in reuse:
            earlier = reuse[index]
            seconds.append(earlier["seconds"])
            norms.append(earlier["delta_norm"])
            scores.append(CaseScores(**earlier["scores"]) if isinstance(case, CounterFactCase) else earlier["scores"])
            fluency.append(earlier["neutral_nll"])
            continue
        result = editor.compute(case.request, hparams)
        results.append(result)
        seconds.append(result.seconds)
        norms.append(result.delta.norm())
        record = {"kind": "edit", "method": hparams.method, "layer": hparams.layer, "index": index,
                  "subject": case.request.subject, "seconds": seconds[-1], "delta_norm": norms[-1]}
        if sequential:
            editor.apply(results)
            if index + 1 in checkpoints:
                so_far = [score(editor.model, editor.tokenizer, c) for c in cases[: index + 1]]
                reached.append({"kind": "checkpoint", "method": hparams.method, "layer": hparams.layer,
                                "edits": index + 1, "summary": summary(so_far),
                                "neutral_nll": neutral_nll(editor.model, editor.tokenizer)})
        else:
            editor.apply([result])
            scores.append(score(editor.model, editor.tokenizer, case))
            fluency.append(neutral_nll(editor.model, editor.tokenizer))
            record.update(scores=asdict(scores[-1]) if is_dataclass(scores[-1]) else scores[-1], neutral_nll=fluency[-1])
            editor.restore()
        emit(record)
        if reached and reached[-1]["edits"] == index + 1:
            emit(reached[-1])
    if sequential:
        scores = [score(editor.model, editor.tokenizer, c) for c in cases]
        fluency.append(neutral_nll(editor.model, editor.tokenizer))
    weight_norm = _edited_weight_norm(editor, hparams.layer)
    editor.restore()
    nan = float("nan")
    return EvalRun(
        method=hparams.method, layer=hparams.layer, sequential=sequential, summary=summary(scores),
        seconds_per_edit=mean(seconds) if seconds else nan, mean_delta_norm=mean(norms) if norms else nan,
        mean_relative_norm=mean(norms) / weight_norm if norms else nan,
        neutral_nll=mean(fluency) if fluency else nan, checkpoints=reached, cases=scores,
    )


def _edited_weight_norm(editor, layer: int) -> float:
    """‖W‖ of the unedited module at ``layer``, the scale ‖ΔW‖ is compared against."""
    from romevc.architectures import architecture_for
    from romevc.editing.delta import base_weights

    with base_weights(editor.model) as model:
        return model.get_submodule(architecture_for(model).edited_module_name(layer)).weight.float().norm().item()


# -- zsRE (MEND/ROME format): teacher-forced top-1 token accuracy, the paper's Table 1 ----------

@dataclass(frozen=True)
class ZsreCase:
    request: EditRequest  # prompt = the question, target_new = the new answer
    rephrase: str
    loc: str
    loc_answer: str


def load_zsre(path: str | Path, n: int | None = None) -> list[ZsreCase]:
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RomevcError(f"cannot read zsRE file {path}: {exc}") from None
    cases, skipped = [], 0
    for number, record in enumerate(records):
        if n is not None and len(cases) == n:
            break
        try:
            request = EditRequest(record["src"], record["subject"], record["alt"],
                                  (record.get("answers") or [None])[0])
            cases.append(ZsreCase(request, record["rephrase"], record["loc"], record["loc_ans"]))
        except KeyError as exc:
            raise RomevcError(f"{path}: record {number} lacks field {exc}") from None
        except EditRequestError as exc:  # an empty answer, a subject not in the question
            skipped += 1
            log.info("skipping zsRE record %d: %s", number, exc)
    if skipped:
        log.warning("skipped %d zsRE records that do not form an edit request", skipped)
    return cases


def token_accuracy(model, tokenizer, prompt: str, target: str) -> float:
    """Share of the target's tokens that are the argmax prediction, teacher-forced after ``prompt``."""
    import torch

    from romevc.editing.rome import target_token_ids

    device = next(model.parameters()).device
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = target_token_ids(tokenizer, prompt, target)
    ids = torch.tensor([prompt_ids + target_ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0]
    start = len(prompt_ids) - 1
    predicted = logits[start : start + len(target_ids)].argmax(-1).tolist()
    return mean(p == t for p, t in zip(predicted, target_ids))


def score_zsre(model, tokenizer, case: ZsreCase) -> dict[str, float]:
    new = case.request.target_new
    return {
        "efficacy": token_accuracy(model, tokenizer, case.request.text, new),
        "paraphrase": token_accuracy(model, tokenizer, case.rephrase, new),
        "specificity": token_accuracy(model, tokenizer, case.loc, case.loc_answer),
    }


def summarise_zsre(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    """Percentages of efficacy, paraphrase and specificity, as in the paper's Table 1."""
    keys = ("efficacy", "paraphrase", "specificity")
    return {"n": len(scores), **{k: 100 * mean(s[k] for s in scores) if scores else float("nan") for k in keys}}


def load_dataset(path: str | Path, n: int | None = None) -> list:
    """CounterFact (either format) or zsRE, told apart by their fields."""
    try:
        first = json.loads(Path(path).read_text(encoding="utf-8"))[:1]
    except (OSError, ValueError, TypeError) as exc:
        raise RomevcError(f"cannot read dataset {path}: {exc}") from None
    if first and isinstance(first[0], dict) and "src" in first[0] and "alt" in first[0]:
        return load_zsre(path, n)
    return load_counterfact(path, n)


def run_evaluation(editor, cases: Sequence, methods: Sequence[str], layers: Sequence[int], *,
                   sequential: bool = False, progress: bool = True, checkpoints: Sequence[int] = (),
                   on_record: Callable[[dict], None] | None = None, done: Sequence[dict] = ()) -> dict:
    """The unedited model, then every (method, layer), on the same cases: one JSON-able report."""
    import time

    started = time.perf_counter()
    editor.stats.get_many(editor.model, editor.tokenizer, list(layers))
    report = {"n": len(cases), "sequential": sequential, "dataset": "zsre" if cases and isinstance(cases[0], ZsreCase)
              else "counterfact", "unedited": evaluate_unedited(editor, cases, progress),
              "unedited_neutral_nll": neutral_nll(editor.model, editor.tokenizer), "runs": []}
    for method in methods:
        for layer in layers:
            run = evaluate_edits(editor, cases, editor.hparams(method=method, layer=layer),
                                 sequential=sequential, progress=progress, checkpoints=checkpoints,
                                 on_record=on_record, done=done)
            report["runs"].append(run.to_dict())
    report["seconds"] = time.perf_counter() - started
    return report


def render_report(report: dict) -> str:
    """A table for people: one row for the unedited model, one per (method, layer)."""
    mode = "sequential" if report["sequential"] else "one edit at a time from the unedited model"
    zsre = report["dataset"] == "zsre"
    keys = ("efficacy", "paraphrase", "specificity") if zsre else ("ES", "PS", "NS", "EM", "PM", "NM", "S")
    names = ("Eff", "Para", "Spec") if zsre else keys
    lines = [f"{report['dataset']}: {report['n']} records, {mode}, {report['seconds']:.0f} s",
             f"{'method':9} {'layer':>5} " + " ".join(f"{k:>6}" for k in names)
             + f" {'s/edit':>7} {'|dW|':>7} {'|dW|/|W|':>8} {'textNLL':>7}"]

    def row(name, layer, summary, sec, norm, rel, nll):
        return (f"{name:9} {layer:>5} " + " ".join(f"{summary[k]:6.1f}" for k in keys)
                + f" {sec:7.1f} {norm:7.2f} {rel:8.3f} {nll:7.3f}")

    nan = float("nan")
    lines.append(row("unedited", "-", report["unedited"], nan, nan, nan, report["unedited_neutral_nll"]))
    for run in report["runs"]:
        for point in run.get("checkpoints", []):
            lines.append(row(f"{run['method']}@{point['edits']}", str(run["layer"]), point["summary"],
                             nan, nan, nan, point["neutral_nll"]))
        lines.append(row(run["method"], str(run["layer"]), run["summary"], run["seconds_per_edit"],
                         run["mean_delta_norm"], run["mean_relative_norm"], run["neutral_nll"]))
    return "\n".join(lines)

"""CounterFact-style scores of an edit (Meng et al. 2022, section 3 and appendix).

Efficacy (ES): p(new) > p(true) on the edited prompt; paraphrase (PS): the same on a
rephrased prompt; neighbourhood (NS): p(true neighbour object) > p(new) on a prompt
about a different subject with the same relation. Probabilities are exp(−mean per-token
NLL), teacher-forced, so multi-token objects are compared fairly.

Generation entropy (GE, the paper's "fluency"): for records of the original format,
which carry ``generation_prompts``, text is sampled from the edited model and scored by
its n-gram entropy (see :func:`ngram_entropy`); a model that repeats itself scores low.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import re
import unicodedata
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from statistics import mean
from typing import Callable, Iterable, Sequence

from romevc.editing.memit_hparams import BATCH_METHODS
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
    generation_prompts: tuple[str, ...] = ()  # original format only: prefixes for the GE texts


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
                           tuple((p, true) for p in record.get("neighborhood_prompts", ())),
                           tuple(record.get("generation_prompts", ())))


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
    generation_entropy: float = float("nan")  # bits, mean over the generation prompts; NaN: none generated


# -- generation entropy (ROME's experiments/py/eval_utils_counterfact.py) -------------------

GENERATION_TOKENS = 100  # ROME's max_out_len: each text is this many tokens long, prompt included
GENERATION_TOP_K = 5  # ROME's generate_fast samples from the 5 most likely tokens
GENERATION_SEED = 0
_WORD = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's ``compute_n_gram_entropy``: mean of weight_n · H(n-gram frequencies), H in bits.

    With the default weights this is (2/3·H₂ + 4/3·H₃) / 2, a weighted average leaning on
    trigrams. ROME tokenises with ``nltk.word_tokenize``; this uses a regular expression
    (runs of word characters, each other non-space character alone), which agrees on plain
    prose and differs on contractions ("don't" is one nltk split further). A text too short
    for any n-gram contributes 0, as an empty frequency table does in ROME's code.
    """
    from collections import Counter

    words = _WORD.findall(text)
    entropies = []
    for n, weight in zip(ns, weights):
        counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        entropies.append(weight * entropy)
    return mean(entropies)


def generate_text(model, tokenizer, prompt: str, length: int = GENERATION_TOKENS, *,
                  top_k: int = GENERATION_TOP_K, seed: int = GENERATION_SEED) -> str:
    """``prompt`` continued to ``length`` tokens (prompt included) by top-k sampling, as ROME's ``generate_fast``.

    The sampler has its own generator seeded with ``seed``, so a text depends only on the
    weights, the prompt and the seed; ``top_k=1`` is greedy decoding. The length is cut to
    the model's context. Like ROME, generation runs on past an end-of-text token, whose text
    is dropped when decoding; the text is NFKD-normalised with blank lines joined.
    """
    import torch

    device = next(model.parameters()).device
    context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    limit = min(length, context)
    ids = tokenizer(prompt)["input_ids"][:limit]
    generator = torch.Generator().manual_seed(seed)
    # transformers 5 renamed the key-value cache argument and output from past_key_values to cache
    cache = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=True)
        while len(ids) < limit:
            probs, candidates = out.logits[0, -1].float().softmax(-1).topk(top_k)  # (top_k,) each
            choice = torch.multinomial(probs.cpu(), 1, generator=generator).item()
            ids.append(int(candidates[choice]))
            if len(ids) < limit:  # only the new token goes in; the cache holds the rest
                out = model(input_ids=torch.tensor([ids[-1:]], device=device), use_cache=True,
                            **{cache: getattr(out, cache)})
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return unicodedata.normalize("NFKD", text).replace("\n\n", " ")


def generation_entropy(model, tokenizer, prompts: Sequence[str], length: int = GENERATION_TOKENS,
                       seed: int = GENERATION_SEED) -> float:
    """Mean n-gram entropy (bits) of one text sampled per prompt; NaN without prompts or length."""
    if not prompts or length <= 0:
        return float("nan")
    return mean(ngram_entropy(generate_text(model, tokenizer, p, length, seed=seed + i)) for i, p in enumerate(prompts))


def _pairs_nll(model, tokenizer, prompts: Sequence[str], first: str, second: Sequence[str]) -> list[tuple[float, float]]:
    """(nll(first), nll(second_i)) for each prompt, in one batch."""
    n = len(prompts)
    nll = target_nll(model, tokenizer, list(prompts) * 2, [first] * n + list(second))
    return list(zip(nll[:n], nll[n:]))


def score_case(model, tokenizer, case: CounterFactCase, gen_tokens: int = 0) -> CaseScores:
    """Score ``case`` on the model as it is now (edited or not).

    With ``gen_tokens`` > 0 and generation prompts in the case, also its generation entropy.
    """
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
        generation_entropy=generation_entropy(model, tokenizer, case.generation_prompts, gen_tokens),
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
    GE: float = float("nan")  # 100 × mean generation entropy in bits, as the paper's tables; NaN: not measured
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        if math.isnan(self.GE):  # no generation prompts (the simplified format) or generation off
            data.pop("GE")
        return data


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
        GE=pct(s.generation_entropy for s in scores),
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
    layer: int | str  # MEMIT: its range as text, e.g. "3-5"
    sequential: bool
    summary: dict  # Summary.to_dict() for CounterFact, summarise_zsre() for zsRE
    seconds_per_edit: float  # MEMIT: batch seconds / batch size
    mean_delta_norm: float  # MEMIT: mean over batches and layers of each layer's ‖ΔW‖
    mean_relative_norm: float  # ‖ΔW‖ / ‖W‖
    neutral_nll: float  # after the edits (sequential) or averaged over single edits (MEMIT: batches)
    checkpoints: list = field(default_factory=list)  # sequential: scores after the first n edits
    generation_entropy: float = float("nan")  # sequential: of the texts from sequence_ge_prompts, after all edits
    cases: list = field(default_factory=list)
    layers: list | None = None  # MEMIT only: the edited layers
    batch_size: int | None = None  # MEMIT only: requests per batch

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("cases")
        for key in ("layers", "batch_size"):
            if data[key] is None:
                data.pop(key)
        return data


def _scoring(cases, gen_tokens: int = 0) -> tuple[Callable, Callable[[list], dict]]:
    """(score one case, summarise scores) for the dataset the cases came from."""
    if cases and isinstance(cases[0], ZsreCase):
        return score_zsre, summarise_zsre
    return (lambda model, tokenizer, case: score_case(model, tokenizer, case, gen_tokens),
            lambda scores: summarise(scores).to_dict())


def evaluate_unedited(editor, cases: Sequence, progress: bool = True, gen_tokens: int = 0) -> dict:
    from tqdm.auto import tqdm

    score, summary = _scoring(cases, gen_tokens)
    editor.restore()
    return summary([score(editor.model, editor.tokenizer, c)
                    for c in tqdm(cases, desc="unedited", disable=not progress, leave=False)])


def tensor_text(tensor) -> str:
    """A tensor's float32 bytes in base64: how run records keep tensors (JSON only)."""
    import base64

    from romevc.editing.delta import float32_bytes

    return base64.b64encode(float32_bytes(tensor)).decode()


def tensor_from_text(text: str, shape: Sequence[int], what: str):
    """The exact float32 tensor :func:`tensor_text` wrote (nothing is unpickled)."""
    import base64

    from romevc.editing.delta import tensor_from_float32_bytes

    raw = base64.b64decode(text, validate=True)
    if len(raw) != 4 * math.prod(shape):
        raise RomevcError(f"a stored {what} has {len(raw) // 4} values, not {list(shape)}")
    return tensor_from_float32_bytes(raw, tuple(shape))


def delta_record(delta) -> dict:
    """A delta as JSON: what a resumed sequential run replays."""
    return {"module": delta.module, "layout": delta.layout, "shape_u": list(delta.u.shape),
            "shape_v": list(delta.v.shape), "u": tensor_text(delta.u), "v": tensor_text(delta.v)}


def delta_from_record(data: dict):
    """The exact delta :func:`delta_record` wrote."""
    from romevc.editing.delta import Delta

    what = f"delta of {data.get('module')!r}"
    return Delta(data["module"], data["layout"], tensor_from_text(data["u"], data["shape_u"], what),
                 tensor_from_text(data["v"], data["shape_v"], what))


def _sequential_prefix(done: Sequence[dict], hparams) -> tuple[list[dict], dict[int, dict]]:
    """The stored edits 0..k-1 of a sequential run of this method and layer, and its checkpoints."""
    mine = [r for r in done if r.get("method") == hparams.method and r.get("layer") == hparams.layer]
    edits = {r["index"]: r for r in mine if r.get("kind") == "edit" and "delta" in r}
    prefix = []
    while len(prefix) in edits:
        prefix.append(edits[len(prefix)])
    reached = {r["edits"]: r for r in mine if r.get("kind") == "checkpoint" and r["edits"] <= len(prefix)}
    return prefix, reached


def _sequential_batches(done: Sequence[dict], method: str, layers: list[int],
                        size: int) -> tuple[list[dict], dict[int, dict]]:
    """The stored batches 0..k-1 of a sequential batch run (this method, layers and batch size), and its checkpoints."""
    mine = [r for r in done if r.get("method") == method and r.get("layers") == layers]
    batches = {r["start"]: r for r in mine if r.get("kind") == "batch" and r.get("sequential") and "deltas" in r}
    prefix: list[dict] = []
    while size * len(prefix) in batches and batches[size * len(prefix)]["size"] <= size:
        prefix.append(batches[size * len(prefix)])
        if prefix[-1]["size"] < size:  # a short batch can only be the last
            break
    end = sum(r["size"] for r in prefix)
    reached = {r["edits"]: r for r in mine if r.get("kind") == "checkpoint" and r["edits"] <= end}
    return prefix, reached


def evaluate_edits(editor, cases: Sequence, hparams, *, sequential: bool = False,
                   progress: bool = True, checkpoints: Sequence[int] = (),
                   on_record: Callable[[dict], None] | None = None, done: Sequence[dict] = (),
                   gen_tokens: int = 0) -> EvalRun:
    """Edit each case and score it: one at a time from the base, or all in sequence.

    One at a time: edit, score, restore. Sequential: each edit is computed on the model
    carrying all earlier edits, and every case is scored once at the end — and, at each
    count in ``checkpoints``, the cases edited so far, to show where a method degrades.
    ``on_record`` receives one JSON-able dict per edit and per checkpoint as they happen,
    so a long run leaves its partial results behind. Records of this method and layer
    passed back as ``done`` are reused instead of recomputed: one at a time, any edits;
    in sequence, the unbroken run of edits from the first, whose stored deltas are
    replayed exactly (a run resumed after a stop ends with the weights it would have had).
    ``gen_tokens`` > 0: generation entropy of CounterFact cases with generation prompts.
    """
    from tqdm.auto import tqdm

    score, summary = _scoring(cases, gen_tokens)
    emit = on_record or (lambda record: None)
    ge_prompts = sequence_ge_prompts(cases) if sequential else []
    reuse = {} if sequential else {r["index"]: r for r in done if r.get("kind") == "edit"
                                   and r.get("method") == hparams.method and r.get("layer") == hparams.layer}
    replay, replayed_checkpoints = _sequential_prefix(done, hparams) if sequential else ([], {})
    editor.restore()
    applied, seconds, norms, scores, fluency, reached = [], [], [], [], [], []
    for index, case in enumerate(tqdm(cases, desc=f"{hparams.method} edits", disable=not progress, leave=False)):
        if index in reuse:
            earlier = reuse[index]
            seconds.append(earlier["seconds"])
            norms.append(earlier["delta_norm"])
            scores.append(_case_scores(case, earlier["scores"]))
            fluency.append(earlier["neutral_nll"])
            continue
        if index < len(replay):
            seconds.append(replay[index]["seconds"])
            norms.append(replay[index]["delta_norm"])
            applied.append(delta_from_record(replay[index]["delta"]))
            stored = replayed_checkpoints.get(index + 1)
            if index + 1 in checkpoints and stored is not None:
                reached.append(stored)
            missing = index + 1 in checkpoints and stored is None
            if missing or index + 1 == len(replay):  # the model must carry the edits from here on
                editor.apply(applied)
            if missing:
                reached.append(_checkpoint(editor, cases[: index + 1], score, summary, hparams, ge_prompts))
                emit(reached[-1])
            continue
        result = editor.compute(case.request, hparams)
        seconds.append(result.seconds)
        norms.append(result.delta.norm())
        record = {"kind": "edit", "method": hparams.method, "layer": hparams.layer, "index": index,
                  "subject": case.request.subject, "seconds": seconds[-1], "delta_norm": norms[-1]}
        if sequential:
            applied.append(result)
            editor.apply(applied)
            record["delta"] = delta_record(result.delta)
            if index + 1 in checkpoints:
                reached.append(_checkpoint(editor, cases[: index + 1], score, summary, hparams, ge_prompts))
        else:
            editor.apply([result])
            scores.append(score(editor.model, editor.tokenizer, case))
            fluency.append(neutral_nll(editor.model, editor.tokenizer))
            record.update(scores=asdict(scores[-1]) if is_dataclass(scores[-1]) else scores[-1], neutral_nll=fluency[-1])
            editor.restore()
        emit(record)
        if reached and reached[-1]["edits"] == index + 1:
            emit(reached[-1])
    final_ge = float("nan")
    if sequential:  # the model carries every edit: applied after each, or when the replay ended
        scores = [score(editor.model, editor.tokenizer, c) for c in cases]
        after = _fluency(editor, ge_prompts)
        fluency.append(after["neutral_nll"])
        final_ge = after["generation_entropy"]
    weight_norm = _edited_weight_norm(editor, hparams.layer)
    editor.restore()
    nan = float("nan")
    return EvalRun(
        method=hparams.method, layer=hparams.layer, sequential=sequential, summary=summary(scores),
        seconds_per_edit=mean(seconds) if seconds else nan, mean_delta_norm=mean(norms) if norms else nan,
        mean_relative_norm=mean(norms) / weight_norm if norms else nan,
        neutral_nll=mean(fluency) if fluency else nan, checkpoints=reached, cases=scores,
        generation_entropy=final_ge,
    )


SEQUENCE_GE_CASES = 20  # a sequential run's fluency texts start from the prompts of its first this many cases


def sequence_ge_prompts(cases: Sequence) -> list[str]:
    """The prefixes of a sequential run's generation entropy: one per case of the first few.

    A case's first generation prompt where the record has them (original CounterFact),
    else its edit prompt. The same prefixes at every checkpoint, all about subjects the
    run has edited, so the numbers show the texts degenerating as edits pile up — the
    paper's GE, computed for sequences on the simplified split too.
    """
    return [case.generation_prompts[0] if getattr(case, "generation_prompts", ()) else case.request.text
            for case in cases[:SEQUENCE_GE_CASES]]


def _fluency(editor, ge_prompts: Sequence[str]) -> dict:
    """The neutral paragraph's NLL and the generation entropy (bits) of texts from ``ge_prompts``."""
    return {"neutral_nll": neutral_nll(editor.model, editor.tokenizer),
            "generation_entropy": generation_entropy(editor.model, editor.tokenizer, ge_prompts)}


def _checkpoint(editor, so_far: Sequence, score, summary, hparams, ge_prompts: Sequence[str]) -> dict:
    """Scores of the cases edited so far, and the model's fluency, on the model carrying their edits."""
    return {"kind": "checkpoint", "method": hparams.method, "layer": hparams.layer, "edits": len(so_far),
            "summary": summary([score(editor.model, editor.tokenizer, c) for c in so_far]),
            **_fluency(editor, ge_prompts)}


def _case_scores(case, stored: dict):
    """A case's scores as an on_record record stored them."""
    return CaseScores(**stored) if isinstance(case, CounterFactCase) else stored


def layer_label(layers: Sequence[int]) -> str:
    """"3-5" for a contiguous range, "2,4" otherwise: the layer column of a MEMIT run."""
    layers = list(layers)
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def evaluate_memit(editor, cases: Sequence, hparams, *, batch_size: int | None = None, sequential: bool = False,
                   progress: bool = True, checkpoints: Sequence[int] = (),
                   on_record: Callable[[dict], None] | None = None, done: Sequence[dict] = (),
                   gen_tokens: int = 0, method: str = "memit") -> EvalRun:
    """Edit the cases as MEMIT (or AlphaEdit) batches and score every case on the model carrying its batch.

    The cases are cut into consecutive batches of ``batch_size`` (None: one batch of all,
    as the paper's batches of edits). Otherwise the batches are independent: each is
    computed on the unedited model, applied, its cases scored, and the model restored.
    ``sequential``: each batch is computed on the model carrying the batches before it and
    applied on top; all cases are scored at the end, and at each count in ``checkpoints``
    that a batch reaches or passes, the cases edited so far. ``on_record`` receives one
    JSON-able dict per batch (and per checkpoint); independent batches passed back as
    ``done`` with the same layers, start and size are reused instead of recomputed, and a
    sequence's unbroken run of stored batches from the first is replayed from their deltas
    (and, for AlphaEdit, the keys they protect), so a resumed run ends where a whole one would.
    ``method="alphaedit"``: in a sequence each batch also protects the keys of the batches
    before it, as AlphaEdit does.
    """
    from tqdm.auto import tqdm

    score, summary = _scoring(cases, gen_tokens)
    emit = on_record or (lambda record: None)
    layers = list(hparams.layers)
    size = batch_size or max(1, len(cases))
    reuse = {} if sequential else {(r["start"], r["size"]): r for r in done if r.get("kind") == "batch"
                                   and r.get("method") == method and r.get("layers") == layers}
    ge_prompts = sequence_ge_prompts(cases) if sequential else []
    replay, replayed_checkpoints = _sequential_batches(done, method, layers, size) if sequential else ([], {})
    preserved = None
    if method == "alphaedit":
        from romevc.editing.alphaedit import PreservedKeys

        preserved = PreservedKeys()

    def checkpoint(end: int) -> dict:  # on the model carrying the first ``end`` cases' edits
        so_far = [score(editor.model, editor.tokenizer, c) for c in cases[:end]]
        return {"kind": "checkpoint", "method": method, "layer": layer_label(layers), "layers": layers,
                "edits": end, "summary": summary(so_far), **_fluency(editor, ge_prompts)}

    editor.restore()
    results, seconds, norms, relative, scores, fluency, reached = [], [], [], [], [], [], []
    weight_norms = {layer: _edited_weight_norm(editor, layer) for layer in layers}
    starts = range(0, len(cases), size)
    for number, start in enumerate(tqdm(starts, desc=f"{method} batches", disable=not progress, leave=False)):
        batch = cases[start : start + size]
        end = start + len(batch)
        if number < len(replay):
            earlier = replay[number]
            seconds.append(earlier["seconds"])
            norms.extend(earlier["delta_norms"])
            relative.extend(n / weight_norms[layer] for n, layer in zip(earlier["delta_norms"], layers))
            results.extend(delta_from_record(d) for d in earlier["deltas"])
            if preserved is not None:
                preserved.add(layers, [tensor_from_text(k["data"], k["shape"], "protected key")
                                       for k in earlier["keys"]])
            crossed = any(start < c <= end for c in checkpoints)
            stored = replayed_checkpoints.get(end)
            if crossed and stored is not None:
                reached.append(stored)
            missing = crossed and stored is None
            if missing or number + 1 == len(replay):  # the model must carry them from here on
                editor.apply(results)
            if missing:
                reached.append(checkpoint(end))
                emit(reached[-1])
            continue
        if (start, len(batch)) in reuse:
            earlier = reuse[start, len(batch)]
            seconds.append(earlier["seconds"])
            norms.extend(earlier["delta_norms"])
            relative.extend(n / weight_norms[layer] for n, layer in zip(earlier["delta_norms"], layers))
            scores.extend(_case_scores(c, stored) for c, stored in zip(batch, earlier["scores"]))
            fluency.append(earlier["neutral_nll"])
            continue
        requests = [c.request for c in batch]
        if preserved is None:
            result = editor.compute_memit(requests, hparams)
        else:
            result, keys = editor.compute_alphaedit(requests, hparams, preserved)
            if sequential:
                preserved.add(result.layers, keys)
        results.append(result)
        seconds.append(result.seconds)
        batch_norms = [d.norm() for d in result.deltas]
        norms.extend(batch_norms)
        relative.extend(n / weight_norms[layer] for n, layer in zip(batch_norms, result.layers))
        record = {"kind": "batch", "method": method, "layer": layer_label(layers), "layers": layers,
                  "batch": number, "start": start, "size": len(batch),
                  "subjects": [c.request.subject for c in batch], "seconds": result.seconds,
                  "seconds_per_edit": result.seconds / len(batch), "delta_norms": batch_norms,
                  "delta_norm": mean(batch_norms)}
        if sequential:
            editor.apply(results)
            record.update(sequential=True, deltas=[delta_record(d) for d in result.deltas])
            if preserved is not None:
                record["keys"] = [{"shape": list(k.shape), "data": tensor_text(k.float())} for k in keys]
            if any(start < c <= end for c in checkpoints):
                reached.append(checkpoint(end))
        else:
            editor.apply([result])
            batch_scores = [score(editor.model, editor.tokenizer, c) for c in batch]
            scores.extend(batch_scores)
            fluency.append(neutral_nll(editor.model, editor.tokenizer))
            record.update(scores=[asdict(s) if is_dataclass(s) else s for s in batch_scores],
                          neutral_nll=fluency[-1])
            editor.restore()
        emit(record)
        if sequential and reached and reached[-1]["edits"] == start + len(batch):
            emit(reached[-1])
    final_ge = float("nan")
    if sequential:
        scores = [score(editor.model, editor.tokenizer, c) for c in cases]
        after = _fluency(editor, ge_prompts)
        fluency.append(after["neutral_nll"])
        final_ge = after["generation_entropy"]
    editor.restore()
    nan = float("nan")
    return EvalRun(
        method=method, layer=layer_label(layers), sequential=sequential, summary=summary(scores),
        seconds_per_edit=sum(seconds) / len(cases) if cases else nan,
        mean_delta_norm=mean(norms) if norms else nan, mean_relative_norm=mean(relative) if relative else nan,
        neutral_nll=mean(fluency) if fluency else nan, checkpoints=reached, cases=scores,
        layers=layers, batch_size=size, generation_entropy=final_ge,
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
                   on_record: Callable[[dict], None] | None = None, done: Sequence[dict] = (),
                   batch_size: int | None = None, memit_hparams=None, alphaedit_hparams=None,
                   gen_tokens: int = GENERATION_TOKENS) -> dict:
    """The unedited model, then every (method, layer), on the same cases: one JSON-able report.

    ``"memit"`` among ``methods`` is one run over its own layer range (``memit_hparams``,
    default ``editor.memit_hparams()``), in batches of ``batch_size`` (None: all cases in
    one batch); ``"alphaedit"`` likewise (``alphaedit_hparams``, default
    ``editor.alphaedit_hparams()``); ``layers`` are the layers of the ROME methods.
    ``gen_tokens``: length of the generation-entropy texts (0: none), for CounterFact
    records with generation prompts.
    """
    import time

    started = time.perf_counter()
    rome_methods = [m for m in methods if m not in BATCH_METHODS]
    batch_hp = {"memit": (memit_hparams or editor.memit_hparams()) if "memit" in methods else None,
                "alphaedit": (alphaedit_hparams or editor.alphaedit_hparams()) if "alphaedit" in methods else None}
    batch_layers = {layer for hp in batch_hp.values() if hp for layer in hp.layers}
    editor.stats.get_many(editor.model, editor.tokenizer,
                          sorted(set(layers if rome_methods else []) | batch_layers))
    report = {"n": len(cases), "sequential": sequential, "dataset": "zsre" if cases and isinstance(cases[0], ZsreCase)
              else "counterfact", **_unedited(editor, cases, sequential, progress, gen_tokens, on_record, done),
              "runs": []}
    if batch_layers:
        report["batch_size"] = batch_size or len(cases)
    for method in methods:
        if method in BATCH_METHODS:
            run = evaluate_memit(editor, cases, batch_hp[method], batch_size=batch_size, sequential=sequential,
                                 progress=progress, checkpoints=checkpoints, on_record=on_record, done=done,
                                 gen_tokens=gen_tokens, method=method)
            report["runs"].append(run.to_dict())
            continue
        for layer in layers:
            run = evaluate_edits(editor, cases, editor.hparams(method=method, layer=layer),
                                 sequential=sequential, progress=progress, checkpoints=checkpoints,
                                 on_record=on_record, done=done, gen_tokens=gen_tokens)
            report["runs"].append(run.to_dict())
    report["seconds"] = time.perf_counter() - started
    return report


def _unedited(editor, cases: Sequence, sequential: bool, progress: bool, gen_tokens: int,
              on_record: Callable[[dict], None] | None, done: Sequence[dict]) -> dict:
    """The unedited model's report fields, from an ``unedited`` record in ``done`` made for
    the same cases (a resumed run need not score the unedited model again), else measured
    and passed to ``on_record``."""
    cases_id = hashlib.sha256(repr([c.request.to_dict() for c in cases]).encode()).hexdigest()
    for record in done:
        if (record.get("kind") == "unedited" and record.get("cases") == cases_id
                and record.get("gen_tokens") == gen_tokens
                and (not sequential or "unedited_generation_entropy" in record)):
            fields = {k: v for k, v in record.items() if k.startswith("unedited")}
            return fields if sequential else {k: v for k, v in fields.items() if k != "unedited_generation_entropy"}
    scores = evaluate_unedited(editor, cases, progress, gen_tokens)  # restores the base weights first
    before = _fluency(editor, sequence_ge_prompts(cases) if sequential else [])  # no prompts: no texts sampled
    fields = {"unedited": scores, "unedited_neutral_nll": before["neutral_nll"]}
    if sequential:
        fields["unedited_generation_entropy"] = before["generation_entropy"]
    if on_record:
        on_record({"kind": "unedited", "cases": cases_id, "gen_tokens": gen_tokens, **fields})
    return fields


def render_report(report: dict) -> str:
    """A table for people: one row for the unedited model, one per (method, layer).

    A MEMIT row's layer is its range and its s/edit the batch's seconds over its size; GE
    (100 × generation entropy in bits) appears when the records carried generation prompts.
    A sequential run adds GE20: 100 × the generation entropy of the texts sampled from its
    first 20 cases' prompts (:func:`sequence_ge_prompts`), at each checkpoint and the end.
    """
    batches = f"MEMIT: batches of {report['batch_size']}" if "batch_size" in report else ""
    if report["sequential"]:
        mode = "sequential" + (f" ({batches})" if batches else "")
    else:
        mode = "each edit" + (f" ({batches})" if batches else "") + " from the unedited model"
    zsre = report["dataset"] == "zsre"
    keys = ("efficacy", "paraphrase", "specificity") if zsre else ("ES", "PS", "NS", "EM", "PM", "NM", "S")
    if "GE" in report["unedited"]:
        keys += ("GE",)
    names = ("Eff", "Para", "Spec") if zsre else keys
    lines = [f"{report['dataset']}: {report['n']} records, {mode}, {report['seconds']:.0f} s",
             f"{'method':9} {'layer':>5} " + " ".join(f"{k:>6}" for k in names)
             + f" {'s/edit':>7} {'|dW|':>7} {'|dW|/|W|':>8} {'textNLL':>7}"
             + (f" {'GE20':>6}" if "unedited_generation_entropy" in report else "")]
    nan = float("nan")

    def row(name, layer, summary, sec, norm, rel, nll, ge=None):
        return (f"{name:9} {layer:>5} " + " ".join(f"{summary.get(k, nan):6.1f}" for k in keys)
                + f" {sec:7.1f} {norm:7.2f} {rel:8.3f} {nll:7.3f}" + ("" if ge is None else f" {100 * ge:6.1f}"))

    sequence = "unedited_generation_entropy" in report
    ge = (lambda point: point.get("generation_entropy", nan)) if sequence else (lambda point: None)
    lines.append(row("unedited", "-", report["unedited"], nan, nan, nan, report["unedited_neutral_nll"],
                     report["unedited_generation_entropy"] if sequence else None))
    for run in report["runs"]:
        for point in run.get("checkpoints", []):
            lines.append(row(f"{run['method']}@{point['edits']}", str(run["layer"]), point["summary"],
                             nan, nan, nan, point["neutral_nll"], ge(point)))
        lines.append(row(run["method"], str(run["layer"]), run["summary"], run["seconds_per_edit"],
                         run["mean_delta_norm"], run["mean_relative_norm"], run["neutral_nll"], ge(run)))
    return "\n".join(lines)

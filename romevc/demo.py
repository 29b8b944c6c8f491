"""The README's main job: edit one fact in the demo model and show that it holds, generalises,
stays local and undoes exactly."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from romevc.editing.request import EditRequest
from romevc.editing.stats import DEFAULT_TOKENS, StatsCache
from romevc.editor import Editor
from romevc.model import load_base

REQUEST = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
PARAPHRASES = (
    "The Eiffel Tower can be found in the city of",
    "Tourists who visit the Eiffel Tower travel to the city of",
)
NEIGHBOURS = (  # (prompt, true object): facts about other landmarks that must not move
    ("The Louvre is located in the city of", "Paris"),
    ("The Acropolis is located in the city of", "Athens"),
)


@dataclass
class Probe:
    prompt: str
    top_before: str
    top_after: str
    p_new_before: float
    p_new_after: float
    expected: str


@dataclass
class DemoReport:
    base: str
    fact: str
    layer: int
    method: str
    delta_norm: float
    probes: list[Probe] = field(default_factory=list)
    restored_exactly: bool = False
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _top(editor: Editor, prompt: str) -> str:
    return editor.predict(prompt, 1)[0].token.strip()


def run_demo(base: str | None = None, method: str = "r-rome", stats_tokens: int = DEFAULT_TOKENS) -> DemoReport:
    clock = time.perf_counter()
    loaded = load_base(base)
    editor = Editor(loaded, StatsCache(n_tokens=stats_tokens))
    seconds = {"load": time.perf_counter() - clock}
    probes = [(REQUEST.text, REQUEST.target_new)] + [(p, REQUEST.target_new) for p in PARAPHRASES] + list(NEIGHBOURS)
    before = [(_top(editor, p), editor.probability(p, REQUEST.target_new)) for p, _ in probes]

    clock = time.perf_counter()
    editor.stats.get(editor.model, editor.tokenizer, editor.hparams().layer)
    seconds["statistics"] = time.perf_counter() - clock
    clock = time.perf_counter()
    result = editor.compute(REQUEST, editor.hparams(method=method))
    seconds["edit"] = time.perf_counter() - clock

    # restore() touches only the edited module; the tests check that nothing else ever moves.
    pristine = {f"{result.module}.weight": editor.model.get_parameter(f"{result.module}.weight").detach().clone()}
    editor.apply([result])
    after = [(_top(editor, p), editor.probability(p, REQUEST.target_new)) for p, _ in probes]
    clock = time.perf_counter()
    editor.restore()
    seconds["restore"] = time.perf_counter() - clock
    restored = all(torch.equal(editor.model.get_parameter(name), value) for name, value in pristine.items())

    report = DemoReport(str(loaded.spec), REQUEST.fact(), result.layer, result.method,
                        result.delta.norm(), restored_exactly=restored, seconds=seconds)
    for (prompt, expected), (top_b, p_b), (top_a, p_a) in zip(probes, before, after):
        report.probes.append(Probe(prompt, top_b, top_a, p_b, p_a, expected))
    return report

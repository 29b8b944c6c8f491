"""Edit requests about the tiny GPT-2 fixture's synthetic people, shared by the repository tests."""
from __future__ import annotations

import json

from romevc.editing.request import EditRequest
from tests.conftest import TINY_GPT2

FIXTURE = TINY_GPT2
FACTS = json.loads((FIXTURE / "facts.json").read_text())
AUTHOR = "Ada <ada@example.org>"


def fact(subject: str, relation: str = "city", target: str = "Rome") -> EditRequest:
    """The fixture's prompt for ``subject``'s ``relation``, rewritten to ``target``."""
    f = next(f for f in FACTS if f["subject"] == subject and f["relation"] == relation)
    return EditRequest(f["prompt"], subject, target)


A = fact("Tomas Varek", target="Rome")
B = fact("Ines Zatok", target="Paris")
C = fact("Pavel Tupok", target="Oslo")
D = fact("Maria Lital", target="Lima")

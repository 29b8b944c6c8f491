"""Build romevc's default statistics corpus from the Python documentation sources.

ROME's second-moment statistics C = E[k kᵀ] need a few hundred thousand tokens of
ordinary English prose. The Python documentation (PSF License 2.0, permissive) is on
Debian as ``python3.11-doc``; this script keeps its prose paragraphs (tutorial, how-tos,
FAQ, language reference, library reference, what's new), drops code blocks, directives,
tables and headings, and strips reST markup.

    apt-get install python3.11-doc
    python examples/build_default_corpus.py --out romevc/data/python-docs-prose.txt.gz
"""
from __future__ import annotations

import argparse
import gzip
import re
from pathlib import Path

SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
SECTIONS = ("tutorial", "howto", "faq", "reference", "library", "whatsnew")
MIN_WORDS = 12  # shorter blocks are headings, captions or list fragments
ROLE = re.compile(r":[\w:-]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")  # :func:`open` -> open
LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")  # `text <url>`_ -> text
LITERAL = re.compile(r"``([^`]*)``")
EMPHASIS = re.compile(r"\*\*?([^*]+)\*\*?")
REF_TAIL = re.compile(r"`([^`]+)`_+")


def clean(paragraph: str) -> str:
    for pattern in (ROLE, LINK, LITERAL, REF_TAIL, EMPHASIS):
        paragraph = pattern.sub(r"\1", paragraph)
    return re.sub(r"\s+", " ", paragraph).strip()


def prose_paragraphs(text: str):
    """Unindented paragraphs that read as sentences; code, directives and tables dropped."""
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if not lines or lines[0].startswith((" ", "\t", "..", "*", "-", "+", "=", "|", ">>>", "#")):
            continue
        if any(re.fullmatch(r"[=\-~^\"'`#*+]{3,}", line.strip()) for line in lines):
            continue  # a heading
        paragraph = clean(" ".join(lines))
        words = paragraph.split()
        letters = sum(c.isalpha() or c.isspace() for c in paragraph) / max(1, len(paragraph))
        if len(words) >= MIN_WORDS and letters > 0.9 and paragraph[-1] in ".:?!":
            yield paragraph.rstrip(":") + ("" if paragraph.endswith(".") else ".")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("romevc/data/python-docs-prose.txt.gz"))
    args = parser.parse_args()
    paragraphs = []
    for section in SECTIONS:
        for path in sorted((SOURCES / section).rglob("*.rst.txt")):
            paragraphs.extend(prose_paragraphs(path.read_text(encoding="utf-8")))
    text = "\n\n".join(dict.fromkeys(paragraphs)) + "\n"  # dedupe, keep order
    with gzip.open(args.out, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write(text)
    print(f"{len(paragraphs)} paragraphs, {len(text.split())} words, {len(text)/1e6:.2f} MB -> {args.out}")


if __name__ == "__main__":
    main()

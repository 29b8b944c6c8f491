"""Text corpora for second-moment statistics.

A corpus is an id (which keys the statistics cache) and a stream of documents. The id of
a file corpus includes a hash of its bytes, so editing the file invalidates the cache.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from romevc.errors import CorpusError

DEFAULT_CORPUS = "default"
_DEFAULT_FILE = Path(__file__).parent / "data" / "python-docs-prose.txt.gz"
_DEFAULT_ID = "python-docs-prose-v1"
_TEXT_SUFFIXES = (".txt", ".txt.gz", ".md")


@dataclass(frozen=True)
class Corpus:
    """A named stream of documents; ``documents()`` may be called more than once."""

    id: str
    documents: Callable[[], Iterator[str]]


def _read_text(path: Path) -> str:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise CorpusError(f"cannot read corpus file {path}: {exc}") from None


def _paragraphs(text: str) -> Iterator[str]:
    for block in text.split("\n\n"):
        block = block.strip()
        if block:
            yield block


def _jsonl_documents(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise CorpusError(f"{path}:{number}: each line needs a string field 'text'")
            if record["text"].strip():
                yield record["text"]


def _digest_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for file in files:
        h.update(file.name.encode())
        h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()[:16]


def _file_corpus(path: Path) -> Corpus:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(_TEXT_SUFFIXES))
        if not files:
            raise CorpusError(f"the folder {path} holds no .txt files")
    else:
        files = [path]
    corpus_id = f"{path.name}-{_digest_files(files)}"
    if path.suffix == ".jsonl":
        return Corpus(corpus_id, lambda: _jsonl_documents(path))
    if path.is_file() and not path.name.endswith(_TEXT_SUFFIXES):
        raise CorpusError(f"{path}: a corpus is a .txt file, a folder of them, or a .jsonl with a 'text' field")
    return Corpus(corpus_id, lambda: (p for f in files for p in _paragraphs(_read_text(f))))


def _hf_dataset_corpus(name: str) -> Corpus:
    """``hf:NAME[:CONFIG][/SPLIT]``, read with the ``datasets`` library (optional)."""
    try:
        import datasets  # noqa: F401  (optional dependency)
    except ImportError:
        raise CorpusError(f"{name!r} is not a file; reading Hub datasets needs `pip install datasets`") from None
    spec = name.removeprefix("hf:")
    spec, _, split = spec.partition("/") if spec.count("/") > 1 else (spec, "", "")
    dataset_name, _, config = spec.partition(":")

    def documents() -> Iterator[str]:
        from datasets import load_dataset

        try:
            data = load_dataset(dataset_name, config or None, split=split or "train", streaming=True)
        except Exception as exc:  # datasets raises many types; all mean "cannot read it"
            raise CorpusError(f"cannot load dataset {dataset_name!r}: {str(exc).splitlines()[0]}") from None
        for row in data:
            if isinstance(row.get("text"), str) and row["text"].strip():
                yield row["text"]

    return Corpus(f"hf-{dataset_name}-{config or 'default'}-{split or 'train'}", documents)


def open_corpus(spec: str | None = None) -> Corpus:
    """The default corpus, a .txt file, a folder of them, a .jsonl, or ``hf:dataset``."""
    if spec in (None, "", DEFAULT_CORPUS):
        return Corpus(_DEFAULT_ID, lambda: _paragraphs(_read_text(_DEFAULT_FILE)))
    path = Path(spec).expanduser()
    if path.exists():
        return _file_corpus(path)
    if spec.startswith("hf:"):
        return _hf_dataset_corpus(spec)
    raise CorpusError(f"no corpus at {spec!r}: give a .txt file, a folder, a .jsonl, or hf:DATASET")

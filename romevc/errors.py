"""One error tree for everything a user can cause.

Only the CLI turns these into exit codes; every message says what happened and what to
do about it, on one line.
"""
from __future__ import annotations


class RomevcError(Exception):
    """Root of every error a user can cause (bad input, missing files, unknown refs)."""


class ModelLoadError(RomevcError):
    """A base model that cannot be found, read or trusted."""


class UnsupportedArchitectureError(ModelLoadError):
    """A model family with no entry in the architecture table."""


class CorpusError(RomevcError):
    """A statistics corpus that is missing, empty or unreadable."""


class StatsError(RomevcError):
    """Second-moment statistics that cannot be computed or loaded."""


class EditRequestError(RomevcError):
    """An edit request that cannot be carried out as written (subject missing, empty target)."""


class HyperParamsError(RomevcError, ValueError):
    """Hyperparameters out of range or of the wrong type (a ``ValueError`` too, as dataclass checks raise)."""


class EditComputationError(RomevcError):
    """An edit whose optimisation diverged (NaN/inf); nothing is written."""


class LayerOutOfRangeError(RomevcError):
    """A layer index the model does not have."""


class SafetensorsFormatError(RomevcError):
    """A file that is not valid safetensors: truncated, a header that lies, or a pickle renamed."""

"""romevc: version control for fact edits of GPT-style language models."""
from romevc.errors import RomevcError

__version__ = "0.1.0"
__all__ = ["RomevcError", "__version__"]

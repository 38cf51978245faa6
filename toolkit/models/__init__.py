"""Model zoo. Importing this package registers every model."""
from . import resnet  # noqa: F401  (registers models)
from .registry import DEFAULT_BITS, create_model, list_models, register_model

__all__ = ["DEFAULT_BITS", "create_model", "list_models", "register_model"]

"""The kit's models. Importing this package registers every model (timm's pattern)."""
from .registry import create_model, display_name, list_models, register_model, require_model  # noqa: F401
from .base import IQAModel  # noqa: F401
from . import deiqt, csfiqa, lmliqa  # noqa: F401  (registration order = table order)

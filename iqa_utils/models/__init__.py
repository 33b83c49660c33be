from .registry import create_model, list_models, register_model  # noqa: F401
from .base import IQAModel  # noqa: F401

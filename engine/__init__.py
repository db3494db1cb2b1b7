"""SigLIP 2 Studio engine: load, preprocess, encode, label, index and search. Never imports the UI."""

from .errors import ImageReadError, IndexStoreError, LabelError, ModelLoadError, QueryError, StudioError
from .models import LoadedModel, load_model
from .registry import CHECKPOINTS, DEFAULT_MODEL, Checkpoint, find_checkpoint

__all__ = [
    "CHECKPOINTS", "DEFAULT_MODEL", "Checkpoint", "ImageReadError", "IndexStoreError", "LabelError",
    "LoadedModel", "ModelLoadError", "QueryError", "StudioError", "find_checkpoint", "load_model",
]

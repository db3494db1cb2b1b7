"""SigLIP 2 Studio engine: load, preprocess, encode, label, index, search, inspect and explore. Never imports
the UI. Sub-packages, each depending only on those before it: `model` ← `label`, `index`, `inspect` ← `explore`
← `train` ← `cli` (see engine/README.md).
"""

from .errors import (ImageReadError, IndexStoreError, InspectError, LabelError, ModelLoadError, QueryError,
                     StudioError, TrainError)
from .model.loading import LoadedModel, load_model
from .model.registry import CHECKPOINTS, DEFAULT_MODEL, Checkpoint, find_checkpoint

__all__ = [
    "CHECKPOINTS", "DEFAULT_MODEL", "Checkpoint", "ImageReadError", "IndexStoreError", "InspectError", "LabelError",
    "LoadedModel", "ModelLoadError", "QueryError", "StudioError", "TrainError", "find_checkpoint", "load_model",
]

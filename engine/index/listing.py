"""Where indexes live and which there are: an index's name to its folder, the listing with each index's
state, and which model's weights built an index (a fingerprint that holds whatever the checkpoint's path)."""

from __future__ import annotations

import os
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import IndexStoreError
from ..model.encode import encode_texts
from ..model.loading import LoadedModel
from .catalog import Catalog

INDEX_DIR_ENV = "STUDIO_INDEX_DIR"
CATALOG = "catalog.sqlite"
_NAME = re.compile(r"^[\w][\w .-]{0,63}$")
FINGERPRINT_TEXT = "siglip 2 studio index fingerprint"
BUILD_FINISHED = "build_finished"  # meta key: the last build ran to its end


def default_index_dir() -> Path:
    return Path(os.environ.get(INDEX_DIR_ENV) or Path(__file__).resolve().parents[2] / "indexes")


def index_path(name: str, index_dir: str | Path | None = None) -> Path:
    """`index_dir/name`, refusing names that could leave the index folder."""
    if not name or not _NAME.match(name) or ".." in name or os.sep in name or name.startswith("."):
        raise IndexStoreError(
            f"Index name {name!r} is not allowed: use letters, digits, spaces, '.', '-' and '_' (no paths).")
    root = Path(index_dir or default_index_dir()).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise IndexStoreError(f"Index name {name!r} would leave {root}")
    return path


def index_exists(name: str, index_dir: str | Path | None = None) -> bool:
    return (index_path(name, index_dir) / CATALOG).exists()


_fingerprints: weakref.WeakKeyDictionary[LoadedModel, list[float]] = weakref.WeakKeyDictionary()


def model_fingerprint(model: LoadedModel) -> list[float]:
    """The embedding of a fixed text: tells two checkpoints apart whatever their path. Cached per model."""
    if model not in _fingerprints:
        _fingerprints[model] = [round(float(x), 6) for x in encode_texts(model, [FINGERPRINT_TEXT]).vectors[0]]
    return _fingerprints[model]


def built_by(meta: dict, model: LoadedModel) -> bool:
    """Whether the index with this meta was built by `model`'s weights (whatever their path or precision)."""
    same_shape = model.embed_dim == int(meta["dim"]) and model.arch == meta["arch"]
    stored = np.asarray(meta["fingerprint"], dtype=np.float32)
    # 0.995: the same weights in bf16 and fp32 agree far closer; another checkpoint does not
    return same_shape and float(np.dot(stored, model_fingerprint(model))) >= 0.995


def list_indexes(index_dir=None) -> list[str]:
    root = Path(index_dir or default_index_dir())
    return sorted(p.name for p in root.iterdir() if (p / CATALOG).exists()) if root.exists() else []


def build_finished(meta: dict) -> bool:
    """Whether an index's last build ran to its end, from its meta (indexes from before the flag: finished)."""
    return bool(meta.get(BUILD_FINISHED, True))


@dataclass(frozen=True)
class IndexEntry:
    """An index as a listing shows it."""

    name: str
    created_at: float
    changed_at: float  # its catalogue's last change
    finished: bool  # whether its last build ran to its end
    meta: dict = field(default_factory=dict, repr=False, compare=False)


def index_entries(index_dir=None) -> list[IndexEntry]:
    """The indexes in `index_dir`, oldest first: a new one comes last, so a list shown earlier keeps its order."""
    entries = []
    for name in list_indexes(index_dir):
        path = index_path(name, index_dir) / CATALOG
        catalog = Catalog(path, readonly=True)
        try:
            meta = catalog.get_meta()
        finally:
            catalog.close()
        entries.append(IndexEntry(name, meta.get("created_at", 0.0), path.stat().st_mtime, build_finished(meta),
                                  meta))
    return sorted(entries, key=lambda entry: (entry.created_at, entry.name))


def indexes_of_other_models(model: LoadedModel, index_dir=None) -> list[IndexEntry]:
    """The indexes that `model` cannot search: built by other weights (another checkpoint, or before a
    fine-tune)."""
    return [entry for entry in index_entries(index_dir) if not built_by(entry.meta, model)]


def unfinished_indexes(index_dir=None) -> set[str]:
    """The indexes whose last build has not run to its end (cancelled, failed, killed, or running now)."""
    return {entry.name for entry in index_entries(index_dir) if not entry.finished}

"""What the UI shares between users: the loaded model, the job running on it, and where files may come from."""

from __future__ import annotations

import logging
import tempfile
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from engine import LoadedModel, StudioError, load_model
from engine.index.listing import index_exists
from engine.index.store import ImageIndex
from engine.model.encode import serve_concurrently, stop_serving
from engine.model.text import short_text
from engine.paths import AllowedRoots
from engine.model.testmodel import make_test_model

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
UNTRAINED = ("⚠️ **Untrained test model** (random weights): results are meaningless; "
             "they only show that the interface works.")
UNTRAINED_WARNING = f"{UNTRAINED} Load a real checkpoint (Models tab)."
NO_MODEL = "No model is loaded. Open the **Models** tab and load a checkpoint (or the small test model)."


@dataclass
class Studio:
    """One per app: the model every tab uses, guarded so that a model switch never lands mid-job."""

    index_dir: Path
    allowed_roots: list[Path]
    device: str | None = None
    dtype: str | None = None
    model: LoadedModel | None = None
    load_error: str | None = None
    cancel_flags: dict[str, threading.Event] = field(default_factory=dict)  # job key → set by its Cancel button
    running_jobs: Counter = field(default_factory=Counter)  # what runs on the current model now, in words
    loading: bool = False  # a model load is under way
    enable_training: bool = False  # the Fine-tune tab (app.py --enable-training)
    example_results: dict = field(default_factory=dict)  # (image sha256, labels, template) → result, this model and setting
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def load(self, name: str, device: str | None = None, dtype: str | None = None) -> LoadedModel:
        with self._guard:
            if self.loading:
                raise StudioError("Another model is being loaded; wait for it to finish, then load again.")
            if self.running_jobs:
                raise StudioError(f"Model switch refused: “{next(iter(self.running_jobs))}” is running on the "
                                  "current model. Wait for it to finish, then load again.")
            self.loading = True
        try:
            model = load_model(name, device=device or self.device, dtype=dtype or self.dtype)
            if self.model is not None:
                stop_serving(self.model)
            serve_concurrently(model)  # concurrent users' single encodes share forward passes
            self.model, self.load_error, self.example_results = model, None, {}
            return model
        except StudioError as error:
            self.load_error = str(error)
            raise
        finally:
            self.loading = False

    def load_test_model(self, arch: str = "naflex", dtype: str | None = None) -> LoadedModel:
        """The small generated, untrained model, on the CPU, in `dtype` (default: the app's, else fp32)."""
        folder = Path(tempfile.gettempdir()) / f"siglip2-studio-test-model-{arch}"
        if not (folder / "model.safetensors").exists():
            make_test_model(folder, arch=arch, size="tiny", seed=0)
        return self.load(str(folder), device="cpu", dtype=dtype or self.dtype or "fp32")

    def set_max_patches(self, patches: int) -> LoadedModel:
        """A new NaFlex sequence length changes every image result: cached examples go with it."""
        model = self.require_model()
        model.set_max_patches(patches)
        self.example_results = {}
        return model

    def require_model(self) -> LoadedModel:
        if self.model is None:
            raise StudioError(NO_MODEL)
        return self.model

    def cancel_flag(self, key: str) -> threading.Event:
        """A fresh flag for the job `key` (e.g. "build holiday"), which `cancel(key)` sets."""
        self.cancel_flags[key] = threading.Event()
        return self.cancel_flags[key]

    def cancel(self, key: str) -> None:
        if key in self.cancel_flags:
            self.cancel_flags[key].set()

    @contextmanager
    def job(self, name: str):
        """Run `name` on the current model (several may run at once); a model switch meanwhile is refused."""
        with self._guard:
            model = self.require_model()
            if self.loading:
                raise StudioError("A model is being loaded; try again in a moment.")
            self.running_jobs[name] += 1
        try:
            yield model
        finally:
            with self._guard:
                self.running_jobs[name] -= 1
                if self.running_jobs[name] <= 0:
                    del self.running_jobs[name]

    @property
    def readable(self) -> AllowedRoots:
        """The one rule for every server path a user names (folders, query images, training data)."""
        return AllowedRoots.of(*self.allowed_roots)

    def check_folder(self, folder: str) -> Path:
        """A server folder the UI may read: it must lie inside an allowed root (links followed) and exist."""
        if not folder or not folder.strip():
            raise StudioError("Give a folder on the server, or upload images.")
        path = self.readable.resolve(folder)
        if path is None:  # said the same way whether or not it exists
            raise StudioError(f"{short_text(folder.strip())}: outside the folders this server allows "
                              f"({self.readable.describe()}). Start the app with --allowed-root to add one.")
        if not path.is_dir():
            raise StudioError(f"{short_text(folder.strip())}: no such folder on the server.")
        return path

    def open_index(self, name: str) -> ImageIndex:
        """Index `name` for reading, or an error worded for the page (no server path, no command line)."""
        name = (name or "").strip()
        if not name:
            raise StudioError("Choose an index, or build one first (Search tab, “Create or update an index”).")
        if not index_exists(name, self.index_dir):
            raise StudioError(f"No index named {short_text(name)!r}: build it in the Search tab (“Create or update "
                              "an index”), or choose one from the list.")
        return ImageIndex.open(name, self.index_dir)

    def notes(self, warnings: list[str] = (), failures=()) -> str:
        """Markdown for a result: the untrained-model banner, warnings and skipped inputs."""
        lines = [UNTRAINED_WARNING] if self.model is not None and self.model.untrained else []
        lines += [f"- ⚠️ {w}" for w in warnings]
        lines += [f"- ⛔ {f}" for f in failures]
        return "\n".join(lines)

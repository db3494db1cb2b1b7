"""Uploaded files kept for building an index from them: copied under their own names into the app's own
folder (one subfolder per index), a different file of a name already there kept beside it, renamed."""

from __future__ import annotations

import filecmp
import itertools
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .listing import default_index_dir, index_path

UPLOADS = ".uploads"  # under the index folder; index names cannot start with a dot


def uploads_folder(index_dir: str | Path | None = None) -> Path:
    """Where `stage_uploads` keeps uploaded files (one subfolder per index): the app's own folder, not the user's."""
    return Path(index_dir or default_index_dir()).resolve() / UPLOADS


@dataclass
class StagedUploads:
    """The folder uploads were copied into, and the uploads stored under another name because a different file
    of their name is there already (uploaded name, name stored: cat.jpg, cat_1.jpg)."""

    folder: Path
    renamed: list[tuple[str, str]] = field(default_factory=list)


def _place_for(folder: Path, upload: Path) -> Path:
    """`folder / upload.name`, or the first of name_1, name_2, … that is free or holds the same bytes."""
    for number in itertools.count():
        target = folder / (upload.name if number == 0 else f"{upload.stem}_{number}{upload.suffix}")
        if not target.exists() or filecmp.cmp(upload, target, shallow=False):
            return target


def stage_uploads(paths: list[str | Path], name: str, index_dir: str | Path | None = None) -> StagedUploads:
    """Copy uploaded files, under their own file names, into the folder that index `name` is built from; a
    different file of a name already there (in this upload or an earlier one) is kept beside it, renamed."""
    folder = uploads_folder(index_dir) / index_path(name, index_dir).name  # validates the name first
    folder.mkdir(parents=True, exist_ok=True)
    staged = StagedUploads(folder)
    for path in map(Path, paths):
        target = _place_for(folder, path)
        if not target.exists():  # (when it does: the same bytes under that name, uploaded again)
            partial = folder / f".{target.name}.{os.getpid()}.part"  # never a half file under the real name
            shutil.copy2(path, partial)
            os.replace(partial, target)
        if target.name != path.name:
            staged.renamed.append((path.name, target.name))
    return staged

"""Which server paths a caller may read: one rule for every path-taking input of a shared deployment.

A path is readable only if, with `~` expanded, a `file://` prefix removed and every symbolic link followed,
it lies inside one of the allowed roots. Callers on their own machine (the CLI, Python) pass no roots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AllowedRoots:
    """Folders a shared server may read; everything else is refused without saying whether it exists."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, *folders: str | Path) -> "AllowedRoots":
        return cls(tuple(Path(folder).expanduser().resolve() for folder in folders))

    def resolve(self, path: str | Path) -> Path | None:
        """The real path if it lies inside an allowed root, else None (whether or not it exists)."""
        text = str(path).strip()
        if text.lower().startswith("file://"):
            text = text[len("file://"):]
        if not text or "\x00" in text:
            return None
        try:
            real = Path(text).expanduser().resolve()
        except (OSError, RuntimeError):  # a symbolic-link loop, an unreadable component
            return None
        return real if any(real == root or root in real.parents for root in self.roots) else None

    def describe(self) -> str:
        return ", ".join(str(root) for root in self.roots)

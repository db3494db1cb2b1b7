"""Helpers shared by the tabs: error rendering, progress bridging, thumbnails, ZeroGPU."""

from __future__ import annotations

import functools
import logging

import gradio as gr
from PIL import Image

from engine import StudioError
from engine.model.images import open_image

log = logging.getLogger("app")

try:  # ZeroGPU on Hugging Face Spaces; harmless elsewhere
    import spaces

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - depends on the host
    def gpu(fn):
        return fn

MODEL_QUEUE = "model"  # one model job at a time across users


def user_errors(fn):
    """Show StudioError messages in the UI; log anything else with its stack trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except StudioError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Unexpected error ({type(error).__name__}); details are in the server log.",
                           print_exception=False) from None

    return wrapper


def progress_callback(progress: gr.Progress, description: str):
    def update(done: int, total: int) -> None:
        progress((done, max(total, 1)), desc=description, unit="images")

    return update


def thumbnail(path: str, size: int = 256) -> Image.Image | None:
    try:
        image = open_image(path)
    except StudioError:
        return None
    image.thumbnail((size, size))
    return image


def uploaded_paths(files) -> list[str]:
    """Paths of gr.File uploads (filepath strings or file objects)."""
    return [getattr(f, "name", f) for f in (files or [])]


class ImageInput(gr.Image):
    """gr.Image (type="filepath") whose unreadable uploads reach the engine, which says what is wrong."""

    @classmethod
    def get_block_name(cls) -> str:
        return "image"

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Exception:
            return payload.path if payload is not None else None

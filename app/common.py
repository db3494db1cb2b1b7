"""Helpers shared by the tabs: error rendering, progress bridging, thumbnails, ZeroGPU."""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from engine import StudioError
from engine.index.uploads import uploads_folder
from engine.index.listing import built_by, index_entries, indexes_of_other_models
from engine.model.images import open_image

log = logging.getLogger("app")

try:  # ZeroGPU on Hugging Face Spaces; harmless elsewhere
    import spaces

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - depends on the host
    def gpu(fn):
        return fn

MODEL_QUEUE = "model"  # one model job at a time across users: builds, maps, inspection
# Quick single-image and text requests run together (their encodes share forward passes): pass **SERVE.
SERVE = {"concurrency_id": "serve", "concurrency_limit": 16}
JOB_NOTES = "job-notes"  # the class of the notes under a long job's button, where its progress shows (ui.CSS)


class InputMissing(StudioError):
    """A request that lacks an input another result did not need: nothing ran, so what is shown stays."""


class JobCancelled(StudioError):
    """A job stopped by its Cancel button: what the user asked for, said plainly rather than as an error."""


def shown_in_place(*outputs):
    """Errors meant for users replace the event's result where it is shown, instead of a toast over a stale one.

    One word per output of the event: "clear" (emptied), "keep" (left as it is) or "notes" (the message,
    "⛔ ...", or as it is for a JobCancelled), or a function of no arguments that makes the value to show
    instead (an empty table with its first headers: made at error time, since a component made while the
    layout is built would be drawn in it); an InputMissing error keeps every result. Anything else is logged
    with its stack trace and worded without it.
    """
    unknown = [output for output in outputs if not callable(output) and output not in ("clear", "keep", "notes")]
    if unknown:
        raise ValueError(f"shown_in_place: {unknown} is not clear, keep, notes or a function")

    def wrap(fn):
        def rendered(error: Exception):
            if isinstance(error, StudioError):
                message = str(error)
            else:  # logged with its trace, worded for the user
                log.exception("unexpected error in %s", fn.__name__, exc_info=error)
                message = f"Unexpected error ({type(error).__name__}); details are in the server log."
            kept = isinstance(error, InputMissing)
            shown = message if isinstance(error, JobCancelled) else f"⛔ {message}"

            def instead(output):
                if output == "notes":
                    return shown
                if kept or output == "keep":
                    return gr.skip()
                return output() if callable(output) else None

            values = tuple(instead(output) for output in outputs)
            return values if len(values) > 1 else values[0]

        if inspect.isgeneratorfunction(fn):  # a streaming handler: its error ends the stream in place
            @functools.wraps(fn)
            def streaming(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except Exception as error:  # noqa: BLE001 - rendered above
                    yield rendered(error)

            return streaming

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - rendered above
                return rendered(error)

        return wrapper

    return wrap


def cancel_button(**kwargs) -> gr.Button:
    """A long job's Cancel: grey and disabled until the job starts (a red button with nothing to stop alarms)."""
    return gr.Button("Cancel", variant="secondary", interactive=False, **kwargs)


def running(yes: bool) -> tuple[gr.Button, gr.Button]:
    """A long job's button and its Cancel while it runs (yes) or not: one pressable at a time."""
    return gr.Button(interactive=not yes), gr.Button(variant="stop" if yes else "secondary", interactive=yes)


def with_cancel(start: gr.Button, cancel: gr.Button, fn, inputs, outputs, emptied=(), **kwargs):
    """`start.click` runs `fn` (the event's other arguments in `kwargs`) with `start` disabled and `cancel`
    red until it ends, `emptied` (the last run's notes, where this one's progress shows) emptied first. In one
    chain, so that a quick job's end cannot overtake its start. Returns the job's event."""
    started = start.click(lambda: (*running(True), *[None] * len(emptied)), None, [start, cancel, *emptied],
                          api_name=False, queue=False)
    job = started.then(fn, inputs, outputs, **kwargs)
    job.then(lambda: running(False), None, [start, cancel], api_name=False, queue=False)
    return job


def progress_callback(progress: gr.Progress, description: str):
    def update(done: int, total: int) -> None:
        progress((done, max(total, 1)), desc=description, unit="images")

    return update


THUMBNAILS = Path(tempfile.gettempdir()) / "siglip2-studio-thumbnails"


def thumbnail(path: str, size: int = 256) -> str | None:
    """A JPEG thumbnail file of the image at `path`, made once per file version and size (written to a
    temporary name, then renamed, so a concurrent reader never sees half a file); None if unreadable."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = hashlib.sha256(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{size}".encode()).hexdigest()
    target = THUMBNAILS / f"{key[:32]}.jpg"
    if not target.exists():
        try:
            image = open_image(path)
        except StudioError:
            return None
        image.thumbnail((size, size))
        THUMBNAILS.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.stem}.{threading.get_ident()}.part")
        image.save(partial, "JPEG", quality=88)
        os.replace(partial, target)
    return str(target)


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



def index_choices(index_dir, model=None) -> tuple[list[tuple[str, str]], str | None]:
    """The indexes to choose from, as (label, name), oldest first, labelled when their last build is unfinished
    or `model` cannot search them; and the one to preselect: the most recently changed of those it can search
    whose build finished (failing that, of the finished ones, then of all).
    Oldest first because Gradio leaves an open list's tick at its row when the list is refreshed: a new index
    sorted in above the chosen one moved the tick onto another index."""
    entries = index_entries(index_dir)
    usable = {e.name for e in entries if model is None or built_by(e.meta, model)}

    def label(entry) -> str:
        said = []
        if not entry.finished:
            said.append("unfinished build")
        if entry.name not in usable:
            said.append("built with another model")
        return f"{entry.name} ({'; '.join(said)})" if said else entry.name

    finished = [e for e in entries if e.finished]
    latest = max([e for e in finished if e.name in usable] or finished or entries, key=lambda e: e.changed_at,
                 default=None)
    return [(label(entry), entry.name) for entry in entries], latest.name if latest else None


def other_model_indexes_note(studio, shown: int = 5) -> str:
    """After a load: the indexes the loaded model cannot search, and the model each needs."""
    entries = indexes_of_other_models(studio.model, studio.index_dir)
    if not entries:
        return ""
    named = ", ".join(f"{entry.name} (built with {entry.meta.get('model', '?')})" for entry in entries[:shown])
    more = f" and {len(entries) - shown} more" if len(entries) > shown else ""
    return (f"{len(entries)} index{'es' if len(entries) > 1 else ''} here need{'' if len(entries) > 1 else 's'} "
            f"another model to be searched: {named}{more}. Load that model to search them, or build them again "
            "with this one.")


def index_dropdown(studio, label: str, elem_id: str) -> gr.Dropdown:
    """A choice of the indexes, the latest changed one preselected; its list is read again when it is opened
    (ui.build_app also fills it afresh at every page load, so indexes built since the app started show)."""
    choices, latest = index_choices(studio.index_dir, studio.model)
    dropdown = gr.Dropdown(choices, value=latest, label=label, allow_custom_value=True, elem_id=elem_id)
    dropdown.focus(lambda: gr.Dropdown(choices=index_choices(studio.index_dir, studio.model)[0]), None,
                   dropdown, api_name=False, queue=False)
    return dropdown


def fresh_index_dropdowns(studio, count: int) -> list[gr.Dropdown]:
    """`count` index dropdowns' updates at a page load: today's indexes, the latest changed one chosen."""
    choices, latest = index_choices(studio.index_dir, studio.model)
    return [gr.Dropdown(choices=choices, value=latest) for _ in range(count)]


def path_as_known(index_dir) -> Callable[[str], str]:
    """Shows a stored image path as its user knows it: an uploaded file by its own name (the folder it was
    copied to is the app's), any other by its full path."""
    uploads = f"{uploads_folder(index_dir)}{os.sep}"
    return lambda path: Path(path).name if str(path).startswith(uploads) else str(path)

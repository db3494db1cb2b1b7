"""Fine-tune tab (behind --enable-training): a dataset on the server or uploaded, mode and settings, a live
chart of loss and validation accuracy, cancel, the before/after report and "load this checkpoint"."""

from __future__ import annotations

import contextlib
import hashlib
import math
import queue
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine import StudioError
from engine.train.checkpoints import resumable_runs
from engine.train.evaluate import comparison_table
from engine.train.trainer import TrainConfig, train

from .common import (JOB_NOTES, MODEL_QUEUE, cancel_button, other_model_indexes_note, shown_in_place,
                     with_cancel)
from .studio import Studio

DEVICES = ["auto", "cpu", "cuda", "xla", "mps"]
MODES = ["lora", "probe", "full"]
MAX_UNPACKED_BYTES = 16 * 2**30  # an uploaded zip's content; larger datasets are read from a server folder
MAX_ZIP_MEMBERS = 1_000_000
CHART_INTERVAL_S = 1.0  # between live chart updates: each re-sends the whole chart (every step froze the page)
FEW_HELD_OUT = 20  # held-out images below which a before/after change is mostly chance


def loss_figure(history: list[dict], validation: list[dict]) -> go.Figure:
    """Loss per step (left axis) and the validation metric (right axis, %)."""
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(go.Scatter(x=[h["step"] for h in history], y=[h["loss"] for h in history], name="loss",
                                mode="lines"), secondary_y=False)
    if validation:
        figure.add_trace(go.Scatter(x=[v["step"] for v in validation], y=[100 * v["value"] for v in validation],
                                    name=f"validation {validation[-1]['metric']} (%)", mode="lines+markers"),
                         secondary_y=True)
    figure.update_layout(height=320, margin=dict(l=40, r=40, t=20, b=40), legend=dict(orientation="h"))
    figure.update_xaxes(title_text="step")
    figure.update_yaxes(title_text="loss", secondary_y=False)
    figure.update_yaxes(title_text="%", range=[0, 104], secondary_y=True)  # 100 % not cut at the top
    return figure


def resolve_data(studio: Studio, folder: str, upload) -> Path:
    """A server folder/file within the allowed roots, or an uploaded zip (class folders) unpacked."""
    if upload:
        return _unpacked_upload(studio, Path(getattr(upload, "name", upload)))
    text = (folder or "").strip()
    if not text:
        raise StudioError("Give a dataset on the server (a folder of class subfolders, or a caption file), "
                          "or upload a .zip of class folders.")
    resolved = studio.readable.resolve(text)  # None outside the allowed roots
    if resolved is not None and resolved.is_file():  # a caption file
        return resolved
    return studio.check_folder(text)


def training_data_dir(studio: Studio) -> Path:
    """Where uploaded training zips are unpacked: beside the runs that use them, so a run can be resumed after
    a restart (the system's temporary folder may be emptied by then)."""
    return studio.index_dir.parent / "training-data"


def _unpacked_upload(studio: Studio, path: Path) -> Path:
    """The data inside an uploaded zip, unpacked once per content (the same zip again reuses its folder)."""
    if path.suffix.lower() != ".zip":
        raise StudioError("Upload a .zip holding one folder per class (or a captions.csv/.jsonl with its images).")
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()[:16]
    target = training_data_dir(studio) / f"{path.stem}-{digest}"
    if not target.exists():
        _unpack(path, target)
    captions = [p for p in target.rglob("*") if p.suffix.lower() in (".csv", ".jsonl", ".tsv")]
    entries = [p for p in target.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if captions:
        return captions[0]
    if len(entries) == 1 and entries[0].is_dir() and _has_subfolders(entries[0]):
        return entries[0]  # the zip held one top folder around the class folders
    return target


def _unpack(path: Path, target: Path) -> None:
    """Unpack whole or not at all: a crash mid-way leaves only a hidden .unpacking-* folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    unpacking = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=target.parent))
    try:
        with zipfile.ZipFile(path) as archive:
            _check_members(path.name, archive.infolist(), shutil.disk_usage(target.parent).free)
            archive.extractall(unpacking)
        unpacking.rename(target)
    except zipfile.BadZipFile:
        raise StudioError(f"{path.name}: not a readable zip file.") from None
    except OSError:
        if not target.exists():  # else another request unpacked the same zip first: use that
            raise
    finally:
        shutil.rmtree(unpacking, ignore_errors=True)


def _check_members(zip_name: str, members: list[zipfile.ZipInfo], free_bytes: int) -> None:
    """Refuse unsafe paths, and a zip that would unpack past the limits or the free disk space before a byte is
    written. The sizes in the zip's directory bound what extraction writes (zipfile stops at them)."""
    for member in members:
        if member.filename.startswith("/") or ".." in Path(member.filename).parts:
            raise StudioError(f"{zip_name}: unsafe path {member.filename!r} in the zip.")
    if len(members) > MAX_ZIP_MEMBERS:
        raise StudioError(f"{zip_name}: {len(members):,} files is more than {MAX_ZIP_MEMBERS:,}; "
                          "train from a folder on the server instead (--allowed-root).")
    unpacked = sum(member.file_size for member in members)
    if unpacked > MAX_UNPACKED_BYTES:
        raise StudioError(f"{zip_name}: unpacks to {_size(unpacked)}, more than the {_size(MAX_UNPACKED_BYTES)} "
                          "an upload may take; train from a folder on the server instead (--allowed-root).")
    if unpacked > free_bytes:
        raise StudioError(f"{zip_name}: unpacks to {_size(unpacked)}, but only {_size(free_bytes)} is free on "
                          "the server's disk.")


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def _has_subfolders(path: Path) -> bool:
    return any(p.is_dir() for p in path.iterdir())


def finetuned_dir(studio: Studio) -> Path:
    return studio.index_dir.parent / "finetuned"


def run_choices(studio: Studio) -> list[tuple[str, str]]:
    """(label, folder) of the interrupted runs the app wrote, newest first."""
    return [(f"{run.out.name} · step {run.step}/{run.total_steps} · {run.mode} · data "
             f"{_data_name(studio, run.data)}", str(run.out)) for run in resumable_runs(finetuned_dir(studio))]


def _data_name(studio: Studio, data: str) -> str:
    """The run's data as a user knows it (an upload by its zip's name), or that it is gone."""
    path = Path(data)
    if not path.exists():
        return f"{path.name} (missing: cannot resume)"
    uploads = training_data_dir(studio).resolve()
    path = path.resolve()
    inside_upload = next((p for p in (path, *path.parents) if p.parent == uploads), None)
    return f"{inside_upload.name.rsplit('-', 1)[0]}.zip" if inside_upload else path.name


def fine_tune(studio: Studio, folder: str, upload, mode: str, epochs: float, batch_size: int, lr: float,
              device: str, cancel: threading.Event, progress=None):
    """Run a fine-tune on the loaded model's checkpoint; yields (figure, status, report, out folder)."""
    config = TrainConfig(mode=mode, epochs=float(epochs), batch_size=int(batch_size), lr=float(lr) if lr else None,
                         device=None if device == "auto" else device)
    with _tidied_uploads(studio):  # (also when the run is refused: an upload is not left unpacked for nothing)
        data = resolve_data(studio, folder, upload)
        with studio.job("fine-tuning") as model:
            out = finetuned_dir(studio) / f"{Path(str(model.directory)).name}-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"
            yield from _follow(lambda on_event, should_stop: train(str(model.directory), data, out, config,
                                                                   on_event=on_event, should_stop=should_stop),
                               cancel, progress)


def resume_fine_tune(studio: Studio, run_folder: str, cancel: threading.Event, progress=None):
    """Continue an interrupted run (from its last checkpoint, with its own model, data and settings)."""
    run = next((r for r in resumable_runs(finetuned_dir(studio)) if str(r.out) == run_folder), None)
    if run is None:
        raise StudioError("Choose an interrupted run to resume: none is selected, or it has finished since.")
    with studio.job("fine-tuning"), _tidied_uploads(studio):
        yield from _follow(lambda on_event, should_stop: train(None, None, run.out, None, resume=True,
                                                               on_event=on_event, should_stop=should_stop),
                           cancel, progress)


@contextlib.contextmanager
def _tidied_uploads(studio: Studio):
    """After a run (finished, failed or interrupted), remove the unpacked uploads no interrupted run needs, and
    what a crash left mid-unpacking; a zip uploaded again is unpacked again. Runs one at a time (the model
    queue), so no other run is unpacking or reading an upload meanwhile."""
    try:
        yield
    finally:
        uploads = training_data_dir(studio)
        needed = [Path(run.data).resolve() for run in resumable_runs(finetuned_dir(studio))]
        for unpacked in uploads.iterdir() if uploads.is_dir() else ():
            if not any(data == unpacked.resolve() or unpacked.resolve() in data.parents for data in needed):
                shutil.rmtree(unpacked, ignore_errors=True)


def _follow(run: Callable, cancel: threading.Event, progress):
    """Run `run(on_event, should_stop)` in a thread, yielding the chart and status as it goes: at most once per
    CHART_INTERVAL_S (and at each validation), since every update re-sends the whole chart to the page."""
    events: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = run(events.put, cancel.is_set)
        except Exception as error:  # shown to the user below
            outcome["error"] = error
        finally:
            events.put(None)

    thread = threading.Thread(target=work, name="fine-tune", daemon=True)
    thread.start()
    history, validation = [], []
    finished = False
    shown_at = -math.inf
    try:
        while True:
            event = events.get()
            if event is None:
                finished = True
                break
            history.append({"step": event.step, "loss": event.loss})
            if event.validation:
                key, value = next(iter(event.validation.items()))
                validation.append({"step": event.step, "metric": key, "value": value})
            if progress is not None:
                progress((event.step, event.total_steps), desc="fine-tuning", unit="steps")
            if event.validation or time.monotonic() - shown_at >= CHART_INTERVAL_S:
                shown_at = time.monotonic()
                yield (loss_figure(history, validation),
                       f"step {event.step}/{event.total_steps} · loss {event.loss:.3f} · {event.seconds:.0f} s", "",
                       "")
    finally:
        if not finished:  # closed early (the page left, the job cancelled by Gradio): stop at a checkpoint
            cancel.set()
        thread.join()
    if "error" in outcome:
        error = outcome["error"]
        raise error if isinstance(error, StudioError) else StudioError(f"Fine-tuning failed: {error}")
    result = outcome["result"]
    yield loss_figure(result.history, result.validation), _summary(result, cancel.is_set()), _report(result), \
        str(result.out)


def _summary(result, cancelled: bool) -> str:
    """The run's outcome in one line: how far it got, in how long, and how to go on when it stopped early."""
    this_session = result.steps - result.first_step
    steps = (f"{result.steps}/{result.total_steps} steps ({this_session} after resuming at step "
             f"{result.first_step})" if result.first_step else f"{result.steps}/{result.total_steps} steps")
    return (f"{'Cancelled' if cancelled else 'Done'}: {steps} in {result.seconds:.0f} s, checkpoint written"
            + (" (resume it under *Interrupted runs*, or with `python -m engine train --out FOLDER --resume`)"
               if result.stopped else ""))


def _report(result) -> str:
    """The held-out before/after table, with a warning when the held-out set is too small to judge by."""
    if result.after is None:
        return ""
    count = result.after.num_images
    caution = (f" — too few to judge by: one image more or less right moves the score by {100 / count:.0f} points"
               if count < FEW_HELD_OUT else "")
    return (f"**Held-out set: {count} image{'' if count == 1 else 's'}**{caution}\n\n```\n"
            f"{comparison_table(result.before, result.after)}\n```")


def load_checkpoint(studio: Studio, folder: str) -> str:
    """Load a fine-tuned checkpoint; says what was loaded and which indexes it cannot search."""
    if not (folder or "").strip():
        raise StudioError("Fine-tune first, or give the folder of a checkpoint fine-tuned earlier.")
    model = studio.load(folder.strip())
    loaded = f"Loaded `{Path(str(model.directory)).name}`" + (" (still an untrained test model)"
                                                               if model.untrained else "")
    return "\n\n".join(x for x in (loaded, other_model_indexes_note(studio)) if x)


def build(studio: Studio) -> None:
    cancel = threading.Event()
    gr.Markdown("Fine-tune the loaded checkpoint on your images: a folder with one subfolder per class, or a "
                "caption file (CSV/JSONL: image, caption). The result is a checkpoint you can load here.")
    with gr.Row():
        with gr.Column():
            folder = gr.Textbox(label="Dataset on the server (folder of class subfolders, or a caption file)")
            upload = gr.File(label="…or upload a .zip of class folders", file_types=[".zip"], elem_id="train-upload")
            mode = gr.Radio(MODES, value="lora", label="Mode (probe: heads only; LoRA: adapters; full: every weight)")
            with gr.Row():
                epochs = gr.Number(3, label="Epochs", minimum=0.1)
                batch_size = gr.Number(32, label="Batch size", precision=0, minimum=2)
                lr = gr.Number(0, label="Learning rate (0: default for the mode)")
            device = gr.Dropdown(DEVICES, value="auto", label="Device")
            with gr.Row():
                start = gr.Button("Fine-tune", variant="primary")
                stop = cancel_button()
            status = gr.Markdown(elem_id="train-status", elem_classes=JOB_NOTES)  # the run's progress shows here
            with gr.Row(equal_height=True):
                # custom values: a run stopped after this page was built is still accepted (resume checks it)
                runs = gr.Dropdown(run_choices(studio), value=None, scale=3, allow_custom_value=True,
                                   label="Interrupted runs (continue from the last checkpoint)")
                resume = gr.Button("Resume", scale=1)
        with gr.Column():
            chart = gr.Plot(label="Loss and validation accuracy")
            report = gr.Markdown()
            out_folder = gr.Textbox(label="Checkpoint folder (this run's, or any fine-tuned one on the server)")
            load = gr.Button("Load this checkpoint")
            loaded = gr.Markdown()

    @shown_in_place("clear", "notes", "clear", "clear")
    def do_train(folder_text, uploaded, mode_value, epochs_value, batch_value, lr_value, device_value,
                 progress=gr.Progress()):
        cancel.clear()
        yield from fine_tune(studio, folder_text, uploaded, mode_value, epochs_value, batch_value, lr_value,
                             device_value, cancel, progress)

    @shown_in_place("clear", "notes", "clear", "clear")
    def do_resume(run_folder, progress=gr.Progress()):
        cancel.clear()
        yield from resume_fine_tune(studio, run_folder, cancel, progress)

    @shown_in_place("notes")
    def do_load(folder_text):
        return load_checkpoint(studio, folder_text)

    def refresh_runs(selected: str | None = None):
        """The runs on disk now; keeps `selected` only while it is still one of them."""
        choices = run_choices(studio)
        return gr.Dropdown(choices=choices, value=selected if selected in [v for _, v in choices] else None)

    def show_settings(run_folder: str | None):
        """The chosen run's own settings in the form: a resume goes on with them, not with what the form held."""
        run = next((r for r in resumable_runs(finetuned_dir(studio)) if str(r.out) == run_folder), None)
        if run is None:
            return (gr.skip(),) * 5
        saved = run.settings
        return (saved.get("mode", run.mode), saved.get("epochs", gr.skip()), saved.get("batch_size", gr.skip()),
                saved.get("lr") or 0, saved.get("device") or "auto")

    for trigger, handler, inputs, api_name in ((start, do_train, [folder, upload, mode, epochs, batch_size, lr, device],
                                                "fine_tune"), (resume, do_resume, [runs], "resume_fine_tune")):
        # afterwards a run that stopped early is the one chosen under Interrupted runs
        job = with_cancel(trigger, stop, handler, inputs, [chart, status, report, out_folder], emptied=[status],
                          api_name=api_name, concurrency_id=MODEL_QUEUE, show_progress_on=status)
        job.then(refresh_runs, out_folder, runs, api_name=False, queue=False)
    runs.focus(refresh_runs, runs, runs, api_name=False, queue=False)
    runs.change(show_settings, runs, [mode, epochs, batch_size, lr, device], api_name=False, queue=False)
    stop.click(lambda: cancel.set(), None, None, queue=False)
    load.click(do_load, out_folder, loaded, concurrency_id=MODEL_QUEUE)

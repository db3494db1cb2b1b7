"""Zero-shot labelling tab: one image with probability bars and a bias slider; batch mode with a
threshold, editable labels and exports (CSV, JSONL, ImageFolder zip)."""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np

from engine import StudioError
from engine.label.export import LabelAssignment, assign_labels, unique_names, write_exports
from engine.label.zeroshot import DEFAULT_TEMPLATES, ZeroShotResult, classify, parse_templates, prepare_labels
from engine.model.images import find_images, read_file_bytes
from engine.model.text import lowercase_ascii, short_text

from .common import (JOB_NOTES, MODEL_QUEUE, SERVE, ImageInput, gpu, progress_callback, shown_in_place,
                     uploaded_paths)
from .studio import ROOT, Studio

EXAMPLES = ROOT / "assets" / "examples"
EXAMPLE_LABELS = ROOT / "assets" / "labels" / "photos-multilingual.txt"
# a prompt template per language, in that language: "Foto: {}" avoids the grammar a sentence would need
EXAMPLE_TEMPLATES = ROOT / "assets" / "labels" / "templates-multilingual.txt"
# photo, caption, language of its label set and template
EXAMPLE_PHOTOS = [("cat.jpg", "Chelsea the cat · labels in English", "en"),
                  ("coffee.jpg", "coffee · labels in German", "de"),
                  ("astronaut.jpg", "astronaut · labels in French", "fr"),
                  ("rocket.jpg", "rocket launch · labels in Chinese", "zh"),
                  ("hubble_deep_field.jpg", "Hubble deep field · labels in Hindi", "hi"),
                  ("retina.jpg", "retina · labels in Arabic", "ar")]
DEFAULT_LABELS = "a cat, a cup of coffee, an astronaut, a rocket launch, galaxies in deep space, the retina of an eye"
DEFAULT_TEMPLATE = DEFAULT_TEMPLATES[0]
LABELS_HELP = "Labels (comma-separated, or one per line; any language)"
TEMPLATE_HELP = "Prompt template(s), one per line; {} stands for the label ({} alone: the label as written)."
MAX_BATCH_IMAGES = 5000
LABEL_SEPARATOR = "; "  # between an image's labels in the results table (a label may hold commas)


def score_table(result: ZeroShotResult, row: int = 0) -> str:
    """Markdown: every label's probability (small ones stay readable) and logit, best first."""
    order = np.argsort(-result.probabilities[row])
    lines = ["| label | probability | logit |", "|---|---|---|"]
    lines += [f"| {short_text(result.labels[i], 60)} | {result.probabilities[row, i]:.3g} | {result.logits[row, i]:.2f} |"
              for i in order]
    return "\n".join(lines)


def classify_one(studio: Studio, image_path: str | None, label_text: str, template_text: str,
                 bias: float | None = None) -> tuple[dict[str, float], str]:
    """Probability per label for one image, and the notes to show with them (a table of every score)."""
    if not image_path:
        raise StudioError("Upload an image first.")
    with studio.job("labelling an image") as model:
        result = classify(model, [image_path], label_text or "", parse_templates(template_text), bias=bias)
    if result.failures:
        failure = result.failures[0]
        raise StudioError(f"{Path(failure.source).name}: {failure.reason}")
    shown = [short_text(label, 80) for label in result.labels]  # long labels are not echoed back whole
    if len(set(shown)) < len(shown):  # unless cutting them would merge two
        shown = result.labels
    probabilities = {label: float(p) for label, p in zip(shown, result.probabilities[0])}
    return probabilities, "\n\n".join(x for x in (studio.notes(result.warnings), score_table(result)) if x)


def by_language(path: Path) -> dict[str, str]:
    """Language code → its line in `path` (lines "code: text")."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def example_rows() -> list[list[str]]:
    """[photo path, labels, template] per example, each photo once with labels and template in one language."""
    label_sets, templates = by_language(EXAMPLE_LABELS), by_language(EXAMPLE_TEMPLATES)
    return [[str(EXAMPLES / name), label_sets[language], templates.get(language, DEFAULT_TEMPLATE)]
            for name, _, language in EXAMPLE_PHOTOS if (EXAMPLES / name).exists()]


def example_result(studio: Studio, image_path: str, label_text: str, template_text: str):
    """An example's result, computed once per loaded model.

    Gradio's own example cache would keep showing the first model's results after a model switch;
    this one lives in the Studio and is emptied by every load. Keyed by content: Gradio hands the
    handler a copy of the example file, not its original path.
    """
    key = (read_file_bytes(image_path)[1], label_text, template_text)
    if key not in studio.example_results:
        studio.example_results[key] = classify_one(studio, image_path, label_text, template_text)
    return studio.example_results[key]


def cache_examples(studio: Studio) -> int:
    """Compute every example's result for the loaded model (at start-up, as Spaces expect)."""
    rows = example_rows()
    for row in rows:
        example_result(studio, *row)
    return len(rows)


def build(studio: Studio) -> None:
    with gr.Tab("One image"):
        _build_one(studio)
    with gr.Tab("Many images"):
        _build_many(studio)


def _build_one(studio: Studio) -> None:
    with gr.Row():
        with gr.Column():
            image = ImageInput(type="filepath", label="Image", sources=["upload", "clipboard"], height=320,
                               elem_id="label-image")
            labels = gr.Textbox(DEFAULT_LABELS, label=LABELS_HELP, lines=3)
            template = gr.Textbox(DEFAULT_TEMPLATE, label=TEMPLATE_HELP, lines=2)
            own = studio.model.logit_bias if studio.model is not None else -10.0
            bias = gr.Slider(-20, 5, value=round(own, 2), step=0.1, label="Logit bias (starts at the model's own; "
                             "moving it shifts every probability, as in the SigLIP 2 demo)")
            use_model_bias = gr.Checkbox(True, label="Use the model's own bias")
            run = gr.Button("Label", variant="primary")
        with gr.Column():
            scores = gr.Label(label="Sigmoid probability per label (independent, not summing to 1)",
                              elem_id="label-scores")
            notes = gr.Markdown(elem_id="label-notes")
    rows = example_rows()
    caption = gr.Textbox(visible=False, label="Photo · labels")  # each photo once in the examples table, with this
    captions = {name: text for name, text, _ in EXAMPLE_PHOTOS}
    examples = gr.Examples([[row[0], captions[Path(row[0]).name]] for row in rows], [image, caption],
                           cache_examples=False, examples_per_page=len(rows),
                           label="Examples (public-domain and CC0 photos): click one to label it in its language "
                                 "(labels and template)"
                           ) if rows else None

    @gpu
    @shown_in_place("clear", "notes")
    def do_classify(image_path, label_text: str, template_text: str, bias_value: float = -10.0,
                    own_bias: bool = True):
        return classify_one(studio, image_path, label_text, template_text, None if own_bias else bias_value)

    def headline(probabilities):
        """No large headline label when no label reaches one half: SigLIP says none of them fits."""
        values = probabilities.values() if isinstance(probabilities, dict) else []
        return gr.Label(show_heading=any(float(p) >= 0.5 for p in values))

    def own_bias_setting(own_bias: bool):
        """Ticked: the slider shows the loaded model's own bias again."""
        if own_bias and studio.model is not None:
            return gr.Slider(value=round(studio.model.logit_bias, 2))
        return gr.skip()

    @gpu
    @shown_in_place("keep", "keep", "clear", "notes")
    def show_example(image_path, caption_text: str):
        row = next(r for r in rows if captions[Path(r[0]).name] == caption_text)
        return (row[1], row[2], *example_result(studio, image_path, row[1], row[2]))

    inputs = [image, labels, template, bias, use_model_bias]
    labelled = [run.click(do_classify, inputs, [scores, notes], api_name="classify", **SERVE)]
    # moving the slider means "use this bias": untick the model's own, then label with it
    labelled.append(bias.release(lambda: False, None, use_model_bias, api_name=False, queue=False).then(
        do_classify, inputs, [scores, notes], api_name=False, **SERVE))
    labelled.append(use_model_bias.input(own_bias_setting, use_model_bias, bias, api_name=False, queue=False).then(
        do_classify, inputs, [scores, notes], api_name=False, **SERVE))
    if examples is not None:
        labelled.append(examples.load_input_event.then(show_example, [image, caption],
                                                       [labels, template, scores, notes], api_name=False, **SERVE))
    for event in labelled:
        event.then(headline, scores, scores, api_name=False, queue=False)
    # another picture (or none): the last one's scores go, and so do those still being computed
    for change in (image.upload, image.clear):
        change(lambda: (None, ""), None, [scores, notes], api_name=False, queue=False, cancels=labelled)


@dataclass
class LabelledBatch:
    """A batch's scores, kept so that threshold and mode re-apply without encoding again."""

    result: ZeroShotResult
    names: dict[str, str]  # source → the name people know it by (an upload's own file name)
    problems: list[tuple[str, str]]  # folder entries that could not be used: (path, reason)
    notices: list[str] = field(default_factory=list)  # uploads renamed or repeated
    notes: str = ""  # what the labelling said (warnings, skipped files), said again when the threshold changes

    def assign(self, threshold: float, mode: str) -> list[LabelAssignment]:
        return assign_labels(self.result, threshold, mode, self.names)


def _export_files(batch: LabelledBatch, assignments: list[LabelAssignment]) -> list[str]:
    folder = tempfile.mkdtemp(prefix="labels-")
    return [str(path) for path in write_exports(batch.result, assignments, folder).paths()]


def _assigned(assignments: list[LabelAssignment], cut: float, how: str) -> str:
    """How many images a threshold and mode gave a label (none at all is worth knowing at a glance)."""
    labelled = sum(1 for a in assignments if a.labels)
    return f"Threshold {cut:g}, {how}-label: {labelled} of {len(assignments)} image(s) labelled"


def cell_labels(cell) -> list[str]:
    """The labels typed in a results-table cell: split at ;, trimmed, each once (ignoring case, as the labels
    box does)."""
    labels = {}
    for part in str(cell or "").split(LABEL_SEPARATOR.strip()):
        if part.strip():
            labels.setdefault(lowercase_ascii(part.strip()), part.strip())
    return list(labels.values())


def _table_rows(batch: LabelledBatch, assignments: list[LabelAssignment]) -> list[list[str]]:
    return [[assignment.export_name, LABEL_SEPARATOR.join(assignment.labels),
             ", ".join(f"{label} {p:.3g}" for label, p in batch.result.top(row, 3))]
            for row, assignment in enumerate(assignments)]


def label_images(studio: Studio, paths: list[str], server_folder: str, label_text: str, template_text: str,
                 progress=None) -> LabelledBatch:
    """Label uploaded files plus a server folder's images (named by their path inside that folder)."""
    # Gradio stores an upload under its own file name, in a folder named by its bytes: the same file uploaded
    # twice is one path, labelled once (as two rows, the repeat's name would be made up)
    repeats = Counter(paths)
    paths = list(repeats)
    names = [Path(path).name for path in paths]
    notices = [f"{Path(path).name}: uploaded {count} times (the same file), labelled once"
               for path, count in repeats.items() if count > 1]
    problems: list[tuple[str, str]] = []
    if server_folder and server_folder.strip():
        root = studio.check_folder(server_folder)
        found, unusable = find_images(root)
        problems += unusable
        names += [str(Path(path).relative_to(root)) for path in found]
        paths = paths + found
    if not paths:
        raise StudioError("No images: upload some, or give a server folder that holds images.")
    if len(paths) > MAX_BATCH_IMAGES:
        raise StudioError(f"{len(paths)} images is more than {MAX_BATCH_IMAGES} for one run; "
                          "use the command line (python -m engine classify) for larger sets.")
    with studio.job("labelling images") as model:
        label_set = prepare_labels(model, label_text or "", parse_templates(template_text))
        # two uploads named cat.jpg are told apart (cat_1.jpg) alike in the table and in every export
        unique = unique_names(names)
        notices += [f"{name} (another image of that name) shown as **{shown}**"
                    for name, shown in zip(names, unique) if shown != name]
        return LabelledBatch(classify(model, paths, label_set, progress=progress), dict(zip(paths, unique)),
                             problems, notices)


def _build_many(studio: Studio) -> None:
    with gr.Row():
        with gr.Column():
            files = gr.File(file_count="multiple", file_types=["image"], type="filepath", label="Upload images",
                            elem_id="batch-files")
            folder = gr.Textbox(label="…or a folder on the server (inside the allowed roots)")
            batch_labels = gr.Textbox(DEFAULT_LABELS, label=LABELS_HELP, lines=3)
            batch_template = gr.Textbox(DEFAULT_TEMPLATE, label=TEMPLATE_HELP, lines=2)
            with gr.Row():
                threshold = gr.Slider(0, 1, value=0.1, step=0.01, label="Probability threshold",
                                      elem_id="batch-threshold")
                mode = gr.Radio(["multi", "single"], value="multi", label="Labels per image")
            label_all = gr.Button("Label all", variant="primary")
            batch_notes = gr.Markdown(elem_id="batch-notes", elem_classes=JOB_NOTES)  # its progress shows here
        with gr.Column(min_width=560):  # under the form in a narrow window: beside it, names broke mid-word
            table = gr.Dataframe(headers=["image", "labels", "top probabilities"], interactive=True,
                                 label="Results (edit the labels, separated by ; then export again)", wrap=True,
                                 column_widths=["36%", "28%", "36%"], static_columns=[0, 2], elem_id="batch-table")
            export_again = gr.Button("Export the edited labels")
            export_notes = gr.Markdown(elem_id="export-notes")  # beside its button, not under "Label all"
            exports = gr.File(label="Exports: CSV, JSONL, ImageFolder (zip)", file_count="multiple",
                              elem_id="batch-exports")
    result_state = gr.State()

    @gpu
    @shown_in_place("clear", "notes", "clear", "clear")
    def do_label_batch(uploaded, server_folder: str, label_text: str, template_text: str, cut: float, how: str,
                       progress=gr.Progress()):
        batch = label_images(studio, uploaded_paths(uploaded), server_folder, label_text, template_text,
                             progress_callback(progress, "labelling"))
        result = batch.result
        assignments = batch.assign(cut, how)
        failures = [f"{batch.names.get(f.source, Path(f.source).name)}: {f.reason}, skipped" for f in result.failures]
        unusable = failures + [f"{p}: {r}" for p, r in batch.problems]
        notices = [f"- {notice}" for notice in batch.notices]
        batch.notes = "\n".join(x for x in (studio.notes(result.warnings, unusable), *notices) if x)
        summary = (f"Labelled {len(result.sources)} image(s) with {len(result.labels)} label(s). "
                   f"{_assigned(assignments, cut, how)}.")
        return _table_rows(batch, assignments), "\n\n".join(x for x in (summary, batch.notes) if x), \
            _export_files(batch, assignments), batch

    @shown_in_place("keep", "keep", "notes")
    def do_reassign(batch: LabelledBatch | None, cut: float, how: str):
        """A new threshold or mode applied to the stored scores: no image is encoded again."""
        if batch is None:
            return gr.skip(), gr.skip(), gr.skip()
        assignments = batch.assign(cut, how)
        return _table_rows(batch, assignments), _export_files(batch, assignments), \
            "\n\n".join(x for x in (f"{_assigned(assignments, cut, how)} (no re-encoding).", batch.notes) if x)

    @shown_in_place("keep", "notes")
    def do_export(rows, batch: LabelledBatch | None):
        if batch is None:
            raise StudioError("Label some images first.")
        data = rows.values.tolist() if hasattr(rows, "values") else rows
        names = [batch.names.get(source, source) for source in batch.result.sources]
        if [str(r[0]) for r in data] != names:
            raise StudioError("The table's rows no longer match the labelled images; label again.")
        edited = [LabelAssignment(source, cell_labels(r[1]), [], name)
                  for source, name, r in zip(batch.result.sources, names, data)]
        new_labels = sorted({label for a in edited for label in a.labels} - set(batch.result.labels))
        unscored = (f" New labels, not among those scored: {', '.join(repr(label) for label in new_labels)} "
                    f"(labels in a cell are separated by {LABEL_SEPARATOR.strip()})." if new_labels else "")
        return _export_files(batch, edited), f"Exported {len(edited)} image(s) with the edited labels.{unscored}"

    label_all.click(do_label_batch, [files, folder, batch_labels, batch_template, threshold, mode],
                    [table, batch_notes, exports, result_state], api_name="label_batch", concurrency_id=MODEL_QUEUE,
                    show_progress_on=batch_notes)
    export_again.click(do_export, [table, result_state], [exports, export_notes], api_name="export_labels")
    for new_exports in (label_all.click, threshold.change, mode.change):  # the last export's note is stale then
        new_exports(lambda: "", None, export_notes, api_name=False, queue=False)
    # on .change, not only when the slider is let go: a threshold typed into its box and Enter apply too
    threshold.change(do_reassign, [result_state, threshold, mode], [table, exports, batch_notes], api_name=False)
    mode.change(do_reassign, [result_state, threshold, mode], [table, exports, batch_notes], api_name=False)

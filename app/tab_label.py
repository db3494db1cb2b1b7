"""Zero-shot labelling tab: one image with probability bars and a bias slider; batch mode with a
threshold, editable labels and exports (CSV, JSONL, ImageFolder zip)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from engine import StudioError
from engine.label.export import LabelAssignment, assign_labels, write_exports
from engine.label.zeroshot import DEFAULT_TEMPLATES, classify, parse_templates, prepare_labels
from engine.model.images import find_images, read_file_bytes

from .common import MODEL_QUEUE, ImageInput, gpu, progress_callback, uploaded_paths, user_errors
from .studio import ROOT, Studio

EXAMPLES = ROOT / "assets" / "examples"
DEFAULT_LABELS = "a red circle, a blue square, a green triangle, a cat, a car"
DEFAULT_TEMPLATE = DEFAULT_TEMPLATES[0]
TEMPLATE_HELP = "Prompt template(s), one per line; {} stands for the label ({} alone: the label as written)."
MAX_BATCH_IMAGES = 5000


def classify_one(studio: Studio, image_path: str | None, label_text: str, template_text: str,
                 bias: float | None = None) -> tuple[dict[str, float], str]:
    """Probability per label for one image, and the notes to show with them."""
    if not image_path:
        raise StudioError("Upload an image first.")
    with studio.job("labelling an image") as model:
        result = classify(model, [image_path], label_text or "", parse_templates(template_text), bias=bias)
    if result.failures:
        failure = result.failures[0]
        raise StudioError(f"{Path(failure.source).name}: {failure.reason}")
    probabilities = {label: float(p) for label, p in zip(result.labels, result.probabilities[0])}
    return probabilities, studio.notes(result.warnings)


def example_rows() -> list[list[str]]:
    return [[str(p), DEFAULT_LABELS, DEFAULT_TEMPLATE] for p in sorted(EXAMPLES.glob("*.png"))]


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
            labels = gr.Textbox(DEFAULT_LABELS, label="Labels (comma or newline separated, any language)", lines=3)
            template = gr.Textbox(DEFAULT_TEMPLATE, label=TEMPLATE_HELP, lines=2)
            bias = gr.Slider(-20, 5, value=-10, step=0.1, label="Logit bias (model's own by default; "
                             "moves every probability, as in the SigLIP 2 demo)")
            use_model_bias = gr.Checkbox(True, label="Use the model's own bias")
            run = gr.Button("Label", variant="primary")
        with gr.Column():
            scores = gr.Label(label="Sigmoid probability per label (independent, not summing to 1)",
                              elem_id="label-scores")
            notes = gr.Markdown(elem_id="label-notes")
    rows = example_rows()
    examples = gr.Examples(rows, [image, labels, template], cache_examples=False,
                           label="Examples (drawn by this project, CC0): click one to label it") if rows else None

    @gpu
    @user_errors
    def do_classify(image_path, label_text: str, template_text: str, bias_value: float = -10.0,
                    own_bias: bool = True):
        return classify_one(studio, image_path, label_text, template_text, None if own_bias else bias_value)

    @gpu
    @user_errors
    def show_example(image_path, label_text: str, template_text: str):
        return example_result(studio, image_path, label_text, template_text)

    inputs = [image, labels, template, bias, use_model_bias]
    run.click(do_classify, inputs, [scores, notes], api_name="classify", concurrency_id=MODEL_QUEUE)
    bias.release(do_classify, inputs, [scores, notes], api_name=False, concurrency_id=MODEL_QUEUE)
    use_model_bias.change(do_classify, inputs, [scores, notes], api_name=False, concurrency_id=MODEL_QUEUE)
    if examples is not None:
        examples.load_input_event.then(show_example, [image, labels, template], [scores, notes], api_name=False,
                                       concurrency_id=MODEL_QUEUE)


def _export_files(result, assignments: list[LabelAssignment]) -> list[str]:
    return [str(path) for path in write_exports(result, assignments, tempfile.mkdtemp(prefix="labels-")).paths()]


def _table_rows(result, assignments: list[LabelAssignment]) -> list[list[str]]:
    return [[assignment.image, "; ".join(assignment.labels),
             ", ".join(f"{label} {p:.3f}" for label, p in result.top(row, 3))]
            for row, assignment in enumerate(assignments)]


def label_images(studio: Studio, paths: list[str], server_folder: str, label_text: str, template_text: str,
                 progress=None):
    """Label uploaded files plus a server folder's images; returns the result and folder entries skipped."""
    problems: list[tuple[str, str]] = []
    if server_folder and server_folder.strip():
        found, problems = find_images(studio.check_folder(server_folder))
        paths = paths + found
    if not paths:
        raise StudioError("No images: upload some, or give a server folder that holds images.")
    if len(paths) > MAX_BATCH_IMAGES:
        raise StudioError(f"{len(paths)} images is more than {MAX_BATCH_IMAGES} for one run; "
                          "use the command line (python -m engine classify) for larger sets.")
    with studio.job("labelling images") as model:
        label_set = prepare_labels(model, label_text or "", parse_templates(template_text))
        return classify(model, paths, label_set, progress=progress), problems


def _build_many(studio: Studio) -> None:
    with gr.Row():
        with gr.Column():
            files = gr.File(file_count="multiple", file_types=["image"], type="filepath", label="Upload images")
            folder = gr.Textbox(label="…or a folder on the server (inside the allowed roots)")
            batch_labels = gr.Textbox(DEFAULT_LABELS, label="Labels", lines=3)
            batch_template = gr.Textbox(DEFAULT_TEMPLATE, label=TEMPLATE_HELP, lines=2)
            with gr.Row():
                threshold = gr.Slider(0, 1, value=0.1, step=0.01, label="Probability threshold")
                mode = gr.Radio(["multi", "single"], value="multi", label="Labels per image")
            label_all = gr.Button("Label all", variant="primary")
        with gr.Column():
            batch_notes = gr.Markdown(elem_id="batch-notes")
            table = gr.Dataframe(headers=["image", "labels", "top probabilities"], interactive=True,
                                 label="Results (edit the labels column, then export again)", wrap=True)
            export_again = gr.Button("Export the edited labels")
            exports = gr.File(label="Exports: CSV, JSONL, ImageFolder (zip)", file_count="multiple")
    result_state = gr.State()

    @gpu
    @user_errors
    def do_label_batch(uploaded, server_folder: str, label_text: str, template_text: str, cut: float, how: str,
                       progress=gr.Progress()):
        result, problems = label_images(studio, uploaded_paths(uploaded), server_folder, label_text,
                                        template_text, progress_callback(progress, "labelling"))
        assignments = assign_labels(result, cut, how)
        notes = studio.notes(result.warnings, list(result.failures) + [f"{p}: {r}" for p, r in problems])
        summary = f"Labelled {len(result.sources)} image(s) with {len(result.labels)} label(s)."
        return _table_rows(result, assignments), "\n\n".join(x for x in (summary, notes) if x), \
            _export_files(result, assignments), result

    @user_errors
    def do_export(rows, result):
        if result is None:
            raise StudioError("Label some images first.")
        data = rows.values.tolist() if hasattr(rows, "values") else rows
        edited = [LabelAssignment(str(r[0]), [x.strip() for x in str(r[1]).split(";") if x.strip()], [])
                  for r in data]
        if [a.image for a in edited] != result.sources:
            raise StudioError("The table's rows no longer match the labelled images; label again.")
        return _export_files(result, edited)

    label_all.click(do_label_batch, [files, folder, batch_labels, batch_template, threshold, mode],
                    [table, batch_notes, exports, result_state], api_name="label_batch", concurrency_id=MODEL_QUEUE)
    export_again.click(do_export, [table, result_state], exports, api_name="export_labels")

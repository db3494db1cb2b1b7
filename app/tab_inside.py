"""Inside tab: what SigLIP 2 does with an image — its patch grid, where each query is found, where the
pooling head and one layer look, and the dense patch features. Pictures and arrays come from engine.inspect."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from engine import StudioError
from engine.inspect import render
from engine.inspect.attention import attention_map, encoder_shape, layer_attention
from engine.inspect.dense import dense_pca, patch_similarity
from engine.inspect.grid import patch_grid
from engine.inspect.maps import METHODS, MAX_QUERIES, similarity_maps

from .common import MODEL_QUEUE, ImageInput, InputMissing, gpu, shown_in_place
from .studio import Studio

DEFAULT_OPACITY = 0.6
METHOD_HELP = {"value": "value: each patch through the pooling head's value path, in logits exp(t)·cos + b",
               "gradient": "gradient: ∂logit/∂token · token over the final patch tokens (Grad-CAM style)"}


def _stem(image_path: str | None) -> str:
    return Path(image_path).stem if image_path else "image"


def save_array(array: np.ndarray, name: str) -> str:
    """`array` as float32 .npy in a fresh temporary folder, under a readable file name."""
    path = Path(tempfile.mkdtemp(prefix="inside-")) / f"{name}.npy"
    np.save(path, np.asarray(array, dtype=np.float32))
    return str(path)


def _notes(studio: Studio, model, lines: list[str] = (), warnings: list[str] = ()) -> str:
    fixed = ["Fixed-resolution model: the sequence length setting does not apply."] if model.arch == "fixed" else []
    return "\n\n".join(x for x in [*lines, *fixed, studio.notes(list(warnings))] if x)


def build(studio: Studio) -> None:
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            image = ImageInput(type="filepath", label="Image", height=260, elem_id="inside-image")
            max_patches = gr.Dropdown([128, 256, 576, 784, 1024], value=256, allow_custom_value=True,
                                      label="NaFlex sequence length (max patches)")
            opacity = gr.Slider(0, 1, value=DEFAULT_OPACITY, step=0.05, label="Heatmap opacity")
            second = ImageInput(type="filepath", label="Second image (patch similarity, joint PCA)", height=160)
        with gr.Column(scale=3):
            with gr.Tab("Patch grid"):
                _grid_view(studio, image, max_patches)
            with gr.Tab("Similarity map"):
                _similarity_view(studio, image, max_patches, opacity)
            with gr.Tab("Attention"):
                _attention_view(studio, image, max_patches, opacity)
            with gr.Tab("Dense features"):
                _dense_view(studio, image, second, max_patches, opacity)


def _picture(label: str, elem_id: str | None = None) -> gr.Image:
    """An output picture, downloadable as PNG, its label above it (Gradio's label badge covers the top-left
    patches, where a chosen patch's green box often is)."""
    gr.Markdown(f"**{label}**")
    return gr.Image(label=label, show_label=False, interactive=False, format="png", elem_id=elem_id)


@dataclass
class _ResultArea:
    """A view's button, its notes, its picture, its array download and the result kept for redrawing."""

    run: gr.Button
    notes: gr.Markdown
    picture: gr.Image
    array: gr.File
    result: gr.State


def _result_area(button: str, name: str, picture_label: str, array_label: str, primary: bool = True) -> _ResultArea:
    """The widgets of one view, top to bottom; `name` prefixes their element ids."""
    return _ResultArea(gr.Button(button, variant="primary" if primary else "secondary"),
                       gr.Markdown(elem_id=f"{name}-notes"), _picture(picture_label, f"{name}-picture"),
                       _download(array_label), gr.State())


def _download(label: str) -> gr.File:
    return gr.File(label=label, height=60)


def _grid_view(studio: Studio, image, max_patches) -> None:
    show = gr.Button("Show the patch grid", variant="primary")
    notes = gr.Markdown(elem_id="grid-notes")
    picture = _picture("Patch grid", "grid-picture")
    info = gr.JSON(label="Grid")
    positions = _picture("Position embeddings")
    positions_file = _download("Stretched position colours (.npy, rows × cols × 3)")

    @gpu
    @shown_in_place("clear", "clear", "clear", "clear", "notes")
    def do_patch_grid(image, max_patches=256):
        if not image:
            raise StudioError("Add an image first.")
        with studio.job("drawing a patch grid") as model:
            view = patch_grid(model, image, max_patches)
        return (render.grid_picture(view), view.info(), render.positions_picture(view),
                save_array(view.positions.stretched, f"{_stem(image)}-positions"), _notes(studio, model))

    show.click(do_patch_grid, [image, max_patches], [picture, info, positions, positions_file, notes],
               api_name="patch_grid", concurrency_id=MODEL_QUEUE)


def _similarity_view(studio: Studio, image, max_patches, opacity) -> None:
    with gr.Row():
        queries = gr.Textbox("a photo of a cat\na photo of a dog", lines=3, scale=3,
                             label=f"Queries, one per line, any language (at most {MAX_QUERIES})")
        method = gr.Radio(list(METHODS), value="value", label="Method", scale=1,
                          info=" · ".join(METHOD_HELP.values()))
    area = _result_area("Show where each query is", "similarity", "Similarity maps",
                        "Maps (.npy, queries × rows × cols)")
    run, notes, picture, array, result = area.run, area.notes, area.picture, area.array, area.result

    @gpu
    @shown_in_place("clear", "clear", "clear", "notes")
    def do_similarity_map(image, queries: str, max_patches=256, method: str = "value"):
        if not image:
            raise StudioError("Add an image first.")
        with studio.job("computing similarity maps") as model:
            maps = similarity_maps(model, image, queries or "", max_patches, method)
        lines = [METHOD_HELP[maps.method]]
        return (render.similarity_picture(maps), save_array(maps.maps, f"{_stem(image)}-{maps.method}"), maps,
                _notes(studio, model, lines, maps.warnings))

    computed = run.click(do_similarity_map, [image, queries, max_patches, method], [picture, array, result, notes],
                         api_name="similarity_map", concurrency_id=MODEL_QUEUE)
    _follow_opacity(render.similarity_picture, [computed], result, opacity, picture)


def _follow_opacity(draw, computed: list, result: gr.State, opacity: gr.Slider, picture: gr.Image) -> None:
    """Redraw `result` when the opacity slider moves, and after each computation (drawn at the default
    opacity) when the slider stands elsewhere; no recomputation either way."""

    def after_computation(found, alpha: float):
        return gr.skip() if found is None or abs(alpha - DEFAULT_OPACITY) < 1e-6 else draw(found, alpha)

    for event in computed:
        event.then(after_computation, [result, opacity], picture, api_name=False)
    opacity.release(lambda found, alpha: gr.skip() if found is None else draw(found, alpha), [result, opacity],
                    picture, api_name=False)


def _patch_inputs(default_row: int = 0) -> tuple[gr.Number, gr.Number]:
    # no minimum here or on layer and head: the engine's check names the valid range, Gradio's is a bare toast
    return (gr.Number(default_row, precision=0, label="Patch row"),
            gr.Number(0, precision=0, label="Patch column"))


def _attention_view(studio: Studio, image, max_patches, opacity) -> None:
    area = _result_area("Show the pooling head's attention", "attention",
                        "Pooling (MAP) head: the probe's attention per patch",
                        "Attention (.npy, heads × rows × cols)")
    run, notes, picture, array, result = area.run, area.notes, area.picture, area.array, area.result
    gr.Markdown("#### One encoder layer: where a patch looks (click the picture to choose the patch)")
    with gr.Row():
        layer = gr.Number(0, precision=0, label="Layer")
        head = gr.Number(0, precision=0, label="Head")
        row, col = _patch_inputs()
    area = _result_area("Show this layer's attention", "layer", "Layer attention from the chosen patch (green box)",
                        "Layer attention (.npy, rows × cols)", primary=False)
    run_layer, layer_notes, layer_picture, layer_array, layer_result = (area.run, area.notes, area.picture,
                                                                        area.array, area.result)

    @gpu
    @shown_in_place("clear", "clear", "clear", "notes")
    def do_attention_map(image, max_patches=256):
        if not image:
            raise StudioError("Add an image first.")
        with studio.job("computing attention") as model:
            attention = attention_map(model, image, max_patches)
        return (render.attention_picture(attention), save_array(attention.weights, f"{_stem(image)}-attention"),
                attention, _notes(studio, model))

    @gpu
    @shown_in_place("clear", "clear", "clear", "notes")
    def do_layer_attention(image, max_patches=256, layer=0, head=0, row=0, col=0):
        if not image:
            raise StudioError("Add an image first.")
        with studio.job("computing layer attention") as model:
            found = layer_attention(model, image, max_patches, int(layer or 0), int(head or 0), int(row or 0),
                                    int(col or 0))
            layers, heads = encoder_shape(model)
        lines = [f"Layer {found.layer} of 0–{layers - 1}, head {found.head} of 0–{heads - 1}."]
        return (render.layer_attention_picture(found),
                save_array(found.weights, f"{_stem(image)}-layer{found.layer}-head{found.head}"), found,
                _notes(studio, model, lines))

    computed = run.click(do_attention_map, [image, max_patches], [picture, array, result, notes],
                         api_name="attention_map", concurrency_id=MODEL_QUEUE)
    _follow_opacity(render.attention_picture, [computed], result, opacity, picture)
    layer_inputs = [image, max_patches, layer, head, row, col]
    layer_outputs = [layer_picture, layer_array, layer_result, layer_notes]
    _wire_patch_view(run_layer, do_layer_attention, layer_inputs, layer_outputs, "layer_attention",
                     render.layer_attention_picture, (row, col), opacity)


def _wire_patch_view(run: gr.Button, compute, inputs: list, outputs: list, api_name: str, draw,
                     patch: tuple[gr.Number, gr.Number], opacity: gr.Slider) -> None:
    """A view of one chosen patch: computed by its button (the API endpoint) or by a click on its picture
    (outputs: picture, arrays, result, notes), redrawn when the opacity moves."""
    picture, result = outputs[0], outputs[2]
    computed = run.click(compute, inputs, outputs, api_name=api_name, concurrency_id=MODEL_QUEUE)
    clicked = _click_to_patch(picture, result, *patch).then(compute, inputs, outputs, api_name=False,
                                                             concurrency_id=MODEL_QUEUE)
    _follow_opacity(draw, [computed, clicked], result, opacity, picture)


def _click_to_patch(picture: gr.Image, result: gr.State, row: gr.Number, col: gr.Number):
    """A click on a picture's first panel sets the patch row and column."""

    def pick(found, event: gr.SelectData):
        if found is None or event is None:
            return gr.skip(), gr.skip()
        patch = render.patch_at(found.trace.grid, *event.index[:2])
        return (gr.skip(), gr.skip()) if patch is None else patch

    return picture.select(pick, [result], [row, col], api_name=False, queue=False)


def _dense_view(studio: Studio, image, second, max_patches, opacity) -> None:
    with gr.Row():
        run_pca = gr.Button("PCA of the patch features", variant="primary")
        run_joint = gr.Button("PCA fitted jointly with the second image")
    pca_notes = gr.Markdown(elem_id="pca-notes")
    pca_picture = _picture("Patch features → RGB (first three principal components)", "pca-picture")
    pca_array = gr.File(label="Colours (.npy, rows × cols × 3; the second image's beside it)", file_count="multiple",
                        height=140)  # room for both files
    gr.Markdown("#### Patch-to-patch similarity (click the picture to choose the patch)")
    with gr.Row():
        row, col = _patch_inputs()
    run_similar = gr.Button("Show similarity to this patch")
    similar_notes = gr.Markdown(elem_id="patch-notes")
    similar_picture = _picture("Cosine similarity of the chosen patch (green box) to every patch", "patch-picture")
    similar_arrays = gr.File(label="Similarities (.npy, rows × cols; second image's beside it)",
                             file_count="multiple", height=140)  # room for both files
    similar_result = gr.State()

    def pca_outputs(studio_model, image_paths: list[str], patches, joint: bool):
        pca = dense_pca(studio_model, image_paths, patches, joint=joint)
        stems = [f"{_stem(image_paths[0])}-pca"] + [f"{_stem(image_paths[0])}-pca-{_stem(p)}" for p in image_paths[1:]]
        return render.pca_picture(pca), [save_array(colours, stem) for colours, stem in zip(pca.colours, stems)]

    @gpu
    @shown_in_place("clear", "clear", "notes")
    def do_dense_pca(image, max_patches=256):
        if not image:
            raise StudioError("Add an image first.")
        with studio.job("computing dense features") as model:
            picture, path = pca_outputs(model, [image], max_patches, joint=False)
        return picture, path, _notes(studio, model)

    @gpu
    @shown_in_place("clear", "clear", "notes")
    def do_joint_pca(image, second_image, max_patches=256):
        if not image:
            raise StudioError("Add both images first (the second one below the first).")
        if not second_image:  # the one-image PCA shown stays: it is still right
            raise InputMissing("Add a second image (below the first) for a PCA fitted over both.")
        with studio.job("computing dense features") as model:
            picture, path = pca_outputs(model, [image, second_image], max_patches, joint=True)
        return picture, path, _notes(studio, model, ["One PCA fitted over both images: their colours compare."])

    @gpu
    @shown_in_place("clear", "clear", "clear", "notes")
    def do_patch_similarity(image, row=0, col=0, second_image=None, max_patches=256):
        if not image:
            raise StudioError("Add an image first.")
        with studio.job("computing patch similarity") as model:
            found = patch_similarity(model, image, int(row or 0), int(col or 0), second_image or None, max_patches)
        stem = f"{_stem(image)}-patch{found.row}x{found.col}"
        files = [save_array(found.similarity, stem)]
        if found.second_similarity is not None:
            files.append(save_array(found.second_similarity, f"{stem}-in-{_stem(second_image)}"))
        return render.patch_similarity_picture(found), files, found, _notes(studio, model)

    run_pca.click(do_dense_pca, [image, max_patches], [pca_picture, pca_array, pca_notes], api_name="dense_pca",
                  concurrency_id=MODEL_QUEUE)
    run_joint.click(do_joint_pca, [image, second, max_patches], [pca_picture, pca_array, pca_notes],
                    api_name="joint_pca", concurrency_id=MODEL_QUEUE)
    inputs = [image, row, col, second, max_patches]
    outputs = [similar_picture, similar_arrays, similar_result, similar_notes]
    _wire_patch_view(run_similar, do_patch_similarity, inputs, outputs, "patch_similarity",
                     render.patch_similarity_picture, (row, col), opacity)

"""Models tab: pick a checkpoint (or a local folder, or the small test model) and see what is loaded."""

from __future__ import annotations

import gradio as gr

from engine import CHECKPOINTS, DEFAULT_MODEL
from engine.model.preprocess import check_sequence_length

from .common import MODEL_QUEUE, other_model_indexes_note, shown_in_place
from .studio import UNTRAINED, UNTRAINED_WARNING, Studio


def image_setting_text(model) -> str:
    """'224×224' for a fixed-resolution model, 'NaFlex, 256 patches' for a NaFlex one."""
    if model.arch == "fixed":
        return "×".join(str(side) for side in model.image_setting)
    return f"NaFlex, {model.image_setting[0]} patches"


def model_summary(studio: Studio) -> str:
    model = studio.model
    if model is None:
        why = f"\n\n**Why:** {studio.load_error}" if studio.load_error else ""
        return f"### No model loaded{why}"
    lines = [f"### Loaded: `{model.name}`",
             f"{UNTRAINED} Load a real checkpoint here." if model.untrained else "",
             "| property | value |", "|---|---|",
             f"| architecture | {'NaFlex (Siglip2Model)' if model.arch == 'naflex' else 'fixed resolution (SiglipModel)'} |",
             f"| patch size | {model.patch_size} |",
             f"| {'sequence length' if model.arch == 'naflex' else 'resolution'} | {image_setting_text(model)} |",
             f"| parameters | {model.num_parameters / 1e6:.1f} M |",
             f"| weights in memory | {model.memory_bytes / 2**20:.0f} MiB |",
             f"| device, dtype | {model.device.type}, {model.precision} |",
             f"| embedding size | {model.embed_dim} |"]
    if model.checkpoint:
        c = model.checkpoint
        lines += [f"| paper: ImageNet 0-shot | {c.imagenet_zero_shot} |",
                  f"| paper: COCO text→image / image→text R@1 | {c.coco_text_to_image} / {c.coco_image_to_text} |"]
    return "\n".join(line for line in lines if line != "")


def banner(studio: Studio) -> gr.Markdown:
    if studio.model is None:
        text = ("⛔ **No model loaded.** " + (studio.load_error or "")
                + " Use the **Models** tab to load a checkpoint, a local folder, or the small test model.")
        return gr.Markdown(text, visible=True)
    if studio.model.untrained:
        return gr.Markdown(UNTRAINED_WARNING, visible=True)
    return gr.Markdown("", visible=False)



def paper_table() -> list[list]:
    """The paper's numbers, one decimal each (74 reads as 74.0 beside 78.2)."""
    number = lambda value: "—" if value is None else f"{float(value):.1f}"  # noqa: E731
    return [[c.hub_id, c.label, number(c.imagenet_zero_shot), number(c.coco_text_to_image),
             number(c.coco_image_to_text)] for c in CHECKPOINTS]


DEVICES = ["auto", "cpu", "cuda", "mps"]
DTYPES = ["auto", "fp32", "bf16", "fp16", "int8", "int8-openvino"]


def build(studio: Studio) -> gr.Markdown:
    """The tab; returns its summary of the loaded model (shown afresh whenever the tab is opened: a load in the
    Fine-tune tab changes the model too)."""
    with gr.Row():
        with gr.Column(scale=2):
            loaded = studio.model  # the selectors start at the model that is actually loaded
            released = loaded.checkpoint.hub_id if loaded and loaded.checkpoint else None
            choice = gr.Dropdown([c.hub_id for c in CHECKPOINTS], value=released or (None if loaded else DEFAULT_MODEL),
                                 label="Released checkpoint", allow_custom_value=True)
            local = gr.Textbox(loaded.name if loaded and not released else "", placeholder="/models/siglip2",
                               label="…or a local checkpoint folder (Hugging Face layout)")
            with gr.Row():
                # they start at what the app was started with (--device, --dtype), which loads here keep
                device = gr.Dropdown(DEVICES, value=studio.device if studio.device in DEVICES else "auto",
                                     label="Device",
                                     info="auto: cuda, then mps, then cpu (the int8 dtypes run on the cpu only)")
                dtype = gr.Dropdown(DTYPES, value=studio.dtype if studio.dtype in DTYPES else "auto",
                                    label="Dtype (int8: CPU only)",
                                    info="int8-openvino: fastest on CPUs with VNNI (elsewhere int8 is faster); "
                                         "first load calibrates (~40 s for B/16)")
            patches = loaded.image_setting[0] if loaded and loaded.arch == "naflex" else 256
            max_patches = gr.Dropdown([128, 256, 576, 784, 1024], value=patches, allow_custom_value=True,
                                      label="NaFlex sequence length (max patches; trained: 128–1024)")
            with gr.Row():
                load = gr.Button("Load", variant="primary")
                load_test = gr.Button("Load the small test model (untrained, offline)")
            load_notes = gr.Markdown(elem_id="load-notes")
        with gr.Column(scale=3):
            summary = gr.Markdown(model_summary(studio), elem_id="model-summary")
    gr.Dataframe(paper_table(), headers=["checkpoint", "model", "INet 0-shot", "COCO T→I", "COCO I→T"],
                 label="The 17 released checkpoints (numbers from the SigLIP 2 paper)", interactive=False,
                 wrap=True, column_widths=["40%", "18%", "14%", "14%", "14%"], elem_id="paper-table")

    # a failed load leaves the loaded model's summary as it was, and says why beside the button (the banner above
    # the tabs is hidden on this tab, and drawn afresh when another tab is opened)
    @shown_in_place("keep", "notes")
    def do_load(hub_id: str, folder: str, device_name: str, dtype_name: str, patches=256):
        patches = check_sequence_length(patches)  # before a slow load, not after
        studio.load((folder or "").strip() or hub_id, device=device_name, dtype=dtype_name)
        studio.set_max_patches(patches)
        return model_summary(studio), other_model_indexes_note(studio)

    @shown_in_place("keep", "notes")
    def do_set_patches(patches):
        studio.set_max_patches(patches)  # the model checks the value
        return model_summary(studio), ""

    @shown_in_place("keep", "notes")
    def do_load_test(dtype_name: str = "auto"):
        studio.load_test_model(dtype=dtype_name)  # (on the CPU whatever the device chosen)
        return model_summary(studio), other_model_indexes_note(studio)

    # one source at a time, so that Load loads what the form shows: a checkpoint chosen empties the folder box
    # (which holds the loaded folder's path), a folder typed unselects the checkpoint
    choice.input(lambda: "", None, local, api_name=False, queue=False)
    local.input(lambda text: gr.Dropdown(value=None) if text.strip() else gr.skip(), local, choice, api_name=False,
                queue=False)
    load.click(do_load, [choice, local, device, dtype, max_patches], [summary, load_notes],
               api_name="load_model", concurrency_id="loader", concurrency_limit=1)
    max_patches.change(do_set_patches, max_patches, [summary, load_notes], api_name="set_max_patches",
                       concurrency_id=MODEL_QUEUE)
    load_test.click(do_load_test, dtype, [summary, load_notes], api_name="load_test_model",
                    concurrency_id="loader", concurrency_limit=1)
    return summary

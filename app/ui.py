"""The Blocks layout: a banner, then the Label, Search, Explore, Inside and Models tabs around one Studio."""

from __future__ import annotations

import gradio as gr

from . import serving, tab_explore, tab_inside, tab_label, tab_models, tab_search, tab_train
from .common import THUMBNAILS, fresh_index_dropdowns
from .studio import Studio

# Gallery captions are two short lines (name; scores): keep the line break and show them whole.
CSS = """
.gallery-item .caption-label { white-space: pre-line; overflow: visible; text-overflow: clip; line-height: 1.25;
  max-width: 100%; text-align: left; overflow-wrap: anywhere; }  /* a name wider than its column wraps */
#explore-card { overflow-wrap: anywhere; }
/* narrow windows: a table's words wrap whole (a header read "probabilit y"); long file names may still break */
#label-notes th, #label-notes td, #batch-table th { word-break: normal; overflow-wrap: normal; hyphens: none; }
#label-notes td:first-child { overflow-wrap: anywhere; }
#compare-table td { overflow-wrap: anywhere; }
#compare-table th { word-break: normal; overflow-wrap: normal; hyphens: none; }
/* as many result columns as fit (a fixed count in a narrow box cut the last ones off at the right) */
#search-gallery .grid-container { grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)) !important; }
#explore-gallery .grid-container { grid-template-columns: repeat(auto-fill, minmax(110px, 1fr)) !important; }
/* a job's progress (or its place in the queue) shows in the notes beside its button (JOB_NOTES), empty (0 px
   high) until the job ends: room for it, and the count and time (top right, over a narrow box's bar) under the bar */
.job-notes.block:has(> [data-testid="status-tracker"]:not(.hide)) { min-height: 7em; }
.job-notes.block > [data-testid="status-tracker"] { height: 100%; }
.job-notes.block .meta-text-center { transform: none; top: auto; bottom: 0; }
"""
INTRO = ("# SigLIP 2 Studio\nZero-shot labelling, multilingual image search, an embedding explorer and a look "
         "inside Google's SigLIP 2 encoders. Probabilities are SigLIP's sigmoid scores: independent per label.")


def build_app(studio: Studio) -> gr.Blocks:
    serving.quiet_request_bookkeeping()
    serving.describe_components_lazily()
    # Result thumbnails are served from where they are written (atomically, under unguessable names) instead
    # of being hashed and copied into Gradio's cache for every result shown (28 % of a loaded search server's
    # time holding the GIL, py-spy).
    THUMBNAILS.mkdir(parents=True, exist_ok=True)
    gr.set_static_paths([THUMBNAILS])
    with gr.Blocks(title="SigLIP 2 Studio") as demo:
        gr.Markdown(INTRO)
        banner_box = tab_models.banner(studio)
        banner_box.elem_id = "banner"
        tabs = []
        with gr.Tab("Label", id="label") as tab:
            tabs.append(tab)
            tab_label.build(studio)
        with gr.Tab("Search", id="search") as tab:
            tabs.append(tab)
            index_dropdowns = tab_search.build(studio)
        with gr.Tab("Explore", id="explore") as tab:
            tabs.append(tab)
            index_dropdowns += tab_explore.build(studio)
        with gr.Tab("Inside", id="inside") as tab:
            tabs.append(tab)
            tab_inside.build(studio)
        if studio.enable_training:
            with gr.Tab("Fine-tune", id="train") as tab:
                tabs.append(tab)
                tab_train.build(studio)
        with gr.Tab("Models", id="models") as models_tab:
            model_summary = tab_models.build(studio)
        # the banner points to the Models tab, whose own summary says the same: there it is hidden; both are
        # drawn afresh when shown (a load elsewhere, another visitor's included, changes the model)
        models_tab.select(lambda: (gr.Markdown(visible=False), tab_models.model_summary(studio)), None,
                          [banner_box, model_summary], api_name=False, queue=False)
        for tab in tabs:
            tab.select(lambda: tab_models.banner(studio), None, banner_box, api_name=False, queue=False)
        demo.load(lambda: tab_models.banner(studio), None, banner_box, api_name=False, queue=False,
                  show_progress="hidden")
        # an Explore box still empty (the page opened before any index existed) takes the index just built
        search_index, explore_index = index_dropdowns[0], index_dropdowns[-1]
        search_index.change(lambda built, chosen: built if not chosen else gr.skip(), [search_index, explore_index],
                            explore_index, api_name=False, queue=False)
        demo.load(lambda: fresh_index_dropdowns(studio, len(index_dropdowns)), None, index_dropdowns, api_name=False,
                  queue=False, show_progress="hidden")
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo

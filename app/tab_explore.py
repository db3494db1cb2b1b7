"""Embedding explorer: a UMAP map of an index as a plotly WebGL scatter, coloured by cluster or by
zero-shot label, with a text query placed on the map and thumbnails on click."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from engine import StudioError
from engine.explore.map import DEFAULT_MAX_POINTS, ExploreMap, explore_index
from engine.index.store import ImageIndex

from .common import MODEL_QUEUE, gpu, index_choices, shown_in_place, thumbnail
from .studio import Studio

# gr.Plot has no click event: forward plotly's own click to a hidden textbox that the server watches.
CLICK_BRIDGE = """
() => {
  let tries = 0;
  const attach = () => {
    const plot = document.querySelector('#explore-map .js-plotly-plot');
    if (!plot || typeof plot.on !== 'function') {
      if (tries++ < 80) setTimeout(attach, 250);
      return;
    }
    if (plot.dataset.bridged) return;
    plot.dataset.bridged = '1';
    plot.on('plotly_click', (event) => {
      const box = document.querySelector('#explore-clicked textarea, #explore-clicked input');
      if (!box || !event.points.length) return;
      box.value = String(event.points[0].customdata[0]);
      box.dispatchEvent(new Event('input', {bubbles: true}));
    });
  };
  attach();
}
"""


def map_caption(explored: ExploreMap) -> str:
    projection = explored.projection
    shown = (f"{len(projection.image_ids):,} of {projection.total:,} images (random subsample)"
             if projection.subsampled else f"all {projection.total:,} images")
    if projection.method == "pca" and len(projection.image_ids) >= 8:
        return (f"PCA map of {shown}: UMAP is still being compiled in the background (once per server start); "
                "draw again in a moment for the UMAP map.")
    return f"{projection.method.upper()} map of {shown}."


def figure(explored: ExploreMap) -> go.Figure:
    coords, colours, names = explored.projection.coords, explored.colours, explored.paths
    ids, query_point, query_text = explored.projection.image_ids, explored.query_point, explored.query
    fig = go.Figure()
    for colour in sorted(set(colours)):
        members = [i for i, c in enumerate(colours) if c == colour]
        fig.add_trace(go.Scattergl(
            x=coords[members, 0], y=coords[members, 1], mode="markers", name=str(colour),
            marker={"size": 7, "opacity": 0.8}, customdata=np.stack([ids[members]], axis=1),
            text=[names[i] for i in members], hovertemplate="%{text}<extra>" + str(colour) + "</extra>"))
    if query_point is not None:
        fig.add_trace(go.Scattergl(x=[query_point[0]], y=[query_point[1]], mode="markers+text", name="query",
                                   text=[query_text], textposition="top center", customdata=[[-1]],
                                   marker={"size": 18, "symbol": "star", "color": "black"}))
    fig.update_layout(height=560, margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"title": "colour"},
                      xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def build(studio: Studio) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            names, latest = index_choices(studio.index_dir)
            index_name = gr.Dropdown(names, value=latest, label="Index", allow_custom_value=True)
            colour_by = gr.Radio(["cluster", "zero-shot label"], value="cluster", label="Colour by")
            clusters = gr.Slider(2, 30, value=8, step=1, label="Clusters (k-means)")
            labels = gr.Textbox("a person, an animal, a landscape, food, a vehicle", label="Labels (zero-shot colouring)")
            query = gr.Textbox(label="Text query to place on the map")
            max_points = gr.Slider(500, 100_000, value=DEFAULT_MAX_POINTS, step=500,
                                   label="Most points to draw (random subsample above)")
            draw = gr.Button("Draw map", variant="primary")
            notes = gr.Markdown(elem_id="explore-notes")
            clicked = gr.Textbox(visible="hidden", elem_id="explore-clicked")
            picked = gr.Image(label="Clicked image", height=220, interactive=False, elem_id="explore-picked")
        with gr.Column(scale=3):
            plot = gr.Plot(elem_id="explore-map", label="Embedding map")
            nearest = gr.Gallery(label="Nearest to the query", columns=6, height=220)

    @gpu
    @shown_in_place("clear", "notes", "clear")
    def do_explore(name: str, how: str = "cluster", k: int = 8, label_text: str = "", text: str = "",
                   limit: int = DEFAULT_MAX_POINTS):
        if not (name or "").strip():
            raise StudioError("Choose an index to explore, or build one in the Search tab.")
        with studio.job("drawing the map") as model, ImageIndex.open(name, studio.index_dir) as index:
            explored = explore_index(index, model, how, int(k), label_text or "", text or "", int(limit),
                                     quick=True)
        gallery = [(thumbnail(path), Path(path).name) for path in explored.nearest_paths]
        return figure(explored), "\n\n".join(x for x in (map_caption(explored), studio.notes()) if x), \
            [g for g in gallery if g[0] is not None]

    @shown_in_place("clear")
    def do_pick(name: str, image_id: str):
        if not (image_id or "").strip() or image_id.strip() == "-1":
            return None
        with ImageIndex.open(name, studio.index_dir) as index:
            record = index.catalog.images([int(image_id)]).get(int(image_id))
        return thumbnail(record.paths[0], 512) if record else None

    event = draw.click(do_explore, [index_name, colour_by, clusters, labels, query, max_points],
                       [plot, notes, nearest], api_name="explore", concurrency_id=MODEL_QUEUE)
    event.then(None, None, None, js=CLICK_BRIDGE)
    clicked.change(do_pick, [index_name, clicked], picked, api_name=False)
    index_name.focus(lambda: gr.Dropdown(choices=index_choices(studio.index_dir)[0]), None, index_name,
                     api_name=False, queue=False)

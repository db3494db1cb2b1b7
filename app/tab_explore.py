"""Embedding explorer: a UMAP map of an index as a plotly WebGL scatter, coloured by cluster or by
zero-shot label, with a text query placed on the map and thumbnails on click."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from engine import StudioError
from engine.explore.map import DEFAULT_MAX_POINTS, ExploreMap, PointDetails, explore_index, point_details
from engine.index.search import similar_images, unfinished_warning
from engine.index.catalog import Catalog
from engine.index.listing import CATALOG, index_path
from engine.model.text import short_text

from .common import (JOB_NOTES, MODEL_QUEUE, cancel_button, gpu, index_dropdown, path_as_known,
                     running, shown_in_place, thumbnail, with_cancel)
from .studio import Studio

NEAREST_LABEL = "Nearest to the query"
RECOLOUR_HINT = "The map keeps its colouring"  # said when another colouring is chosen after drawing
# gr.Plot has no click, hover or selection events: forward plotly's own to hidden textboxes the server watches.
PLOT_BRIDGE = """
() => {
  let tries = 0;
  const send = (id, value) => {
    const box = document.querySelector(`#${id} textarea, #${id} input`);
    if (!box || box.value === value) return;
    box.value = value;
    box.dispatchEvent(new Event('input', {bubbles: true}));
  };
  const attach = () => {
    const plot = document.querySelector('#explore-map .js-plotly-plot');
    if (!plot || typeof plot.on !== 'function') {
      if (tries++ < 80) setTimeout(attach, 250);
      return;
    }
    if (plot.dataset.bridged) return;
    plot.dataset.bridged = '1';
    const idOf = (point) => String(point.customdata[0]);
    plot.on('plotly_click', (event) => { if (event.points.length) send('explore-clicked', idOf(event.points[0])); });
    let hoverTimer = null;
    plot.on('plotly_hover', (event) => {
      clearTimeout(hoverTimer);
      if (event.points.length) hoverTimer = setTimeout(() => send('explore-hovered', idOf(event.points[0])), 120);
    });
    plot.on('plotly_selected', (event) => {
      // a click (no lasso or box drawn) also ends here, without a range: not a selection
      if (!event || !(event.range || event.lassoPoints)) return;
      const ids = (event.points || []).map(idOf).filter((id) => id !== '-1');
      send('explore-selected', ids.length ? ids.join(',') : 'none');
    });
  };
  attach();
}
"""
MAX_SELECTED = 60  # thumbnails shown for a lasso or box selection


def map_caption(explored: ExploreMap, index_name: str) -> str:
    projection = explored.projection
    shown = (f"{len(projection.image_ids):,} of {projection.total:,} images (random subsample)"
             if projection.subsampled else f"all {projection.total:,} images")
    shown += f" in **{index_name}**"
    if projection.method == "pca" and len(projection.image_ids) >= 8:
        return (f"PCA map of {shown}: UMAP is still being compiled in the background (once per server start); "
                "draw again in a moment for the UMAP map.")
    return f"{projection.method.upper()} map of {shown}."


def figure(explored: ExploreMap, shown_path: Callable[[str], str] = str) -> go.Figure:
    """The map; each point's hover text is its path as `shown_path` words it."""
    coords, colours, names = explored.projection.coords, explored.colours, [shown_path(p) for p in explored.paths]
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
                                   text=[short_text(query_text, 40)], textposition="top center", customdata=[[-1]],
                                   marker={"size": 18, "symbol": "star", "color": "black"}))
    fig.update_layout(height=560, margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"title": "colour"},
                      xaxis={"visible": False}, yaxis={"visible": False}, dragmode="lasso", hovermode="closest",
                      # a map drawn again is a new figure: the page redraws it (the same one was left as it was,
                      # with the last lasso still on it)
                      selections=[], uirevision=uuid.uuid4().hex)
    return fig


def point_card(details: PointDetails, shown_path: Callable[[str], str] = str) -> str:
    where = shown_path(details.path)
    lines = [f"**{Path(details.path).name}** · {details.width} × {details.height}",
             f"in {Path(where).parent}" if where != Path(details.path).name else "uploaded"]
    if len(details.paths) > 1:
        lines.append(f"also at {len(details.paths) - 1} other path(s)")
    if details.query_score is not None:
        lines.append(f"cosine to the query: {details.query_score:.3f}")
    return "\n\n".join(lines)


def recolour_form(how: str, drawn_by: str | None, notes: str):
    """The colouring's own setting shown; a map drawn in another colouring is said to keep it until drawn again
    (`drawn_by`: the drawn map's colouring, None without a map)."""
    said = [line for line in (notes or "").split("\n\n") if not line.startswith(RECOLOUR_HINT)]
    if drawn_by is not None and how != drawn_by:
        said.append(f"{RECOLOUR_HINT} ({drawn_by}) until it is drawn again (“Draw map”).")
    return (gr.Slider(visible=how == "cluster"), gr.Textbox(visible=how != "cluster"),
            "\n\n".join(said) if drawn_by is not None else gr.skip())


def build(studio: Studio) -> list[gr.Dropdown]:
    """The tab; returns its index dropdown (filled afresh at each page load)."""
    with gr.Row():
        with gr.Column(scale=1):
            index_name = index_dropdown(studio, "Index", "explore-index")
            colour_by = gr.Radio(["cluster", "zero-shot label"], value="cluster", label="Colour by")
            clusters = gr.Slider(2, 30, value=8, step=1, label="Clusters (k-means)")
            labels = gr.Textbox("a person, an animal, a landscape, food, a vehicle", visible=False,
                                label="Labels (zero-shot colouring)")
            query = gr.Textbox(label="Text query to place on the map")
            max_points = gr.Slider(500, 100_000, value=DEFAULT_MAX_POINTS, step=500,
                                   label="Most points to draw (random subsample above)")
            with gr.Row():
                draw = gr.Button("Draw map", variant="primary", scale=3)
                stop = cancel_button(scale=1, elem_id="cancel-map")
            notes = gr.Markdown(elem_id="explore-notes", elem_classes=JOB_NOTES)
            hovered_image = gr.Image(label="Under the pointer", height=160, interactive=False,
                                     elem_id="explore-hover", show_label=True)
        with gr.Column(scale=3):
            plot = gr.Plot(elem_id="explore-map", label="Embedding map")
            gr.Markdown("Hover a point to preview it, click it for its card, drag a lasso (or a box, from the "
                        "plot's toolbar) around points to list them.", elem_id="explore-help")
            with gr.Row():
                with gr.Column(scale=1):
                    picked = gr.Image(label="Clicked image", height=220, interactive=False, elem_id="explore-picked")
                    card = gr.Markdown(elem_id="explore-card")
                    similar = gr.Button("Find similar", size="sm", elem_id="explore-similar")
                with gr.Column(scale=2):
                    nearest = gr.Gallery(label=NEAREST_LABEL, columns=6, height=260,
                                         elem_id="explore-gallery")
            clicked = gr.Textbox(visible="hidden", elem_id="explore-clicked")
            hovered = gr.Textbox(visible="hidden", elem_id="explore-hovered")
            selected = gr.Textbox(visible="hidden", elem_id="explore-selected")
            drawn_from = gr.State()  # the index the map shows: clicks and selections are its image ids
            drawn_by = gr.State()  # and how it is coloured

    @gpu
    @shown_in_place("clear", "notes", "clear", "clear", "clear")
    def do_explore(name: str, how: str = "cluster", k: int = 8, label_text: str = "", text: str = "",
                   limit: int = DEFAULT_MAX_POINTS):
        if not (name or "").strip():
            raise StudioError("Choose an index to explore, or build one in the Search tab.")
        with studio.job("drawing the map") as model, studio.open_index(name) as index:
            explored = explore_index(index, model, how, int(k), label_text or "", text or "", int(limit),
                                     quick=True)
            unfinished = unfinished_warning(index)
        gallery = [(thumbnail(path), f"{Path(path).name}\ncos {score:.3f}")  # scored, as every other gallery
                   for path, score in zip(explored.nearest_paths, explored.nearest_scores)]
        notes = (map_caption(explored, name), studio.notes(unfinished + explored.warnings))
        return figure(explored, path_as_known(studio.index_dir)), "\n\n".join(x for x in notes if x), \
            [g for g in gallery if g[0] is not None], name, how

    @contextmanager
    def catalog_of(name: str):
        """The index's catalogue alone, read-only: hovering and selecting need no FAISS file loaded."""
        path = index_path(name, studio.index_dir) / CATALOG
        if not path.exists():
            raise StudioError(f"No index named {name!r}; draw the map again.")
        catalog = Catalog(path, readonly=True)
        try:
            yield catalog
        finally:
            catalog.close()

    def point_id(text: str) -> int | None:
        text = (text or "").strip()
        return int(text) if text.lstrip("-").isdigit() and int(text) >= 0 else None

    @shown_in_place("clear", "notes")
    def do_pick(name: str, image_id: str, text: str):
        if point_id(image_id) is None:
            return None, ""
        with studio.job("describing a point") as model, studio.open_index(name) as index:
            details = point_details(index, model, point_id(image_id), text or "")
        return thumbnail(details.path, 512), point_card(details, path_as_known(studio.index_dir))

    @shown_in_place("clear")
    def do_hover(name: str, image_id: str):
        if point_id(image_id) is None:
            return None
        with catalog_of(name) as catalog:
            record = catalog.images([point_id(image_id)]).get(point_id(image_id))
        return thumbnail(record.paths[0]) if record else None

    @shown_in_place("keep", "notes")
    def do_select(name: str, id_list: str):
        if not id_list:  # reset along with the map, not a selection
            return gr.skip(), gr.skip()
        ids = [point_id(part) for part in id_list.split(",")]
        ids = [i for i in ids if i is not None]
        if not ids:
            return gr.Gallery([], label="Selected: no images"), \
                "No points inside the selection: drag the lasso (or the box) around some points."
        with catalog_of(name) as catalog:
            records = catalog.images(ids[:MAX_SELECTED])
        items = [(thumbnail(records[i].paths[0]), Path(records[i].paths[0]).name) for i in ids if i in records]
        shown = [item for item in items if item[0] is not None]
        more = f" (the first {MAX_SELECTED} shown)" if len(ids) > MAX_SELECTED else ""
        return gr.Gallery(shown, label=f"Selected: {len(ids)} image(s){more}"), f"{len(ids)} point(s) selected{more}."

    @gpu
    @shown_in_place("keep", "notes")
    def do_similar(name: str, image_id: str):
        if point_id(image_id) is None:
            raise StudioError("Click a point on the map first, then “Find similar”.")
        with studio.job("finding similar images") as model, studio.open_index(name) as index:
            result = similar_images(index, model, point_id(image_id), k=12)
        items = [(thumbnail(h.path), f"{Path(h.path).name}\ncos {h.score:.3f}") for h in result.hits]
        label = f"Most similar to {Path(result.terms[0].value).name}"
        return gr.Gallery([i for i in items if i[0] is not None], label=label), gr.skip()

    event = with_cancel(draw, stop, do_explore, [index_name, colour_by, clusters, labels, query, max_points],
                        [plot, notes, nearest, drawn_from, drawn_by], emptied=[notes], api_name="explore",
                        concurrency_id=MODEL_QUEUE, show_progress_on=notes)  # beside its button
    event.then(None, None, None, js=PLOT_BRIDGE)
    # a colouring chosen while the map was drawing is said to differ from the drawn one, after its notes
    event.then(recolour_form, [colour_by, drawn_by, notes], [clusters, labels, notes], api_name=False, queue=False)
    # a new map (or its error) leaves nothing of the previous one's clicked point, preview, selection or similar
    # images; a cancelled one leaves none of the previous map either, and says so
    previous_map, forgotten = [picked, card, hovered_image, clicked, selected], (None, "", None, "", "")
    event.then(lambda: (*forgotten, gr.Gallery(label=NEAREST_LABEL)), None, [*previous_map, nearest],
               api_name=False, queue=False)
    # frees the UI (a cancelled event has no .then); a running UMAP ends
    stop.click(lambda: (*running(False), *forgotten, gr.Gallery(None, label=NEAREST_LABEL), None, None, None,
                        "Cancelled: no map drawn."), None,
               [draw, stop, *previous_map, nearest, plot, drawn_from, drawn_by, notes], cancels=[event], api_name=False,
               queue=False)
    # on the map's own index, whichever the dropdown has moved to since
    clicked.change(do_pick, [drawn_from, clicked, query], [picked, card], api_name=False)
    hovered.change(do_hover, [drawn_from, hovered], hovered_image, api_name=False, queue=False)
    selected.change(do_select, [drawn_from, selected], [nearest, notes], api_name=False)
    similar.click(do_similar, [drawn_from, clicked], [nearest, card], api_name=False, concurrency_id=MODEL_QUEUE)
    colour_by.change(recolour_form, [colour_by, drawn_by, notes], [clusters, labels, notes], api_name=False,
                     queue=False)
    return [index_name]

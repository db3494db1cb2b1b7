"""Search tab: build or open an index, search it by text (any language), by image, or both, and
compare the same query across languages."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine import StudioError
from engine.index.build import BuildSummary, build_index, stage_uploads
from engine.index.search import QueryTerm, compare_queries, parse_query, search
from engine.index.store import ImageIndex, index_path, list_indexes
from engine.model.text import short_text

from .common import (MODEL_QUEUE, SERVE, ImageInput, gpu, index_choices, progress_callback, shown_in_place,
                     thumbnail, uploaded_paths)
from .studio import Studio


def _gallery(result) -> list[tuple]:
    items = []
    for hit in result.hits:
        image = thumbnail(hit.path)
        if image is not None:
            items.append((image, f"{Path(hit.path).name} · cos {hit.score:.3f} · p {hit.probability:.3f}"))
    return items


def terms_text(terms: list[QueryTerm]) -> str:
    """The query as the summary names it: images by file name, texts shortened, signs and weights."""
    parts = []
    for position, term in enumerate(terms):
        what = f"image {Path(term.value).name}" if term.kind == "image" else f"“{short_text(term.value, 60)}”"
        weight = abs(term.weight)
        what = what if weight == 1 else f"{weight:g} × {what}"
        sign = ("−" if term.weight < 0 else "") if position == 0 else (" − " if term.weight < 0 else " + ")
        parts.append(sign + what)
    return "".join(parts)


def _hits_note(studio: Studio, result, index_name: str) -> str:
    terms = terms_text(result.terms)
    head = f"{len(result.hits)} result(s) in **{index_name}** for {terms}"
    if result.terms and any(t.kind == "image" for t in result.terms):
        head += " (probabilities are calibrated for text queries only)"
    return "\n\n".join(x for x in (head, studio.notes(result.warnings)) if x)


def open_index(studio: Studio, name: str) -> ImageIndex:
    if not (name or "").strip():
        raise StudioError("Choose an index to search, or build one first.")
    return ImageIndex.open(name, studio.index_dir)


def build_summary_text(summary: BuildSummary) -> str:
    """Markdown for a finished build: what changed, what the index holds, each skipped file."""
    lines = [f"**{summary.name}**: {summary.images} images ({summary.files} files), {summary.index_type}.",
             f"{summary.scanned} files scanned in {summary.seconds:.1f} s: {summary.encoded} encoded "
             f"({summary.rate:.1f}/s), {summary.linked} linked to stored content, {summary.unchanged} unchanged, "
             f"{summary.removed} removed, {len(summary.skipped)} skipped."]
    lines += [f"- ⛔ {Path(path).name}: {reason}" for path, reason in summary.skipped]
    return "\n\n".join(lines)


def build(studio: Studio) -> dict:
    index_name = _build_search(studio)
    _build_compare(studio, index_name)
    return {"index_name": index_name}


def _build_search(studio: Studio) -> gr.Dropdown:
    refresh_choices = lambda: gr.Dropdown(choices=list_indexes(studio.index_dir))  # noqa: E731
    with gr.Row():
        with gr.Column(scale=1):
            gr.Markdown("#### Create or update an index")
            new_name = gr.Textbox(label="Index name", placeholder="holiday-2026")
            files = gr.File(file_count="multiple", file_types=["image"], type="filepath", label="Upload images")
            folder = gr.Textbox(label="…or a folder on the server (inside the allowed roots)")
            build_button = gr.Button("Build / update index", variant="primary")
            build_notes = gr.Markdown(elem_id="build-notes")
        with gr.Column(scale=2):
            names, latest = index_choices(studio.index_dir)
            index_name = gr.Dropdown(names, value=latest, label="Index to search",
                                     allow_custom_value=True, elem_id="search-index")
            query = gr.Textbox(label="Text query, any language (combine: `2:red car + sunset - night`)",
                               elem_id="search-query")
            with gr.Row():
                query_image = ImageInput(type="filepath", label="…and/or an example image", height=180)
                with gr.Column():
                    image_weight = gr.Slider(-2, 4, value=1, step=0.1, label="Weight of the example image")
                    k = gr.Slider(1, 100, value=12, step=1, label="Results (k)")
                    min_score = gr.Slider(-1, 1, value=-1, step=0.01, label="Minimum cosine score")
                    path_filter = gr.Textbox(label="Only paths containing")
            with gr.Row():
                text_button = gr.Button("Search by text", variant="primary")
                image_button = gr.Button("Search by image (+ text)")
            search_notes = gr.Markdown(elem_id="search-notes")
            gallery = gr.Gallery(label="Results", columns=4, height=480, elem_id="search-gallery")

    @gpu
    @shown_in_place("notes", "keep")
    def do_build(name: str, uploaded, server_folder: str, progress=gr.Progress()):
        name = (name or "").strip()
        index_path(name, studio.index_dir)  # a bad name is refused before anything is copied
        paths = uploaded_paths(uploaded)
        if server_folder and server_folder.strip():
            if paths:
                raise StudioError("Give either uploaded images or a server folder, not both.")
            source = studio.check_folder(server_folder)
        elif paths:
            source = stage_uploads(paths, name, studio.index_dir)
        else:
            raise StudioError("Upload images or give a server folder to index.")
        with studio.job(f"building index {name}") as model:
            summary = build_index(model, source, name, studio.index_dir,
                                  progress=progress_callback(progress, "indexing"))
        return "\n\n".join(x for x in (build_summary_text(summary), studio.notes()) if x), gr.Dropdown(
            choices=list_indexes(studio.index_dir), value=name)

    def _run(name: str, terms, n: int, cut: float, path_part: str):
        with studio.job("searching") as model, open_index(studio, name) as index:
            return search(index, model, terms, k=int(n), min_score=None if cut <= -1 else cut,
                          path_contains=(path_part or "").strip() or None, readable=studio.readable)

    @gpu
    @shown_in_place("clear", "notes")
    def do_search_text(name: str, text: str, n: int = 12, cut: float = -1, path_part: str = ""):
        result = _run(name, text, n, cut, path_part)
        return _gallery(result), _hits_note(studio, result, name)

    @gpu
    @shown_in_place("clear", "notes")
    def do_search_image(name: str, image_path, weight: float = 1.0, text: str = "", n: int = 12, cut: float = -1,
                        path_part: str = ""):
        if not image_path:
            raise StudioError("Add an example image first.")
        terms = [QueryTerm(float(weight), "image", image_path)]  # an upload: the one file read from outside the roots
        terms += parse_query(text, studio.readable) if (text or "").strip() else []
        result = _run(name, terms, n, cut, path_part)
        return _gallery(result), _hits_note(studio, result, name)

    build_button.click(do_build, [new_name, files, folder], [build_notes, index_name], api_name="build_index",
                       concurrency_id=MODEL_QUEUE)
    text_inputs = [index_name, query, k, min_score, path_filter]
    text_button.click(do_search_text, text_inputs, [gallery, search_notes], api_name="search_text",
                      **SERVE)
    query.submit(do_search_text, text_inputs, [gallery, search_notes], api_name=False, **SERVE)
    image_button.click(do_search_image, [index_name, query_image, image_weight, query, k, min_score, path_filter],
                       [gallery, search_notes], api_name="search_image", **SERVE)
    index_name.focus(refresh_choices, None, index_name, api_name=False, queue=False)
    return index_name


def _build_compare(studio: Studio, index_name: gr.Dropdown) -> None:
    with gr.Accordion("Compare languages", open=False):
        languages = gr.Textbox(label="The same query in several languages, one per line",
                               value="a dog on the beach\nun chien sur la plage\nein Hund am Strand\n海滩上的狗", lines=4)
        k = gr.Slider(1, 50, value=12, step=1, label="Results per language (k)")
        compare_button = gr.Button("Compare")
        compare_notes = gr.Markdown(elem_id="compare-notes")
        compare_table = gr.Dataframe(label="Top results per language", interactive=False)
        overlap_table = gr.Dataframe(label="Overlap of the top-k between languages (shared results / k)",
                                     interactive=False)

    @gpu
    @shown_in_place("clear", "clear", "notes")
    def do_compare(name: str, lines: str, n: int = 12):
        queries = [line.strip() for line in (lines or "").splitlines() if line.strip()]
        with studio.job("comparing queries") as model, open_index(studio, name) as index:
            comparison = compare_queries(index, model, queries, int(n), readable=studio.readable)
        top = [[Path(h.path).name for h in r.hits] for r in comparison.results]
        depth = max(len(t) for t in top)
        rows = [[rank + 1] + [t[rank] if rank < len(t) else "" for t in top] for rank in range(depth)]
        overlap = [[q] + [f"{share:.2f}" for share in row] for q, row in zip(queries, comparison.overlap)]
        return (gr.Dataframe(rows, headers=["rank"] + queries),
                gr.Dataframe(overlap, headers=["query"] + queries), studio.notes(
                    [w for result in comparison.results for w in result.warnings]))

    compare_button.click(do_compare, [index_name, languages, k], [compare_table, overlap_table, compare_notes],
                         api_name="compare_languages", concurrency_id=MODEL_QUEUE)

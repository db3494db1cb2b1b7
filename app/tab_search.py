"""Search tab: build or open an index, search it by text (any language), by image, or both, and
compare the same query across languages."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine import StudioError
from engine.index.build import BuildSummary, build_index
from engine.index.uploads import stage_uploads
from engine.index.search import QueryTerm, compare_queries, parse_query, search, similar_images
from engine.index.listing import index_path
from engine.model.text import short_text

from .common import (JOB_NOTES, MODEL_QUEUE, SERVE, ImageInput, JobCancelled, cancel_button, gpu, index_choices,
                     index_dropdown, progress_callback, shown_in_place, thumbnail, uploaded_paths, with_cancel)
from .studio import Studio


RENAMES_SHOWN = 20  # uploads stored under another name, listed one by one after a build
CAPTION_NAME = 48  # characters of a file name in a result's caption (the selection note gives it whole)


def hit_caption(hit, with_probability: bool = True) -> str:
    """Two short lines: the file's name (a long one cut in the middle, keeping its end); cosine, probability."""
    name = Path(hit.path).name
    if len(name) > CAPTION_NAME:
        name = name[: CAPTION_NAME // 2 - 1] + "…" + name[-(CAPTION_NAME // 2):]
    return f"{name}\ncos {hit.score:.3f}" + (f" · p {hit.probability:.3f}" if with_probability else "")


def _text_only(result) -> bool:
    """Whether a result's query is all text: SigLIP's probability is calibrated for text-image pairs only."""
    return all(term.kind == "text" for term in result.terms)


def _gallery(result) -> tuple[list[tuple], list[tuple[int, str]]]:
    """Thumbnails with captions, and the image id and file name of each shown item (for "find similar")."""
    items, shown = [], []
    for hit in result.hits:
        image = thumbnail(hit.path)
        if image is not None:
            items.append((image, hit_caption(hit, _text_only(result))))
            shown.append((hit.image_id, Path(hit.path).name))
    return items, shown


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
    if not _text_only(result):
        head += " (cosine only: SigLIP's probability is calibrated for text queries)"
    return "\n\n".join(x for x in (head, studio.notes(result.warnings)) if x)


def build_summary_text(summary: BuildSummary, renamed: list[tuple[str, str]] = ()) -> str:
    """Markdown for a finished build: what changed, what the index holds, each skipped file, each upload
    stored under another name."""
    how = "searched exactly" if summary.index_type == "Flat" else "searched approximately, tuned for recall"
    lines = [f"**{summary.name}**: {summary.images} images ({summary.files} files), {how} (FAISS "
             f"`{summary.index_type}`).",
             f"{summary.scanned} files scanned in {summary.seconds:.1f} s: {summary.encoded} encoded "
             f"({summary.rate:.1f}/s), {summary.linked} linked to stored content, {summary.unchanged} unchanged, "
             f"{summary.removed} removed, {len(summary.skipped)} skipped."]
    lines += [f"- ⛔ {Path(path).name}: {reason}" for path, reason in summary.skipped]
    lines += [f"- {uploaded} stored as **{stored}**: another file of that name is in this index"
              for uploaded, stored in renamed[:RENAMES_SHOWN]]
    if len(renamed) > RENAMES_SHOWN:
        lines.append(f"- …and {len(renamed) - RENAMES_SHOWN} more uploads stored under another name")
    return "\n\n".join(lines)


def build_cancellably(studio: Studio, name: str, source: Path, report) -> BuildSummary:
    """Build index `name` from `source`, stopping at the next file once its Cancel button is pressed."""
    cancelled = studio.cancel_flag(f"build {name}")

    def step(done: int, total: int) -> None:
        if cancelled.is_set():  # committed batches stay: a later build goes on from them
            raise JobCancelled(f"Cancelled: the build of {name!r} stopped after {done} of {total} files; "
                               "everything stored so far is kept, and building again continues from there.")
        report(done, total)

    with studio.job(f"building index {name}") as model:
        return build_index(model, source, name, studio.index_dir, progress=step)


def build(studio: Studio) -> list[gr.Dropdown]:
    """The tab; returns its index dropdowns (filled afresh at each page load)."""
    search_index, compare_index = _build_search(studio), _build_compare(studio)
    search_index.change(lambda name: name, search_index, compare_index, api_name=False, queue=False)  # follows it
    return [search_index, compare_index]


def _build_search(studio: Studio) -> gr.Dropdown:
    with gr.Row():
        with gr.Column(scale=1):
            gr.Markdown("#### Create or update an index")
            new_name = gr.Textbox(label="Index name", placeholder="a name of yours, e.g. holiday-2026")
            files = gr.File(file_count="multiple", file_types=["image"], type="filepath", label="Upload images")
            folder = gr.Textbox(label="…or a folder on the server (inside the allowed roots)")
            with gr.Row():
                build_button = gr.Button("Build / update index", variant="primary", scale=3)
                cancel = cancel_button(scale=1, elem_id="cancel-build")
            build_notes = gr.Markdown(elem_id="build-notes", elem_classes=JOB_NOTES)
        with gr.Column(scale=2):
            index_name = index_dropdown(studio, "Index to search", "search-index")
            query = gr.Textbox(label="Text query, any language (combine: 2:red car + sunset - night)",
                               elem_id="search-query")
            with gr.Row():
                query_image = ImageInput(type="filepath", label="…and/or an example image", height=180,
                                         elem_id="search-example")
                with gr.Column():
                    image_weight = gr.Slider(-2, 4, value=1, step=0.1, label="Weight of the example image")
                    k = gr.Slider(1, 100, value=12, step=1, label="Results (k)")
                    min_score = gr.Slider(-1, 1, value=-1, step=0.01, label="Minimum cosine score")
                    path_filter = gr.Textbox(label="Only paths containing")
            with gr.Row():
                text_button = gr.Button("Search by text", variant="primary")
                image_button = gr.Button("Search by image (+ text)")
            search_notes = gr.Markdown(elem_id="search-notes")
            gallery = gr.Gallery(label="Results (select one, then “Find similar”)", columns=4, height=520,
                                 elem_id="search-gallery")
            with gr.Row():
                selection_note = gr.Markdown("Select a result to find images like it.", elem_id="search-selection")
                similar_button = gr.Button("Find similar to the selected result", size="sm", elem_id="find-similar")
            shown_ids = gr.State([])
            selected_id = gr.Number(None, visible=False, precision=0, label="Selected image id")

    @gpu
    @shown_in_place("notes", "keep")
    def do_build(name: str, uploaded, server_folder: str, progress=gr.Progress()):
        name = (name or "").strip()
        if not name:
            raise StudioError("Give the index a name first (letters, digits, spaces, '.', '-' or '_').")
        index_path(name, studio.index_dir)  # a bad name is refused before anything is copied
        paths, renamed = uploaded_paths(uploaded), []
        if server_folder and server_folder.strip():
            if paths:
                raise StudioError("Give either uploaded images or a server folder, not both.")
            source = studio.check_folder(server_folder)
        elif paths:
            staged = stage_uploads(paths, name, studio.index_dir)
            source, renamed = staged.folder, staged.renamed
        else:
            raise StudioError("Upload images or give a server folder to index.")
        summary = build_cancellably(studio, name, source, progress_callback(progress, "indexing"))
        return "\n\n".join(x for x in (build_summary_text(summary, renamed), studio.notes()) if x), gr.Dropdown(
            choices=index_choices(studio.index_dir, studio.model)[0], value=name)

    def _run(name: str, terms, n: int, cut: float, path_part: str):
        with studio.job("searching") as model, studio.open_index(name) as index:
            return search(index, model, terms, k=int(n), min_score=None if cut <= -1 else cut,
                          path_contains=(path_part or "").strip() or None, readable=studio.readable)

    def shown(result, name: str):
        items, ids = _gallery(result)
        return items, _hits_note(studio, result, name), ids

    @gpu
    @shown_in_place("clear", "notes", "clear")
    def do_search_text(name: str, text: str, n: int = 12, cut: float = -1, path_part: str = ""):
        return shown(_run(name, text, n, cut, path_part), name)

    @gpu
    @shown_in_place("clear", "notes", "clear")
    def do_search_image(name: str, image_path, weight: float = 1.0, text: str = "", n: int = 12, cut: float = -1,
                        path_part: str = ""):
        if not image_path:
            raise StudioError("Add an example image first.")
        terms = [QueryTerm(float(weight), "image", image_path)]  # an upload: the one file read from outside the roots
        terms += parse_query(text, studio.readable) if (text or "").strip() else []
        return shown(_run(name, terms, n, cut, path_part), name)

    def do_select(shown_items: list, event: gr.SelectData):
        if not shown_items or event.index is None or event.index >= len(shown_items):
            return None, "Select a result to find images like it."
        image_id, name = shown_items[event.index]
        return image_id, f"Selected: **{name}**"

    @gpu
    @shown_in_place("keep", "notes", "keep")
    def do_similar(name: str, image_id: float | None, n: int = 12):
        if image_id is None or image_id < 0:
            raise StudioError("Select a result in the gallery first, then “Find similar”.")
        with studio.job("searching") as model, studio.open_index(name) as index:
            return shown(similar_images(index, model, int(image_id), k=int(n)), name)

    cancel.click(lambda name: studio.cancel(f"build {(name or '').strip()}"), new_name, None,
                 api_name=False, queue=False)
    with_cancel(build_button, cancel, do_build, [new_name, files, folder], [build_notes, index_name],
                emptied=[build_notes], api_name="build_index", concurrency_id=MODEL_QUEUE,
                show_progress_on=build_notes)  # beside its button
    # an error about the index chosen before ("choose an index", "no index named …") goes with it
    index_name.change(lambda shown: "" if (shown or "").startswith("⛔") else gr.skip(), search_notes, search_notes,
                      api_name=False, queue=False)
    text_inputs = [index_name, query, k, min_score, path_filter]
    results = [gallery, search_notes, shown_ids]
    # after new results nothing is selected; an open preview would show whichever result took its place: closed
    unselect = {"fn": lambda: (None, "Select a result to find images like it.", gr.Gallery(selected_index=None)),
                "inputs": None, "outputs": [selected_id, selection_note, gallery], "api_name": False, "queue": False}
    text_button.click(do_search_text, text_inputs, results, api_name="search_text", **SERVE).then(**unselect)
    query.submit(do_search_text, text_inputs, results, api_name=False, **SERVE).then(**unselect)
    image_button.click(do_search_image, [index_name, query_image, image_weight, query, k, min_score, path_filter],
                       results, api_name="search_image", **SERVE).then(**unselect)
    gallery.select(do_select, shown_ids, [selected_id, selection_note], api_name=False, queue=False)
    similar_button.click(do_similar, [index_name, selected_id, k], results, api_name="find_similar",
                         **SERVE).then(**unselect)
    return index_name


def _rank_and_equal_widths(columns: int) -> list[str]:
    """A narrow rank column and equal shares for the rest: a narrow window's table fits its box (its long file
    names break, ui.CSS), where the widths Gradio measured from the names made it scroll sideways."""
    return ["9%"] + [f"{91 / columns:.2f}%"] * columns


def _build_compare(studio: Studio) -> gr.Dropdown:
    with gr.Accordion("Compare languages", open=False):
        with gr.Row():
            with gr.Column(scale=1):
                index_name = index_dropdown(studio, "Index to compare in", "compare-index")
                languages = gr.Textbox(label="The same query in several languages, one per line", lines=4,
                                       value="a dog on the beach\nun chien sur la plage\nein Hund am Strand\n海滩上的狗")
                k = gr.Slider(1, 24, value=6, step=1, label="Results per language (k)")
                compare_button = gr.Button("Compare", variant="primary")
                compare_notes = gr.Markdown(elem_id="compare-notes", elem_classes=JOB_NOTES)
            with gr.Column(scale=3, min_width=560):  # under the form in a narrow window, not squeezed beside it
                compare_gallery = gr.Gallery(label="Top results, one row per language", columns=6, height=460,
                                             elem_id="compare-gallery")
                overlap_table = gr.Dataframe(label="Overlap of the top-k between languages (shared results / k)",
                                             headers=["query"], interactive=False, wrap=True)
                compare_table = gr.Dataframe(label="Top results per language (file names)", headers=["rank"],
                                             interactive=False, wrap=True, elem_id="compare-table")

    @gpu  # (on an error the tables lose the last comparison's headers too, not only its rows)
    @shown_in_place("clear", lambda: gr.Dataframe([], headers=["query"]), lambda: gr.Dataframe([], headers=["rank"]),
                    "notes")
    def do_compare(name: str, lines: str, n: int = 6):
        queries = [line.strip() for line in (lines or "").splitlines() if line.strip()]
        with studio.job("comparing queries") as model, studio.open_index(name) as index:
            comparison = compare_queries(index, model, queries, int(n), readable=studio.readable)
        top = [[Path(h.path).name for h in r.hits] for r in comparison.results]
        depth = max(len(t) for t in top)
        rows = [[rank + 1] + [t[rank] if rank < len(t) else "" for t in top] for rank in range(depth)]
        headers = [short_text(query, 24) for query in queries]  # a long query is not echoed back whole
        overlap = [[h] + [f"{share:.2f}" for share in row] for h, row in zip(headers, comparison.overlap)]
        thumbnails = []  # each language's top-k fills one row of the gallery (as many columns as results)
        for query, result in zip(queries, comparison.results):
            row = [(thumbnail(h.path), f"{short_text(query, 24)} #{rank}\n{Path(h.path).name}")
                   for rank, h in enumerate(result.hits, start=1)]
            thumbnails += [item for item in row if item[0] is not None]
        return (gr.Gallery(thumbnails, columns=max(depth, 1)), gr.Dataframe(overlap, headers=["query"] + headers),
                gr.Dataframe(rows, headers=["rank"] + headers, column_widths=_rank_and_equal_widths(len(headers))),
                studio.notes(list(dict.fromkeys(w for result in comparison.results for w in result.warnings))))

    compare_button.click(do_compare, [index_name, languages, k],
                         [compare_gallery, overlap_table, compare_table, compare_notes],
                         api_name="compare_languages", concurrency_id=MODEL_QUEUE, show_progress_on=compare_notes)
    return index_name

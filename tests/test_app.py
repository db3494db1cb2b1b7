"""The app, launched for real on a free port with a generated model, driven through gradio_client."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from apphost import AppProcess
from conftest import random_image

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("allowed")
    folder = root / "photos"
    folder.mkdir()
    for i in range(8):
        random_image(100 + 10 * i, 150, seed=300 + i).save(folder / f"photo {i}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def app(tmp_path_factory, photo_root):
    index_dir = tmp_path_factory.mktemp("app-indexes")
    host = AppProcess("--test-model", "--index-dir", str(index_dir), "--allowed-root", str(photo_root))
    yield host
    host.stop()


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


def test_api_names_are_published(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    for name in ("/classify", "/label_batch", "/build_index", "/search_text", "/search_image", "/explore",
                 "/load_model", "/load_test_model", "/compare_languages", "/export_labels"):
        assert name in names


def test_classify(client, photo_root):
    scores, notes = client.predict(handle_file(str(photo_root / "photos" / "photo 0.jpg")), "cat, dog, Hund",
                                   "{}", api_name="/classify")
    confidences = {c["label"]: c["confidence"] for c in scores["confidences"]}
    assert set(confidences) == {"cat", "dog", "Hund"}
    assert all(0 < p < 1 for p in confidences.values())
    assert "Untrained test model" in notes


def test_classify_bad_input_is_a_clear_message(client, photo_root, tmp_path):
    def error_of(*inputs) -> str:
        """Errors replace the result in place: no scores, the message in the notes."""
        scores, notes = client.predict(*inputs, api_name="/classify")
        assert not scores and notes.startswith("⛔")
        return notes

    assert "No labels" in error_of(handle_file(str(photo_root / "photos" / "photo 0.jpg")), " , ", "{}")
    text_file = tmp_path / "notes.png"
    text_file.write_text("hello")
    assert "not an image" in error_of(handle_file(str(text_file)), "cat", "{}")
    assert "exactly once" in error_of(handle_file(str(photo_root / "photos" / "photo 0.jpg")), "cat", "a photo")


def test_label_batch_and_exports(client, photo_root):
    table, notes, exports = client.predict(None, str(photo_root / "photos"), "cat\ndog\ncar", "{}", 0.0, "multi",
                                              api_name="/label_batch")
    rows = table["data"]
    assert len(rows) == 8 and all(row[1] for row in rows)  # threshold 0: every label assigned
    assert "broken.jpg" in notes and "Untrained" in notes
    by_name = {Path(p).name: p for p in exports}
    with open(by_name["labels.csv"], encoding="utf-8") as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == ["image", "labels", "p(cat)", "p(dog)", "p(car)"] and len(lines) == 9
    records = [json.loads(line) for line in open(by_name["labels.jsonl"], encoding="utf-8")]
    assert len(records) == 8 and records[0]["untrained"] is True
    with zipfile.ZipFile(by_name["imagefolder.zip"]) as archive:
        folders = {name.split("/")[0] for name in archive.namelist()}
    assert folders == {"cat", "dog", "car"}
    edited = {"headers": table["headers"], "data": [[row[0], "dog" if i == 0 else row[1], row[2]]
                                                    for i, row in enumerate(rows)]}
    exports, notes = client.predict(edited, api_name="/export_labels")
    assert "Exported 8 image(s)" in notes and "New labels" not in notes
    typo = {"headers": table["headers"], "data": [[row[0], "cat, dog" if i == 0 else row[1], row[2]]
                                                  for i, row in enumerate(rows)]}
    *_, notes = client.predict(typo, api_name="/export_labels")  # a comma where ; separates: said, not hidden
    assert "New labels, not among those scored: 'cat, dog' (labels in a cell are separated by ;)" in notes
    with open({Path(p).name: p for p in exports}["labels.csv"], encoding="utf-8") as handle:
        assert list(csv.reader(handle))[1][1] == "dog"
    shuffled = {"headers": table["headers"], "data": list(reversed(edited["data"]))}
    exports, notes = client.predict(shuffled, api_name="/export_labels")
    assert exports == {"__type__": "update"}  # the earlier exports stay as they were, still valid
    assert notes.startswith("⛔") and "no longer match" in notes


def test_uploads_keep_their_own_names(client, tmp_path):
    uploads = []
    for i, name in enumerate(["beach day.jpg", "Straße 2.png", "other/beach day.jpg"]):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        random_image(90, 120, seed=40 + i).save(tmp_path / name)
        uploads.append(handle_file(str(tmp_path / name)))
    uploads.append(handle_file(str(tmp_path / "beach day.jpg")))  # the same file again: labelled once, said
    table, notes, exports = client.predict(uploads, "", "cat, dog", "{}", 0.0, "single", api_name="/label_batch")
    # two uploads of one name are told apart the same way in the table and in every export
    names = ["beach day.jpg", "Straße 2.png", "beach day_1.jpg"]
    assert [row[0] for row in table["data"]] == names
    assert "Threshold 0, single-label: 3 of 3 image(s) labelled" in notes
    assert "- beach day.jpg: uploaded 2 times (the same file), labelled once" in notes  # a notice, not a ⛔
    assert "- beach day.jpg (another image of that name) shown as **beach day_1.jpg**" in notes
    by_name = {Path(p).name: p for p in exports}
    with open(by_name["labels.csv"], encoding="utf-8") as handle:
        assert [row[0] for row in list(csv.reader(handle))[1:]] == names
    records = [json.loads(line) for line in open(by_name["labels.jsonl"], encoding="utf-8")]
    assert [r["image"] for r in records] == names
    with zipfile.ZipFile(by_name["imagefolder.zip"]) as archive:
        assert sorted(Path(n).name for n in archive.namelist() if not n.endswith("/")) == sorted(names)


def test_rethresholding_does_not_encode_again(naflex_model, photo_root, tmp_path):
    from app.studio import Studio
    from app.tab_label import label_images

    studio = Studio(index_dir=tmp_path, allowed_roots=[photo_root])
    studio.model = naflex_model
    batch = label_images(studio, [], str(photo_root / "photos"), "cat, dog, car", "{}")
    calls = []
    vision = naflex_model.model.vision_model
    hook = vision.register_forward_hook(lambda *args: calls.append(1))  # counts real forward passes
    try:
        strict, loose = batch.assign(0.99, "single"), batch.assign(0.0, "multi")
        assert all(len(a.labels) == 3 for a in loose) and all(len(a.labels) <= 1 for a in strict)
        assert {a.export_name for a in loose} == {f"photo {i}.jpg" for i in range(8)}
    finally:
        hook.remove()
    assert calls == []


def test_folder_outside_allowed_roots_refused(client, tmp_path):
    table, notes, exports = client.predict(None, str(tmp_path), "cat", "{}", 0.5, "multi", api_name="/label_batch")
    assert not table["data"] and not exports and "outside the folders" in notes
    notes, _ = client.predict("etc", None, "/etc", api_name="/build_index")
    assert notes.startswith("⛔") and "outside the folders" in notes


def test_build_search_and_explore(client, photo_root, tmp_path):
    summary, choice = client.predict("trip", None, str(photo_root / "photos"), api_name="/build_index")
    assert "8 encoded" in summary and "broken.jpg" in summary and choice["value"] == "trip"
    gallery, notes = client.predict("trip", "ein Hund am Strand", 5, -1, "", api_name="/search_text")
    assert len(gallery) == 5 and "cos" in gallery[0]["caption"] and "Untrained" in notes
    gallery, notes = client.predict("trip", handle_file(str(photo_root / "photos" / "photo 3.jpg")), 1.0, "", 3, -1,
                                    "", api_name="/search_image")
    assert gallery[0]["caption"].startswith("photo 3.jpg")
    combined, _ = client.predict("trip", handle_file(str(photo_root / "photos" / "photo 3.jpg")), 1.0,
                                 "0.5:sunset - night", 3, -1, "", api_name="/search_image")
    assert len(combined) == 3
    (tmp_path / "fake.jpg").write_bytes(b"not a picture")
    gallery, notes = client.predict("trip", handle_file(str(tmp_path / "fake.jpg")), 1.0, "", 3, -1, "",
                                    api_name="/search_image")
    assert not gallery and notes.startswith("⛔ Query image fake.jpg: not an image"), notes  # not its upload path
    figure, notes, nearest = client.predict("trip", "cluster", 3, "", "a dog", 20000, api_name="/explore")
    assert "UMAP" in notes or "PCA" in notes
    assert figure["plot"] and len(nearest) > 0
    gallery, notes = client.predict("missing", "cat", 5, -1, "", api_name="/search_text")
    assert not gallery and "No index named" in notes
    thumbnails, overlap, table, _ = client.predict("trip", "a dog\nun chien", 4, api_name="/compare_languages")
    assert overlap["headers"] == ["query", "a dog", "un chien"]
    thumbnails = thumbnails["value"]
    assert len(thumbnails) == 8 and thumbnails[0]["caption"].startswith("a dog #1\n")  # a row of 4 per language


def test_uploads_build_an_index(client, tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"up{i}.png"
        random_image(64, 64, seed=i).save(path)
        paths.append(handle_file(str(path)))
    other = tmp_path / "elsewhere" / "up0.png"  # another picture with the same name
    other.parent.mkdir()
    random_image(64, 64, seed=9).save(other)
    summary, choice = client.predict("uploaded", paths + [handle_file(str(other))], "", api_name="/build_index")
    assert "4 encoded" in summary and choice["value"] == "uploaded"
    assert "up0.png stored as **up0_1.png**" in summary  # kept beside the first, not written over it
    again, _ = client.predict("uploaded", [handle_file(str(other)), paths[1]], "", api_name="/build_index")
    assert "0 encoded" in again and "4 unchanged" in again  # the same files again: found under their names
    assert "up0.png stored as **up0_1.png**" in again and again.count("stored as") == 1
    notes, _ = client.predict("../escape", paths, "", api_name="/build_index")
    assert "not allowed" in notes


def test_app_starts_without_a_model(tmp_path, naflex_model):
    from engine.index.build import build_index
    from test_index import make_folder

    make_folder(tmp_path / "photos", count=2)
    build_index(naflex_model, tmp_path / "photos", "older", tmp_path / "indexes")  # another model's
    host = AppProcess("--model", "google/siglip2-base-patch16-naflex", "--index-dir", str(tmp_path / "indexes"),
                      env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    try:
        client = Client(host.url, verbose=False)
        example = handle_file(str(Path(__file__).parents[1] / "assets/examples/cat.jpg"))
        assert "No model is loaded" in client.predict(example, "cat", "{}", api_name="/classify")[1]
        assert "No model is loaded" in client.predict("any", "cat", 5, -1, "", api_name="/search_text")[1]
        summary, notes = client.predict("/no/such/checkpoint", "", "auto", "auto", 256, api_name="/load_model")
        assert "no such model folder" in notes and summary == {"__type__": "update"}  # left as it was
        summary, notes = client.predict(api_name="/load_test_model")  # the Dtype dropdown's value: auto
        assert notes.startswith("1 index here needs another model to be searched: older (built with ")
        assert "Untrained test model" in summary and "cpu, fp32" in summary
        summary, _ = client.predict("int8", api_name="/load_test_model")
        assert "cpu, int8" in summary
        scores, _ = client.predict(example, "a cat, a rocket launch", "this is a photo of {}.",
                                   api_name="/classify")
        assert len(scores["confidences"]) == 2
    finally:
        host.stop()
    assert "starting without a model" in host.output()


def test_result_thumbnails_are_served_from_their_folder(app, photo_root):
    """Thumbnails go out from where they were written whole (not hashed and copied into Gradio's cache for
    every result shown), and open as images."""
    import io
    import urllib.request

    from PIL import Image

    from app.common import THUMBNAILS

    light = Client(app.url, verbose=False, download_files=False)
    light.predict("thumbs", None, str(photo_root / "photos"), api_name="/build_index")
    gallery, _ = light.predict("thumbs", "a dog", 3, -1, "", api_name="/search_text")
    assert len(gallery) == 3
    for item in gallery:
        served = Path(item["image"]["path"])
        assert served.parent == THUMBNAILS.resolve(), served
        with urllib.request.urlopen(item["image"]["url"], timeout=10) as response:
            assert Image.open(io.BytesIO(response.read())).size[0] <= 256


def test_never_serves_files_outside_its_folders(app):
    import urllib.error
    import urllib.request

    from app.common import THUMBNAILS

    THUMBNAILS.mkdir(parents=True, exist_ok=True)
    escape = THUMBNAILS / "escape.jpg"
    escape.unlink(missing_ok=True)
    escape.symlink_to("/etc/passwd")
    try:
        for path in ("/etc/passwd", str(Path(__file__).resolve()), f"{THUMBNAILS}/../../etc/passwd", str(escape)):
            for route in ("gradio_api/file=", "file="):
                with pytest.raises(urllib.error.HTTPError) as caught:
                    urllib.request.urlopen(app.url + route + path, timeout=10)
                assert caught.value.code in (403, 404)
    finally:
        escape.unlink()


def test_model_switch_during_a_job_is_refused(tmp_path, naflex_dir):
    from app.studio import Studio
    from engine import StudioError

    studio = Studio(index_dir=tmp_path, allowed_roots=[tmp_path])
    with pytest.raises(StudioError, match="No model is loaded"):
        with studio.job("labelling"):
            pass
    studio.load(str(naflex_dir))
    with studio.job("labelling images"):
        with pytest.raises(StudioError, match="Model switch refused.*labelling images"):
            studio.load(str(naflex_dir))
    studio.load(str(naflex_dir))  # allowed again once the job is over


def test_sequence_length_setting(client):
    summary, _ = client.predict(576, api_name="/set_max_patches")
    assert "NaFlex, 576 patches" in summary
    summary, notes = client.predict(5, api_name="/set_max_patches")
    assert "between 16 and 4096" in notes
    client.predict(256, api_name="/set_max_patches")


def test_cancelled_build_keeps_what_it_stored(naflex_model, tmp_path):
    from app.common import JobCancelled, index_choices
    from app.studio import Studio
    from app.tab_search import build_cancellably
    from engine.index.store import ImageIndex
    from test_index import make_folder

    studio = Studio(index_dir=tmp_path / "indexes", allowed_roots=[tmp_path])
    studio.model = naflex_model
    make_folder(tmp_path / "photos", count=40)
    make_folder(tmp_path / "older", count=2)
    build_cancellably(studio, "older", tmp_path / "older", lambda done, total: None)

    def press_cancel_at_file_35(done: int, total: int) -> None:
        if done == 35:
            studio.cancel("build trip")

    with pytest.raises(JobCancelled, match="^Cancelled: the build of 'trip' stopped after 36 of 40"):
        build_cancellably(studio, "trip", tmp_path / "photos", press_cancel_at_file_35)
    with ImageIndex.open("trip", studio.index_dir) as index:
        stored = index.info().images
    assert stored == 32  # the batch of 32 committed before the cancel is kept, the rest was never stored
    assert not studio.running_jobs  # the model is free again
    # a fresh page lists it as unfinished and chooses the latest finished index, not the cut one
    assert index_choices(studio.index_dir) == ([("older", "older"), ("trip (unfinished build)", "trip")], "older")
    summary = build_cancellably(studio, "trip", tmp_path / "photos", lambda done, total: None)
    assert summary.encoded == 40 - stored and summary.images == 40
    assert index_choices(studio.index_dir) == ([("older", "older"), ("trip", "trip")], "trip")
    # oldest first: a new index joins at the end, so that a list refreshed while open (Gradio keeps its tick on
    # the same row) does not tick another index than the one chosen
    build_cancellably(studio, "alpha", tmp_path / "older", lambda done, total: None)
    assert index_choices(studio.index_dir) == ([("older", "older"), ("trip", "trip"), ("alpha", "alpha")], "alpha")
    # another model loaded: the indexes it cannot search are marked, and one it can search is preselected
    from engine.index.build import build_index
    from engine.model.loading import load_model
    from engine.model.testmodel import make_test_model

    other = load_model(str(make_test_model(tmp_path / "other", arch="naflex", seed=5)), device="cpu", dtype="fp32")
    build_index(other, tmp_path / "older", "mine", studio.index_dir)
    choices, latest = index_choices(studio.index_dir, other)
    assert choices == [("older (built with another model)", "older"), ("trip (built with another model)", "trip"),
                       ("alpha (built with another model)", "alpha"), ("mine", "mine")] and latest == "mine"


@pytest.mark.parametrize("deployment", [None, "7"])
def test_request_bookkeeping_is_not_redone_per_request(monkeypatch, tmp_path, deployment):
    """Gradio's monitoring summary (a pandas frame of past events, rebuilt on the serving event loop) is
    refreshed every 100 events over the last 1,000, not after each over 10,000; a deployment's value wins."""
    from app.studio import Studio
    from app.ui import build_app

    for name in ("GRADIO_ANALYTICS_CACHE_FREQUENCY", "GRADIO_ANALYTICS_MAX_EVENTS"):
        monkeypatch.setenv(name, deployment or "")  # recorded, so that the test leaves the environment as it was
        if deployment is None:
            monkeypatch.delenv(name)
    queue = build_app(Studio(index_dir=tmp_path, allowed_roots=[tmp_path]))._queue
    expected = (7, 7) if deployment else (100, 1000)
    assert (queue.ANAYLTICS_CACHE_FREQUENCY, queue.ANALYTICS_MAX_EVENTS) == expected


def test_a_new_visitor_does_not_describe_every_component(tmp_path):
    """Gradio described all ~200 components (20 ms on the serving event loop) for each new session; here a
    session describes what it changes, and the deep-link route still gets every component."""
    import gradio as gr
    from gradio.state_holder import StateHolder

    from app.studio import Studio
    from app.ui import build_app

    demo = build_app(Studio(index_dir=tmp_path, allowed_roots=[tmp_path]))
    holder = StateHolder()
    holder.set_blocks(demo)
    session = holder["a-new-visitor"]
    assert session.config_values == {}
    textbox = next(block for block in demo.blocks.values() if isinstance(block, gr.Textbox))
    session[textbox._id] = textbox  # what a request that updates the textbox does
    assert list(session.config_values) == [textbox._id]
    described = {config["id"] for config in session.components}
    assert described == set(demo.blocks) and len(described) > 100


def test_a_long_file_name_is_cut_in_the_middle_of_its_caption():
    """Result captions keep a file name's end (what tells photos of one day apart, and the extension); the
    selection note below the gallery gives the whole name."""
    from app.tab_search import CAPTION_NAME, hit_caption
    from engine.index.search import SearchHit

    long = "/photos/2024-07-13 Family holiday in Brittany, day 3 (IMG_4022) coffee.jpg"
    name_line, scores = hit_caption(SearchHit(long, [long], 0.1234, 0.0004, 7, 640, 480)).split("\n")
    assert len(name_line) == CAPTION_NAME and "…" in name_line
    assert name_line.startswith("2024-07-13 Family holi") and name_line.endswith("(IMG_4022) coffee.jpg")
    assert scores == "cos 0.123 · p 0.000"
    short = "/photos/cat.jpg"
    assert hit_caption(SearchHit(short, [short], 0.5, 0.2, 1, 64, 64)).startswith("cat.jpg\n")


def test_long_jobs_show_their_progress_beside_their_button(tmp_path):
    """A long job's progress shows in the notes under the button that started it, not over its results, the
    form's fields or the index list (a build's covered the index to search, a fine-tune's three boxes)."""
    from app.studio import Studio
    from app.ui import build_app

    index_dir = tmp_path / "indexes"
    config = build_app(Studio(index_dir=index_dir, allowed_roots=[tmp_path], enable_training=True)).get_config_file()
    elem_ids = {component["id"]: component.get("props", {}).get("elem_id") for component in config["components"]}
    shown_on = {event["api_name"]: [elem_ids[i] for i in event.get("show_progress_on") or []]
                for event in config["dependencies"] if event.get("api_name")}
    assert {name: shown_on[name] for name in ("label_batch", "build_index", "compare_languages", "fine_tune",
                                              "resume_fine_tune", "explore")} == {
        "label_batch": ["batch-notes"], "build_index": ["build-notes"], "compare_languages": ["compare-notes"],
        "fine_tune": ["train-status"], "resume_fine_tune": ["train-status"], "explore": ["explore-notes"]}


def test_a_typed_threshold_applies_and_a_failed_comparison_leaves_no_stale_headers(tmp_path):
    """The threshold re-applies on any change (typed into its box and Enter: only letting the slider go did);
    a comparison that fails empties its tables down to their first headers (the last queries stood over
    empty rows), made when it fails: made with the layout, they stood in it as two empty unlabelled tables."""
    import gradio as gr

    from app.common import shown_in_place
    from app.studio import Studio
    from app.ui import build_app

    demo = build_app(Studio(index_dir=tmp_path, allowed_roots=[tmp_path]))
    unlabelled = [b for b in demo.blocks.values()
                  if isinstance(b, (gr.Dataframe, gr.Gallery, gr.Image, gr.Plot, gr.File)) and not b.label]
    assert not unlabelled
    with pytest.raises(ValueError, match="clearr"):  # a misspelt word fails when the tab is built, not silently
        shown_in_place("clearr", "notes")
    threshold = next(b for b in demo.blocks.values() if getattr(b, "label", None) == "Probability threshold")
    assert any(f.fn and f.fn.__name__ == "do_reassign" and (threshold._id, "change") in f.targets
               for f in demo.fns.values())
    handlers = {f.fn.__name__: f.fn for f in demo.fns.values() if f.fn is not None}
    gallery, overlap, table, notes = handlers["do_compare"]("no such index", "a dog\nun chien", 3)
    assert notes.startswith("⛔") and gallery is None
    assert (overlap.value, table.value) == ({"headers": ["query"], "data": [], "metadata": None},
                                            {"headers": ["rank"], "data": [], "metadata": None})


def test_a_map_says_when_its_colours_are_stale_and_when_its_index_is_unfinished(naflex_model, tmp_path):
    import gradio as gr

    from app.studio import Studio
    from app.tab_explore import recolour_form
    from app.ui import build_app
    from engine.index.build import build_index
    from engine.index.store import ImageIndex

    _, _, notes = recolour_form("zero-shot label", "cluster", "UMAP map of all 9 images in trip.")
    assert notes == ("UMAP map of all 9 images in trip.\n\nThe map keeps its colouring (cluster) until it is drawn "
                     "again (“Draw map”).")
    assert recolour_form("zero-shot label", "cluster", notes)[2] == notes  # said once, however often
    assert recolour_form("cluster", "cluster", notes)[2] == "UMAP map of all 9 images in trip."  # as drawn again
    assert recolour_form("cluster", None, "")[2] == gr.skip()  # no map yet: nothing to say
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        random_image(80, 90 + 10 * i, seed=i).save(folder / f"p{i}.png")
    build_index(naflex_model, folder, "trip", tmp_path / "indexes")
    with ImageIndex.open("trip", tmp_path / "indexes", writable=True) as index:
        index.mark_finished(False)  # as a cancelled build leaves it
    studio = Studio(index_dir=tmp_path / "indexes", allowed_roots=[tmp_path])
    studio.model = naflex_model
    demo = build_app(studio)
    handlers = {f.fn.__name__: f.fn for f in demo.fns.values() if f.fn is not None}
    _, notes, _, drawn_from, drawn_by = handlers["do_explore"]("trip", "cluster", 2, "", "", 500)
    assert "its last build has not finished" in notes and (drawn_from, drawn_by) == ("trip", "cluster")
    # a colouring changed while the map drew is said once the drawing's notes are written, not lost under them
    explore = next(i for i, f in demo.fns.items() if f.api_name == "explore")
    assert any(f.fn is recolour_form and f.trigger_after == explore for f in demo.fns.values())


def test_a_build_lists_its_renamed_uploads_up_to_a_point():
    from app.tab_search import RENAMES_SHOWN, build_summary_text
    from engine.index.build import BuildSummary

    renamed = [(f"IMG_{i:04d}.jpg", f"IMG_{i:04d}_1.jpg") for i in range(RENAMES_SHOWN + 5)]
    text = build_summary_text(BuildSummary(name="trip", folder="/x", index_type="Flat"), renamed)
    assert text.count("stored as") == RENAMES_SHOWN and "…and 5 more uploads stored under another name" in text
    assert "searched exactly (FAISS `Flat`)" in text  # not a bare "Flat"
    assert "IMG_0000.jpg stored as **IMG_0000_1.jpg**" in text


def test_a_cancelled_map_leaves_no_map_and_says_so(tmp_path):
    """Cancel ends the map's event before its own clean-up runs: Cancel's handler clears the previous map, its
    clicked point and selection, and says what happened (the old map stayed, under a stale note)."""
    from app.studio import Studio
    from app.ui import build_app

    demo = build_app(Studio(index_dir=tmp_path, allowed_roots=[tmp_path]))
    stop = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "cancel-map")
    [handler] = [f for f in demo.fns.values() if f.fn and any(t[0] == stop._id for t in f.targets)]
    shown = {getattr(block, "elem_id", None): value for block, value in zip(handler.outputs, handler.fn())}
    assert shown["explore-notes"] == "Cancelled: no map drawn."
    assert shown["explore-map"] is None and shown["explore-picked"] is None and shown["explore-card"] == ""
    assert shown["explore-selected"] == "" and shown["explore-clicked"] == ""
    assert not shown["explore-gallery"].value


def test_edited_label_cells_and_a_new_threshold_keep_what_labelling_said(naflex_model, photo_root, tmp_path):
    """A cell's labels split at ; (each once, whatever its case); re-thresholding says again which files were
    skipped (its note replaced the labelling's, and the skipped files went unmentioned)."""
    from app.studio import Studio
    from app.tab_label import cell_labels
    from app.ui import build_app

    assert cell_labels("  ;;rocket ; Rocket;a, b") == ["rocket", "a, b"] and cell_labels(None) == []
    studio = Studio(index_dir=tmp_path / "indexes", allowed_roots=[photo_root])
    studio.model = naflex_model
    demo = build_app(studio)
    handlers = {f.fn.__name__: f.fn for f in demo.fns.values() if f.fn is not None}
    _, labelled, _, batch = handlers["do_label_batch"](None, str(photo_root / "photos"), "cat, dog", "{}", 0.5,
                                                       "multi")
    assert "broken.jpg" in labelled
    _, _, rethresholded = handlers["do_reassign"](batch, 0.0, "single")
    assert rethresholded.startswith("Threshold 0, single-label: 8 of 8 image(s) labelled (no re-encoding).")
    assert "⛔ broken.jpg" in rethresholded


def test_a_cancel_is_said_plainly_and_an_error_with_its_mark():
    from app.common import JobCancelled, shown_in_place
    from engine import StudioError

    @shown_in_place("notes", "clear")
    def stopped():
        raise JobCancelled("Cancelled: the build of 'trip' stopped after 3 of 9 files.")

    @shown_in_place("notes", "clear")
    def failed():
        raise StudioError("trip.jpg: truncated JPEG")

    assert stopped() == ("Cancelled: the build of 'trip' stopped after 3 of 9 files.", None)
    assert failed() == ("⛔ trip.jpg: truncated JPEG", None)

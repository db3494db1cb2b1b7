"""Hostile input through the app's HTTP API: every path-taking input keeps to the allowed roots (symlinks
followed), whatever the spelling; nothing says whether a file outside exists."""

from __future__ import annotations

import os
import shutil

import pytest
from gradio_client import Client

from apphost import ROOT, AppProcess
from conftest import REPORT, random_image

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    root, secret, evil = base / "root", base / "secret", base / "root-evil"
    for folder in (root / "photos", secret, evil):
        folder.mkdir(parents=True)
    for i in range(4):
        random_image(90 + 10 * i, 140, seed=900 + i).save(root / "photos" / f"p{i}.png")
    shutil.copy(root / "photos" / "p2.png", secret / "private.png")  # the same picture, outside the root
    shutil.copy(root / "photos" / "p2.png", evil / "private.png")
    os.symlink(secret / "private.png", root / "link.png")
    os.symlink(secret, root / "linkdir")
    return {"base": base, "root": root, "secret": secret, "evil": evil}


@pytest.fixture(scope="module")
def client(layout, tmp_path_factory):
    app = AppProcess("--test-model", "--index-dir", str(tmp_path_factory.mktemp("indexes")),
                     "--allowed-root", str(layout["root"]))
    try:
        client = Client(app.url, verbose=False)
        summary, _ = client.predict("photos", None, str(layout["root"] / "photos"), api_name="/build_index")
        assert "4 encoded" in summary
        yield client
    finally:
        app.stop()


def top_score(client, query: str) -> tuple[float, str]:
    gallery, notes = client.predict("photos", query, 1, -1, "", api_name="/search_text")
    caption = gallery[0]["caption"]
    return float(caption.split("cos ")[1].split()[0]), notes


def test_query_terms_read_only_images_inside_the_roots(client, layout):
    secret = layout["secret"] / "private.png"
    inside = layout["root"] / "photos" / "p2.png"
    score, notes = top_score(client, str(inside))
    assert score > 0.999  # an image inside the root is an image query: it finds itself
    escapes = {
        "absolute path": str(secret),
        "relative ../ path": os.path.relpath(secret, ROOT),
        "root/../ path": str(layout["root"] / ".." / "secret" / "private.png"),
        "file:// URL": f"file://{secret}",
        "symlink inside the root": str(layout["root"] / "link.png"),
        "sibling root-evil": str(layout["evil"] / "private.png"),
        "weighted term": f"2:{secret}",
        "combined term": f"a red car + 3:{secret}",
        "missing file": str(layout["secret"] / "nothing-here.png"),
    }
    tried = []
    for label, query in escapes.items():
        score, notes = top_score(client, query)
        assert score < 0.99, label  # read as an image it would find its own copy at cos 1.000
        assert "searched as text" in notes and "allowed folders" in notes, label
        tried.append(f"{label}: searched as text (top cos {score:.3f})")
    # an existing and a missing file outside the root are answered alike: no existence oracle
    assert top_score(client, str(layout["secret"] / "nothing-here.png"))[1].split("searched as text")[1] == \
        top_score(client, str(secret))[1].split("searched as text")[1]
    REPORT["path escapes tried through /search_text"] = tried


@pytest.mark.parametrize("spelling", ["root/../secret", "sibling root-evil", "symlinked folder", "file:// URL",
                                      "missing folder outside"])
def test_server_folders_stay_inside_the_roots(client, layout, spelling):
    folder = {"root/../secret": f"{layout['root']}/../secret", "sibling root-evil": str(layout["evil"]),
              "symlinked folder": str(layout["root"] / "linkdir"), "file:// URL": f"file://{layout['secret']}",
              "missing folder outside": str(layout["base"] / "nowhere")}[spelling]
    _, notes, _ = client.predict(None, folder, "cat", "{}", 0.5, "multi", api_name="/label_batch")
    assert "outside the folders this server allows" in notes
    notes, _ = client.predict("escape", None, folder, api_name="/build_index")
    assert "outside the folders this server allows" in notes
    REPORT.setdefault("server-folder escapes refused (/label_batch, /build_index)", []).append(spelling)


TEXTS = {
    "empty": "",
    "whitespace": "   \n\t ",
    "100 kB query": "a very long query " * 5_700,
    "control characters": "a dog\x00\x07\x1b[31m on a beach\x7f",
    "right-to-left": "كلب على الشاطئ",
    "emoji": "🐶 🏖️ 🌅",
    "mixed scripts": "ein Hund 海滩上的狗 собака on the beach",
}


def test_hostile_text_queries(client):
    import time

    handled = []
    for label, text in TEXTS.items():
        start = time.monotonic()
        gallery, notes = client.predict("photos", text, 3, -1, "", api_name="/search_text")
        seconds = time.monotonic() - start
        assert seconds < 60 and len(notes) < 2_000, label  # bounded work, nothing echoed at length
        if label in ("empty", "whitespace"):
            assert not gallery and "Empty query" in notes
        else:
            assert len(gallery) == 3, label
        if label == "100 kB query":
            assert "truncated to 64 tokens" in notes
        handled.append(f"{label} ({len(text):,} chars): {'refused' if not gallery else 'searched'}, "
                       f"{seconds:.1f} s, notes {len(notes)} chars")
    REPORT["hostile text queries (/search_text)"] = handled


def test_hostile_label_sets(client, layout):
    from gradio_client import handle_file

    image = handle_file(str(layout["root"] / "photos" / "p0.png"))
    scores, notes = client.predict(image, ", ".join(f"label {i}" for i in range(10_000)), "{}", api_name="/classify")
    assert not scores and "more than the limit of 1000" in notes and len(notes) < 500
    many = "\n".join(["a cat"] * 50 + ["x" * 500] * 40)  # duplicates and over-long labels, warned once each kind
    scores, notes = client.predict(image, many, "{}", api_name="/classify")
    assert len(scores["confidences"]) == 2
    assert notes.count("truncated to 64 tokens") == 1 and notes.count("duplicate") == 1  # grouped, once each
    assert "and 85 more: duplicate" in notes and len(notes) < 1_500  # 49 + 39 duplicates, three named
    REPORT["hostile label sets (/classify)"] = ["10,000 labels: refused with the limit named",
                                                "90 labels (49 duplicates, 40 over 64 tokens): 2 labelled, one "
                                                f"truncation warning, notes {len(notes)} chars"]

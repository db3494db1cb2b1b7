"""The label tab's examples: computed once per loaded model, forgotten when the model changes."""

import shutil

import pytest

from app.studio import Studio
from app.tab_label import (DEFAULT_TEMPLATE, EXAMPLE_LABELS, EXAMPLE_PHOTOS, EXAMPLE_TEMPLATES, by_language,
                           cache_examples, classify_one, example_result, example_rows)

pytestmark = pytest.mark.filterwarnings("ignore")


def test_example_results_are_cached_per_model(tmp_path):
    studio = Studio(index_dir=tmp_path, allowed_roots=[tmp_path])
    studio.load_test_model("naflex")
    rows = example_rows()
    assert len(rows) >= 3 and cache_examples(studio) == len(rows) == len(studio.example_results)

    image, labels, template = rows[0]
    copy = tmp_path / "gradio copy.png"  # Gradio hands the handler a copy of the example file
    shutil.copy(image, copy)
    cached = example_result(studio, str(copy), labels, template)
    assert len(studio.example_results) == len(rows)  # found by content, not recomputed
    assert cached == classify_one(studio, image, labels, template)
    assert "Untrained test model" in cached[1]

    studio.set_max_patches(64)  # another sequence length: other results
    assert studio.example_results == {}
    assert example_result(studio, image, labels, template)[0] != cached[0]
    studio.set_max_patches(256)
    assert example_result(studio, image, labels, template) == cached and studio.example_results

    studio.load_test_model("fixed")
    assert studio.example_results == {}
    switched = example_result(studio, image, labels, template)
    assert switched[0].keys() == cached[0].keys() and switched[0] != cached[0]


def test_each_example_is_labelled_in_its_own_language_template_included():
    label_sets, templates = by_language(EXAMPLE_LABELS), by_language(EXAMPLE_TEMPLATES)
    assert set(templates) == set(label_sets) and all("{}" in t for t in templates.values())
    rows = {row[1]: row[2] for row in example_rows()}  # labels → template
    for _, _, language in EXAMPLE_PHOTOS:
        assert rows[label_sets[language]] == templates[language]
        assert (templates[language] == DEFAULT_TEMPLATE) == (language == "en")  # an Arabic row was in English

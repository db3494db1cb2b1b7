"""Zero-shot scores are SigLIP's sigmoid of the model's own scaled, biased logits."""

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor

from conftest import random_image
from engine.model.encode import encode_texts
from engine.errors import LabelError
from engine.label.zeroshot import classify, clean_labels, parse_labels, prepare_labels
from test_text import independent_reference_ids


def test_logits_equal_transformers_forward(recipe_model):
    images = [random_image(300, 200, 1), random_image(224, 224, 2)]
    labels = ["cat", "dog", "red car"]
    result = classify(recipe_model, images, labels, templates="{}")
    inputs = AutoImageProcessor.from_pretrained(str(recipe_model.directory))(images=images, return_tensors="pt")
    ids = torch.from_numpy(independent_reference_ids(recipe_model.directory, labels))
    with torch.no_grad():
        output = recipe_model.model(input_ids=ids, **inputs)
    np.testing.assert_allclose(result.logits, output.logits_per_image.numpy(), atol=1e-4)
    np.testing.assert_allclose(result.probabilities, torch.sigmoid(output.logits_per_image).numpy(), atol=1e-6)
    assert result.untrained


def test_probabilities_are_independent_and_softmax_is_separate(naflex_model):
    result = classify(naflex_model, [random_image(64, 64)], ["a", "b", "c", "d"], bias=0.0)
    assert not np.isclose(result.probabilities.sum(), 1.0)  # sigmoid, not a distribution
    np.testing.assert_allclose(result.softmax_over_labels().sum(axis=1), 1.0, atol=1e-6)
    shifted = classify(naflex_model, [random_image(64, 64)], ["a", "b", "c", "d"], bias=-5.0)
    np.testing.assert_allclose(result.logits - 5.0, shifted.logits, atol=1e-5)  # the bias slider


def test_template_ensembling_averages_normalised_embeddings(naflex_model):
    templates = ["a photo of {}.", "a drawing of {}."]
    label_set = prepare_labels(naflex_model, ["cat", "dog"], templates)
    each = encode_texts(naflex_model, ["a photo of cat.", "a drawing of cat."]).vectors
    mean = each.mean(axis=0)
    np.testing.assert_allclose(label_set.text_vectors[0], mean / np.linalg.norm(mean), atol=1e-6)


def test_label_embeddings_computed_once_per_label_set(fixed_model, monkeypatch):
    calls = []
    original = fixed_model.model.get_text_features
    monkeypatch.setattr(fixed_model.model, "get_text_features", lambda **kw: calls.append(1) or original(**kw))
    labels = ["label set reuse one", "label set reuse two"]
    classify(fixed_model, [random_image(50, 50)], labels)
    classify(fixed_model, [random_image(60, 60)], labels)
    assert len(calls) == 1


def test_label_parsing_and_validation():
    assert parse_labels("cat, dog ,car") == ["cat", "dog", "car"]
    assert parse_labels("a, b\nc,\n , ,, ") == ["a, b", "c", ""]  # one per line: commas kept inside a label
    kept, warnings = clean_labels("a cat, un chat, a dog\nstars")
    assert kept == ["a cat, un chat, a dog", "stars"]
    assert any("'a cat, un chat, a dog' is one label" in w for w in warnings), warnings  # said, not silent
    assert clean_labels("\ncat, dog\n") == (["cat", "dog"], [])  # one line of text: commas separate
    kept, warnings = clean_labels(["cat", "  ", "Cat", "dog", "dog"])
    assert kept == ["cat", "dog"]
    duplicates = [w for w in warnings if "duplicate" in w]  # grouped into one warning that names each
    assert any("empty" in w for w in warnings) and len(duplicates) == 1 and "'Cat', 'dog'" in duplicates[0]
    for bad in ([], ["", "  "], ",,"):
        with pytest.raises(LabelError, match="No labels"):
            clean_labels(bad)
    with pytest.raises(LabelError, match="limit"):
        clean_labels([f"label {i}" for i in range(1001)])


def test_template_must_hold_one_placeholder(naflex_model):
    with pytest.raises(LabelError, match="exactly once"):
        prepare_labels(naflex_model, ["cat"], ["a photo"])


def test_non_latin_and_long_labels_warn(naflex_model):
    result = classify(naflex_model, [random_image(32, 32)], ["КОШКА", "word " * 70], templates="{}")
    assert any("ASCII" in w for w in result.warnings)
    assert any("truncated" in w for w in result.warnings)
    assert result.probabilities.shape == (1, 2)


def test_a_cached_label_set_carries_this_inputs_warnings(naflex_model):
    """The embedded labels are cached, the warnings about how they were typed are not: each call gets its own."""
    typed = prepare_labels(naflex_model, "caching, typed\ncache two")
    assert any("is one label" in w for w in typed.warnings)
    as_list = prepare_labels(naflex_model, ["caching, typed", "cache two"])
    assert as_list.text_vectors is typed.text_vectors and as_list.warnings == []  # the same embedding, reused
    with_empty = prepare_labels(naflex_model, "cache three, cache four,")
    assert with_empty.warnings == ["1 empty label(s) ignored"]
    assert prepare_labels(naflex_model, "cache three, cache four").warnings == []

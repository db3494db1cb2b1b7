"""Token ids follow big_vision's `lower | tok(length=64, bos=no, eos=sticky)` whatever the tokenizer says."""

import json
import shutil

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from engine.model.encode import encode_texts
from engine.model.text import TextTokenizer, lowercase_ascii

MULTILINGUAL = [
    "A photo of a CAT",  # Latin
    "Une photo d'un CHAT à l'école",  # Latin with accents
    "ÉCOLE Москва",  # non-ASCII capitals stay capital in the reference
    "Фотография кошки",  # Cyrillic
    "一只猫坐在沙发上",  # Han
    "犬の写真",  # Japanese
    "고양이 사진",  # Hangul
    "صورة قطة",  # Arabic
    "תמונה של חתול",  # Hebrew
    "बिल्ली की तस्वीर",  # Devanagari
    "Γάτα στον καναπέ",  # Greek
    "ภาพแมว",  # Thai
    "a cat 🐱 and a dog 🐶 👨‍👩‍👧",  # emoji incl. ZWJ sequence
    "word " * 80,  # long: truncated
    "长" * 200,  # long CJK
    "",  # empty text still gets its EOS
]


def independent_reference_ids(directory, texts, length=64):
    """The recipe built separately: the checkpoint's raw tokenizer.json, no special tokens, the rest by hand."""
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    eos = tokenizer.token_to_id("<eos>")
    rows = []
    for text in texts:
        lowered = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)
        ids = tokenizer.encode(lowered, add_special_tokens=False).ids[: length - 1] + [eos]
        rows.append(ids + [0] * (length - len(ids)))
    return np.array(rows)


def test_ids_equal_independent_reference_construction(naflex_dir):
    engine_ids = TextTokenizer.from_checkpoint(naflex_dir)(MULTILINGUAL).input_ids
    assert engine_ids.shape == (len(MULTILINGUAL), 64)
    np.testing.assert_array_equal(engine_ids, independent_reference_ids(naflex_dir, MULTILINGUAL))


def test_layout_eos_and_padding(naflex_dir):
    tokenizer = TextTokenizer.from_checkpoint(naflex_dir)
    tokens = tokenizer(["a photo of a cat", "word " * 80])
    short, long = tokens.input_ids
    length = int((short != 0).sum())
    assert short[length - 1] == tokenizer.eos_id  # EOS appended as the last real token
    assert (short[length:] == 0).all()  # right-padded with 0
    assert short[0] != tokenizer.tokenizer.token_to_id("<bos>")
    assert long[-1] == tokenizer.eos_id  # sticky: survives truncation
    assert tokens.truncated == [False, True]
    assert tokens.num_tokens[1] > 64
    assert any("truncated to 64" in w for w in tokens.warnings)


def test_ids_ignore_tokenizer_padding_side_mask_bos_and_lowercasing(naflex_dir, tmp_path):
    """A checkpoint whose tokenizer pads left, adds BOS and lowercases all of Unicode gives the same ids."""
    altered = tmp_path / "altered"
    shutil.copytree(naflex_dir, altered)
    spec = json.loads((altered / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Lowercase"}, spec["normalizer"]]}
    spec["padding"] = {"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": None,
                       "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"}
    spec["post_processor"] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                              {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                              "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}}
    (altered / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((altered / "tokenizer_config.json").read_text())
    config["padding_side"] = "left"
    (altered / "tokenizer_config.json").write_text(json.dumps(config))
    original = TextTokenizer.from_checkpoint(naflex_dir)(MULTILINGUAL).input_ids
    np.testing.assert_array_equal(TextTokenizer.from_checkpoint(altered)(MULTILINGUAL).input_ids, original)


def test_reference_lowercasing_differs_from_unicode_lowercasing(naflex_dir):
    """big_vision lowercases ASCII only; transformers' Siglip2Tokenizer lowercases all of Unicode."""
    from transformers import Siglip2Tokenizer

    assert lowercase_ascii("ÉCOLE Москва") == "École Москва"
    reference = TextTokenizer.from_checkpoint(naflex_dir)
    unicode = TextTokenizer.from_checkpoint(naflex_dir, lowercase="unicode")
    text = ["ÉCOLE Москва"]
    assert not np.array_equal(reference(text).input_ids, unicode(text).input_ids)
    hf = Siglip2Tokenizer(tokenizer_object=reference.tokenizer)
    hf_ids = hf.encode(text[0], add_special_tokens=False)
    assert hf_ids == unicode.tokenizer.encode("école москва", add_special_tokens=False).ids
    assert hf_ids != reference.tokenizer.encode("École Москва", add_special_tokens=False).ids
    # AutoTokenizer on a siglip2 checkpoint becomes that Unicode-lowercasing tokenizer: a silent difference
    auto = AutoTokenizer.from_pretrained(str(naflex_dir))
    assert auto.encode(text[0], add_special_tokens=False) == hf_ids
    assert any("only ASCII letters are lowercased" in w for w in reference(text).warnings)
    assert not reference(["école"]).warnings


def test_text_embeddings_equal_transformers_without_attention_mask(any_model):
    texts = MULTILINGUAL[:6]
    ids = torch.from_numpy(independent_reference_ids(any_model.directory, texts))
    with torch.no_grad():
        direct = any_model.model.get_text_features(input_ids=ids).pooler_output
        masked = any_model.model.get_text_features(input_ids=ids, attention_mask=(ids != 0).long()).pooler_output
    direct = torch.nn.functional.normalize(direct, dim=-1).numpy()
    masked = torch.nn.functional.normalize(masked, dim=-1).numpy()
    engine = encode_texts(any_model, texts).vectors
    cosines = (engine * direct).sum(axis=1)
    assert cosines.min() >= 0.99999
    assert np.allclose(np.linalg.norm(engine, axis=1), 1.0, atol=1e-5)
    assert (engine * masked).sum(axis=1).min() < 0.9999  # a mask would have changed the result

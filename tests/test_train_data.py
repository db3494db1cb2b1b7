"""Training data: class folders, caption files, `datasets` folders, the held-out split, batch plans and
batches; plus `make_shapes`, the procedural dataset the other training tests use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.errors import TrainError
from engine.train.batches import build_batch
from engine.train.data import bucket_lengths, load_data, plan_epoch, split, assign_buckets

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (40, 60, 230), "yellow": (235, 215, 20)}
WORDS = {  # caption languages: English, French, German, Spanish
    "en": ("a {c} {s}", {"circle": "circle", "square": "square", "triangle": "triangle"},
           {"red": "red", "green": "green", "blue": "blue", "yellow": "yellow"}),
    "fr": ("un {s} {c}", {"circle": "cercle", "square": "carré", "triangle": "triangle"},
           {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune"}),
    "de": ("ein {c} {s}", {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck"},
           {"red": "roter", "green": "grüner", "blue": "blauer", "yellow": "gelber"}),
    "es": ("un {s} {c}", {"circle": "círculo", "square": "cuadrado", "triangle": "triángulo"},
           {"red": "rojo", "green": "verde", "blue": "azul", "yellow": "amarillo"}),
}


def shape_image(shape: str, colour: str, rng: np.random.Generator, size=(64, 64)) -> Image.Image:
    """A coloured shape at a random place and scale on a noisy, randomly tinted grey background."""
    width, height = size
    base = rng.integers(60, 160, 3)
    noise = rng.normal(0, 25, (height, width, 3))
    background = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    side = int(min(width, height) * rng.uniform(0.75, 0.95))
    x0 = int(rng.integers(0, width - side + 1))
    y0 = int(rng.integers(0, height - side + 1))
    fill = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLOURS[colour])
    if shape == "circle":
        draw.ellipse([x0, y0, x0 + side, y0 + side], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x0 + side, y0 + side], fill=fill)
    else:
        draw.polygon([(x0 + side / 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=fill)
    return image


def caption(shape: str, colour: str, language: str) -> str:
    template, shapes, colours = WORDS[language]
    return template.format(c=colours[colour], s=shapes[shape])


def make_shapes(root: Path, per_class: int, seed: int, mixed_sizes: bool = False) -> dict:
    """Class folders root/classes/<colour shape>/ and root/captions.jsonl (4 languages per image)."""
    rng = np.random.default_rng(seed)
    rows = []
    sizes = [(64, 64), (96, 48), (48, 96), (80, 64)] if mixed_sizes else [(64, 64)]
    for colour in COLOURS:
        for shape in SHAPES:
            folder = root / "classes" / f"{colour} {shape}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                path = folder / f"{i}.png"
                shape_image(shape, colour, rng, sizes[i % len(sizes)]).save(path)
                rows.append({"image": str(path.relative_to(root)),
                             "captions": [caption(shape, colour, lang) for lang in WORDS]})
    (root / "captions.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return {"classes": root / "classes", "captions": root / "captions.jsonl"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), per_class=3, seed=7, mixed_sizes=True)


def test_class_folders_and_caption_files(shapes, tmp_path):
    classes = load_data(shapes["classes"])
    assert len(classes.classes) == 12 and len(classes) == 36 and not classes.has_captions
    assert classes.classes[classes.examples[0].label] == Path(classes.examples[0].image).parent.name
    captions = load_data(shapes["captions"])
    assert len(captions) == 36 and captions.classes is None
    assert {"a red circle", "un cercle rouge", "ein roter Kreis", "un círculo rojo"} <= set(
        c for e in captions.examples for c in e.captions)
    rows = [json.loads(line) for line in Path(shapes["captions"]).read_text().splitlines()]
    csv_path = shapes["captions"].parent / "pairs.csv"  # CSV: one row per caption, merged per image
    csv_path.write_text("image,caption\n" + "".join(f"{r['image']},{c}\n" for r in rows[:4] for c in r["captions"][:2]))
    pairs = load_data(csv_path)
    assert len(pairs) == 4 and all(len(e.captions) == 2 for e in pairs.examples)
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": str(shapes["classes"].parent / rows[0]["image"])}],
                                "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 1, "caption": "y"}]}))
    assert load_data(coco).examples[0].captions == ["x", "y"]


def test_bad_data_messages(tmp_path, shapes):
    with pytest.raises(TrainError, match="no such file"):
        load_data(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    with pytest.raises(TrainError, match="no class subfolders"):
        load_data(tmp_path / "flat")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "caption": "x"}\nnot json\n')
    with pytest.raises(TrainError, match="line 2"):
        load_data(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("image,caption\nnope.png,hello\n")
    with pytest.raises(TrainError, match="no usable examples"):
        load_data(missing)


def test_hf_dataset_on_disk(tmp_path, shapes):
    datasets = pytest.importorskip("datasets")
    paths = sorted(Path(shapes["classes"]).rglob("*.png"))[:6]
    dataset = datasets.Dataset.from_dict(
        {"image": [str(p) for p in paths], "label": [p.parent.name for p in paths]}
    ).cast_column("image", datasets.Image())
    dataset.save_to_disk(str(tmp_path / "ds"))
    data = load_data(tmp_path / "ds")
    assert len(data) == 6 and data.classes and data.examples[0].label is not None
    from engine.train.data import load_example_image

    assert load_example_image(data.examples[0]).mode == "RGB"


def test_split_is_reproducible_and_disjoint(shapes):
    data = load_data(shapes["classes"])
    train_a, val_a = split(data, 0.25, seed=3)
    train_b, val_b = split(load_data(shapes["classes"]), 0.25, seed=3)
    assert [e.image for e in val_a.examples] == [e.image for e in val_b.examples]
    assert not {e.image for e in val_a.examples} & {e.image for e in train_a.examples}
    assert len(train_a) + len(val_a) == len(data) and 0 < len(val_a) < len(data)
    assert [e.image for e in split(data, 0.25, seed=4)[1].examples] != [e.image for e in val_a.examples]


def test_naflex_batches_use_a_few_fixed_lengths(shapes, naflex_model):
    data = load_data(shapes["classes"])
    buckets = bucket_lengths(64)
    assert buckets == (16, 32, 64)
    sizes = assign_buckets(data, "naflex", naflex_model.patch_size, buckets)
    assert set(sizes) <= set(buckets)
    plans = plan_epoch(sizes, 8, seed=0, epoch=0)
    assert plans == plan_epoch(sizes, 8, seed=0, epoch=0) and plans != plan_epoch(sizes, 8, seed=0, epoch=1)
    assert sorted(p for plan in plans for p in plan.positions) == list(range(len(data)))
    batch = build_batch(naflex_model, data, plans[0], ["a photo of a {}."])
    assert batch.pixels.pixel_values.shape[1] == plans[0].sequence_length
    assert batch.input_ids.shape == (len(batch), 64)
    assert batch.captions[0].startswith("a photo of a ")
    labels = [data.examples[p].label for p in plans[0].positions]
    assert batch.groups.tolist() == labels

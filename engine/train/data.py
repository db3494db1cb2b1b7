"""Training and evaluation data: a folder of class subfolders, a caption file (CSV, JSONL, COCO JSON), or a
Hugging Face `datasets` image dataset saved to disk; a reproducible held-out split; batch plans.

Every example is an image with one or more captions (class folders: captions come from templates) and a
group id: two pairs whose groups match are positives for each other in the sigmoid loss (a class, or
identical caption text), so a batch holding two images of one class does not push them apart.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TrainError
from ..model.images import IMAGE_EXTENSIONS, find_images, open_image

IMAGE_COLUMNS = ("image", "image_path", "file_name", "filename", "file", "path", "img")
CAPTION_COLUMNS = ("caption", "captions", "text", "texts", "sentence", "sentences")
LABEL_COLUMNS = ("label", "labels", "class", "category")


@dataclass(frozen=True)
class RowImage:
    """An image held in a `datasets` row, opened on demand."""

    dataset: object
    row: int
    column: str

    def __str__(self) -> str:
        return f"row {self.row}"


@dataclass
class Example:
    image: str | RowImage  # a file path, or a dataset row
    captions: list[str]  # at least one (class folders: empty, captions come from templates)
    label: int | None = None  # class index, when the data has classes


@dataclass
class TrainData:
    """Examples from one source. `classes` is set for class folders and labelled datasets."""

    examples: list[Example]
    source: str
    classes: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)

    @property
    def has_captions(self) -> bool:
        return any(e.captions for e in self.examples)

    def subset(self, positions) -> "TrainData":
        return TrainData([self.examples[i] for i in positions], self.source, self.classes, [])

    def __len__(self) -> int:
        return len(self.examples)


# --- reading ---------------------------------------------------------------------------------------


def load_data(path: str | Path, require_classes: bool = False) -> TrainData:
    """Read a class folder, a caption file or a `datasets` folder; raises TrainError with what to fix."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TrainError(f"{path}: no such file or folder.")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                          or (path / "state.json").exists()):
        data = _read_hf_dataset(path)
    elif path.is_dir():
        data = _read_class_folders(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        data = _read_rows(path, _csv_rows(path), path.parent)
    elif path.suffix.lower() in (".jsonl", ".json"):
        data = _read_json(path)
    else:
        raise TrainError(f"{path}: use a folder of class subfolders, a .csv/.jsonl caption file, a COCO "
                         "captions .json, or a folder saved by `datasets` (save_to_disk).")
    if not data.examples:
        raise TrainError(f"{path}: no usable examples ({len(data.skipped)} skipped).")
    if require_classes and not data.classes:
        raise TrainError(f"{path}: zero-shot accuracy needs classes (a folder of class subfolders or a label column).")
    return data


def _read_class_folders(folder: Path) -> TrainData:
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not subfolders:
        hint = f" ({len(loose)} {'image lies' if len(loose) == 1 else 'images lie'} directly in it)" if loose else ""
        raise TrainError(f"{folder}: no class subfolders{hint}. Put each class's images in a subfolder named "
                         "after the class, or give a caption file.")
    examples, skipped, classes = [], [], []
    for sub in subfolders:
        paths, problems = find_images(sub)
        skipped += problems
        if not paths:
            skipped.append((str(sub), "no images in this class folder"))
            continue
        classes.append(sub.name)
        examples += [Example(p, [], len(classes) - 1) for p in paths]
    if len(classes) < 2:
        raise TrainError(f"{folder}: {len(classes)} class with images; contrastive fine-tuning and zero-shot "
                         "accuracy need at least two classes (one subfolder each).")
    return TrainData(examples, str(folder), classes, skipped)


def _csv_rows(path: Path) -> list[dict]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


def _read_json(path: Path) -> TrainData:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as error:
            raise TrainError(f"{path}: not valid JSON ({error}).") from None
        if isinstance(whole, dict) and "annotations" in whole and "images" in whole:
            return _read_coco(path, whole)
        rows = whole if isinstance(whole, list) else None
        if rows is None:
            raise TrainError(f"{path}: expected a list of rows or COCO captions (images + annotations).")
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise TrainError(f"{path}, line {number}: not valid JSON ({error}).") from None
    return _read_rows(path, rows, path.parent)


def _pick(columns, wanted: tuple[str, ...]) -> str | None:
    lowered = {c.lower(): c for c in columns}
    return next((lowered[w] for w in wanted if w in lowered), None)


def _caption_list(value) -> list[str]:
    """A caption cell: a string, a list of strings, or {language: caption(s)} (XM3600-style)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, dict):
        return [c for v in value.values() for c in _caption_list(v.get("caption", v) if isinstance(v, dict) else v)]
    if isinstance(value, (list, tuple)):
        return [c for v in value for c in _caption_list(v)]
    return [str(value)]


def _read_rows(path: Path, rows: list[dict], root: Path) -> TrainData:
    if not rows:
        raise TrainError(f"{path}: no rows.")
    columns = list(rows[0].keys())
    image_column, caption_column = _pick(columns, IMAGE_COLUMNS), _pick(columns, CAPTION_COLUMNS)
    label_column = _pick(columns, LABEL_COLUMNS)
    if image_column is None:
        raise TrainError(f"{path}: no image column (one of {', '.join(IMAGE_COLUMNS)}); columns found: {columns}.")
    if caption_column is None:
        raise TrainError(f"{path}: no caption column (one of {', '.join(CAPTION_COLUMNS)}); columns found: {columns}.")
    by_image: dict[str, Example] = {}
    classes: dict[str, int] = {}
    skipped = []
    for row in rows:
        name = str(row.get(image_column) or "").strip()
        image = Path(name).expanduser()
        image = image if image.is_absolute() else root / image
        if not name or not image.is_file():
            skipped.append((name or "(empty)", "image file not found"))
            continue
        captions = _caption_list(row.get(caption_column))
        if not captions:
            skipped.append((name, "no caption"))
            continue
        label = None
        if label_column and row.get(label_column) not in (None, ""):
            label = classes.setdefault(str(row[label_column]), len(classes))
        example = by_image.setdefault(str(image), Example(str(image), [], label))
        example.captions += captions
    return TrainData(list(by_image.values()), str(path), list(classes) or None, skipped)


def _read_coco(path: Path, whole: dict) -> TrainData:
    root = path.parent
    for candidate in (root / "images", root.parent / "images", root):
        if candidate.is_dir():
            break
    files = {image["id"]: image["file_name"] for image in whole["images"]}
    rows: dict[int, dict] = {}
    for annotation in whole["annotations"]:
        rows.setdefault(annotation["image_id"], {"image": files.get(annotation["image_id"], ""), "caption": []})
        rows[annotation["image_id"]]["caption"].append(annotation.get("caption", ""))
    found = [r for r in rows.values() if (candidate / r["image"]).is_file()]
    return _read_rows(path, found or list(rows.values()), candidate if found else root)


def _read_hf_dataset(folder: Path) -> TrainData:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise TrainError(f"{folder} is a `datasets` folder: install the `datasets` package to read it.") from None
    dataset = load_from_disk(str(folder))
    if isinstance(dataset, DatasetDict):
        dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
    columns = list(dataset.column_names)
    image_column = _pick(columns, IMAGE_COLUMNS)
    if image_column is None:
        raise TrainError(f"{folder}: no image column (one of {', '.join(IMAGE_COLUMNS)}); columns: {columns}.")
    caption_column, label_column = _pick(columns, CAPTION_COLUMNS), _pick(columns, LABEL_COLUMNS)
    if caption_column is None and label_column is None:
        raise TrainError(f"{folder}: no caption column ({', '.join(CAPTION_COLUMNS)}) and no label column "
                         f"({', '.join(LABEL_COLUMNS)}); columns: {columns}.")
    classes = None
    if label_column is not None:
        feature = dataset.features[label_column]
        classes = list(getattr(feature, "names", None) or sorted({str(v) for v in dataset[label_column]}))
    labels = dataset[label_column] if label_column else [None] * len(dataset)
    captions = dataset[caption_column] if caption_column else [None] * len(dataset)
    examples = []
    for row, (label, caption) in enumerate(zip(labels, captions)):
        index = None if label is None else (label if isinstance(label, int) else classes.index(str(label)))
        examples.append(Example(RowImage(dataset, row, image_column), _caption_list(caption), index))
    return TrainData(examples, str(folder), classes, [])


def load_example_image(example: Example):
    """The example's image as RGB (ImageReadError when unreadable)."""
    if isinstance(example.image, RowImage):
        value = example.image.dataset[example.image.row][example.image.column]
        if isinstance(value, (str, Path)):
            return open_image(value)
        return open_image(value, example.image.row)
    return open_image(example.image)


# --- splits and batch plans ------------------------------------------------------------------------


def stable_hash(text: str) -> int:
    """A 62-bit hash that is the same in every process and run."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 2


def split(data: TrainData, held_out: float = 0.1, seed: int = 0) -> tuple[TrainData, TrainData]:
    """(train, held-out): each example goes by a hash of (seed, image), so the split survives reordering."""
    if not 0 <= held_out < 1:
        raise TrainError("The held-out fraction must be in [0, 1).")
    keys = [stable_hash(f"{seed}:{e.image}") / 2**62 for e in data.examples]
    val = [i for i, k in enumerate(keys) if k < held_out]
    if held_out > 0 and not val and len(data) > 1:
        val = [int(np.argmin(keys))]
    train = [i for i in range(len(data)) if i not in set(val)]
    if not train:
        raise TrainError(f"{data.source}: no examples left for training after the held-out split.")
    return data.subset(train), data.subset(val)


@dataclass(frozen=True)
class BatchPlan:
    """One batch: examples (positions in the training data), the caption chosen for each, its sequence length."""

    positions: tuple[int, ...]
    caption_choice: tuple[int, ...]  # a random number per example; caption = captions[choice % len]
    sequence_length: int | None  # NaFlex bucket; None for fixed-resolution models


def bucket_lengths(max_num_patches: int, count: int = 3) -> tuple[int, ...]:
    """A few fixed NaFlex lengths: the checkpoint's, halved (count - 1) times (e.g. 64, 128, 256)."""
    return tuple(sorted({max(16, max_num_patches >> k) for k in range(count)}))


def native_patches(example: Example, patch_size: int) -> int:
    """Patches an image covers at its own resolution (decides its bucket)."""
    if isinstance(example.image, RowImage):
        width, height = load_example_image(example).size
    else:
        try:
            from PIL import Image

            with Image.open(example.image) as opened:
                width, height = opened.size
        except Exception:
            return 1 << 30  # unreadable: the largest bucket; it is reported when the batch is read
    return -(-height // patch_size) * -(-width // patch_size)


def plan_epoch(size_buckets: list[int | None], batch_size: int, seed: int, epoch: int,
               drop_last: bool = False) -> list[BatchPlan]:
    """Shuffled batches for one epoch, each within one bucket; the same for the same (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    choices = rng.integers(0, 2**31 - 1, size=len(size_buckets))
    plans = []
    for bucket in sorted(set(size_buckets), key=lambda b: -1 if b is None else b):
        members = np.array([i for i, b in enumerate(size_buckets) if b == bucket])
        members = members[rng.permutation(len(members))]
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            if drop_last and len(chunk) < batch_size:
                continue
            if len(chunk) < 2 and len(members) >= 2:
                continue  # a lone pair has no negatives
            plans.append(BatchPlan(tuple(int(i) for i in chunk), tuple(int(choices[i]) for i in chunk), bucket))
    order = rng.permutation(len(plans))
    return [plans[i] for i in order]


def assign_buckets(data: TrainData, arch: str, patch_size: int, buckets: tuple[int, ...]) -> list[int | None]:
    """Each example's NaFlex length: the smallest bucket holding its native patches, else the largest."""
    if arch != "naflex":
        return [None] * len(data)
    result = []
    for example in data.examples:
        need = native_patches(example, patch_size)
        result.append(next((b for b in buckets if b >= need), buckets[-1]))
    return result

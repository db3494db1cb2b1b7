"""Turning zero-shot scores into label assignments, and exporting them (CSV, JSONL, ImageFolder)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LabelError
from .zeroshot import ZeroShotResult

UNLABELLED = "_unlabelled"


@dataclass
class LabelAssignment:
    image: str  # the file that was read
    labels: list[str]  # chosen labels, best first (empty: none reached the threshold)
    probabilities: list[float]  # of the chosen labels
    name: str = ""  # how exports name the image (e.g. an upload's original file name); empty: `image`

    @property
    def export_name(self) -> str:
        return self.name or self.image


def unique_names(names: list[str]) -> list[str]:
    """`names` with repeats told apart as the ImageFolder export does: cat.jpg, cat_1.jpg, cat_2.jpg."""
    taken: set[str] = set()
    unique = []
    for name in names:
        path, number, candidate = Path(name), 1, name
        while candidate in taken:
            candidate = str(path.with_name(f"{path.stem}_{number}{path.suffix}"))
            number += 1
        taken.add(candidate)
        unique.append(candidate)
    return unique


def assign_labels(result: ZeroShotResult, threshold: float = 0.5, mode: str = "multi",
                  names: dict[str, str] | None = None) -> list[LabelAssignment]:
    """Multi-label: every label with probability ≥ threshold. Single-label: the best label, if ≥ threshold.
    `names` maps an image's source to the name exports give it (default: the source itself)."""
    if mode not in ("multi", "single"):
        raise LabelError("mode must be 'multi' or 'single'")
    assignments = []
    for row, image in enumerate(result.sources):
        order = np.argsort(-result.probabilities[row])
        chosen = [i for i in order if result.probabilities[row, i] >= threshold]
        if mode == "single":
            chosen = chosen[:1]
        assignments.append(LabelAssignment(image, [result.labels[i] for i in chosen],
                                           [float(result.probabilities[row, i]) for i in chosen],
                                           (names or {}).get(image, "")))
    return assignments


def export_csv(result: ZeroShotResult, assignments: list[LabelAssignment], path: str | Path) -> Path:
    """One row per image: path, chosen labels, then each label's probability."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "labels"] + [f"p({label})" for label in result.labels])
        for row, assignment in enumerate(assignments):
            writer.writerow([assignment.export_name, ";".join(assignment.labels)]
                            + [f"{p:.6f}" for p in result.probabilities[row]])
    return path


def export_jsonl(result: ZeroShotResult, assignments: list[LabelAssignment], path: str | Path) -> Path:
    """One JSON object per image: chosen labels and every label's logit and probability."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as handle:
        for record, assignment in zip(result.records(), assignments):
            record["image"] = assignment.export_name
            record["labels"] = assignment.labels
            record["untrained"] = result.untrained
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def safe_folder_name(label: str) -> str:
    cleaned = re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", label).strip(" .")
    return cleaned or "_"


def export_imagefolder(assignments: list[LabelAssignment], out_dir: str | Path) -> Path:
    """Copy each image into one folder per chosen label (ImageFolder layout); unlabelled ones apart."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for assignment in assignments:
        source = Path(assignment.image)
        if not source.is_file():
            continue  # in-memory images have no file to copy
        for label in assignment.labels or [UNLABELLED]:
            folder = out / safe_folder_name(label)
            folder.mkdir(exist_ok=True)
            target = folder / Path(assignment.export_name).name
            stem, number = target.stem, 1
            while target.exists():
                target = folder / f"{stem}_{number}{target.suffix}"
                number += 1
            shutil.copy2(source, target)
    return out


@dataclass
class LabelExports:
    """The three export files written side by side."""

    csv: Path
    jsonl: Path
    imagefolder_zip: Path

    def paths(self) -> list[Path]:
        return [self.csv, self.jsonl, self.imagefolder_zip]


def write_exports(result: ZeroShotResult, assignments: list[LabelAssignment], out_dir: str | Path) -> LabelExports:
    """labels.csv, labels.jsonl and imagefolder.zip (the ImageFolder layout, zipped) in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folder = export_imagefolder(assignments, out / "imagefolder")
    archive = Path(shutil.make_archive(str(out / "imagefolder"), "zip", folder))
    return LabelExports(export_csv(result, assignments, out / "labels.csv"),
                        export_jsonl(result, assignments, out / "labels.jsonl"), archive)

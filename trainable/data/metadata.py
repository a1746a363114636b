"""Metadata CSVs and class weights of the seed layout: read, validate, never decode.

Every problem is a UserError of one line that names the file (and the row: `row N` counts data
rows from 1, `line N` is the line in the file) and says how to fix it.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainable.data import taxonomy
from trainable.errors import UserError

IMAGE_COLUMNS: tuple[str, ...] = ("image", "image_id", "filename", "file", "path")
LABEL_COLUMN = "label_61"
_LABEL_FIX = f"use AI Challenger class ids 0..{taxonomy.NUM_CLASSES - 1} (see trainable/data/taxonomy.py)"


@dataclass
class SplitIndex:
    """What a split's CSV says, checked against the files on disk (nothing decoded)."""

    name: str                 # "train" or "val"
    csv_path: str             # as the user gave it
    split_dir: str            # as the user gave it
    rel_paths: list[str]      # image paths as written in the CSV (relative to split_dir)
    files: list[str]          # resolved absolute paths
    sizes: list[int]          # bytes
    mtimes: list[int]         # st_mtime_ns
    labels: np.ndarray        # int64 [N]
    crops: np.ndarray         # int64 [N]
    severities: np.ndarray    # int64 [N]


def _row_reader(path: Path, shown: str):
    """Yield (row number, line number, cells) for the non-blank rows after the header."""
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"cannot read {shown}: {exc.strerror or exc}") from None
    with handle:
        try:
            reader = csv.reader(handle)
            header = None
            row_number = 0
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue
                if header is None:
                    header = [cell.strip().lower() for cell in cells]
                    yield 0, reader.line_num, header
                    continue
                row_number += 1
                yield row_number, reader.line_num, [cell.strip() for cell in cells]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise UserError(f"{shown} is not a readable UTF-8 CSV file ({exc}); re-export it as CSV") from None
        if header is None:
            raise UserError(f"{shown} is empty: it needs a header row ({IMAGE_COLUMNS[0]},{LABEL_COLUMN},...) "
                            f"and one row per image")


def _check_file(path: str, flag: str, what: str) -> Path:
    file = Path(path)
    if not file.exists():
        raise UserError(f"{flag} {path} does not exist: point {flag} at the {what}, import data with "
                        f"`python -m trainable.data.importers`, or use --demo for the built-in data")
    if not file.is_file():
        raise UserError(f"{flag} {path} is not a file: point {flag} at the {what}")
    return file


def _check_dir(path: str, flag: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        state = "is not a directory" if folder.exists() else "does not exist"
        raise UserError(f"{flag} {path} {state}: point {flag} at the folder the metadata's image paths "
                        f"are relative to, or use --demo for the built-in data")
    return folder


def parse_label(text: str) -> int:
    """An integer class id from a CSV cell ("7" or "7.0"); ValueError with the reason otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"label {text!r} is not an integer; {_LABEL_FIX}") from None
    if not math.isfinite(value) or not value.is_integer():
        raise ValueError(f"label {text!r} is not an integer; {_LABEL_FIX}")
    label = int(value)
    if not 0 <= label < taxonomy.NUM_CLASSES:
        raise ValueError(f"label {label} is outside 0..{taxonomy.NUM_CLASSES - 1}; {_LABEL_FIX}")
    return label


def _resolve_image(split_root: Path, rel: str, split_dir: str) -> Path:
    """The image's resolved path; ValueError when it is empty or leaves split_root."""
    if not rel:
        raise ValueError("the image path is empty; write the image's path relative to the split folder")
    candidate = (split_root / rel).resolve()
    if not candidate.is_relative_to(split_root):
        raise ValueError(f"image path {rel!r} points outside {split_dir} (absolute, '..' or a symlink "
                         f"out of it); image paths must be relative to {split_dir} and stay inside it")
    return candidate


def _cell(cells: list[str], col: int | None) -> str:
    return cells[col] if col is not None and col < len(cells) else ""


def read_split(name: str, csv_path: str, split_dir: str, *, meta_flag: str, dir_flag: str) -> SplitIndex:
    """Read and check one split's metadata CSV against its image folder (stat only, no decoding)."""
    csv_file = _check_file(csv_path, meta_flag, f"{name} metadata CSV")
    split_root = _check_dir(split_dir, dir_flag).resolve()
    shown = csv_path
    rows = _row_reader(csv_file, shown)
    _, _, header = next(rows)
    image_col = next((header.index(c) for c in IMAGE_COLUMNS if c in header), None)
    if image_col is None:
        raise UserError(f"{shown}: no image path column (expected one of {', '.join(IMAGE_COLUMNS)}); "
                        f"found columns {', '.join(header)}: rename the column holding the image paths")
    if LABEL_COLUMN not in header:
        raise UserError(f"{shown}: no {LABEL_COLUMN} column; found columns {', '.join(header)}: "
                        f"add the 61-class label as column {LABEL_COLUMN}")
    label_col = header.index(LABEL_COLUMN)
    crop_col = header.index("crop") if "crop" in header else None
    severity_col = header.index("severity") if "severity" in header else None

    index = SplitIndex(name, csv_path, split_dir, [], [], [], [], np.zeros(0), np.zeros(0), np.zeros(0))
    labels, crops, severities = [], [], []
    for row, line, cells in rows:
        where = f"{shown} row {row} (line {line})"
        crop_text, severity_text = _cell(cells, crop_col), _cell(cells, severity_col)
        try:
            label = parse_label(_cell(cells, label_col))
            crop = taxonomy.parse_crop(crop_text) if crop_text else taxonomy.crop_of(label)
            severity = taxonomy.parse_severity(severity_text) if severity_text else taxonomy.severity_of(label)
            rel = _cell(cells, image_col)
            file = _resolve_image(split_root, rel, split_dir)
        except ValueError as exc:
            raise UserError(f"{where}: {exc}") from None
        try:
            stat = os.stat(file)
        except OSError:
            raise UserError(f"{where}: image {rel} not found in {split_dir}; fix the path or remove the row"
                            ) from None
        if not os.path.isfile(file):
            raise UserError(f"{where}: image path {rel} is not a file; fix the path or remove the row")
        index.rel_paths.append(rel)
        index.files.append(str(file))
        index.sizes.append(stat.st_size)
        index.mtimes.append(stat.st_mtime_ns)
        labels.append(label)
        crops.append(crop)
        severities.append(severity)
    if not labels:
        raise UserError(f"{shown} lists no images: the {name} split is empty; add one row per image "
                        f"({IMAGE_COLUMNS[0]},{LABEL_COLUMN})")
    index.labels = np.asarray(labels, dtype=np.int64)
    index.crops = np.asarray(crops, dtype=np.int64)
    index.severities = np.asarray(severities, dtype=np.int64)
    return index


def _classes_text(classes: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(c) for c in classes[:limit])
    more = f" and {len(classes) - limit} more" if len(classes) > limit else ""
    return f"class{'es' if len(classes) > 1 else ''} {shown}{more}"


def _duplicate_warning(index: SplitIndex) -> str | None:
    first_row: dict[str, int] = {}
    repeats: list[tuple[int, int]] = []  # (row, the earlier row listing the same image)
    for row, file in enumerate(index.files, start=1):
        if file in first_row:
            repeats.append((row, first_row[file]))
        else:
            first_row[file] = row
    if not repeats:
        return None
    row, earlier = repeats[0]
    return (f"{index.csv_path}: {len(repeats)} row(s) repeat an image listed earlier (first: row {row} "
            f"repeats row {earlier}, {index.rel_paths[row - 1]}); each copy counts as another sample: "
            f"remove the repeats unless you mean to oversample")


def data_warnings(train: SplitIndex, val: SplitIndex) -> list[str]:
    """Legal but suspicious data, one line each: duplicated rows, val classes never trained on,
    a val split that is the train split."""
    lines = [w for w in (_duplicate_warning(train), _duplicate_warning(val)) if w]
    # the same CSV file; a copy under another split dir lists other images (caught below if not)
    same_csv = Path(train.csv_path).resolve() == Path(val.csv_path).resolve()
    if same_csv or (train.files == val.files and np.array_equal(train.labels, val.labels)):
        what = "is identical to" if same_csv else "lists the same images and labels as"
        lines.append(f"--val-meta {val.csv_path} {what} --train-meta {train.csv_path}: validation then "
                     f"measures memorisation, not generalisation; give a held-out validation split")
    unseen = sorted(set(val.labels.tolist()) - set(train.labels.tolist()))
    if unseen:
        images = int(np.isin(val.labels, unseen).sum())
        lines.append(f"{val.csv_path}: {_classes_text(unseen)} ({images} val image(s)) never occur in "
                     f"{train.csv_path}; the model cannot learn them, and they count as errors in val "
                     f"accuracy: add training images of them or drop them from validation")
    return lines


def class_counts(labels: np.ndarray) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=taxonomy.NUM_CLASSES).astype(np.int64)


def normalise_class_weights(weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Scale weights so the mean weight over the training samples is 1 (float32 [61])."""
    weights = np.asarray(weights, dtype=np.float64)
    total = float((weights * counts).sum())
    if total <= 0:
        raise UserError("class weights are zero for every class that has training images; "
                        "give them positive weights")
    return (weights * counts.sum() / total).astype(np.float32)


def compute_class_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights (float32 [61]), normalised; absent classes get the largest weight."""
    counts = np.asarray(counts, dtype=np.int64)
    present = counts > 0
    weights = np.zeros(len(counts), dtype=np.float64)
    weights[present] = 1.0 / counts[present]
    weights[~present] = weights[present].max() if present.any() else 1.0
    return normalise_class_weights(weights, counts)


def read_class_weights(path: str, counts: np.ndarray, flag: str = "--class-weights") -> np.ndarray:
    """Weights from a label_61,weight CSV, normalised like compute_class_weights.

    A class missing from the file is an error when it has training images (its weight would be a
    guess); classes without training images get the mean of the listed weights.
    """
    csv_file = Path(path)
    if csv_file.exists() and not csv_file.is_file():
        raise UserError(f"{flag} {path} is not a file: point {flag} at a label_61,weight CSV")
    rows = _row_reader(csv_file, path)
    _, _, header = next(rows)
    for column in (LABEL_COLUMN, "weight"):
        if column not in header:
            raise UserError(f"{path}: no {column} column; found columns {', '.join(header)}: the class "
                            f"weights CSV needs columns {LABEL_COLUMN},weight (or delete it to compute "
                            f"weights from the train counts)")
    label_col, weight_col = header.index(LABEL_COLUMN), header.index("weight")
    weights: dict[int, float] = {}
    for row, line, cells in rows:
        where = f"{path} row {row} (line {line})"
        try:
            label = parse_label(cells[label_col] if label_col < len(cells) else "")
        except ValueError as exc:
            raise UserError(f"{where}: {exc}") from None
        text = cells[weight_col] if weight_col < len(cells) else ""
        try:
            weight = float(text)
        except ValueError:
            weight = float("nan")
        if not math.isfinite(weight) or weight < 0:
            raise UserError(f"{where}: weight {text!r} is not a finite number >= 0; fix the value")
        if label in weights:
            raise UserError(f"{where}: class {label} is listed twice; keep one row per class")
        weights[label] = weight
    missing = [c for c in range(taxonomy.NUM_CLASSES) if c not in weights and counts[c] > 0]
    if missing:
        raise UserError(f"{path} has no weight for class {missing[0]}, which has {counts[missing[0]]} "
                        f"training images; add a row for it or delete the file to compute weights "
                        f"from the train counts")
    if not weights:
        raise UserError(f"{path} lists no weights; add rows {LABEL_COLUMN},weight or delete the file")
    fill = float(np.mean(list(weights.values())))
    dense = np.array([weights.get(c, fill) for c in range(taxonomy.NUM_CLASSES)])
    return normalise_class_weights(dense, counts)


def write_csv_atomic(path: Path, header: list[str], rows: list[list]) -> None:
    """Write a CSV next to its destination, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

"""Turn other dataset layouts into the seed layout.

    python -m trainable.data.importers aichallenger --images DIR --annotations FILE.json --split train --out ROOT
    python -m trainable.data.importers folders --root DIR --split train --out ROOT

Both copy the images to ROOT/<split>/ (keeping their names relative to the source folder) and
write ROOT/metadata/<split>_metadata.csv (image,label_61,crop,disease,severity; crop, disease and
severity from the AI Challenger taxonomy). Everything is checked before anything is written;
the split folder is assembled under a temporary name and renamed into place. Class weights are
not written: training computes them from the train counts when class_weights.csv is absent.
Bad input is one line `error: ...` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from trainable.data import taxonomy
from trainable.data.metadata import write_csv_atomic
from trainable.errors import UserError, run_cli

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val")


def _label(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UserError(f"{where}: label {value!r} is not an integer class id 0..{taxonomy.NUM_CLASSES - 1}")
    text = str(value).strip()
    if not text.lstrip("-").isdigit():
        raise UserError(f"{where}: label {value!r} is not an integer class id 0..{taxonomy.NUM_CLASSES - 1}")
    label = int(text)
    if not 0 <= label < taxonomy.NUM_CLASSES:
        raise UserError(f"{where}: label {label} is outside 0..{taxonomy.NUM_CLASSES - 1}; the importers "
                        f"expect AI Challenger 2018 class ids (see trainable/data/taxonomy.py)")
    return label


def _existing_dir(path: str, flag: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        state = "is not a directory" if folder.exists() else "does not exist"
        raise UserError(f"{flag} {path} {state}; point {flag} at the folder holding the images")
    return folder.resolve()


def _inside(folder: Path, rel: str, where: str) -> Path:
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise UserError(f"{where}: image name {rel!r} must be a relative path inside the images folder")
    file = folder / rel
    if not file.is_file():
        raise UserError(f"{where}: image {rel} not found in {folder}; check --images or remove the entry")
    return file


def collect_aichallenger(images: str, annotations: str) -> list[tuple[str, Path, int]]:
    """(relative name, source file, label) for every entry of an AI Challenger annotations JSON."""
    folder = _existing_dir(images, "--images")
    json_file = Path(annotations)
    if not json_file.is_file():
        state = "is not a file" if json_file.exists() else "does not exist"
        raise UserError(f"--annotations {annotations} {state}; point it at the *_annotations.json file")
    try:
        entries = json.loads(json_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{annotations} is not valid JSON ({str(exc).splitlines()[0]}); it should be a "
                        f'list of {{"image_id": ..., "disease_class": ...}}') from None
    if not isinstance(entries, list) or not entries:
        raise UserError(f'{annotations}: expected a non-empty JSON list of {{"image_id": ..., '
                        f'"disease_class": ...}} objects')
    items: dict[str, tuple[str, Path, int]] = {}
    for number, entry in enumerate(entries, start=1):
        where = f"{annotations} entry {number}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected an object with image_id and disease_class, got {entry!r:.60}")
        for key in ("image_id", "disease_class"):
            if key not in entry:
                raise UserError(f"{where}: missing key {key!r} (found {', '.join(map(str, entry)) or 'none'})")
        rel = entry["image_id"]
        if not isinstance(rel, str):
            raise UserError(f"{where}: image_id {rel!r} is not a file name")
        label = _label(entry["disease_class"], where)
        if rel in items and items[rel][2] != label:
            raise UserError(f"{where}: image {rel} is listed again with another label "
                            f"({items[rel][2]} and {label}); keep one entry per image")
        items[rel] = (rel, _inside(folder, rel, where), label)
    return list(items.values())


def collect_folders(root: str) -> list[tuple[str, Path, int]]:
    """(relative name, source file, label) for every image under ROOT/<label id>/ (recursively)."""
    folder = _existing_dir(root, "--root")
    items = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue  # hidden folders (.ipynb_checkpoints) and stray files at the top level
        if not child.name.isdigit():
            raise UserError(f"--root {root}: folder {child.name!r} is not a class id; name each class "
                            f"folder by its label id 0..{taxonomy.NUM_CLASSES - 1} (e.g. {folder}/7/)")
        label = _label(child.name, f"--root {root}: folder {child.name!r}")
        for file in sorted(child.rglob("*")):
            rel = file.relative_to(folder)
            if any(part.startswith(".") for part in rel.parts) or not file.is_file():
                continue
            if file.suffix.lower() in IMAGE_SUFFIXES:
                items.append((rel.as_posix(), file, label))
    if not items:
        raise UserError(f"--root {root} holds no images in label-id folders ({', '.join(IMAGE_SUFFIXES)}); "
                        f"expected {root}/<label id>/<image>")
    return items


def _check_output(out: Path, split: str, overwrite: bool) -> None:
    targets = [out / split, out / "metadata" / f"{split}_metadata.csv"]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} already exists; choose another --out or pass --overwrite to replace "
                        f"the {split} split")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a directory")


def write_split(items: list[tuple[str, Path, int]], out: str, split: str, *, overwrite: bool = False) -> Path:
    """Copy items to OUT/<split>/ and write OUT/metadata/<split>_metadata.csv; return the CSV path."""
    root = Path(out)
    _check_output(root, split, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=root))
    try:
        for rel, source, _ in items:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        if (root / split).exists():
            shutil.rmtree(root / split)
        os.rename(staging, root / split)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    rows = []
    for rel, _, label in items:
        info = taxonomy.CLASSES[label]
        rows.append([rel, label, info.crop, info.disease, info.severity])
    csv_path = root / "metadata" / f"{split}_metadata.csv"
    write_csv_atomic(csv_path, ["image", "label_61", "crop", "disease", "severity"], rows)
    return csv_path


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):  # a typo must not silently pick another flag
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str):  # one line through run_cli instead of usage + exit
        raise UserError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m trainable.data.importers",
                     description="Import a dataset into the seed layout (ROOT/<split>/, ROOT/metadata/).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    challenger = commands.add_parser("aichallenger", help="AI Challenger 2018 images + annotations JSON")
    challenger.add_argument("--images", required=True, help="folder holding the images")
    challenger.add_argument("--annotations", required=True, help='JSON list of {"image_id", "disease_class"}')
    folders = commands.add_parser("folders", help="class-per-folder tree: ROOT/<label id>/<images>")
    folders.add_argument("--root", required=True, help="folder whose sub-folders are label ids 0..60")
    for sub in (challenger, folders):
        sub.add_argument("--split", required=True, choices=SPLITS)
        sub.add_argument("--out", required=True, help="dataset root to write (seed layout)")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing split in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "aichallenger":
        items = collect_aichallenger(args.images, args.annotations)
    else:
        items = collect_folders(args.root)
    csv_path = write_split(items, args.out, args.split, overwrite=args.overwrite)
    labels = {label for _, _, label in items}
    print(f"imported {len(items)} images ({len(labels)} classes) into {Path(args.out) / args.split}; "
          f"metadata {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""A dataset's splits as YOLOv5 reads them: their images, their labels checked, their content digests.

A split is a folder of images (searched recursively, as YOLOv5 does), a .txt file listing images, or a
list of those. Labels are found the way YOLOv5 finds them (…/images/… -> …/labels/….txt).

Reading every byte of a 20,000-image dataset takes seconds, on every run. So the result of a split's
scan (its labels checked against nc, its digest over every image's and label's bytes) is cached by the
files' identity: their paths, sizes and modification times. A second run stats the files and reads
nothing; a changed, added or removed file changes the identity and the split is read again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

from train.errors import DatasetError
from train.fetch.cache import write_whole

# What YOLOv5 reads as images (its IMG_FORMATS), without importing it.
IMAGE_SUFFIXES = (".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm")
DIGEST_LENGTH = 16  # hex characters, as MLflow's own dataset digests
SPLITS = (("training", "train"), ("validation", "val"), ("test", "test"))  # (MLflow input context, yaml key)
_CACHE_VERSION = "scan-v1"


def label_path(image: Path) -> Path:
    """YOLOv5's img2label_paths, without importing it: the last /images/ becomes /labels/, the suffix .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(str(image).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _listed(text_file: Path, where: str) -> List[Path]:
    # As YOLOv5 reads a list: './x' is relative to the list's folder, anything else as written.
    lines = [line.strip() for line in text_file.read_text().splitlines() if line.strip()]
    images = [text_file.parent / line[2:] if line.startswith("./") else Path(line) for line in lines]
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise DatasetError(f"{where}: {text_file.name} lists {len(missing)} images that do not exist (the first: "
                           f"{missing[0]})")
    return images


def split_images(root: Path, spec: object, where: str) -> List[Path]:
    """Every image a split names (a folder, a .txt list, or a list of those), sorted."""
    images: List[Path] = []
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    if not all(isinstance(item, str) for item in items):
        raise DatasetError(f"{where}: a split is a path or a list of paths (folders or .txt lists), got {spec!r}")
    for item in items:
        path = Path(item)
        path = path if path.is_absolute() else root / path
        if path.is_dir():
            for folder, _, names in os.walk(path):
                images += [Path(folder) / n for n in names if _is_image(n)]
        elif path.is_file() and path.suffix == ".txt":
            images += [p for p in _listed(path, where) if _is_image(p.name)]
        else:
            raise DatasetError(f"{where}: {path} is neither a folder of images nor a .txt list of them")
    return sorted(images)


def _label_problem(fields: Sequence[str], nc: int) -> str:
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        return "expected 'class x_center y_center width height' (or a class and polygon points)"
    try:
        values = [float(f) for f in fields]
    except ValueError:
        return "not all numbers"
    if not all(math.isfinite(v) for v in values):
        return "not all finite numbers"
    if values[0] != int(values[0]) or values[0] < 0:
        return "the class is not a whole number >= 0"
    if values[0] >= nc:
        return f"class {int(values[0])}, but the dataset has {nc} classes (0-{nc - 1})"
    if any(v < 0 or v > 1 for v in values[1:]):
        return "coordinates must be normalized to 0-1 (YOLOv5 would skip the image)"
    return ""


def check_labels(labels: Iterable[Path], nc: int, root: Path, where: str) -> None:
    for label in labels:
        for number, line in enumerate(label.read_text(errors="replace").splitlines(), 1):
            fields = line.split()
            problem = _label_problem(fields, nc) if fields else ""
            if problem:
                raise DatasetError(f"{where}: {_shown(label, root)} line {number}: {problem}: {line.strip()!r}")


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def content_digest(files: Sequence[Path], root: Path) -> str:
    """Over every file's path (relative to `root` where it lies under it) and bytes, in a fixed order."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(_shown(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:DIGEST_LENGTH]


def _identity(files: Sequence[Tuple[Path, os.stat_result]], nc: int) -> str:
    h = hashlib.sha256(f"{_CACHE_VERSION} nc={nc}\n".encode())
    for path, st in files:
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _stat_all(paths: Iterable[Path]) -> List[Tuple[Path, os.stat_result]]:
    found = []
    for path in paths:
        try:
            found.append((path, os.stat(path)))
        except FileNotFoundError:
            pass  # an image without a label file: a background image, as YOLOv5 treats it
    return found


def scan_split(root: Path, split: str, spec: object, nc: int, cache_dir: Path, where: str) -> str:
    """Check one split (images present, labels well-formed and < nc) and return its content digest."""
    images = split_images(root, spec, where)
    if not images:
        raise DatasetError(f"{where}: the {split} split ({spec}) holds no images ({', '.join(IMAGE_SUFFIXES)})")
    labels = _stat_all(label_path(image) for image in images)
    if not labels:
        raise DatasetError(f"{where}: no labels for {spec} (YOLOv5 reads them from "
                           f"{_shown(label_path(images[0]).parent, root)}/*.txt)")
    files = _stat_all(images) + labels
    record = cache_dir / "digests" / f"{_identity(files, nc)}.json"
    if record.is_file():
        return json.loads(record.read_text())["digest"]
    check_labels((path for path, _ in labels), nc, root, where)
    digest = content_digest([path for path, _ in files], root)
    write_whole(record, json.dumps({"digest": digest, "files": len(files)}))
    return digest


def scan(layout: Mapping[str, object], cache_dir: Path, where: str) -> Dict[str, str]:
    """{MLflow input context: digest} of each split a YOLOv5 data layout names (train, val and any test)."""
    root = Path(str(layout["path"]))
    nc = len(layout["names"])  # type: ignore[arg-type]
    try:
        return {context: scan_split(root, split, layout[split], nc, cache_dir, where)
                for context, split in SPLITS if layout.get(split)}
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{where}: cannot read {getattr(error, 'filename', None) or 'a file'}: "
                           f"{getattr(error, 'strerror', None) or error}") from None

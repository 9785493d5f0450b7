"""A deterministic dataset of simple shapes in coco128 layout, learnable from scratch in minutes on a CPU.

images/{train,val}/*.jpg and labels/{train,val}/*.txt (YOLO format: class cx cy w h, normalised).
The same spec always gives the same bytes; GENERATOR_VERSION changes whenever the drawing does,
so a cached copy is never mistaken for a different content version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = 2
CLASS_NAMES = ("circle", "square", "triangle")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class SyntheticSpec:
    train_images: int
    val_images: int
    image_size: int
    seed: int

    def digest(self) -> str:
        payload = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def folder_name(self) -> str:
        return f"synthetic-v{GENERATOR_VERSION}-{self.digest()}"


Box = Tuple[int, float, float, float, float]  # class, cx, cy, w, h (normalised)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    # A dark colour gradient plus mild pixel noise: some clutter, yet every shape (drawn bright) stands out.
    top, bottom = rng.integers(0, 96, 3), rng.integers(0, 96, 3)
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    pixels = top * (1 - ramp) + bottom * ramp + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(np.broadcast_to(pixels, (size, size, 3)), 0, 255).astype(np.uint8))


def _draw_shape(draw: ImageDraw.ImageDraw, cls: int, x0: int, y0: int, side: int, colour: tuple) -> None:
    x1, y1 = x0 + side, y0 + side
    if cls == 0:
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif cls == 1:
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    else:
        draw.polygon(((x0 + side / 2, y0), (x1, y1), (x0, y1)), fill=colour)


def _overlaps(box: Tuple[int, int, int], placed: List[Tuple[int, int, int]]) -> bool:
    x, y, s = box
    return any(x < px + ps and px < x + s and y < py + ps and py < y + s for px, py, ps in placed)


def draw_image(rng: np.random.Generator, size: int) -> Tuple[Image.Image, List[Box]]:
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    placed: List[Tuple[int, int, int]] = []
    boxes: List[Box] = []
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        side = int(rng.integers(size // 4, size // 2))
        x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
        if _overlaps((x0, y0, side), placed):
            continue
        colour = tuple(int(c) for c in rng.integers(140, 256, 3))
        _draw_shape(draw, cls, x0, y0, side, colour)
        placed.append((x0, y0, side))
        boxes.append((cls, (x0 + side / 2) / size, (y0 + side / 2) / size, side / size, side / size))
    return image, boxes


def _write_split(root: Path, split: str, count: int, spec: SyntheticSpec, rng: np.random.Generator) -> None:
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(count):
        image, boxes = draw_image(rng, spec.image_size)
        stem = f"{split}_{i:05d}"
        image.save(images / f"{stem}.jpg", quality=95)
        (labels / f"{stem}.txt").write_text("".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in boxes))


def generate(spec: SyntheticSpec, datasets_dir: Path) -> Path:
    """The dataset folder for `spec` under `datasets_dir`, generated on first use only.

    Written to a temporary folder and renamed into place, so concurrent trials never see half a dataset.
    """
    target = datasets_dir / spec.folder_name()
    if (target / "dataset.json").is_file():
        return target
    datasets_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=datasets_dir))
    try:
        rng = np.random.default_rng(spec.seed)
        for split, count in zip(SPLITS, (spec.train_images, spec.val_images)):
            _write_split(staging, split, count, spec, rng)
        manifest = {"generator_version": GENERATOR_VERSION, "names": list(CLASS_NAMES), **asdict(spec)}
        (staging / "dataset.json").write_text(json.dumps(manifest, indent=2))
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "dataset.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

"""Datasets in coco128 layout, made ready for YOLOv5: `prepare` returns the data yaml to train on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

import yaml
from omegaconf import DictConfig

from train.data import coco128, synthetic
from train.errors import DatasetError
from train.yolo import yolov5_package_dir

__all__ = ["DatasetError", "prepare"]

# What YOLOv5 reads as images (its IMG_FORMATS), without importing it.
IMAGE_SUFFIXES = (".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm")


def _coco_names() -> Dict[int, str]:
    # The 80 class names, from the data yaml the yolov5 package ships (found without importing yolov5).
    return yaml.safe_load((yolov5_package_dir() / "data" / "coco128.yaml").read_text())["names"]


def _layout(data: DictConfig, datasets_dir: Path) -> Dict[str, object]:
    if data.name == "synthetic":
        if data.root is None:
            spec = synthetic.SyntheticSpec(**data.synthetic)
            root = synthetic.generate(spec, datasets_dir)
        else:
            root = Path(data.root)
        names = dict(enumerate(synthetic.CLASS_NAMES))
        return {"path": str(root), "train": "images/train", "val": "images/val", "names": names}
    root = coco128.locate(data.root, data.download_url, data.download_timeout_s, datasets_dir)
    # coco128 has no separate validation split: YOLOv5's own coco128.yaml validates on train2017 too.
    return {"path": str(root), "train": str(coco128.IMAGES), "val": str(coco128.IMAGES), "names": _coco_names()}


def labels_folder(images: Path) -> Path:
    """Where YOLOv5 reads a split's labels: images/<x> -> labels/<x> (its img2label_paths, without importing it)."""
    return Path(f"{os.sep}labels{os.sep}".join(str(images).rsplit(f"{os.sep}images{os.sep}", 1)))


def prepare(data: DictConfig, cache_dir: Path, out_dir: Path) -> Path:
    """Find or make the dataset, and write the YOLOv5 data yaml for it into `out_dir`.

    The yaml never has a `download:` key, so YOLOv5 itself never reaches for the network.
    """
    layout = _layout(data, cache_dir / "datasets")
    for split in ("train", "val"):
        folder = Path(layout["path"]) / layout[split]  # type: ignore[operator]
        if not folder.is_dir():
            raise DatasetError(f"data.root: {layout['path']} has no {layout[split]} folder")
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            raise DatasetError(f"data.root: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        labels = labels_folder(folder)
        if not labels.is_dir() or not any(labels.glob("*.txt")):
            raise DatasetError(f"data.root: no labels for {folder} (YOLOv5 reads them from {labels}/*.txt)")
    out_dir.mkdir(parents=True, exist_ok=True)
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(layout, sort_keys=False))
    return data_yaml

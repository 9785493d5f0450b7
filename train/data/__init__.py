"""Datasets made ready for YOLOv5: `prepare` checks one and returns the data yaml to train on.

synthetic (generated) and coco128 (downloaded) are built in; `yolo` is any YOLOv5 dataset the user
brings (train.data.yolo), from disk, S3, HTTP or MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import yaml
from omegaconf import DictConfig

from train.data import coco128, synthetic
from train.data import yolo as user_dataset
from train.data.scan import IMAGE_SUFFIXES, label_path, scan, split_images
from train.errors import DatasetError
from train.fetch import FetchSettings
from train.yolo import yolov5_package_dir

__all__ = ["DatasetError", "IMAGE_SUFFIXES", "dataset_name", "digests", "label_path", "prepare", "split_images"]


def _coco_names() -> Dict[int, str]:
    # The 80 class names, from the data yaml the yolov5 package ships (found without importing yolov5).
    return yaml.safe_load((yolov5_package_dir() / "data" / "coco128.yaml").read_text())["names"]


def _layout(data: DictConfig, sources: FetchSettings) -> Tuple[Dict[str, object], str]:
    """The YOLOv5 data layout, and the config key that names where it came from (for error lines)."""
    datasets_dir = sources.cache_dir / "datasets"
    if data.name == "yolo":
        return user_dataset.layout(data.source, sources), user_dataset.KEY
    if data.name == "synthetic":
        if data.root is None:
            root = synthetic.generate(synthetic.SyntheticSpec(**data.synthetic), datasets_dir)
        else:
            root = Path(data.root)
        names = dict(enumerate(synthetic.CLASS_NAMES))
        return {"path": str(root), "train": "images/train", "val": "images/val", "names": names}, "data.root"
    root = coco128.locate(data.root, data.download_url, data.download_timeout_s, datasets_dir)
    # coco128 has no separate validation split: YOLOv5's own coco128.yaml validates on train2017 too.
    return {"path": str(root), "train": str(coco128.IMAGES), "val": str(coco128.IMAGES), "names": _coco_names()}, \
        "data.root"


def dataset_name(data: DictConfig) -> str:
    """The name the run's dataset inputs carry: the option's, or for `yolo` the source's last path part."""
    return user_dataset.dataset_name(data.source) if data.name == "yolo" else data.name


def prepare(data: DictConfig, sources: FetchSettings, out_dir: Path) -> Path:
    """Find, fetch or make the dataset, check every split and label, and write the YOLOv5 data yaml into `out_dir`.

    The yaml never has a `download:` key, so YOLOv5 itself never reaches for the network.
    """
    layout, where = _layout(data, sources)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(layout, sort_keys=False))
    digests(data_yaml, sources.cache_dir, where)  # the checks; lineage and reproductions reuse the result
    return data_yaml


_SCANNED: Dict[Path, Dict[str, str]] = {}


def digests(data_yaml: Path, cache_dir: Path, where: str = "data") -> Dict[str, str]:
    """{MLflow input context: digest} of each split of a data yaml prepare wrote, its labels checked: scanned once
    per process (and, across processes, read from the scan records train.data.scan keeps). where: the config key
    an error line names."""
    if data_yaml not in _SCANNED:
        _SCANNED[data_yaml] = scan(yaml.safe_load(data_yaml.read_text()), cache_dir, where)
    return _SCANNED[data_yaml]

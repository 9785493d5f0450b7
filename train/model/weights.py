"""Starting weights (`model.weights`): found or fetched, checked against the model and data, and described for
the run's record.

Accepted: '' (from scratch); a local path; a YOLOv5 release name (yolov5n.pt ... yolov5x6.pt), downloaded
once from `fetch.release_url`; s3://, http(s)://, runs:/ and mlflow-artifacts: URIs of a .pt; and
models:/<name>@<alias> or models:/<name>/<version> (the project's registered pyfunc, whose checkpoint is used).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import yaml

from train.errors import ConfigError, SourceError
from train.fetch import FetchSettings, Fetched, fetch

KEY = "model.weights"
RELEASE_NAME = re.compile(r"^yolov5[nsmlx]6?\.pt$")


@dataclass
class StartingWeights:
    uri: str  # as the user gave it: the `weights` tag and the recorded config
    path: Path  # the local checkpoint
    sha256: str
    link: Dict[str, str] = field(default_factory=dict)  # run_id, model_name, model_version, model_id

    def tags(self) -> Dict[str, str]:
        return {"weights.sha256": self.sha256, **{f"weights.{key}": value for key, value in self.link.items()}}


def is_release_name(uri: str) -> bool:
    return bool(RELEASE_NAME.match(uri))


def is_release_download(uri: str) -> bool:
    """A release name with no file of that name here: YOLOv5's own rule (a local file wins), so fetched from
    fetch.release_url."""
    return is_release_name(uri) and not Path(uri).exists()


def _release(name: str, settings: FetchSettings, release_url: str) -> Fetched:
    url = f"{release_url.rstrip('/')}/{name}"
    try:
        return fetch(url, settings, KEY, immutable=True)  # a release asset never changes: cached by its URL
    except SourceError as error:
        raise SourceError(f"{error}; offline, download {name} where you can and give its path "
                          f"(model.weights=/path/to/{name}), or set fetch.release_url to a mirror that has it") from None


def _checkpoint_in(path: Path, uri: str) -> Path:
    """The one .pt a fetched folder holds (a registered model keeps it in its artifacts)."""
    if path.is_file():
        return path
    found = sorted(path.rglob("*.pt"))
    if len(found) != 1:
        raise SourceError(f"{KEY}: {uri} holds {len(found)} .pt files; name the checkpoint itself")
    return found[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def locate(uri: str, settings: FetchSettings, release_url: str) -> StartingWeights:
    """The checkpoint `uri` names, fetched into the cache if it is not local."""
    fetched = _release(uri, settings, release_url) if is_release_download(uri) else fetch(uri, settings, KEY)
    path = _checkpoint_in(fetched.path, uri)
    try:
        return StartingWeights(uri, path, _sha256(path), fetched.link)
    except OSError as error:
        raise SourceError(f"{KEY}: cannot read {path}: {error.strerror or error}") from None


def _architectures() -> Dict[tuple, str]:
    """(depth_multiple, width_multiple) -> model name, from the yamls YOLOv5 ships."""
    from train.config import MODEL_NAMES
    from train.yolo import model_yaml

    found = {}
    for name in MODEL_NAMES:
        spec = yaml.safe_load(model_yaml(f"{name}.yaml").read_text())
        found[(spec["depth_multiple"], spec["width_multiple"])] = name
    return found


def _model_of(checkpoint: dict):
    # What YOLOv5's train.py loads: "model" (best.pt after training holds the EMA weights there), else "ema".
    return checkpoint["model"] if checkpoint.get("model") is not None else checkpoint.get("ema")


def _load(path: Path) -> dict:
    import torch
    import yolov5.train  # noqa: F401 - puts yolov5/ on sys.path: release checkpoints pickle `models.yolo.Model`

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":
        raise ConfigError(f"{KEY}: not a PyTorch checkpoint (neither torch.save's zip nor a pickle): {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure to unpickle is a bad file
        raise ConfigError(f"{KEY}: cannot load {path} ({type(error).__name__}: {error})") from None
    model = _model_of(checkpoint) if isinstance(checkpoint, dict) else None
    if model is None or not hasattr(model, "yaml") or not hasattr(model, "state_dict"):
        raise ConfigError(f"{KEY}: {path} is a PyTorch file but no YOLOv5 checkpoint (no model with its yaml)")
    return checkpoint


def check(weights: StartingWeights, cfg: Path, nc: int) -> List[str]:
    """Refuse a checkpoint whose layers would not load into model.cfg; notes (one line each) on what YOLOv5
    does with it otherwise, as its train.py loads it: every tensor whose name and shape match."""
    from yolov5.models.yolo import Model
    from yolov5.utils.general import intersect_dicts

    checkpoint = _load(weights.path)
    source = _model_of(checkpoint)
    model = Model(str(cfg), ch=3, nc=nc)
    wanted = model.state_dict()
    loaded = intersect_dicts(source.float().state_dict(), wanted, exclude=["anchor"])
    head = f"model.{len(model.model) - 1}.m."  # the Detect layer's output convolutions: their shape follows nc
    body_missing = [k for k in wanted if "anchor" not in k and k not in loaded and not k.startswith(head)]
    if body_missing:
        spec = source.yaml if isinstance(source.yaml, dict) else {}
        name = _architectures().get((spec.get("depth_multiple"), spec.get("width_multiple")))
        hint = f"it is a {name} checkpoint: model={name}" if name else "choose the model.cfg it was trained with"
        raise ConfigError(f"{KEY}: its layers do not fit model.cfg={cfg.name} (only {len(loaded)} of {len(wanted)} "
                          f"tensors would load; {hint})")
    notes = []
    ckpt_nc = int(getattr(source, "nc", None) or (source.yaml or {}).get("nc", nc))
    if ckpt_nc != nc:
        notes.append(f"{KEY}: the checkpoint has {ckpt_nc} classes, the data {nc}: YOLOv5 loads all but the "
                     f"detection head's outputs, which start from scratch ({len(loaded)} of {len(wanted)} tensors)")
    return notes

"""A YOLOv5 checkpoint as an MLflow pyfunc model: encoded images in, one row per detection out.

Input: a pandas DataFrame with a column `image`, one encoded image per row (JPEG, PNG or anything Pillow reads)
as `bytes`. MLflow's JSON serving sends a `binary` column as base64 text and decodes it against the signature
before `predict`; a `str` that still reaches `predict` (signature not enforced) is decoded as base64 here.
Other columns are ignored.

Output: a DataFrame with one row per detection and the columns OUTPUT_COLUMNS: `image` is the input row's
position (0-based), boxes are x_min, y_min, x_max, y_max in pixels of the original image. An image with no
detection contributes no row; no detection at all gives zero rows with the same columns.

Params (per call, e.g. `model.predict(df, params={"conf_thres": 0.5})`): conf_thres (0.25) and iou_thres
(0.45), YOLOv5's detect.py defaults. The image size is the training one (model_config["imgsz"]).
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import mlflow.pyfunc
import numpy as np
import pandas as pd

DEFAULT_CONF_THRES = 0.25
DEFAULT_IOU_THRES = 0.45
OUTPUT_DTYPES: Dict[str, str] = {
    "image": "int64", "class_id": "int64", "class_name": "object", "confidence": "float64",
    "x_min": "float64", "y_min": "float64", "x_max": "float64", "y_max": "float64",
}
OUTPUT_COLUMNS = list(OUTPUT_DTYPES)
BATCH = 16  # images per forward pass: bounds memory whatever the request size


def decode_image(value: Any) -> np.ndarray:
    """HWC uint8 RGB, the channel order YOLOv5's dataloader feeds the model."""
    from PIL import Image

    if isinstance(value, str):
        value = base64.b64decode(value)
    with Image.open(io.BytesIO(bytes(value))) as image:
        return np.asarray(image.convert("RGB"))


def _cache_dir() -> Path:
    # The training cache when this runs next to training; else a temp folder (a serving container may have
    # a read-only home). Only the offline switches' small config folder lives there.
    configured = os.environ.get("YOLOV5_MLFLOW_CACHE")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "yolov5-mlflow-model"


class YoloDetector(mlflow.pyfunc.PythonModel):
    """Loads artifacts["weights"] (a YOLOv5 best.pt); model_config: {"imgsz": training image size}."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from train import offline

        offline.apply(_cache_dir())  # before yolov5 (and ultralytics) is first imported, by unpickling below
        import torch

        checkpoint = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=False)
        # best.pt after training keeps the EMA weights in "model" (half precision); a mid-training one in "ema".
        model = checkpoint["ema"] if checkpoint.get("ema") is not None else checkpoint["model"]
        self._device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        self._model = model.float().eval().to(self._device)
        names = self._model.names
        self._names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
        self._stride = int(self._model.stride.max())
        imgsz = (context.model_config or {}).get("imgsz") or (checkpoint.get("opt") or {}).get("imgsz") or 640
        self._imgsz = -(-int(imgsz) // self._stride) * self._stride  # a stride multiple, as YOLOv5 requires

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: Optional[Dict[str, Any]] = None) -> pd.DataFrame:
        params = params or {}
        conf_thres = float(params.get("conf_thres", DEFAULT_CONF_THRES))
        iou_thres = float(params.get("iou_thres", DEFAULT_IOU_THRES))
        images = [decode_image(v) for v in model_input["image"]]
        rows: List[tuple] = []
        for start in range(0, len(images), BATCH):
            rows += self._detect(images[start:start + BATCH], start, conf_thres, iou_thres)
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS).astype(OUTPUT_DTYPES)

    def _detect(self, images: List[np.ndarray], first: int, conf_thres: float, iou_thres: float) -> List[tuple]:
        import torch
        from yolov5.utils.augmentations import letterbox
        from yolov5.utils.general import non_max_suppression, scale_boxes

        # auto=False: every image padded to the same square, as in validation, so the batch stacks.
        batch = np.stack([letterbox(im, self._imgsz, auto=False, stride=self._stride)[0] for im in images])
        x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).to(self._device).float() / 255
        with torch.inference_mode():  # scale_boxes edits in place: inference tensors allow that only in here
            detections = non_max_suppression(self._model(x)[0], conf_thres, iou_thres)
            for det, image in zip(detections, images):
                det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], image.shape[:2])
        rows = []
        for offset, det in enumerate(detections):
            for x_min, y_min, x_max, y_max, confidence, cls in det.cpu().tolist():
                rows.append((first + offset, int(cls), self._names[int(cls)], confidence, x_min, y_min, x_max, y_max))
        return rows

"""The real coco128: found locally, or downloaded once into the cache and verified.

Offline, the download fails within `timeout_s` with a message that says what to do instead.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from train.errors import DatasetError

IMAGE_COUNT = 128
IMAGES = Path("images/train2017")
LABELS = Path("labels/train2017")


def verify(root: Path) -> None:
    """coco128's layout and label format, as YOLOv5 ships it."""
    images = sorted((root / IMAGES).glob("*.jpg"))
    if len(images) != IMAGE_COUNT:
        raise DatasetError(f"data.root: {root} is not coco128: {len(images)} images in {IMAGES}, expected {IMAGE_COUNT}")
    for label in (root / LABELS).glob("*.txt"):
        for line in label.read_text().splitlines():
            fields = line.split()
            if len(fields) != 5 or not fields[0].isdigit() or int(fields[0]) >= 80:
                raise DatasetError(f"data.root: {label} has a malformed label line: {line!r}")


def _download(url: str, timeout_s: float, into: Path) -> None:
    with tempfile.TemporaryDirectory(dir=into) as staging:
        archive = Path(staging) / "coco128.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DatasetError(
                f"data=coco128: cannot download {url} ({reason}); offline, use data=synthetic "
                f"or point data.root at a local copy of coco128"
            ) from exc
        with zipfile.ZipFile(archive) as zf:
            if zf.testzip() is not None:
                raise DatasetError(f"data=coco128: the archive from {url} is corrupt")
            zf.extractall(staging)
        extracted = Path(staging) / "coco128"
        verify(extracted)
        extracted.rename(into / "coco128")


def locate(root: str | None, download_url: str | None, timeout_s: float, datasets_dir: Path) -> Path:
    if root is not None:
        verify(Path(root))
        return Path(root)
    cached = datasets_dir / "coco128"
    if not cached.is_dir():
        if not download_url:
            raise DatasetError("data.download_url: not set and no coco128 in the cache; set data.root")
        datasets_dir.mkdir(parents=True, exist_ok=True)
        _download(download_url, timeout_s, datasets_dir)
    verify(cached)
    return cached

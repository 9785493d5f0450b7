"""`python -m bench.fetch`: a dataset's way in, figures 9 and 10 (also part of `python -m bench`).

9. S3 dataset fetch: a folder of many files (512 KiB images and their label files, about 1 GB by default) from
   moto's S3 server into an empty cache, the recipe's train.fetch (concurrent, through boto3's transfer manager)
   against the obvious boto3 loop (list, then one `download_file` after another), interleaved; then the recipe's
   second fetch of the same URI, which finds the copy in its cache and pays only the listing.
10. Dataset digest: train.data.scan over 20,000 tiny images and their labels, with no scan record (it reads every
   byte and checks every label) against the second scan of every run after the first (it finds the record by
   the files' paths, sizes and modification times, and only stats them). The files were just written, so both
   read the OS page cache: the figure is the scan's own work, not the disk's.

Each side starts from a fresh empty cache folder every time; the medians of the repetitions are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from itertools import count
from pathlib import Path
from statistics import median
from typing import Dict, Iterator, List, Tuple

import boto3

from bench.harness import interleaved
from bench.report import TABLE_HEADER, dataset_rows
from testbed.servers import BUCKET, S3_CREDENTIALS, boto_credentials, s3_server
from train.data.scan import scan
from train.fetch import FetchSettings, fetch

RESULTS = Path(__file__).resolve().parent / "results"
MB = 1024 * 1024
IMAGE_BYTES = 512 * 1024
PREFIX = "datasets/bench/"
CONCURRENCY = 16  # the recipe's max_concurrency, and the upload's threads
LABEL = b"0 0.5 0.5 0.2 0.2\n"


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """os.environ with `values` set, as a training pod has them; restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def upload(endpoint: str, size_mb: int) -> Tuple[int, int]:
    """size_mb / 0.5 images of random bytes (incompressible, like JPEGs) and a label each, under PREFIX; (files,
    bytes). Generated in the upload's threads: nothing of it is written to disk."""
    s3 = boto3.client("s3", endpoint_url=endpoint, **boto_credentials())
    images = max(1, size_mb * MB // IMAGE_BYTES)

    def put(i: int) -> int:
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}images/{i:05d}.jpg", Body=os.urandom(IMAGE_BYTES))
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}labels/{i:05d}.txt", Body=LABEL)
        return IMAGE_BYTES + len(LABEL)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        total = sum(pool.map(put, range(images)))
    return 2 * images, total


def _files(folder: Path) -> Tuple[int, int]:
    found = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return len(found), sum(p.stat().st_size for p in found)


def baseline_fetch_s(endpoint: str, into: Path) -> float:
    """The loop anyone writes first: list the prefix, then `download_file` each object in turn."""
    started = time.monotonic()
    s3 = boto3.client("s3", endpoint_url=endpoint, **boto_credentials())
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX)
    for key in [obj["Key"] for page in pages for obj in page.get("Contents", [])]:
        path = into / key[len(PREFIX):]
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(BUCKET, key, str(path))
    return time.monotonic() - started


def recipe_fetch_s(cache_dir: Path) -> Tuple[float, Path]:
    """train.fetch as a training's data.source runs it: list, then download the objects concurrently."""
    started = time.monotonic()
    fetched = fetch(f"s3://{BUCKET}/{PREFIX}", FetchSettings(cache_dir=cache_dir, timeout_s=60,
                                                           max_concurrency=CONCURRENCY), "data.source")
    return time.monotonic() - started, fetched.path


def dataset_fetch(workdir: Path, size_mb: int = 1000, repeats: int = 3) -> Dict[str, object]:
    """9: boto3's loop (A) against train.fetch (B) into empty folders, then train.fetch with its copy cached."""
    workdir.mkdir(parents=True, exist_ok=True)
    with s3_server(workdir) as endpoint:
        files, total = upload(endpoint, size_mb)
        runs = count()
        cached: List[float] = []

        def run_baseline() -> float:
            into = workdir / f"baseline-{next(runs)}"
            seconds = baseline_fetch_s(endpoint, into)
            assert _files(into) == (files, total), (_files(into), files, total)
            shutil.rmtree(into)
            return seconds

        def run_recipe() -> float:
            cache_dir = workdir / f"recipe-{next(runs)}"
            seconds, path = recipe_fetch_s(cache_dir)
            assert _files(path) == (files, total), (_files(path), files, total)
            again, path_again = recipe_fetch_s(cache_dir)  # the next training's: the same copy, only a listing
            assert path_again == path
            cached.append(again)
            shutil.rmtree(cache_dir)
            return seconds

        with _environ(MLFLOW_S3_ENDPOINT_URL=endpoint, **S3_CREDENTIALS):
            measured = interleaved(repeats, run_baseline, run_recipe)
    mb = total / MB
    return {**measured.summary(), "files": files, "MB": round(mb, 1), "max_concurrency": CONCURRENCY,
            "baseline_MB_per_s": round(mb / median(measured.a), 1),
            "recipe_MB_per_s": round(mb / median(measured.b), 1),
            "times_faster": round(median(measured.a) / median(measured.b), 2),
            "cached_median_s": round(median(cached), 3), "cached_s": [round(x, 3) for x in cached]}


def write_images(root: Path, train: int, val: int, image_bytes: int = 2048) -> Dict[str, object]:
    """images/{train,val}/*.jpg of random bytes (the scan hashes bytes and never decodes them; 2 KiB is a 64x64
    JPEG's size) and one label each under labels/; the YOLOv5 layout that names them."""
    for split, n in (("train", train), ("val", val)):
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for i in range(n):
            (images / f"{i:05d}.jpg").write_bytes(os.urandom(image_bytes))
            (labels / f"{i:05d}.txt").write_bytes(LABEL)
    return {"path": str(root), "train": "images/train", "val": "images/val", "names": {0: "a"}}


def dataset_digest(workdir: Path, images: int = 20000, repeats: int = 3) -> Dict[str, object]:
    """10: the scan with no record (A, a fresh cache folder each time) against the scan that finds one (B)."""
    val = images // 10
    layout = write_images(workdir / "dataset", images - val, val)
    warm_dir, runs = workdir / "scan-cache-warm", count()
    expected = scan(layout, warm_dir, "data.source")  # writes the record the warm scans find

    def timed(cache_dir: Path) -> float:
        started = time.monotonic()
        digests = scan(layout, cache_dir, "data.source")
        seconds = time.monotonic() - started
        assert digests == expected, (digests, expected)
        return seconds

    measured = interleaved(repeats, lambda: timed(workdir / f"scan-cache-cold-{next(runs)}"),
                           lambda: timed(warm_dir))
    return {**measured.summary(), "images": images, "labels": images,
            "times_faster": round(median(measured.a) / median(measured.b), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1000, help="size of the fetched dataset's images, MiB (9)")
    parser.add_argument("--images", type=int, default=20000, help="images the scan digests (10)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each side")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="yolov5-mlflow-bench-fetch-") as tmp:
        results = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                               "python": platform.python_version()},
                   "dataset_fetch": dataset_fetch(Path(tmp) / "fetch", args.mb, args.repeats),
                   "dataset_digest": dataset_digest(Path(tmp) / "digest", args.images, args.repeats)}
    results["total_minutes"] = round((time.monotonic() - started) / 60, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fetch.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"Measured {results['when']} on {results['machine']['cpus']} CPUs; {args.repeats} interleaved repetitions "
          f"a side, medians; {results['total_minutes']} minutes in all.\n")
    print("\n".join([*TABLE_HEADER, *dataset_rows(results)]))


if __name__ == "__main__":
    main()

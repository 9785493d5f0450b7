"""The synthetic dataset: coco128 layout, valid YOLO labels, the same bytes every time."""

from __future__ import annotations

from pathlib import Path

from train.data.synthetic import CLASS_NAMES, SyntheticSpec, generate

SPEC = SyntheticSpec(train_images=6, val_images=3, image_size=64, seed=7)


def _contents(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_labels(tmp_path):
    root = generate(SPEC, tmp_path)
    assert len(list((root / "images" / "train").glob("*.jpg"))) == 6
    assert len(list((root / "images" / "val").glob("*.jpg"))) == 3
    for label in root.glob("labels/*/*.txt"):
        lines = label.read_text().splitlines()
        assert lines, label
        for line in lines:
            cls, *box = line.split()
            assert 0 <= int(cls) < len(CLASS_NAMES)
            assert all(0.0 < float(v) <= 1.0 for v in box)


def test_deterministic_and_cached_per_content_version(tmp_path):
    first, second = generate(SPEC, tmp_path / "a"), generate(SPEC, tmp_path / "b")
    assert first.name == second.name and _contents(first) == _contents(second)
    stamp = (first / "dataset.json").stat().st_mtime_ns
    assert generate(SPEC, tmp_path / "a") == first and (first / "dataset.json").stat().st_mtime_ns == stamp
    other = SyntheticSpec(train_images=6, val_images=3, image_size=64, seed=8)
    assert generate(other, tmp_path / "a").name != first.name
    assert not list((tmp_path / "a").glob(".staging-*"))

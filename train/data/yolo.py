"""Any YOLOv5 dataset (`data=yolo data.source=<where>`): a dataset yaml, a folder holding one, or a zip of one,
on disk or anywhere train.fetch reaches.

The yaml is YOLOv5's: `path` (the root), `train` and `val` (and optional `test`) relative to it, `names`
as a list or a map (or only `nc`). A fetched copy is self-contained: its root is the yaml's folder unless
`path` names a folder inside it, whatever `path` said on the machine it was uploaded from.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Mapping, Tuple
from urllib.parse import urlparse

import yaml

from train.errors import DatasetError, SourceError
from train.fetch import FetchSettings, cache, fetch, scheme

KEY = "data.source"
YAML_SUFFIXES = (".yaml", ".yml")


def dataset_name(source: str) -> str:
    """A readable name from the source's last path part: s3://b/sets/widgets/ -> widgets."""
    parts = [p for p in PurePosixPath(urlparse(source).path if scheme(source) else source).parts if p not in ("/", "")]
    stems = [PurePosixPath(p).stem if p.endswith((".zip", *YAML_SUFFIXES)) else p for p in parts]
    meaningful = [s for s in stems if s not in ("data", "dataset")]
    return (meaningful or stems or ["dataset"])[-1]


def _unzip(archive: Path, settings: FetchSettings) -> Path:
    st = archive.stat()

    def build(into: Path) -> None:
        try:
            with zipfile.ZipFile(archive) as zf:
                broken = zf.testzip()
                if broken is not None:
                    raise SourceError(f"{KEY}: the archive is corrupt ({broken} fails its checksum)")
                zf.extractall(into / "dataset")
        # A cut-short or damaged stream (zlib.error, EOFError), encryption (RuntimeError), Deflate64
        # (NotImplementedError), a full disk (OSError): each is an archive this machine cannot unpack.
        except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, OSError) as error:
            raise SourceError(f"{KEY}: not a readable zip archive ({error})") from None

    identity = f"unzip {archive.resolve()} {st.st_size} {st.st_mtime_ns}"
    return cache.once(settings.cache_dir / "fetched" / "unzipped", identity, build) / "dataset"


def _find_yaml(folder: Path) -> Path:
    """data.yaml (or .yml), else the only yaml at the top; a folder holding just one folder is looked into."""
    for _ in range(2):
        for name in ("data.yaml", "data.yml"):
            if (folder / name).is_file():
                return folder / name
        yamls = [p for p in folder.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file()]
        if len(yamls) == 1:
            return yamls[0]
        if len(yamls) > 1:
            raise DatasetError(f"{KEY}: {len(yamls)} yaml files at the top of the dataset and none named data.yaml: "
                               f"point data.source at one of them")
        entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        if len(entries) != 1 or not entries[0].is_dir():
            break
        folder = entries[0]
    raise DatasetError(f"{KEY}: no dataset yaml in it (data.yaml, or a single .yaml at its top)")


def locate(source: str, settings: FetchSettings) -> Tuple[Path, bool]:
    """The dataset yaml, and whether its copy is self-contained (fetched or unzipped: `path` is ignored)."""
    path = fetch(source, settings, KEY).path
    fetched = scheme(source) not in ("", "file")
    if path.is_file() and (path.suffix == ".zip" or zipfile.is_zipfile(path)):
        path, fetched = _unzip(path, settings), True
    if path.is_dir():
        return _find_yaml(path), fetched
    if path.suffix in YAML_SUFFIXES:
        return path, fetched
    raise DatasetError(f"{KEY}: {source} is not a dataset yaml, a folder holding one, or a zip of such a folder")


def _root(spec: Mapping[str, Any], yaml_path: Path, self_contained: bool) -> Path:
    here = yaml_path.parent
    given = spec.get("path")
    if not given:
        return here.resolve()
    candidates = [here / str(given)] + ([] if self_contained else [Path(str(given)), Path.cwd() / str(given)])
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    if self_contained:
        return here.resolve()
    raise DatasetError(f"{KEY}: path: {given} is no folder (looked beside the yaml, in {here}, and in {os.getcwd()})")


def _names(spec: Mapping[str, Any]) -> Dict[int, str]:
    names, nc = spec.get("names"), spec.get("nc")
    if names is None and nc is None:
        raise DatasetError(f"{KEY}: the dataset yaml has no names (a list or a map of class names) and no nc")
    if names is None:
        if not isinstance(nc, int) or nc < 1:
            raise DatasetError(f"{KEY}: nc must be a whole number >= 1, got {nc!r}")
        return {i: f"class{i}" for i in range(nc)}
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise DatasetError(f"{KEY}: names must be a non-empty list or map of class names, got {names!r}")
    if not all(isinstance(k, int) for k in names) or sorted(names) != list(range(len(names))):
        raise DatasetError(f"{KEY}: names' keys must be the class indices 0-{len(names) - 1}, got {sorted(names)}")
    if nc is not None and nc != len(names):
        raise DatasetError(f"{KEY}: nc is {nc}, but names lists {len(names)} classes")
    return {int(k): str(v) for k, v in names.items()}


def layout(source: str, settings: FetchSettings) -> Dict[str, object]:
    """The YOLOv5 data layout (path, splits, nc, names) of the dataset at `source`, fetched if need be."""
    try:
        return _layout(source, settings)
    except (OSError, UnicodeDecodeError) as error:  # a file or folder of the user's this user may not read
        raise DatasetError(f"{KEY}: cannot read {getattr(error, 'filename', None) or source}: "
                           f"{getattr(error, 'strerror', None) or error}") from None


def _layout(source: str, settings: FetchSettings) -> Dict[str, object]:
    yaml_path, self_contained = locate(source, settings)
    try:
        spec = yaml.safe_load(yaml_path.read_text())
    except yaml.YAMLError as error:
        raise DatasetError(f"{KEY}: {yaml_path.name} is not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise DatasetError(f"{KEY}: {yaml_path.name} is not a YOLOv5 dataset yaml (a mapping with train, val, names)")
    for split in ("train", "val"):
        if not spec.get(split):
            raise DatasetError(f"{KEY}: {yaml_path.name} names no {split} split")
    names = _names(spec)
    found: Dict[str, object] = {"path": str(_root(spec, yaml_path, self_contained))}
    found.update({split: spec[split] for split in ("train", "val", "test") if spec.get(split)})
    return {**found, "nc": len(names), "names": names}

"""The download cache: one folder per identity of the content at its source, complete or absent.

A copy is built in a staging folder and renamed into place only when whole, so an interrupted
download leaves nothing that looks complete; processes that want the same copy at the same moment
(the parallel trials of a sweep) take a lock on it, and all but the first find it done.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from train.errors import SourceError

# Staging folders a killed process left behind are removed once they are this old (a download still
# running in another process renews nothing, so this is far longer than any download).
STALE_STAGING_S = 24 * 3600


def write_whole(path: Path, text: str) -> None:
    """`text` at `path`, whole or not at all, also with the parallel trials of a sweep (or a run's own threads)
    writing the same file: a private temporary file beside it, renamed into place; readable by whoever shares the
    cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(partial, 0o644)  # mkstemp's 0600 would hide it from the cache's other users
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def key(identity: str) -> str:
    """A folder name for an identity (which holds no credential: see train.fetch)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_staging(folder: Path) -> None:
    for leftover in folder.glob(".staging-*"):
        try:
            if time.time() - leftover.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except FileNotFoundError:
            pass


def once(folder: Path, identity: str, build: Callable[[Path], None]) -> Path:
    """The cached folder for `identity` under `folder`; `build(staging)` fills it the first time only."""
    final = folder / key(identity)
    if final.is_dir():
        return final
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / f"{final.name}.lock"):
        if final.is_dir():  # another process built it while this one waited
            return final
        _remove_stale_staging(folder)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide a shared cache's copy from its other users
        try:
            build(staging)
            if not any(not p.name.startswith(".") for p in staging.iterdir()):
                raise SourceError("nothing was downloaded (an empty folder at the source?)")
            (staging / ".identity").write_text(identity + "\n")
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return final

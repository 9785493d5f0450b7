"""A copy of the console, as the user saw it, in a log file.

Works on file descriptors 1 and 2, not on sys.stdout: YOLOv5's logger holds the stderr stream it
found at import, tqdm writes progress bars to it, and dataloader workers are forked processes.
Everything written to either descriptor goes to the real console and, interleaved, to the file.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, List, Optional, Tuple, Type

_DRAIN_TIMEOUT_S = 5.0  # a forked worker that still holds the pipe must not hang the exit


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class ConsoleTee:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Optional[BinaryIO] = None
        self._lock = threading.Lock()
        self._pumps: List[Tuple[int, int, threading.Thread]] = []  # (fd, saved copy of fd, reader thread)

    def __enter__(self) -> "ConsoleTee":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")
        for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
            stream.flush()
            saved = os.dup(fd)
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            pump = threading.Thread(target=self._pump, args=(read_end, saved), name=f"console-tee-{fd}", daemon=True)
            pump.start()
            self._pumps.append((fd, saved, pump))
        return self

    def _pump(self, read_end: int, console: int) -> None:
        try:
            while chunk := os.read(read_end, 65536):
                _write_all(console, chunk)
                with self._lock:
                    assert self._file is not None
                    self._file.write(chunk)
                    self._file.flush()
        finally:
            os.close(read_end)

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved, _ in self._pumps:
            os.dup2(saved, fd)  # closes our last handle on the pipe's write end: the pump then sees EOF
        for _, saved, pump in self._pumps:
            pump.join(_DRAIN_TIMEOUT_S)
        if all(not pump.is_alive() for _, _, pump in self._pumps):
            for _, saved, _ in self._pumps:
                os.close(saved)
            with self._lock:
                assert self._file is not None
                self._file.close()
        # else a straggler keeps the file and console copy open until it sees EOF; the file holds all before now
        self._pumps.clear()

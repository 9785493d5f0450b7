"""A copy of the console, as the user saw it, in a plain-text log file; credentials out of both.

Works on file descriptors 1 and 2, not on sys.stdout: YOLOv5's logger holds the stderr stream it
found at import, tqdm writes progress bars to it, and dataloader workers are forked processes.
Everything written to either descriptor goes to the real console and, interleaved by line, to the file.

The console gets what was written, colours and live progress bars included, with credentials masked.
The file gets plain text for the MLflow UI: ANSI escape sequences stripped, and of each line's
carriage-return frames (a tqdm bar redrawing itself) only the last one, so a finished bar is one line.

Redaction works on complete lines (up to a \\n or \\r), so a secret split across two reads is still
masked; an unfinished tail is held back until its line ends, or until the writer has been quiet for
QUIET_S (a live progress bar redraws without a newline), then shown redacted.

ConsoleTee(None) copies nothing to a file: it only redacts the console. Tees nest: one around the
whole process, another around one run inside it.
"""

from __future__ import annotations

import os
import re
import select
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Callable, List, Optional, Type

from train.redact import redact as default_redact

_DRAIN_TIMEOUT_S = 5.0  # a forked worker that still holds the pipe must not hang the exit
QUIET_S = 0.2  # an unfinished line (a live progress bar) reaches the console after this long without new output
_READ_SIZE = 65536
_LINE_ENDS = re.compile(rb"[\r\n]")
# ESC-sequences (ECMA-48): CSI (colours, cursor moves), OSC (titles, links), DCS/SOS/PM/APC strings, then the
# two- and three-byte escapes (charset selection, save/restore cursor). Lines never split one: none holds \r or \n.
ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b\r\n]*(?:\x07|\x1b\\)|[PX^_][^\x1b\r\n]*\x1b\\"
                         r"|[ -/]*[0-~])")


def strip_ansi(text: str) -> str:
    return ANSI_ESCAPE.sub("", text)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")  # undecodable bytes pass through unchanged


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _PlainLines:
    """One stream's text as file lines: escapes stripped, each line's last non-blank \\r frame, ending in \\n."""

    def __init__(self) -> None:
        self._frame = ""  # the current line's latest frame, until its \n comes

    def feed(self, text: str) -> str:
        """Complete segments (`text` ends in \\r or \\n) in; the finished lines among them out."""
        out: List[str] = []
        for segment in re.findall(r"[^\r\n]*[\r\n]", strip_ansi(text)):
            body = segment[:-1]
            if body.strip():
                self._frame = body
            if segment.endswith("\n"):
                out.append(self._frame + "\n")
                self._frame = ""
        return "".join(out)

    def finish(self, tail: str) -> str:
        """The unfinished line at the end (an interrupted bar, a last print without newline), if any."""
        tail = strip_ansi(tail)
        if tail.strip():
            self._frame = tail
        line, self._frame = self._frame, ""
        return line + "\n" if line else ""


class _Pump:
    """Reads one pipe (the new fd 1 or 2) and writes it on, redacted, to the saved console fd and the file."""

    def __init__(self, tee: "ConsoleTee", fd: int, read_end: int, console: int) -> None:
        self.tee = tee
        self.fd = fd
        self.read_end = read_end
        self.console = console  # the fd as it was before the tee: the real console, or an outer tee's pipe
        self.pending = b""  # the unfinished line: no \r or \n in it
        self.shown = 0  # how many bytes of `pending` the console already has (shown after a quiet time)
        self.lines = _PlainLines()
        self.closing = threading.Event()  # __exit__ gave up waiting for EOF: push out everything held, now
        self.flushed = threading.Event()
        self.console_ok = True
        self.thread = threading.Thread(target=self.run, name=f"console-tee-{fd}", daemon=True)

    def run(self) -> None:
        try:
            poller = select.poll()  # not select(): a descriptor numbered over 1023 is fine
            poller.register(self.read_end, select.POLLIN)
            while True:
                if not poller.poll(QUIET_S * 1000):
                    self.show_pending()
                    if self.closing.is_set():
                        self.finish()
                        self.flushed.set()
                    continue
                chunk = os.read(self.read_end, _READ_SIZE)
                if not chunk:
                    break
                try:
                    self.feed(chunk)
                except Exception as error:  # noqa: BLE001 - a pump that stops reading would block every writer
                    self.pending, self.shown = b"", 0
                    self.to_console(f"console tee: {type(error).__name__}: {error} (this output is lost)\n")
            self.finish()
        finally:
            self.flushed.set()
            os.close(self.read_end)

    def feed(self, chunk: bytes) -> None:
        data = self.pending + chunk
        last_end = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if last_end < 0:
            self.pending = data
            return
        complete, self.pending = data[:last_end + 1], data[last_end + 1:]
        redacted = self.tee.redact(_decode(complete))
        # What a quiet time already showed of this line stays shown; the console gets the rest.
        self.to_console(redacted if not self.shown else self.tee.redact(_decode(complete[self.shown:])))
        self.shown = 0
        self.tee.to_file(self.lines.feed(redacted))

    def show_pending(self) -> None:
        if len(self.pending) > self.shown:
            self.to_console(self.tee.redact(_decode(self.pending[self.shown:])))
            self.shown = len(self.pending)

    def finish(self) -> None:
        self.show_pending()
        self.tee.to_file(self.lines.finish(self.tee.redact(_decode(self.pending))))
        self.pending, self.shown = b"", 0

    def to_console(self, text: str) -> None:
        if not text or not self.console_ok:
            return
        try:
            _write_all(self.console, _encode(text))
        except OSError:  # the console went away (a closed pipe): the file still gets everything
            self.console_ok = False


class ConsoleTee:
    """`with ConsoleTee(path):` fds 1 and 2 go on to the console and, as plain text, to `path` (appended).

    `path=None`: console only. `redact` is applied to everything before it goes anywhere.
    """

    def __init__(self, path: Optional[Path], redact: Callable[[str], str] = default_redact) -> None:
        self.path = path
        self.redact = redact
        self._file: Optional[BinaryIO] = None
        self._lock = threading.Lock()
        self._pumps: List[_Pump] = []

    def __enter__(self) -> "ConsoleTee":
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")
        for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
            stream.flush()
            saved = os.dup(fd)
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            pump = _Pump(self, fd, read_end, saved)
            pump.thread.start()
            self._pumps.append(pump)
        return self

    def to_file(self, text: str) -> None:
        if not text or self._file is None:
            return
        with self._lock:
            try:
                self._file.write(_encode(text))
                self._file.flush()  # per finished line: a killed process leaves every line before it
            except (OSError, ValueError):  # a full disk, or the file closed under a straggler: the console goes on
                pass

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for pump in self._pumps:
            os.dup2(pump.console, pump.fd)  # closes our last handle on the pipe's write end: the pump then sees EOF
        for pump in self._pumps:
            pump.thread.join(_DRAIN_TIMEOUT_S)
        stragglers = [pump for pump in self._pumps if pump.thread.is_alive()]
        for pump in stragglers:  # a forked child still holds the pipe: everything written so far goes out now
            pump.closing.set()
        for pump in stragglers:
            pump.flushed.wait(2 * QUIET_S + 1.0)
        if not stragglers:
            for pump in self._pumps:
                os.close(pump.console)
            if self._file is not None:
                with self._lock:
                    self._file.close()
        # else a straggler keeps the file and console copy open until it sees EOF; the file holds all before now
        self._pumps.clear()

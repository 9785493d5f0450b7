"""The console tee: the console as it was (colours, live bars), a plain-text copy in the file, no credentials."""

from __future__ import annotations

import os
import random
import select
import subprocess
import sys
import time
from pathlib import Path

from train.console import ConsoleTee, _Pump, strip_ansi

SECRET = "canary-secret-0123456789"
ENV = {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET}

BLUE, BOLD, RESET = "\x1b[34m", "\x1b[1m", "\x1b[0m"
# What YOLOv5 writes to stderr: a coloured prefix, a tqdm bar redrawn with \r and finished with \n, a bold path.
CONSOLE = (f"{BLUE}{BOLD}train: {RESET}Scanning labels... \u2588\u2588 done\n"
           "\n"
           "\r  0%|          | 0/4 [00:00<?, ?it/s]"
           "\r 50%|\u2588\u2588\u2588\u2588\u2588     | 2/4 [00:01<00:01,  1.9it/s]"
           "\r100%|\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588| 4/4 [00:02<00:00,  1.9it/s]\n"
           f"Logging results to {BOLD}runs/exp{RESET}\n"
           "windows line\r\n"
           "\r bar cleared at the end\r                      \r\n")
PLAIN = ("train: Scanning labels... \u2588\u2588 done\n"
         "\n"
         "100%|\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588| 4/4 [00:02<00:00,  1.9it/s]\n"
         "Logging results to runs/exp\n"
         "windows line\n"
         " bar cleared at the end\n")


def run_child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=timeout, env=ENV)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def feed_in_chunks(tmp_path: Path, data: bytes, cuts: list[int], quiet_after: frozenset[int] | set[int] = frozenset()
                   ) -> tuple[bytes, bytes]:
    """`data` through one stream's pump, read in the pieces `cuts` makes, the writer pausing after the pieces
    numbered in `quiet_after` (the quiet time: the unfinished line goes to the console): (the console, the file)."""
    log, console_copy = tmp_path / "train.log", tmp_path / "console"
    log.unlink(missing_ok=True)
    tee = ConsoleTee(log)
    tee._file = open(log, "ab")
    console = os.open(console_copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    pump = _Pump(tee, 2, -1, console)
    try:
        for number, (start, end) in enumerate(zip([0, *cuts], [*cuts, len(data)])):
            pump.feed(data[start:end])
            if number in quiet_after:
                pump.show_pending()
        pump.finish()
    finally:
        os.close(console)
        tee._file.close()
    return console_copy.read_bytes(), log.read_bytes()


def test_the_file_is_plain_text_whatever_the_chunks(tmp_path):
    data = CONSOLE.encode()
    rng = random.Random(0)
    splits = [[], list(range(1, len(data)))]  # one read; a read per byte (escapes, frames, UTF-8 characters split)
    splits += [sorted(rng.sample(range(1, len(data)), k)) for k in (1, 2, 5, 20, 60) for _ in range(10)]
    for cuts in splits:
        for quiet_after in (set(), set(range(0, len(cuts) + 1, 2))):
            console, log = feed_in_chunks(tmp_path, data, cuts, quiet_after)
            assert log.decode() == PLAIN, cuts
            assert console == data, cuts  # colours and every frame, as written


def test_an_unfinished_line_reaches_the_file_at_the_end(tmp_path):
    console, log = feed_in_chunks(tmp_path, f"done\n\r 10%|#  |{BOLD} no newline".encode(), [9])
    assert log.decode() == "done\n 10%|#  | no newline\n"
    assert console.decode() == f"done\n\r 10%|#  |{BOLD} no newline"


def test_strip_ansi_leaves_text_alone():
    assert strip_ansi(f"{BLUE}{BOLD}a{RESET} b \x1b]0;title\x07c\x1b(Bd\x1b[2K\x1b[1Ae") == "a b cde"
    assert strip_ansi("100%|\u2588| [00:01<00:00] [x] 50% \\ ok") == "100%|\u2588| [00:01<00:00] [x] 50% \\ ok"


CHILD = r"""
import os, subprocess, sys
from pathlib import Path
from train.console import ConsoleTee
with ConsoleTee(Path(sys.argv[1])):
    print("from print")
    sys.stderr.write("progress\r50%\r100%\n")
    sys.stderr.flush()
    os.write(2, b"\x1b[34mfrom fd 2\x1b[0m\n")
    subprocess.run([sys.executable, "-c", "print('from a child process')"])
print("after the tee")
"""


def test_tee_copies_both_streams_and_children(tmp_path):
    log = tmp_path / "console.log"
    proc = run_child(CHILD, str(log))
    lines = log.read_bytes().decode().splitlines(keepends=True)
    assert sorted(lines) == sorted(["from print\n", "100%\n", "from fd 2\n", "from a child process\n"])
    assert lines.index("from print\n") < lines.index("from a child process\n")
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert "from print" in stdout and "after the tee" in stdout and "from a child process" in stdout
    assert "progress\r50%\r100%\n" in stderr and "\x1b[34mfrom fd 2\x1b[0m\n" in stderr  # the console as written


SPLIT_SECRET = r"""
import os, sys, time
from pathlib import Path
from train.console import ConsoleTee
secret = os.environ["AWS_SECRET_ACCESS_KEY"]
with ConsoleTee(Path(sys.argv[1])):
    os.write(2, ("key=" + secret[:9]).encode())  # two reads: the secret is split across them
    time.sleep(0.05)
    os.write(2, (secret[9:] + " and http://bob:pass" ).encode())
    time.sleep(0.05)
    os.write(2, b"word@host:5000/x\n")
    os.write(1, ("stdout " + secret + "\n").encode())
"""


def test_a_secret_split_across_reads_is_redacted_on_the_console_and_in_the_file(tmp_path):
    log = tmp_path / "train.log"
    proc = run_child(SPLIT_SECRET, str(log))
    for text in (proc.stderr.decode(), log.read_text()):
        assert SECRET[:9] not in text and SECRET[9:] not in text and "pass" not in text
        assert "key=*** and http://***@host:5000/x\n" in text
    assert proc.stdout.decode() == "stdout ***\n"
    assert "stdout ***\n" in log.read_text()


LIVE_BAR = r"""
import os, sys, time
from pathlib import Path
from train.console import ConsoleTee
with ConsoleTee(Path(sys.argv[1])):
    os.write(2, ("\r 50%| token " + os.environ["AWS_SECRET_ACCESS_KEY"]).encode())
    time.sleep(3)  # the bar is not finished: its frame must be on the console meanwhile
    os.write(2, b"\r100%| done\n")
"""


def test_a_live_progress_bar_is_shown_after_a_quiet_time_redacted(tmp_path):
    log = tmp_path / "train.log"
    child = subprocess.Popen([sys.executable, "-c", LIVE_BAR, str(log)], stderr=subprocess.PIPE, env=ENV)
    try:
        seen, deadline = b"", time.monotonic() + 2.5  # the child's import and 0.2 s quiet time, well under 3 s
        while b"token" not in seen and time.monotonic() < deadline:
            if select.select([child.stderr], [], [], 0.1)[0]:
                seen += os.read(child.stderr.fileno(), 65536)
        assert seen == b"\r 50%| token ***"
        seen += child.stderr.read()
    finally:
        child.wait(30)
    assert child.returncode == 0
    assert seen == b"\r 50%| token ***\r100%| done\n"
    assert log.read_text() == "100%| done\n"


NESTED = r"""
import os, sys
from pathlib import Path
from train.console import ConsoleTee
secret = os.environ["AWS_SECRET_ACCESS_KEY"]
with ConsoleTee(None):
    print("process " + secret, flush=True)
    with ConsoleTee(Path(sys.argv[1])):
        print("run " + secret, flush=True)
        os.write(2, b"\r 1/2\r 2/2\n")
    os.write(1, (b"x" * 99 + b"\n") * 3000)  # far more than a pipe holds: all of it must be out before _exit
    os.write(2, ("last words, no newline " + secret).encode())
os._exit(0)
"""


def test_tees_nest_and_the_outer_one_drains_fully_before_exit(tmp_path):
    log = tmp_path / "train.log"
    proc = run_child(NESTED, str(log))
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert stdout == "process ***\nrun ***\n" + ("x" * 99 + "\n") * 3000
    assert stderr == "\r 1/2\r 2/2\nlast words, no newline ***"
    assert log.read_text() == "run ***\n 2/2\n" or log.read_text() == " 2/2\nrun ***\n"  # two streams, one file
    assert SECRET not in stdout + stderr + log.read_text()


CUSTOM = r"""
import os, sys
from train.console import ConsoleTee
with ConsoleTee(None, redact=lambda text: text.replace("hunter2", "[masked]")):
    os.write(1, b"password hunter2\n")
    os.write(2, b"huntwo hunter2")
"""


def test_a_console_only_tee_redacts_with_the_function_given():
    proc = run_child(CUSTOM)
    assert proc.stdout == b"password [masked]\n" and proc.stderr == b"huntwo [masked]"


KILLED = r"""
import os, signal, sys, time
from pathlib import Path
from train.console import ConsoleTee
with ConsoleTee(Path(sys.argv[1])):
    os.write(2, b"\r 1/9 epoch\r 2/9 epoch\n")
    print("saved last.pt", flush=True)
    time.sleep(1)
    os.write(2, b"\r 3/9 epoch")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_process_leaves_every_line_written_before(tmp_path):
    log = tmp_path / "train.log"
    proc = subprocess.run([sys.executable, "-c", KILLED, str(log)], capture_output=True, timeout=60, env=ENV)
    assert proc.returncode == -9
    assert sorted(log.read_text().splitlines(keepends=True)) == [" 2/9 epoch\n", "saved last.pt\n"]


STRAGGLER = r"""
import os, subprocess, sys, time
from pathlib import Path
import train.console
from train.console import ConsoleTee
train.console._DRAIN_TIMEOUT_S = 0.5
log = Path(sys.argv[1])
tee = ConsoleTee(log)
with tee:
    os.write(2, b"before\n\r 1/2 partial")
    subprocess.Popen(["sleep", "3"])  # holds the pipe's write end past the tee's exit, as a forked worker can
    started = time.monotonic()
os.write(2, f"\nexit took {time.monotonic() - started:.1f} s; the file: {log.read_text()!r}\n".encode())
os._exit(0)
"""


def test_a_child_holding_the_pipe_does_not_hang_the_exit_nor_keep_output_back(tmp_path):
    proc = run_child(STRAGGLER, str(tmp_path / "train.log"))
    stderr = proc.stderr.decode()
    assert stderr.startswith("before\n\r 1/2 partial\nexit took "), stderr
    seconds = float(stderr.split("exit took ")[1].split(" s;")[0])
    assert seconds < 2.5 and "the file: 'before\\n 1/2 partial\\n'" in stderr

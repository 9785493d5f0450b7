"""`python -m train` ends without Python's module teardown (train.exits.exit_after), and loses nothing by it.

Each case is a fresh interpreter, since the point is how a process ends.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from testbed.servers import REPO


def _run(body: str, tmp_path: Path, *python_flags: str) -> subprocess.CompletedProcess:
    script = tmp_path / "entry.py"
    script.write_text("import atexit, sys, threading, time\nfrom pathlib import Path\n"
                      f"from train.exits import exit_after\nOUT = Path({str(tmp_path)!r})\n\n"
                      f"def entry():\n{textwrap.indent(textwrap.dedent(body).strip(), '    ')}\n\n"
                      "exit_after(entry)\n")
    return subprocess.run([sys.executable, *python_flags, str(script)], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)


@pytest.mark.parametrize("body, code, stderr", [
    ("pass", 0, ""),
    ("sys.exit(3)", 3, ""),
    ("sys.exit(None)", 0, ""),
    ("sys.exit('error: one line')", 1, "error: one line\n"),
])
def test_exit_status_is_the_entry_points(body, code, stderr, tmp_path):
    proc = _run(body, tmp_path)
    assert (proc.returncode, proc.stderr) == (code, stderr)


def test_what_a_normal_exit_does_still_happens(tmp_path):
    """Unflushed output, a non-daemon thread still working, atexit handlers (logging's flush among them)."""
    proc = _run("""
        import logging
        logging.basicConfig(filename=OUT / "log.txt", level=logging.INFO)
        atexit.register(lambda: (OUT / "atexit.txt").write_text("ran"))
        threading.Thread(target=lambda: (time.sleep(0.5), (OUT / "thread.txt").write_text("done"))).start()
        logging.getLogger("entry").info("logged")
        sys.stdout.write("no newline, never flushed")
        sys.exit(2)
    """, tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == "no newline, never flushed"
    assert (tmp_path / "thread.txt").read_text() == "done"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert "logged" in (tmp_path / "log.txt").read_text()


def test_an_open_thread_pool_does_not_keep_the_process_alive(tmp_path):
    """concurrent.futures' workers (MLflow's async logging, joblib) stop through threading's exit hooks."""
    proc = _run("""
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(2)
        pool.submit(lambda: (OUT / "task.txt").write_text("done"))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "task.txt").read_text() == "done"


def test_a_crash_takes_the_normal_path(tmp_path):
    proc = _run("raise ValueError('boom')", tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.rstrip().endswith("ValueError: boom")


def test_a_profiled_process_exits_normally_so_the_profile_is_written(tmp_path):
    profile = tmp_path / "profile.out"
    script = tmp_path / "entry.py"
    script.write_text("from train.exits import exit_after\nexit_after(lambda: None)\n")
    proc = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(profile), str(script)], cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, capture_output=True, timeout=60)
    assert proc.returncode == 0
    assert profile.stat().st_size > 0

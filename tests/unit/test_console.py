"""The console copy catches what Python, C code and child processes write, and still shows it."""

from __future__ import annotations

import subprocess
import sys

CHILD = r"""
import os, subprocess, sys
from pathlib import Path
from train.console import ConsoleTee
with ConsoleTee(Path(sys.argv[1])):
    print("from print")
    sys.stderr.write("progress\r50%\r100%\n")
    os.write(2, b"from fd 2\n")
    subprocess.run([sys.executable, "-c", "print('from a child process')"])
print("after the tee")
"""


def test_tee_copies_both_streams_and_children(tmp_path):
    log = tmp_path / "console.log"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(log)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = log.read_bytes().decode()  # read_text would turn the \r of progress bars into \n
    for line in ("from print", "progress\r50%\r100%", "from fd 2", "from a child process"):
        assert line in text
    assert "after the tee" not in text
    assert "from print" in proc.stdout and "after the tee" in proc.stdout and "from fd 2" in proc.stderr

"""Commands the program prints for the user to run next, written so they work exactly as printed.

`python` and `mlflow` are printed bare only when they are this environment's (an activated venv);
otherwise as the full path of this interpreter's, which works from any shell.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def _tool(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = shutil.which(name)
    return name if found and Path(found).resolve() == here.resolve() else str(here)


def python_command(args: str) -> str:
    """`python <args>` as this interpreter runs it (`python -m train ...` also needs this project on the path:
    run it from the project folder, as the README says)."""
    return f"{_tool('python')} {args}"


def mlflow_command(args: str) -> str:
    return f"{_tool('mlflow')} {args}"

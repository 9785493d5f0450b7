"""The recipe's defaults learn the synthetic data, and a person sees that run in the MLflow UI.

Slow on purpose (about two minutes of training): it is the proof that the quickstart trains a detector.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


MIN_MAP50 = 0.5
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def learned(recipe_run):
    return recipe_run


@pytest.mark.slow
def test_defaults_learn_the_synthetic_shapes(learned, tracking_server):
    history = tracking_server.client().get_metric_history(learned.info.run_id, "metrics/mAP_0.5")
    final = max(history, key=lambda m: m.step).value
    print(f"\nlearning test: mAP_0.5={final:.3f} after {len(history)} epochs "
          f"(best {max(m.value for m in history):.3f})")
    assert final >= MIN_MAP50


def _chromium(url: str, profile: Path, *action: str) -> subprocess.CompletedProcess:
    # Flags from ../shared/notes/mlflow-tracking.md: without the virtual-time budget the page is an empty skeleton.
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=60000", "--run-all-compositor-stages-before-draw",
         "--window-size=1400,900", *action, url],
        capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_run_page_shows_the_run_and_its_metric_charts(learned, tracking_server, tmp_path):
    url = (f"{tracking_server.uri}/#/experiments/{learned.info.experiment_id}"
           f"/runs/{learned.info.run_id}/model-metrics")
    dom = _chromium(url, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert learned.info.run_name in dom.stdout
    titles = set(re.findall(r'title="(metrics/[^"]+)"', dom.stdout))
    assert {"metrics/mAP_0.5", "metrics/mAP_0.5_0.95", "metrics/precision", "metrics/recall"} <= titles
    assert dom.stdout.count("js-plotly-plot") >= 4  # rendered charts, not just their titles

    shot = Path(os.environ.get("UI_SCREENSHOT", tmp_path / "run-metrics.png"))
    taken = _chromium(url, tmp_path / "profile", f"--screenshot={shot}")
    assert taken.returncode == 0 and shot.stat().st_size > 20_000, taken.stderr[-2000:]

"""A wrong Kubernetes backend config or Job template is refused in one line, before anything is built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train.errors import ConfigError
from train.k8s_job_template import check

REPO = Path(__file__).resolve().parents[2]
GOOD_JOB = yaml.safe_load((REPO / "kubernetes_job_template.yaml").read_text())


def backend(tmp_path: Path, job) -> Path:
    (tmp_path / "job.yaml").write_text(job if isinstance(job, str) else yaml.safe_dump(job))
    config = tmp_path / "backend.json"
    config.write_text(json.dumps({"repository-uri": "r.example/x", "kube-job-template-path": "job.yaml"}))
    return config


def test_the_shipped_config_and_template_pass():
    assert check(REPO / "k8s_backend_config.json")["repository-uri"]


@pytest.mark.parametrize("edit,problem", [
    (lambda j: j.update(kind="Pod"), "must be a batch/v1 Job"),
    (lambda j: j["metadata"].pop("namespace"), "metadata.namespace is missing"),
    (lambda j: j["spec"]["template"]["spec"].pop("containers"), "spec.template.spec.containers must list"),
    (lambda j: j["spec"]["template"]["spec"].update(restartPolicy="Always"), "restartPolicy must be Never or"),
])
def test_template_problems_are_named(tmp_path, edit, problem):
    job = yaml.safe_load(yaml.safe_dump(GOOD_JOB))
    edit(job)
    with pytest.raises(ConfigError, match=problem):
        check(backend(tmp_path, job))


def test_unreadable_inputs_are_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read .* as YAML"):
        check(backend(tmp_path, "spec: [unclosed"))
    with pytest.raises(ConfigError, match="backend config: cannot read"):
        check(tmp_path / "missing.json")


def test_command_line_exit_codes(tmp_path):
    run = lambda p: subprocess.run([sys.executable, "-m", "train.k8s_job_template", str(p)], cwd=REPO,  # noqa: E731
                                   capture_output=True, text=True)
    assert run(REPO / "k8s_backend_config.json").returncode == 0
    bad = run(backend(tmp_path, {"kind": "Job"}))
    assert bad.returncode == 2 and bad.stderr.startswith("error: kube-job-template-path:")

"""`mlflow run` of this project for real: in Docker, and through the Kubernetes backend to a Job.

The image is built from the project's Dockerfile; `mlflow run` builds, pushes and submits for real.
Only the Kubernetes API server is stood in for (tests/e2e/kube_standin.py): it runs the submitted
Job's container with the real Docker engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest

from tests.conftest import TINY, client_env, why
from tests.e2e.conftest import IN_CLUSTER_TRACKING_URI, registry_digest
from tests.e2e.kube_standin import NODE_NAME

MLFLOW = str(Path(sys.executable).parent / "mlflow")
# The tiny settings, less what has its own MLproject parameter.
OVERRIDES = " ".join(o for o in TINY if not o.startswith(("train.imgsz", "train.batch")))
PARAMS = ["-P", "epochs=1", "-P", "batch=8", "-P", "imgsz=64", "-P", f"overrides={OVERRIDES}"]


def mlflow_run(project: Path, cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    # `mlflow run` is MLflow's own CLI: its usage telemetry is switched off the way docs/tracking.md tells users.
    return subprocess.run([MLFLOW, "run", str(project), *args], cwd=cwd, env={**env, "MLFLOW_DISABLE_TELEMETRY": "true"},
                          capture_output=True, text=True, timeout=1800)


def only_run(tracking_server, experiment: str):
    client = tracking_server.client()
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def artifact_keys(tracking_server, run) -> set:
    prefix = f"{run.info.experiment_id}/{run.info.run_id}/artifacts/"
    return {key.removeprefix(prefix) for key in tracking_server.bucket_keys(prefix)}


def test_docker_env_run_finishes_with_artifacts_in_the_bucket(tracking_server, base_image, project_copy, cache_dir,
                                                              tmp_path):
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri)
    proc = mlflow_run(project_copy, tmp_path, env, "--build-image", "--experiment-name", "e2e-docker",
                      *PARAMS, "-A", "network=host")  # the container reaches the test server on the host's loopback
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = only_run(tracking_server, "e2e-docker")
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.env"] == "docker"
    assert run.data.params["epochs"] == "1" and run.data.params["train.epochs"] == "1"
    assert run.data.params["imgsz"] == run.data.params["train.imgsz"] == "64"
    assert run.data.params["train.workers"] == "0"  # from the free-form overrides param
    assert "metrics/mAP_0.5_0.95" in run.data.metrics
    assert {"logs/train.log", "training-output/weights/best.pt"} <= artifact_keys(tracking_server, run)


def _kubernetes_run(project_copy, tmp_path, kube, experiment: str, *params: str):
    """(mlflow run's process, the one Job it submitted)"""
    cluster, backend, env = kube
    standin = cluster.standin
    # --build-image: without it MLflow 3 pushes and runs the base image unchanged, without the project's code.
    proc = mlflow_run(project_copy, tmp_path, env, "--backend", "kubernetes", "--backend-config", str(backend),
                      "--build-image", "--experiment-name", experiment, *params)
    assert len(standin.jobs) == 1, proc.stderr[-4000:]
    return proc, next(iter(standin.jobs.values()))


def test_kubernetes_backend_builds_pushes_submits_and_finishes(base_image, project_copy, registry,
                                                               kube, tmp_path):
    cluster = kube[0]
    proc, job = _kubernetes_run(project_copy, tmp_path, kube, "e2e-kubernetes", *PARAMS)
    assert proc.returncode == 0, why(proc) + job.logs[-3000:]

    manifest = job.manifest
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
    assert manifest["metadata"]["namespace"] == "kubeflow"
    assert manifest["metadata"]["name"].startswith("yolov5-mlflow-")
    [container] = manifest["spec"]["template"]["spec"]["containers"]
    env = {v["name"]: v.get("value") for v in container["env"]}
    run = only_run(cluster, "e2e-kubernetes")
    assert env["MLFLOW_RUN_ID"] == run.info.run_id and env["MLFLOW_TRACKING_URI"] == IN_CLUSTER_TRACKING_URI

    # The image is the one pushed, by digest, and the run carries that digest.
    repository, digest = container["image"].split("@")
    tag = repository.rsplit(":", 1)[1]
    assert digest == registry_digest(repository.split("/", 1)[0], "yolov5-mlflow", tag)
    assert run.data.tags["mlflow.docker.image.id"] == digest
    # Lineage on Kubernetes: the node (the downward API's spec.nodeName) and its GPU model.
    assert run.data.tags["env.k8s_node"] == NODE_NAME and run.data.tags["env.gpu"] == "none"

    # The training inside the container logged to the tracking server, and both sides say FINISHED.
    assert job.exit_code == 0 and job.condition("Complete") and len(job.pods) == 1
    assert run.info.status == "FINISHED"
    assert "metrics/mAP_0.5_0.95" in run.data.metrics and run.data.params["train.epochs"] == "1"
    assert {"logs/train.log", "training-output/weights/best.pt"} <= artifact_keys(cluster, run)


def test_kubernetes_training_failure_is_failed_on_both_sides(base_image, project_copy, registry,
                                                            kube, tmp_path):
    cluster = kube[0]
    # A model yaml that exists but is no model: YOLOv5 fails building it, once the run is open.
    overrides = f"{OVERRIDES} model.cfg=/etc/hostname"
    proc, job = _kubernetes_run(project_copy, tmp_path, kube, "e2e-kubernetes-failing",
                                *PARAMS[:-1], f"overrides={overrides}")
    assert proc.returncode != 0
    # A crash is retried (backoffLimit 2): three pods, each failing the same way, then the Job fails.
    assert len(job.pods) == 3 and {p.exit_code for p in job.pods} == {1}
    assert job.condition("Failed")["reason"] == "BackoffLimitExceeded"
    assert "error: training failed" in job.logs
    run = only_run(cluster, "e2e-kubernetes-failing")
    assert run.info.status == "FAILED"
    assert "logs/train.log" in artifact_keys(cluster, run)  # the pod uploaded its own log


def test_sweep_entry_point_in_docker_nests_trials_under_the_project_run(tracking_server, base_image, project_copy,
                                                                       tmp_path):
    from tests.e2e.test_sweeps import sweep_record

    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri)
    proc = mlflow_run(project_copy, tmp_path, env, "-e", "sweep", "--build-image", "--experiment-name",
                      "e2e-docker-sweep", "-P", f"sweep={' '.join(TINY)} train.epochs=1 hyp.lr0=0.01,0.001",
                      "-A", "network=host")
    assert proc.returncode == 0, proc.stderr[-4000:]
    parent, children, rows = sweep_record(tracking_server, "e2e-docker-sweep")
    assert parent.data.tags["mlflow.project.entryPoint"] == "sweep" and parent.info.status == "FINISHED"
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children) and len(rows) == 2


def test_sweep_entry_point_as_one_kubernetes_job(base_image, project_copy, registry, kube, tmp_path):
    from tests.e2e.test_sweeps import sweep_record
    cluster = kube[0]

    proc, job = _kubernetes_run(project_copy, tmp_path, kube, "e2e-kubernetes-sweep", "-e", "sweep",
                                "-P", f"sweep={' '.join(TINY)} train.epochs=1 hyp.lr0=0.01,0.001")
    assert proc.returncode == 0, why(proc) + job.logs[-3000:]
    parent, children, rows = sweep_record(cluster, "e2e-kubernetes-sweep")
    assert parent.info.run_id == {v["name"]: v.get("value") for v in
                                  job.manifest["spec"]["template"]["spec"]["containers"][0]["env"]}["MLFLOW_RUN_ID"]
    assert parent.info.status == "FINISHED" and len(children) == 2 and len(rows) == 2


def test_kubernetes_launcher_runs_each_trial_as_a_job(base_image, project_copy, registry, kube,
                                                     tmp_path, cache_dir):
    from tests.conftest import train_cli
    from tests.e2e.test_sweeps import sweep_record
    cluster = kube[0]

    _, backend, env = kube
    standin = cluster.standin
    env = {**env, "MLFLOW_EXPERIMENT_NAME": "e2e-kubernetes-launcher"}
    proc = train_cli(tmp_path, cache_dir, [
        "-m", "hydra/launcher=kubernetes", f"hydra.launcher.backend_config={backend}",
        f"hydra.launcher.project_dir={project_copy}", "hydra.launcher.max_parallel=2", "hydra.launcher.poll_interval_s=1",
        *TINY, "train.epochs=1", "hyp.lr0=0.01,0.005,0.002"], env=env)
    pods = "\n".join(job.logs[-1500:] for job in standin.jobs.values())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + pods
    assert len(standin.jobs) == 3 and standin.max_concurrent() <= 2
    for job in standin.jobs.values():
        kubernetes_validate.validate(job.manifest, kubernetes_validate.latest_version(), strict=True)
        assert job.exit_code == 0, job.logs[-3000:]
    parent, children, rows = sweep_record(cluster, "e2e-kubernetes-launcher")
    assert parent.info.status == "FINISHED" and len(children) == 3
    assert sorted(c.data.params["hyp.lr0"] for c in children) == ["0.002", "0.005", "0.01"]
    assert parent.data.tags["best_run_id"] in {c.info.run_id for c in children}


def test_kubernetes_job_trains_on_a_dataset_in_s3_with_only_the_minio_secret(base_image, project_copy,
                                                                             registry, kube, team_s3, tmp_path):
    """`-P data=s3://...`: the pod reads the team's bucket with what the minio-credentials Secret holds (as the
    template references it), and nothing from the submitter."""
    from tests.conftest import DATA_BUCKET, yolo_dataset
    cluster = kube[0]

    files = team_s3.upload_folder(yolo_dataset(tmp_path / "data", seed=14), "k8s-widgets")
    # The team's MinIO is another Service of the cluster; the pods' minio-credentials name it.
    team_port = int(team_s3.endpoint.rsplit(":", 1)[1])
    endpoint = cluster.standin.host_service("team-minio", "kubeflow", 9001, team_port)
    cluster.standin.secrets["minio-credentials"] = {**{key: team_s3.env()[key] for key in
                                                       ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
                                                    "MLFLOW_S3_ENDPOINT_URL": endpoint}
    uri = f"s3://{DATA_BUCKET}/k8s-widgets/"
    proc, job = _kubernetes_run(project_copy, tmp_path, kube, "e2e-kubernetes-own-data", *PARAMS, "-P", f"data={uri}")
    assert proc.returncode == 0, why(proc) + job.logs[-3000:]

    [container] = job.manifest["spec"]["template"]["spec"]["containers"]
    assert not [v for v in container["env"] if v["name"].startswith(("AWS_", "MLFLOW_S3")) and "value" in v]
    run = only_run(cluster, "e2e-kubernetes-own-data")
    assert run.info.status == "FINISHED" and run.data.params["data.source"] == uri
    assert {json.loads(item.dataset.source)["uri"] for item in run.inputs.dataset_inputs} == {uri}
    assert team_s3.object_downloads("k8s-widgets/") == files


def test_kubernetes_launcher_refuses_a_pod_no_node_can_hold_before_building(base_image, project_copy, registry,
                                                                          kube, tmp_path, cache_dir):
    """The project's template asks for a GPU; the stand-in's one node has none: one line, exit 2, nothing built."""
    from tests.conftest import train_cli

    cluster, backend, env = kube
    config = {**json.loads(backend.read_text()),
              "kube-job-template-path": str(Path(__file__).resolve().parents[2] / "kubernetes_job_template.yaml")}
    backend.write_text(json.dumps(config))
    proc = train_cli(tmp_path, cache_dir, [
        "-m", "hydra/launcher=kubernetes", f"hydra.launcher.backend_config={backend}",
        f"hydra.launcher.project_dir={project_copy}", *TINY, "train.epochs=1", "hyp.lr0=0.01,0.005"],
        env={**env, "MLFLOW_EXPERIMENT_NAME": "e2e-kubernetes-launcher-gpu"})
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "nvidia.com/gpu" in proc.stderr.strip().splitlines()[-1]
    assert not cluster.standin.jobs


def test_kubernetes_launcher_gives_up_on_a_trial_whose_pod_never_starts(base_image, project_copy, registry, kube,
                                                                       tmp_path, cache_dir):
    """A Secret the template requires does not exist: the pod waits in CreateContainerConfigError, as in a cluster.
    After hydra.launcher.start_timeout_s the trial's Job is deleted and the trial counted failed, with the reason."""
    import yaml

    from tests.conftest import train_cli

    cluster, backend, env = kube
    template = Path(json.loads(backend.read_text())["kube-job-template-path"])
    job = yaml.safe_load(template.read_text())
    job["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "TEAM_TOKEN", "valueFrom": {"secretKeyRef": {"name": "team-token", "key": "TOKEN"}}})
    template.write_text(yaml.safe_dump(job, sort_keys=False))
    proc = train_cli(tmp_path, cache_dir, [
        "-m", "hydra/launcher=kubernetes", f"hydra.launcher.backend_config={backend}",
        f"hydra.launcher.project_dir={project_copy}", "hydra.launcher.poll_interval_s=1",
        "hydra.launcher.start_timeout_s=15", *TINY, "train.epochs=1", "hyp.lr0=0.01"],
        env={**env, "MLFLOW_EXPERIMENT_NAME": "e2e-kubernetes-launcher-stuck"})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "not started after 15 s" in output and "CreateContainerConfigError" in output, output[-3000:]
    [deleted] = cluster.standin.deleted_jobs
    assert not cluster.standin.jobs and deleted.pods[0].started == 0.0

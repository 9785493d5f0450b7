"""What a cluster does to a training Job, through `mlflow run --backend kubernetes` on the stand-in cluster.

Eviction (SIGTERM, grace), node loss (SIGKILL, no grace), the memory limit (OOMKilled), bad input (exit 2), a pod
no node can hold, and the tracking server's container killed mid-training. Each test prints the seconds from the
fault to the run's final state (`pytest -s` shows them; docs/kubernetes-faults.md quotes them).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, training_metrics
from tests.e2e.conftest import cpu_job_template
from tests.e2e.kube_standin import NODE_NAME
from tests.e2e.test_mlflow_project import MLFLOW, OVERRIDES

EPOCHS = 8
# A checkpoint every epoch, so a fault after epoch 1 finds one uploaded (the default is every 5 minutes).
PARAMS = ["-P", f"epochs={EPOCHS}", "-P", "batch=8", "-P", "imgsz=64", "-P",
          f"overrides={OVERRIDES} mlflow.checkpoint_every_epochs=1"]
PROBE = "metrics/mAP_0.5"


def submit(project, tmp_path, kube, experiment: str, *params: str, template: Path = None) -> subprocess.Popen:
    """`mlflow run --backend kubernetes` in the background: it waits for the Job, as a user's does."""
    cluster, backend, env = kube
    if template is not None:
        config = json.loads(backend.read_text())
        backend.write_text(json.dumps({**config, "kube-job-template-path": str(template)}))
    return subprocess.Popen([MLFLOW, "run", str(project), "--backend", "kubernetes", "--backend-config", str(backend),
                             "--build-image", "--experiment-name", experiment, *params], cwd=tmp_path,
                            env={**env, "MLFLOW_DISABLE_TELEMETRY": "true"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def the_run(cluster, experiment: str, proc: subprocess.Popen, timeout_s: float = 900):
    client = cluster.client()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if runs:
            return runs[0].info.run_id
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(1)
    raise AssertionError("no run")


def training(cluster, run_id: str, epochs: int, checkpoint: int, proc, timeout_s: float = 900) -> None:
    """Until the server holds `epochs` epochs of metrics and a checkpoint uploaded at epoch >= `checkpoint`."""
    client = cluster.client()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.get_run(run_id)
        uploaded = int(run.data.tags.get("checkpoint_epoch", -1))
        if len(client.get_metric_history(run_id, PROBE)) >= epochs and uploaded >= checkpoint:
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    raise AssertionError(f"training did not reach {epochs} epochs")


def status_after(cluster, run_id: str, wanted: str, since: float, timeout_s: float = 600) -> float:
    """Seconds from `since` until the run's status is `wanted`."""
    client = cluster.client()
    deadline = time.monotonic() + timeout_s
    while client.get_run(run_id).info.status != wanted:
        assert time.monotonic() < deadline, f"run not {wanted}: {client.get_run(run_id).info.status}"
        time.sleep(0.3)
    return time.monotonic() - since


def artifact(cluster, run, path: str) -> str:
    key = f"{run.info.experiment_id}/{run.info.run_id}/artifacts/{path}"
    return cluster.s3().get_object(Bucket="mlflow", Key=key)["Body"].read().decode()


def one_history(cluster, run, exactly_once: bool) -> None:
    """Every epoch in every metric's history (exactly once, unless epochs after the checkpoint were replayed),
    and results.csv with every epoch exactly once."""
    client = cluster.client()
    for key in training_metrics(run):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert (sorted(steps) if exactly_once else sorted(set(steps))) == list(range(EPOCHS)), (key, steps)
    rows = list(csv.reader(io.StringIO(artifact(cluster, run, "training-output/results.csv"))))
    assert [int(row[0]) for row in rows[1:]] == list(range(EPOCHS))


def finish(proc: subprocess.Popen, timeout_s: float = 900) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=timeout_s)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def fault_mid_training(project, tmp_path, kube, experiment: str, epochs: int, checkpoint: int, fault,
                       meanwhile=lambda run_id, struck: None, template: Path = None):
    """`mlflow run` until `epochs` epochs are recorded and a checkpoint of epoch >= `checkpoint` uploaded, then
    `fault(pod)`, `meanwhile(run_id, when)` and the wait for `mlflow run` to end (which must succeed):
    (run id, the Job, what `meanwhile` said, seconds from the fault to the end)."""
    cluster = kube[0]
    proc = submit(project, tmp_path, kube, experiment, *PARAMS, template=template)
    run_id = the_run(cluster, experiment, proc)
    training(cluster, run_id, epochs, checkpoint, proc)
    job = cluster.standin.only_job()
    struck = time.monotonic()
    fault(job.pod)
    said = meanwhile(run_id, struck)
    done = finish(proc)
    seconds = time.monotonic() - struck
    assert done.returncode == 0, done.stderr[-3000:] + job.logs[-3000:]
    return run_id, job, said, seconds


def report(what: str, **seconds: float) -> None:
    print(f"\nFAULT {what}: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))


def test_eviction_mid_training_continues_the_same_run_to_finished(base_image, project_copy, registry, kube, tmp_path):
    cluster = kube[0]
    run_id, job, killed, finished = fault_mid_training(
        project_copy, tmp_path, kube, "k8s-evicted", 2, 0, cluster.standin.evict,
        lambda run_id, struck: status_after(cluster, run_id, "KILLED", struck))
    report("eviction", killed=killed, finished=finished)
    first = job.pods[0]

    # The pod: SIGTERM, its DisruptionTarget ignored by podFailurePolicy (backoffLimit not spent), a second pod.
    assert first.has_condition("DisruptionTarget") and first.exit_code == 130 and killed < 300
    assert len(job.pods) == 2 and job.condition("Complete") and job.status["failed"] == 1
    run = cluster.client().get_run(run_id)
    assert run.info.status == "FINISHED"
    one_history(cluster, run, exactly_once=True)
    log = artifact(cluster, run, "logs/train.log")
    assert log.count("Resuming training from") == 1 and "KeyboardInterrupt: SIGTERM" in log
    tags = run.data.tags
    assert tags["attempt"] == "2" and tags["attempt.1.ended"].startswith("KILLED")
    assert tags["attempt.1.pod"] == first.name and tags["attempt.2.pod"] == job.pods[1].name
    assert tags["attempt.1.node"] == tags["attempt.2.node"] == NODE_NAME


def test_node_loss_mid_training_resumes_from_the_checkpoint_uploaded_during_training(base_image, project_copy,
                                                                                     registry, kube, tmp_path):
    cluster = kube[0]
    run_id, job, status, finished = fault_mid_training(
        project_copy, tmp_path, kube, "k8s-node-lost", 3, 1, cluster.standin.lose_node,
        lambda run_id, struck: cluster.client().get_run(run_id).info.status)
    report("node loss", finished=finished)
    assert status == "RUNNING"  # nothing could say otherwise

    assert job.pods[0].exit_code == 137 and job.pods[0].has_condition("DisruptionTarget") and len(job.pods) == 2
    run = cluster.client().get_run(run_id)
    assert run.info.status == "FINISHED"
    one_history(cluster, run, exactly_once=False)
    assert int(run.data.tags["resumed_at_epoch"]) >= 2  # from the uploaded checkpoint, not from scratch
    assert "lost without a word" in run.data.tags["attempt.1.ended"]


def test_out_of_memory_mid_training_is_retried_and_the_run_continues(base_image, project_copy, registry, kube,
                                                                    tmp_path):
    cluster = kube[0]
    # Room for the training (its peak RSS is about 1.7 GB) and less for the stand-in's allocator to fill.
    template = cpu_job_template(tmp_path, memory_limit="4Gi")
    run_id, job, _, finished = fault_mid_training(project_copy, tmp_path, kube, "k8s-oom", 2, 1,
                                                  cluster.standin.run_out_of_memory, template=template)
    report("OOM", finished=finished)

    first = job.pods[0]
    assert first.container_state["terminated"]["reason"] == "OOMKilled" and first.exit_code == 137
    assert not first.has_condition("DisruptionTarget") and job.status["failed"] == 1  # counted: backoffLimit 2
    run = cluster.client().get_run(run_id)
    assert run.info.status == "FINISHED" and "lost without a word" in run.data.tags["attempt.1.ended"]


def test_out_of_memory_on_every_attempt_ends_the_run_failed(base_image, project_copy, registry, kube, tmp_path):
    """No attempt can say anything: the submitter (`mlflow run`, waiting on the Job) records FAILED."""
    cluster = kube[0]
    tiny = cpu_job_template(tmp_path, memory_limit="200Mi", backoffLimit=1)
    started = time.monotonic()
    proc = submit(project_copy, tmp_path, kube, "k8s-oom-always", *PARAMS, template=tiny)
    done = finish(proc)
    report("OOM every attempt", failed=time.monotonic() - started)
    job = cluster.standin.only_job()
    assert done.returncode != 0
    assert [p.container_state["terminated"]["reason"] for p in job.pods] == ["OOMKilled", "OOMKilled"]
    assert job.condition("Failed")["reason"] == "BackoffLimitExceeded"
    [run] = cluster.client().search_runs([cluster.client().get_experiment_by_name("k8s-oom-always").experiment_id])
    assert run.info.status == "FAILED"


def test_bad_input_in_a_pod_fails_once_by_pod_failure_policy_and_the_run_says_why(base_image, project_copy, registry,
                                                                                 kube, tmp_path):
    cluster = kube[0]
    params = [*PARAMS, "-P", "weights=/no/such/weights.pt"]
    started = time.monotonic()
    done = finish(submit(project_copy, tmp_path, kube, "k8s-bad-input", *params))
    report("bad input", failed=time.monotonic() - started)
    job = cluster.standin.only_job()
    assert done.returncode != 0
    assert len(job.pods) == 1 and job.exit_code == 2
    assert job.condition("Failed")["reason"] == "PodFailurePolicy"
    [run] = cluster.client().search_runs([cluster.client().get_experiment_by_name("k8s-bad-input").experiment_id])
    assert run.info.status == "FAILED" and "model.weights" in run.data.tags.get("error", ""), job.logs[-3000:]


def test_unschedulable_pod_is_refused_before_submitting_and_bounded_after(base_image, project_copy, registry, kube,
                                                                         tmp_path):
    """The project's template asks for a GPU; the stand-in's node has none. The check before submitting says so in
    one line; submitted anyway, the template's activeDeadlineSeconds ends the Pending Job and the run FAILED."""
    cluster, backend, env = kube
    import yaml

    job = yaml.safe_load((REPO / "kubernetes_job_template.yaml").read_text())
    job["spec"]["activeDeadlineSeconds"] = 30
    gpu_template = tmp_path / "gpu-template.yaml"
    gpu_template.write_text(yaml.safe_dump(job))
    config = {**json.loads(backend.read_text()), "kube-job-template-path": str(gpu_template)}
    backend.write_text(json.dumps(config))

    check = subprocess.run([sys.executable, "-m", "train.k8s_job_template", str(backend)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 2, check.stderr
    [line] = check.stderr.strip().splitlines()
    assert "nvidia.com/gpu" in line and "Pending" in line

    started = time.monotonic()
    done = finish(submit(project_copy, tmp_path, kube, "k8s-unschedulable", *PARAMS))
    report("unschedulable", failed=time.monotonic() - started)
    submitted = cluster.standin.only_job()
    assert done.returncode != 0
    assert submitted.condition("Failed")["reason"] == "DeadlineExceeded"
    [pod] = submitted.pods
    assert pod.started == 0.0 and pod.conditions[0]["reason"] == "Unschedulable"
    [run] = cluster.client().search_runs([cluster.client().get_experiment_by_name("k8s-unschedulable").experiment_id])
    assert run.info.status == "FAILED"


def test_tracking_server_killed_and_restarted_mid_training_loses_nothing(base_image, project_copy, registry, kube,
                                                                         tmp_path):
    cluster = kube[0]
    proc = submit(project_copy, tmp_path, kube, "k8s-server-restart", *PARAMS)
    run_id = the_run(cluster, "k8s-server-restart", proc)
    training(cluster, run_id, 2, 0, proc)
    cluster.server.kill()
    time.sleep(10)  # an outage the pod rides out: its spool keeps the epochs
    ready = cluster.server.restart(cluster.ready)
    done = finish(proc)
    report("server restart", ready_again=ready)
    assert done.returncode == 0, done.stderr[-3000:] + cluster.standin.only_job().logs[-3000:]
    client = cluster.client()
    assert len(client.search_runs([client.get_experiment_by_name("k8s-server-restart").experiment_id])) == 1
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and len(cluster.standin.only_job().pods) == 1
    one_history(cluster, run, exactly_once=True)

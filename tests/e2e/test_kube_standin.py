"""The Kubernetes stand-in (tests/e2e/kube_standin.py) punishes what a cluster punishes.

Jobs are submitted through the kubernetes client, as MLflow and the sweep launcher submit them; their pods run
a small image (the local Debian with Python) pulled from the local registry by digest. Seconds per test.
"""

from __future__ import annotations

import subprocess
import time
from typing import Iterator, List

import kubernetes
import pytest

from tests.e2e.conftest import registry_digest
from tests.e2e.kube_standin import KubeStandIn, SubmittedJob

NAMESPACE = "kubeflow"


@pytest.fixture(scope="session")
def probe_image(registry, base_image) -> str:
    """The local Debian base (Python, no project) pushed to the registry: `<registry>/probe:1@sha256:...`."""
    from testbed.docker import LOCAL_BASE

    tagged = f"{registry}/standin-probe:1"
    subprocess.run(["docker", "tag", LOCAL_BASE, tagged], check=True, capture_output=True)
    subprocess.run(["docker", "push", tagged], check=True, capture_output=True)
    return f"{tagged}@{registry_digest(registry, 'standin-probe', '1')}"


@pytest.fixture
def standin(tmp_path, docker_engine) -> Iterator[KubeStandIn]:
    with KubeStandIn(backoff_s=0.5) as cluster:
        kubernetes.config.load_kube_config(str(cluster.kubeconfig(tmp_path / "kubeconfig", "standin")))
        yield cluster


def submit(image: str, script: str, name: str, backoff_limit: int = 0, grace_s: int = 30, limits=None,
           requests=None, **spec) -> str:
    """A Job shaped like the project's template (restartPolicy Never, its podFailurePolicy) running `script`."""
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"backoffLimit": backoff_limit,
                 "podFailurePolicy": {"rules": [
                     {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}},
                     {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
                 "template": {"spec": {
                     "restartPolicy": "Never", "terminationGracePeriodSeconds": grace_s,
                     "containers": [{"name": "main", "image": image, "command": ["python3", "-c", script],
                                     "resources": {"limits": limits or {}, "requests": requests or {}}}]}},
                 **spec}}
    kubernetes.client.BatchV1Api().create_namespaced_job(NAMESPACE, job)
    return name


def finished(standin: KubeStandIn, name: str, timeout_s: float = 120) -> SubmittedJob:
    """The Job once the API reports it Complete or Failed (read through the client, as MLflow polls it)."""
    api = kubernetes.client.BatchV1Api()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        conditions = api.read_namespaced_job_status(name, NAMESPACE).status.conditions or []
        if any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions):
            return standin.jobs[name]
        time.sleep(0.3)
    raise AssertionError(f"Job {name} still active: {standin.jobs[name].status}")


def reasons(job: SubmittedJob) -> List[tuple]:
    return [(c["type"], c["reason"]) for c in job.status.get("conditions", [])]


def terminated(pod) -> dict:
    return pod.container_state["terminated"]


SIGTERM_EXITS_143 = ("import signal, sys, time\n"
                     "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True), sys.exit(143)))\n"
                     "print('started', flush=True)\ntime.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 600)\n")


def test_success_is_complete_with_one_pod_pulled_by_digest(standin, probe_image):
    job = finished(standin, submit(probe_image, "import socket; print('pod', socket.gethostname())", "ok"))
    assert reasons(job) == [("Complete", "")] and job.status["succeeded"] == 1
    [pod] = job.pods
    assert f"pod {pod.name}" in pod.logs and pod.name.startswith("ok-")  # the pod's hostname is its name


def test_backoff_limit_retries_with_a_new_pod_then_fails(standin, probe_image):
    job = finished(standin, submit(probe_image, "raise SystemExit(1)", "flaky", backoff_limit=2))
    assert len(job.pods) == 3 and len({p.name for p in job.pods}) == 3
    assert reasons(job) == [("FailureTarget", "BackoffLimitExceeded"), ("Failed", "BackoffLimitExceeded")]
    assert all(terminated(p) == {**terminated(p), "exitCode": 1, "reason": "Error"} for p in job.pods)


def test_exit_2_fails_the_job_at_once_by_pod_failure_policy(standin, probe_image):
    job = finished(standin, submit(probe_image, "raise SystemExit(2)", "bad-input", backoff_limit=3))
    assert len(job.pods) == 1
    assert reasons(job) == [("FailureTarget", "PodFailurePolicy"), ("Failed", "PodFailurePolicy")]
    assert "exit code 2 matching FailJob rule at index 0" in job.status["conditions"][-1]["message"]


def test_eviction_is_sigterm_then_a_retry_that_does_not_count(standin, probe_image):
    # backoffLimit 0: only an ignored failure can be followed by a second pod.
    name = submit(probe_image, SIGTERM_EXITS_143, "evicted")
    pod = standin.wait_for_pod(name)
    time.sleep(1)
    kubernetes.client.CoreV1Api().create_namespaced_pod_eviction(
        pod.name, NAMESPACE, {"apiVersion": "policy/v1", "kind": "Eviction",
                              "metadata": {"name": pod.name, "namespace": NAMESPACE}})
    second = standin.wait_for_pod(name, attempt=2, phase="Running")
    assert "got SIGTERM" in pod.logs and terminated(pod)["exitCode"] == 143
    assert pod.has_condition("DisruptionTarget") and pod.phase == "Failed"
    standin.evict(second)
    job = standin.wait_for_pod(name, attempt=3) and standin.jobs[name]
    assert job.status["failed"] == 2 and not job.condition("Failed")


def test_termination_kills_after_the_grace_period(standin, probe_image):
    ignores_sigterm = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)"
    name = submit(probe_image, ignores_sigterm, "stubborn", grace_s=3)
    pod = standin.wait_for_pod(name)
    time.sleep(1)
    sent = time.monotonic()
    standin.evict(pod)
    standin.wait_for_pod(name, attempt=2)
    assert terminated(pod)["exitCode"] == 137 and 3 <= pod.ended - sent < 10


def test_node_loss_kills_without_grace_and_is_a_disruption(standin, probe_image):
    name = submit(probe_image, SIGTERM_EXITS_143, "lost")
    pod = standin.wait_for_pod(name)
    standin.lose_node(pod)
    standin.wait_for_pod(name, attempt=2)
    assert "got SIGTERM" not in pod.logs and terminated(pod)["exitCode"] == 137
    assert pod.has_condition("DisruptionTarget")


def test_memory_limit_bites_oom_killed_and_counted(standin, probe_image):
    hog = "chunks = []\nwhile True: chunks.append(bytearray(16 << 20))"
    job = finished(standin, submit(probe_image, hog, "hungry", limits={"memory": "128Mi"}))
    [pod] = job.pods
    assert terminated(pod)["exitCode"] == 137 and terminated(pod)["reason"] == "OOMKilled"
    assert reasons(job)[-1] == ("Failed", "BackoffLimitExceeded")


def test_a_training_outgrowing_its_limit_is_oom_killed(standin, probe_image):
    name = submit(probe_image, SIGTERM_EXITS_143, "outgrown", limits={"memory": "256Mi"})
    pod = standin.wait_for_pod(name)
    standin.run_out_of_memory(pod)
    job = finished(standin, name)
    assert terminated(pod)["reason"] == "OOMKilled" and "got SIGTERM" not in pod.logs


def test_unschedulable_pod_stays_pending_and_never_runs(standin, probe_image):
    name = submit(probe_image, "print('ran')", "wants-gpu", limits={"nvidia.com/gpu": 1},
                  activeDeadlineSeconds=4)
    time.sleep(2)
    [pod] = kubernetes.client.CoreV1Api().list_namespaced_pod(NAMESPACE, label_selector=f"job-name={name}").items
    assert pod.status.phase == "Pending"
    [scheduled] = pod.status.conditions
    assert (scheduled.type, scheduled.status, scheduled.reason) == ("PodScheduled", "False", "Unschedulable")
    assert "1 Insufficient nvidia.com/gpu" in scheduled.message
    job = finished(standin, name)
    assert reasons(job) == [("FailureTarget", "DeadlineExceeded"), ("Failed", "DeadlineExceeded")]
    assert job.pods[0].started == 0.0 and not job.pods[0].logs


def test_more_cpu_than_the_node_has_is_unschedulable(standin, probe_image):
    name = submit(probe_image, "print('ran')", "too-big", requests={"cpu": "64"}, activeDeadlineSeconds=2)
    job = finished(standin, name)
    assert "Insufficient cpu" in job.pods[0].conditions[0]["message"] and job.pods[0].started == 0.0


def test_image_is_pulled_by_digest_from_the_registry(standin, probe_image, registry):
    missing = probe_image.split("@")[0] + "@sha256:" + "0" * 64  # a digest the registry does not hold
    name = submit(missing, "print('ran')", "not-pushed", activeDeadlineSeconds=3)
    job = finished(standin, name)
    assert job.pods[0].container_state["waiting"]["reason"] in ("ErrImagePull", "ImagePullBackOff")
    assert reasons(job)[-1] == ("Failed", "DeadlineExceeded")


def test_a_failure_inside_the_stand_in_fails_the_job_visibly(standin, probe_image):
    name = submit(probe_image.split("@")[0], "print('ran')", "by-tag")  # not pinned by digest: the stand-in refuses
    job = finished(standin, name, timeout_s=20)
    assert reasons(job) == [("Failed", "StandInError")] and "not pinned by digest" in job.status["conditions"][0][
        "message"]


def test_active_deadline_terminates_a_running_pod(standin, probe_image):
    job = finished(standin, submit(probe_image, SIGTERM_EXITS_143, "slow", activeDeadlineSeconds=3))
    assert reasons(job) == [("FailureTarget", "DeadlineExceeded"), ("Failed", "DeadlineExceeded")]
    assert "got SIGTERM" in job.pods[0].logs


def test_pods_reach_services_by_name_never_the_submitters_loopback(standin, probe_image, tmp_path):
    from testbed.servers import free_port

    port = free_port()
    server = subprocess.Popen(["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        (tmp_path / "hello").write_text("from the host")
        url = standin.host_service("files", NAMESPACE, 8080, port)
        script = ("import urllib.request, sys\n"
                  f"print(urllib.request.urlopen('{url}/hello', timeout=5).read().decode())\n"
                  "try:\n"
                  f"    urllib.request.urlopen('http://127.0.0.1:{port}/hello', timeout=3)\n"
                  "    print('loopback reached')\n"
                  "except OSError as error:\n"
                  "    print('loopback refused')\n")
        job = finished(standin, submit(probe_image, script, "dns"))
    finally:
        server.terminate()
    assert url == f"http://files.{NAMESPACE}.svc.cluster.local:8080"
    assert "from the host" in job.pods[0].logs and "loopback refused" in job.pods[0].logs

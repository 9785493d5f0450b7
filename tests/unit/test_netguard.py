"""testbed/netguard: a process started with client_env() reaches loopback only, and says when it tried more.

Nothing here sends a packet beyond loopback: the guard refuses before the real connect, sendto or name lookup
(the refusals come back at once, as ENETUNREACH naming the address, not after a timeout).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from testbed.servers import NETGUARD, NETGUARD_LOG_ENV, ManagedTrackingServer, client_env

PROBE = textwrap.dedent("""
    import errno, json, socket, subprocess, sys, time
    port = int(sys.argv[1])
    out = {"guarded": getattr(socket, "yolov5_mlflow_netguard", False)}

    def attempt(name, call):
        started = time.monotonic()
        try:
            call()
            out[name] = "ok"
        except OSError as error:  # swallowed, as best-effort network code does: the log still tells
            out[name] = [type(error).__name__, error.errno, str(error)]
        out[name + "_s"] = time.monotonic() - started

    def connect(address, family=socket.AF_INET):
        with socket.socket(family) as s:
            s.settimeout(5)
            s.connect(address)
            if address[1] == port:
                s.sendall(b"hello from the guarded process")

    attempt("outside", lambda: connect(("10.255.255.1", 80)))
    attempt("mapped", lambda: connect(("::ffff:10.255.255.1", 80), socket.AF_INET6))
    attempt("connect_ex", lambda: socket.socket().connect_ex(("192.0.2.1", 443)))
    attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("192.0.2.1", 53)))
    attempt("dns", lambda: socket.getaddrinfo("pypi.org", 443))
    attempt("create_connection", lambda: socket.create_connection(("example.invalid", 80), timeout=5).close())
    attempt("loopback", lambda: connect(("127.0.0.1", port)))
    attempt("localhost", lambda: socket.getaddrinfo("localhost", port))
    child = subprocess.run([sys.executable, "-c", "import socket; print(socket.yolov5_mlflow_netguard)"],
                           capture_output=True, text=True)
    out["child_guarded"] = child.stdout.strip()
    import train  # the repository is still on PYTHONPATH
    print(json.dumps(out))
""")


def test_a_client_env_process_reaches_loopback_only_and_logs_each_refusal(tmp_path: Path):
    log = tmp_path / "refused.log"  # its own log: the session's would fail this test (tests/conftest.py)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        received = []

        def accept():
            connection, _ = server.accept()
            with connection:
                received.append(connection.recv(100))

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        proc = subprocess.run([sys.executable, "-c", PROBE, str(server.getsockname()[1]),
                               "mlflow.tracking_uri=http://trainer:canary-password@127.0.0.1:5000"], cwd=tmp_path,
                              env=client_env(**{NETGUARD_LOG_ENV: str(log)}), capture_output=True, text=True,
                              timeout=60)
        acceptor.join(5)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)

    assert out["guarded"] is True and out["child_guarded"] == "True"
    for name, address in [("outside", "10.255.255.1:80"), ("mapped", "[::ffff:10.255.255.1]:80"),
                          ("connect_ex", "192.0.2.1:443"), ("udp", "192.0.2.1:53")]:
        kind, code, message = out[name]
        assert (kind, code) == ("OSError", 101) and message.endswith(address), out[name]  # ENETUNREACH
        assert out[name + "_s"] < 1  # refused, not attempted and timed out
    assert out["dns"][0] == "gaierror" and "'pypi.org'" in out["dns"][2]
    assert out["create_connection"][0] == "gaierror" and "'example.invalid'" in out["create_connection"][2]
    assert out["loopback"] == "ok" and received == [b"hello from the guarded process"]
    assert out["localhost"] == "ok"

    lines = log.read_text().splitlines()
    assert len(lines) == 6, lines  # one per refusal, none for loopback
    for line, expected in zip(lines, ["connect to 10.255.255.1:80", "connect to [::ffff:10.255.255.1]:80",
                                      "connect to 192.0.2.1:443", "sendto to 192.0.2.1:53",
                                      "getaddrinfo of 'pypi.org'", "getaddrinfo of 'example.invalid'"]):
        assert f"refused {expected}" in line and "<string>:" in line, line  # what and where
        assert "canary-password" not in line and "http://***@127.0.0.1:5000" in line  # the command, redacted


def test_pip_runs_under_the_guard(tmp_path: Path):
    log = tmp_path / "refused.log"
    proc = subprocess.run([sys.executable, "-m", "pip", "--version"], env=client_env(**{NETGUARD_LOG_ENV: str(log)}),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("pip "), proc.stderr
    assert not log.exists() or log.read_text() == ""


def test_the_servers_run_without_the_guard(tmp_path: Path):
    """moto and `mlflow server` get the test process's own environment, not client_env()'s."""
    server = ManagedTrackingServer(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", "http://127.0.0.1:1")
    assert str(NETGUARD) not in server.env.get("PYTHONPATH", "") and NETGUARD_LOG_ENV not in server.env


def test_client_env_leaves_out_what_only_a_test_runner_sets():
    env = client_env()
    assert env["PYTHONPATH"].split(":")[0] == str(NETGUARD)
    assert "PYTEST_CURRENT_TEST" not in env  # MLflow would switch its telemetry off for it: unlike a user's run

"""The tests' network guard: a process started with this folder on PYTHONPATH cannot leave the machine.

Python imports `sitecustomize` at start-up, so every training process the tests start (testbed.servers.client_env
puts this folder first on PYTHONPATH) and every Python process those start in turn (DataLoader and joblib workers,
`mlflow run`) runs with it. A clean install must train without the network, so anything outside loopback is
refused *before* a packet leaves:

- `socket.socket.connect` / `connect_ex`, `sendto` / `sendmsg` (UDP without connect): an address outside
  127.0.0.0/8 and ::1 (IPv4-mapped loopback included) raises OSError(ENETUNREACH) naming it; AF_UNIX is allowed,
  every other family refused. A host *name* in the address is allowed only if it is local (below), and is never
  resolved here.
- `socket.getaddrinfo` / `gethostbyname` / `gethostbyname_ex` for a name that is not local raise socket.gaierror
  (an OSError) naming it: resolving it would send a DNS query. Local: `localhost` and the names /etc/hosts maps to
  loopback addresses (read by the resolver's `files` source, no query); numeric addresses pass (connect decides).
  `socket.create_connection`, urllib3, requests, asyncio all go through these.

Each refusal also appends one line to the file named by YOLOV5_MLFLOW_NETGUARD_LOG: the tests fail on any line
there, even when the code under test swallowed the error (as YOLOv5's and MLflow's best-effort calls do).

Not seen: programs that are not Python (a `git fetch` subprocess, a C library opening sockets itself), and
reverse lookups (gethostbyaddr, getnameinfo). Set YOLOV5_MLFLOW_NETGUARD=off to run a process without the guard.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time

_LOG_ENV = "YOLOV5_MLFLOW_NETGUARD_LOG"
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "localhost4", "localhost6", "ip6-localhost", "ip6-loopback"}
_real = {name: getattr(socket, name) for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex")}
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_sendto = socket.socket.sendto
_real_sendmsg = socket.socket.sendmsg


def _is_loopback_ip(host: str) -> bool | None:
    """True/False for a numeric address, None for anything else (a name)."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _hosts_file_loopback_names(path: str = "/etc/hosts") -> set:
    names = set()
    try:
        with open(path) as hosts:
            for line in hosts:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and _is_loopback_ip(fields[0]):
                    names.update(name.lower() for name in fields[1:])
    except OSError:
        pass
    return names


_local_names = _LOCAL_NAMES | _hosts_file_loopback_names()


def _text(host) -> str:
    return host.decode("ascii", "replace") if isinstance(host, (bytes, bytearray)) else str(host)


def _is_local_name(host: str) -> bool:
    return host.rstrip(".").lower() in _local_names


def _caller() -> str:
    """Where the refused call came from: the innermost frames outside this file and Python's standard library."""
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"] + os.sep
    frame, where = sys._getframe(2), []
    while frame is not None and len(where) < 4:
        name = frame.f_code.co_filename
        if name != __file__ and not name.startswith(stdlib):
            where.append(f"{'/'.join(name.split(os.sep)[-2:])}:{frame.f_lineno}")
        frame = frame.f_back
    import threading

    thread = threading.current_thread().name
    return (" < ".join(where) or "the standard library") + ("" if thread == "MainThread" else f", thread {thread}")


def _refuse(what: str, error: OSError) -> OSError:
    path = os.environ.get(_LOG_ENV)
    if path:
        import re

        command = re.sub(r"://[^/@\s]*@", "://***@", " ".join(sys.argv))[:200]  # no login from a URL in argv
        line = (f"{time.strftime('%H:%M:%S')} pid {os.getpid()} {command!r}: refused {what} "
                f"(at {_caller()})\n")
        try:
            with open(path, "a") as log:  # one short write in append mode: lines of parallel processes stay whole
                log.write(line)
        except OSError:
            pass
    return error


def _offline(what: str) -> str:
    return f"yolov5-mlflow netguard: the tests allow no network outside loopback: refused {what}"


def _check_address(sock: socket.socket, address, verb: str) -> None:
    family = sock.family
    if family == getattr(socket, "AF_UNIX", object()):
        return
    if family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and address:
        host = _text(address[0])
        shown = f"[{host}]:{address[1]}" if ":" in host and len(address) > 1 else ":".join(map(str, address[:2]))
        loopback = _is_loopback_ip(host)
        if loopback or (loopback is None and _is_local_name(host)):
            return
    else:
        shown = f"{address!r} (address family {family!r})"
    what = f"{verb} to {shown}"
    raise _refuse(what, OSError(errno.ENETUNREACH, _offline(what)))


def _check_name(host, function: str) -> None:
    if host is None:
        return
    name = _text(host)
    if name == "" or _is_loopback_ip(name) is not None or _is_local_name(name):
        return  # '' is the local host; numeric addresses resolve without a query and connect() judges them
    what = f"{function} of {name!r} (a DNS query)"
    raise _refuse(what, socket.gaierror(socket.EAI_NONAME, _offline(what)))


def _connect(self, address):
    _check_address(self, address, "connect")
    return _real_connect(self, address)


def _connect_ex(self, address):
    _check_address(self, address, "connect")
    return _real_connect_ex(self, address)


def _sendto(self, data, flags_or_address, *address):
    _check_address(self, address[0] if address else flags_or_address, "sendto")
    return _real_sendto(self, data, flags_or_address, *address)


def _sendmsg(self, buffers, ancdata=(), flags=0, address=None):
    if address is None:
        return _real_sendmsg(self, buffers, ancdata, flags)  # a connected socket: connect() was checked
    _check_address(self, address, "sendmsg")
    return _real_sendmsg(self, buffers, ancdata, flags, address)


def _getaddrinfo(host, *args, **kwargs):
    _check_name(host, "getaddrinfo")
    return _real["getaddrinfo"](host, *args, **kwargs)


def _gethostbyname(host):
    _check_name(host, "gethostbyname")
    return _real["gethostbyname"](host)


def _gethostbyname_ex(host):
    _check_name(host, "gethostbyname_ex")
    return _real["gethostbyname_ex"](host)


def _install() -> None:
    socket.socket.connect = _connect
    socket.socket.connect_ex = _connect_ex
    socket.socket.sendto = _sendto
    socket.socket.sendmsg = _sendmsg
    socket.getaddrinfo = _getaddrinfo
    socket.gethostbyname = _gethostbyname
    socket.gethostbyname_ex = _gethostbyname_ex
    socket.yolov5_mlflow_netguard = True  # for a process to check that it runs guarded


def _chain() -> None:
    """Run the sitecustomize this one shadows, if the environment has one further along sys.path."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None and spec.origin != os.path.abspath(__file__):
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if os.environ.get("YOLOV5_MLFLOW_NETGUARD", "on") != "off":
    _install()
_chain()

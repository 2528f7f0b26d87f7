"""What bench/run.py and bench/load.py share: child processes in their own sessions,
/proc readings of a process, loopback ports, and the headers Prometheus scrapes with."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")

# What Prometheus 2.x sends; a real scrape negotiates OpenMetrics and gzip.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,"
                     "application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


class Processes:
    """Children started in their own session, so that cleanup can end each whole group."""

    def __init__(self, name: str = "bench") -> None:
        self.name = name
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 30.0) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"{self.name}: pid {p.pid} did not stop in {timeout:.0f} s: SIGKILL",
                      file=sys.stderr, flush=True)
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        # A worker of loadgen could outlive its parent: end the rest of the group too.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in list(reversed(self.procs)):
            self.stop(p, timeout=10.0)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) and Threads of a process; empty if it is gone."""
    res = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:", "Threads:")):
                    k, v = line.split(":")
                    res[k] = int(v.split()[0])
    except OSError:
        pass
    return res


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process; NaN if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    except (OSError, IndexError, ValueError):
        return float("nan")


def ss_established() -> int:
    out = subprocess.run(["ss", "-tanH", "state", "established"], capture_output=True,
                         check=True).stdout
    return out.count(b"\n")


def free_port(start: int, taken: set[int] | None = None) -> int:
    """A free loopback port at or above start, below the ephemeral range."""
    for port in range(start, 32768):
        if taken is not None and port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if taken is not None:
            taken.add(port)
        return port
    raise RuntimeError("no free port")


def wait_port(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    """True once something accepts on the port; False if proc exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def wait_quiet(max_background: int, quiet_wait: float, skip: bool, name: str) -> int:
    """ESTABLISHED sockets before the load starts; waits for a busy host to calm down.

    Another benchmark or test's connections would be measured along with ours, so a
    timing run needs a quiet host; quick and smoke runs (skip) do not wait.
    """
    count = ss_established()
    if skip or count <= max_background:
        return count
    print(f"{name}: {count} ESTABLISHED sockets before the load (more than --max-background "
          f"{max_background}): waiting up to {quiet_wait:.0f} s for the host to calm down",
          file=sys.stderr, flush=True)
    deadline = time.monotonic() + quiet_wait
    while time.monotonic() < deadline:
        time.sleep(2)
        count = ss_established()
        if count <= max_background:
            return count
    raise RuntimeError(f"host busy: {count} ESTABLISHED sockets that are not ours "
                       "(use --allow-busy to run anyway)")


_HELD_LOCKS = []


def take_lock(path: str, name: str) -> None:
    """Takes the host-wide benchmark lock for the rest of this process (waiting for
    another run to finish first): two runs at once would count each other's sockets."""
    lock = open(path, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"{name}: another benchmark holds {path}; waiting for it", file=sys.stderr, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    _HELD_LOCKS.append(lock)


def start_loadgen(n: int, procs: Processes, tmp: str, set_sysctls: bool) -> subprocess.Popen:
    """bench/loadgen.py holding n connections, once it printed READY (a minute, plus a
    second per 1,000 connections, at most)."""
    here = os.path.dirname(os.path.abspath(__file__))
    ready = os.path.join(tmp, "loadgen.ready")
    argv = [sys.executable, os.path.join(here, "loadgen.py"), "-n", str(n),
            "--ready-file", ready] + (["--set-sysctls"] if set_sysctls else [])
    p = procs.start(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60 + n / 1000
    line = b""
    while not line.startswith(b"READY"):
        if time.monotonic() > deadline or p.poll() is not None:
            raise RuntimeError(f"loadgen for N={n} did not become ready (exit {p.poll()})")
        r, _, _ = select.select([p.stdout], [], [], 1.0)
        if r:
            line = p.stdout.readline()
    return p

"""Shared fixtures: the sample corpus, a real moto S3 server on 127.0.0.1, tiny params."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "raw"
BIN = Path(sys.executable).parent

# Every Prefect server the tests start (the harness, a run's ephemeral server, `prefect server
# start`) inherits this: its telemetry service writes to the SQLite database while the server
# migrates it at start-up, which on a loaded 2-core host ends in "database is locked".
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# and an ephemeral server may take longer than Prefect's default 20 s to answer there
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# Every process the tests start inherits this mark, also one whose parent died: the session's
# clean-up stops the Prefect servers that carry it and no other (a user's own server is left alone).
SESSION_MARK = f"OBF_TEST_SESSION={uuid.uuid4().hex}".encode()
os.environ["OBF_TEST_SESSION"] = SESSION_MARK.split(b"=", 1)[1].decode()
# Under pytest-xdist (`-n auto --dist loadfile`, pyproject.toml) each worker takes one core: torch and
# OpenMP default to a thread per core in every worker, and their spinning threads then fight for the
# cores (a fixture's training took 5x as long beside another worker's).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _cgroup_cpus() -> float | None:
    """The CPU quota of this process's cgroup in CPUs (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), or
    None where there is none."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        return None if quota <= 0 else quota / int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


def pytest_xdist_auto_num_workers(config) -> int:
    """Workers for `-n auto`: the CPUs this process may use (its affinity and its cgroup's quota), not
    the machine's cores that xdist counts by default: a CI container given 2 CPUs of a 16-core host
    must not start 16 workers, each building its own trained models."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpus()
    return max(1, min(cpus, int(quota) if quota else cpus))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_aws_credentials() -> dict[str, str]:
    """This environment without any AWS credentials (nor the moto server's), for a subprocess:
    credential files and instance metadata are ruled out too, so botocore fails at once, before
    any request is sent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_CONFIG_FILE": os.devnull}


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    return RAW


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server in server mode; s3fs and DVC reach it through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket; yields its s3:// URL."""
    import uuid

    import s3fs

    name = f"obf-test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(name)
    s3fs.S3FileSystem.clear_instance_cache()
    yield f"s3://{name}"


@dataclass
class DaskProcesses:
    """A running `dask scheduler` and its `dask worker`s, each worker a process group of its own."""

    address: str
    folders: list[Path]  # worker i's own folder: its cwd, with cache/, tmp/ and home/
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)  # "scheduler", "w0", "w1", ...

    def kill(self, name: str) -> None:
        """SIGKILL a process group (a worker and its nanny): it dies as on a lost machine."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.fixture
def dask_cluster(s3_server, tmp_path):
    """A real `dask scheduler` and two `dask worker` processes, as on other machines: each worker
    runs in a folder of its own, with its own OBF_CACHE, TMPDIR and HOME, and reaches S3 through
    the environment only (as it is when the fixture starts). Stopped (process groups killed) also
    when the test fails."""
    port = free_port()
    cluster = DaskProcesses(f"tcp://127.0.0.1:{port}", [tmp_path / f"worker{i}" for i in range(2)])

    def start(name: str, args: list[str], cwd: Path, **env: str) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        cluster.procs[name] = subprocess.Popen([str(BIN / "dask"), *args], cwd=cwd, env={**os.environ, **env},
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                               start_new_session=True)

    try:
        start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
              tmp_path / "scheduler")
        for i, home in enumerate(cluster.folders):
            for d in ("cache", "tmp", "home"):
                (home / d).mkdir(parents=True, exist_ok=True)
            start(f"w{i}", ["worker", cluster.address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                            "--local-directory", str(home / "tmp"), "--name", f"w{i}"], home,
                  OBF_CACHE=str(home / "cache"), TMPDIR=str(home / "tmp"), HOME=str(home / "home"))
        from distributed import Client

        with Client(cluster.address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield cluster
    finally:
        for proc in cluster.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in cluster.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a process that ignores SIGTERM must not outlive the test
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _prefect_servers() -> set[int]:
    """PIDs of the Prefect API servers (uvicorn running prefect.server) this test session started."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if not (b"uvicorn" in b" ".join(cmd) and any(b"prefect.server" in part for part in cmd)):
                continue
            if SESSION_MARK in (proc / "environ").read_bytes().split(b"\0"):
                pids.add(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="session", autouse=True)
def leave_nothing_running():
    """Every service a test starts is stopped, also when tests fail: a Prefect server that a test
    left serving (a killed flow run's ephemeral server, a harness whose parent died) is stopped at
    the end of the session and named, so the leak is seen and fixed rather than left behind."""
    before = _prefect_servers()
    yield
    left = _prefect_servers() - before
    for pid in left:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if left:
        print(f"\nconftest: stopped {len(left)} Prefect server(s) the tests left running: {sorted(left)}",
              file=sys.stderr)

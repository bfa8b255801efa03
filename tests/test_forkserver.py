"""The fork server: a forked subprocess behaves as `python -m <module>` in its worktree would, and dies with
the harness. Real processes, real fds: a probe module reports what it sees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.forkserver import ForkServer
from tests.helpers import ROOT

ONE_CORE = [min(os.sched_getaffinity(0))]

PROBE = """
import json, os, sys, time
import models
print(json.dumps({
    "models_file": models.__file__,
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "marker": os.environ.get("PROBE_MARKER"),
    "secret": os.environ.get("ANTHROPIC_API_KEY"),
    "cores": sorted(os.sched_getaffinity(0)),
    "group_leader": os.getpgid(0) == os.getpid(),
    "stdin": sys.stdin.read(),
    "threads": __import__("torch").get_num_threads(),
    "name": open("/proc/self/comm").read().strip(),
    "open_fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    "stdlib_secrets": __import__("secrets").__file__,
    "path": sys.path,
}), flush=True)
mode = sys.argv[1]
if mode == "burn":
    end = time.process_time() + float(sys.argv[2])
    while time.process_time() < end:
        pass
elif mode == "raise":
    raise RuntimeError("probe failed on purpose")
elif mode == "message":
    sys.exit("a one-line complaint")
elif mode == "sleep":
    open(sys.argv[2], "w").write(str(os.getpid()))
    time.sleep(600)
sys.exit(7)
"""


@pytest.fixture(scope="module")
def worktree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A worktree with its own `models` package: the fork must import it, not the harness's."""
    root = tmp_path_factory.mktemp("worktree")
    (root / "models").mkdir()
    (root / "models/__init__.py").write_text("")
    (root / "models/probe.py").write_text(PROBE)
    return root


@pytest.fixture(scope="module")
def server() -> ForkServer:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    server = ForkServer(sys.executable, env)
    yield server
    server.close()


def spawn(server: ForkServer, worktree: Path, log: Path, *args: str, cpu_limit_s: float | None = None) -> int:
    env = {"PYTHONPATH": str(worktree), "PROBE_MARKER": "from the request", "OMP_NUM_THREADS": "1"}
    return server.spawn("models.probe", args, str(worktree), env, str(log), ONE_CORE, cpu_limit_s, 1.0)


def wait(server: ForkServer, pid: int) -> tuple[int, float]:
    ended = server.poll(pid, timeout_s=120.0)
    assert ended is not None, "the probe never ended"
    return ended


def report(log: Path) -> dict:
    return json.loads(log.read_text().splitlines()[0])


def test_a_fork_runs_the_worktrees_module_as_python_dash_m(
    server: ForkServer, worktree: Path, tmp_path: Path
):
    log = tmp_path / "probe.log"
    code, cpu_s = wait(server, spawn(server, worktree, log, "exit", "--flag"))
    assert code == 7 and 0 <= cpu_s < 5
    seen = report(log)
    assert seen["models_file"] == str(worktree / "models/__init__.py")  # not the harness's models/
    assert seen["argv"] == ["exit", "--flag"] and seen["cwd"] == str(worktree)
    assert seen["marker"] == "from the request" and seen["secret"] is None  # only the request's environment
    assert seen["cores"] == ONE_CORE and seen["group_leader"] and seen["stdin"] == ""
    assert seen["threads"] == 1 and seen["name"] == "models.probe"
    harness_dir = str(ROOT / "harness")  # its secrets.py once shadowed the stdlib's in the server and forks
    assert not seen["stdlib_secrets"].startswith(harness_dir) and harness_dir not in seen["path"]
    assert seen["open_fds"][:3] == [0, 1, 2]
    # nothing but the log, /dev/null and the listing's own fd: not the server's pipes
    assert len(seen["open_fds"]) <= 4, seen["open_fds"]


def test_cpu_time_comes_from_the_kernel_and_failures_read_as_the_interpreters(
    server: ForkServer, worktree: Path, tmp_path: Path
):
    code, cpu_s = wait(server, spawn(server, worktree, tmp_path / "burn.log", "burn", "0.5"))
    assert code == 7 and cpu_s >= 0.5
    code, _ = wait(server, spawn(server, worktree, tmp_path / "raise.log", "raise"))
    assert code == 1 and "RuntimeError: probe failed on purpose" in (tmp_path / "raise.log").read_text()
    code, _ = wait(server, spawn(server, worktree, tmp_path / "msg.log", "message"))
    assert code == 1 and (tmp_path / "msg.log").read_text().splitlines()[-1] == "a one-line complaint"
    code, cpu_s = wait(server, spawn(server, worktree, tmp_path / "cap.log", "burn", "60", cpu_limit_s=1.0))
    assert code == -signal.SIGXCPU and cpu_s < 1.9  # the CPU limit is the kernel's


def test_forks_die_with_the_harness(worktree: Path, tmp_path: Path):
    """kill -9 of the process holding the server: the server sees its pipe close and kills its forks."""
    pid_file = tmp_path / "pid"
    holder = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from harness.forkserver import ForkServer
        server = ForkServer(sys.executable, dict(os.environ))
        env = {{"PYTHONPATH": {str(worktree)!r}}}
        args, log = ["sleep", {str(pid_file)!r}], {str(tmp_path / "s.log")!r}
        server.spawn("models.probe", args, {str(worktree)!r}, env, log, {ONE_CORE}, None, 1)
        time.sleep(600)
    """)
    harness = subprocess.Popen([sys.executable, "-c", holder])
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and harness.poll() is None, "the fork never started"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        os.kill(child, 0)  # alive
    finally:
        harness.kill()
        harness.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and "Z" not in _state(child):
        assert time.monotonic() < deadline, "the fork outlived the harness"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"

"""A fork server: the night's subprocesses start from a process that has imported torch once.

Every run starts four or five Python processes (the smoke step, training, the judge for each split and its
predictor), and each spent 2-3 s importing torch before doing anything: on a busy 2-core machine that was
most of a short run, and most of the test suite. The server imports torch (and what the model code needs)
once; each subprocess is a fork of it that then becomes `python -m <module>` in its worktree: its own
session and cores, a CPU-time limit, the given environment and sys.path, stdout and stderr in its log. A
fork starts with a pristine copy of the server's memory, in which nothing of `models` or `harness` was
ever imported, so the agent's code and the judge's pinned code each import their own files, as before.

The server is started by `python -P harness/forkserver.py` (a file, not `-m harness.forkserver`: the
harness package is never imported in it, and -P keeps harness/ off its sys.path) and speaks JSON lines on
its stdin/stdout. It is the parent of the processes it forks, so it reaps them and reports each one's exit
code and CPU time (its rusage, counted by the kernel: a child cannot forge it, and it cannot reach the
server's pipes, which it replaces first). When the harness goes away, even by kill -9, the server reads
end-of-file, kills every process group it started and exits; a forked process is SIGKILLed by the kernel if
the server dies. A judge's predictor can be forked beside it (`_start_companion`).

This module imports only the standard library: the harness imports it for `limit_this_process`, which both
ways of starting a subprocess share.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import math
import os
import resource
import runpy
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

PRELOAD = ("torch", "torch._dynamo", "safetensors.torch", "pydantic", "av", "cv2", "rich.progress")
"""What the server imports once (numpy comes with torch). torch._dynamo: torch imports it lazily when the
first optimizer is built, 1.2-1.7 s into every training and smoke step. pyarrow is left out: importing it
starts a thread, and forking a process whose other threads may hold a lock is a deadlock waiting to happen.
With one thread per run (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS = 1) none of these starts one."""

READY = "ready"
POLL_SLICE_S = 0.05


def _prctl(option: int, argument: int | bytes) -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(option, argument)


def limit_this_process(cores: Sequence[int], cpu_limit_s: float | None, margin_s: float) -> None:
    """In a new subprocess, before it runs anything: die with its parent, run only on `cores` (its threads
    inherit the affinity) and, when given, stop at a CPU-time limit: SIGXCPU at the limit, SIGKILL
    `margin_s` later. The parent's death sends SIGKILL (Linux), so a kill -9 of the harness leaves no
    orphan training behind to write into a run directory that --resume will reuse."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    if cpu_limit_s is not None:
        soft, hard = math.ceil(cpu_limit_s), math.ceil(cpu_limit_s + margin_s)
        if (ceiling := resource.getrlimit(resource.RLIMIT_CPU)[1]) != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)  # a process cannot raise its hard limit
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        # SIGXCPU's default action dumps core: not into the agent's worktree
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))


# ------------------------------------------------------------------ the server process


def _exit_code(exit: SystemExit) -> int:
    """What the interpreter would exit with for this SystemExit (a message goes to stderr, code 1)."""
    if exit.code is None:
        return 0
    if isinstance(exit.code, int):
        return exit.code
    print(exit.code, file=sys.stderr)
    return 1


def _become(request: dict, base_path: list[str]) -> int:
    """In the forked child: become `python -m request["module"] *request["args"]` as the request says, run
    it, and return its exit code. Replacing fds 0 and 1 first cuts the child off the server's pipes: it
    cannot forge the report of its own end. A request's `companion` is forked from here first (see
    `_start_companion`)."""
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for target in (1, 2):
        os.dup2(log, target)
    os.close(log)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    companion = request.get("companion")
    attached = _start_companion(companion, request["cores"], base_path) if companion else None
    _enter(request, base_path)
    if attached is not None:
        os.environ[companion["announce_env"]] = json.dumps(attached)
    return _run_module(request["module"])


def _start_companion(spec: dict, cores: Sequence[int], base_path: list[str]) -> dict:
    """Fork the request's companion, `python -m spec["module"] *spec["args"]` in its own tree, talking to
    this process over two pipes on its stdin and stdout: the judge's predictor. It is forked here, while
    this process is still the server's pristine image, so it imports its own tree's code without an
    `import torch` of its own; and it is this process's child, so the judge waits for it and reads its exit
    code as it would a predictor it had started itself. Its stderr is the log's. Returns what the main
    module finds in `spec["announce_env"]`: the companion's pid, its pipes and what it runs."""
    to_companion, from_companion = os.pipe(), os.pipe()  # not inherited by what either side starts

    def companion() -> int:
        os.dup2(to_companion[0], 0)
        os.dup2(from_companion[1], 1)
        for fd in (*to_companion, *from_companion):
            os.close(fd)
        limit_this_process(cores, None, 0)  # dies with the judge
        _enter(spec, base_path)
        return _run_module(spec["module"])

    pid = os.fork()
    if pid == 0:
        _in_child(companion)
    os.close(to_companion[0])
    os.close(from_companion[1])
    keys = ("module", "args", "cwd")
    return {"pid": pid, "stdin": to_companion[1], "stdout": from_companion[0], **{k: spec[k] for k in keys}}


def _enter(spec: dict, base_path: list[str]) -> None:
    """Set up the interpreter as `python -m` would for `spec`: Python's stdio on fds 0-2, its directory,
    environment, import path, thread count, argv, and the name ps shows."""
    env = spec["env"]
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), line_buffering=True, write_through=unbuffered
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), errors="backslashreplace", line_buffering=True, write_through=True
    )
    os.chdir(spec["cwd"])
    os.environ.clear()
    os.environ.update(env)
    extra = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
    sys.path[:] = [spec["cwd"], *extra, *base_path]
    if "torch" in sys.modules and env.get("OMP_NUM_THREADS", "").isdigit():
        sys.modules["torch"].set_num_threads(int(env["OMP_NUM_THREADS"]))  # as a fresh import reads it
    sys.argv = [spec["module"], *spec["args"]]
    if sys.platform.startswith("linux"):  # what ps and top show (a fork's command line is the server's)
        PR_SET_NAME = 15
        _prctl(PR_SET_NAME, spec["module"].encode()[:15])


def _run_module(module: str) -> int:
    """Run `module` as __main__ and return the exit code a fresh interpreter would have (at-exit handlers
    run, output flushed)."""
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit:
        code = _exit_code(exit)
    except BaseException:
        traceback.print_exc()
        code = 1
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _fork(request: dict, base_path: list[str], server_fds: Sequence[int]) -> int:
    """Fork one child for `request`; the child never returns from here."""
    pid = os.fork()
    if pid:
        # also in the child: whichever runs first, the group exists before we reply (or the child did it
        # already, or has exited)
        with contextlib.suppress(PermissionError, ProcessLookupError):
            os.setpgid(pid, pid)
        return pid

    def child() -> int:
        os.setpgid(0, 0)
        for fd in server_fds:  # the wakeup pipe; the request and report pipes (0, 1) are replaced below
            os.close(fd)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        limit_this_process(request["cores"], request["cpu_limit_s"], request["cpu_kill_margin_s"])
        return _become(request, base_path)

    _in_child(child)


def _in_child(body: Callable[[], int]) -> NoReturn:
    """Run `body` in a forked process and exit with its code: a fork never returns into the server's (or
    the judge's) code, whatever `body` raises (that is printed, and the exit code is 1)."""
    code = 1
    try:
        code = body()
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        os._exit(code)


def _write(line: dict) -> None:
    os.write(1, (json.dumps(line) + "\n").encode())


def serve() -> None:
    """The server's loop: fork on each request line, report each child's end, stop at end-of-file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the harness's to handle, not ours
    extra = set(os.environ.get("PYTHONPATH", "").split(os.pathsep))
    base_path = [entry for entry in sys.path if entry not in extra]
    sys.path[:] = base_path
    # CUDA must not be initialized in a process that forks: should an import ask whether CUDA is there,
    # NVML answers without initializing the driver (the forks set up their own environment)
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    for name in PRELOAD:
        before = set(sys.modules)
        try:
            __import__(name)
        except ImportError as err:  # the children import it themselves (or fail) as a fresh interpreter would
            print(f"fork server: not preloading {name}: {err}", file=sys.stderr)
            for half_imported in set(sys.modules) - before:
                del sys.modules[half_imported]
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so SIGCHLD writes to the wakeup fd
    children: set[int] = set()
    pending = b""
    _write({"event": READY, "pid": os.getpid()})
    while True:
        readable, _, _ = select.select([0, wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
        while children:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            cpu_s = usage.ru_utime + usage.ru_stime
            _write({"event": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status), "cpu_s": cpu_s})
        if 0 in readable:
            data = os.read(0, 65536)
            if not data:  # the harness is gone: so is everything it started
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                pid = _fork(json.loads(line), base_path, (wake_r, wake_w))
                children.add(pid)
                _write({"event": "started", "pid": pid})


# ------------------------------------------------------------------ the harness's side


class ForkServer:
    """The harness's handle on one server process: `spawn` a module in it, `poll` for its end.

    Thread-safe (parallel runs share one server). Started with the environment its children import torch
    under (thread counts, OpenMP's wait policy, no secrets): libgomp reads those once, at import.
    """

    def __init__(self, python: str, env: dict[str, str], start_timeout_s: float = 120.0) -> None:
        """Starts the server and returns at once: its imports overlap the caller's own work until the first
        `spawn`, which waits up to `start_timeout_s` for it to be ready."""
        self._lock = threading.Lock()
        self._exits: dict[int, tuple[int, float]] = {}
        self._pending = b""
        self._ready = False
        self.start_timeout_s = start_timeout_s
        self.process = subprocess.Popen(
            # -P: the script's directory (harness/) stays off sys.path, or harness/secrets.py would be the
            # stdlib's `secrets` in the server and in every fork
            [python, "-P", os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd="/",
            start_new_session=True,  # the terminal's Ctrl-C goes to the harness alone
        )

    def _wait_ready(self) -> None:
        if self._ready:
            return
        ready = self._next_event(self.start_timeout_s)
        if ready is None or ready.get("event") != READY:
            self.close()
            raise OSError(f"the fork server did not start within {self.start_timeout_s:.0f}s")
        self._ready = True

    def _next_event(self, timeout_s: float | None) -> dict | None:
        """The next line from the server (waiting at most `timeout_s`; None: none came, or the server is
        gone). Exits are filed in `_exits` as they pass."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        fd = self.process.stdout.fileno()
        while b"\n" not in self._pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            data = os.read(fd, 65536)
            if not data:
                return None
            self._pending += data
        line, self._pending = self._pending.split(b"\n", 1)
        event = json.loads(line)
        if event.get("event") == "exit":
            self._exits[event["pid"]] = (event["code"], event["cpu_s"])
        return event

    def spawn(
        self,
        module: str,
        args: Sequence[str],
        cwd: str,
        env: dict[str, str],
        log: str,
        cores: Sequence[int],
        cpu_limit_s: float | None,
        cpu_kill_margin_s: float,
        companion: dict | None = None,
    ) -> int:
        """Fork `python -m module *args` in `cwd` on `cores`, its output in `log`, stopped past `cpu_limit_s`
        CPU-seconds (SIGKILL `cpu_kill_margin_s` later); its pid, which is also its process group.

        `companion`: {"module", "args", "cwd", "env", "announce_env"}, a second module forked for this one
        to talk to (see `_start_companion`), in its process group."""
        request = {
            "module": module,
            "args": list(args),
            "cwd": cwd,
            "env": env,
            "log": log,
            "cores": list(cores),
            "cpu_limit_s": cpu_limit_s,
            "cpu_kill_margin_s": cpu_kill_margin_s,
            "companion": companion,
        }
        with self._lock:
            self._wait_ready()
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
            while (event := self._next_event(60.0)) is not None:
                if event.get("event") == "started":
                    return event["pid"]
        raise OSError("the fork server stopped answering")

    def poll(self, pid: int, timeout_s: float = 0.0) -> tuple[int, float] | None:
        """(exit code, CPU seconds) once `pid` has ended and been reaped, else None (after `timeout_s`).
        Waits in slices of POLL_SLICE_S, so that parallel runs' threads take turns reading the server."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if pid in self._exits:
                    return self._exits.pop(pid)
                left = deadline - time.monotonic()
                if self._next_event(max(0.0, min(left, POLL_SLICE_S))) is None:
                    if self.process.poll() is not None:
                        raise OSError("the fork server died")
                    if left <= 0:
                        return None

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """End the server (it kills whatever it still runs)."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


IMPORT_TIME_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
)
"""What the server's imports read once and its forks keep: thread pools and OpenMP's wait policy. Every other
variable is the request's own, set in the fork before it runs anything."""

_servers: dict[tuple[str, tuple[str | None, ...]], ForkServer] = {}
_servers_lock = threading.Lock()


def server_for(python: str, env: dict[str, str]) -> ForkServer:
    """The process's one server for this interpreter and these IMPORT_TIME_ENV values, started (with `env`)
    on first use and ended when the harness exits."""
    key = (python, tuple(env.get(name) for name in IMPORT_TIME_ENV))
    with _servers_lock:
        server = _servers.get(key)
        if server is None or not server.alive():
            server = _servers[key] = ForkServer(python, env)
        return server


@atexit.register
def _close_servers() -> None:
    for server in _servers.values():
        server.close()


if __name__ == "__main__":
    serve()
    sys.stderr.flush()
    os._exit(0)  # the teardown of the preloaded torch and co. took 0.6 s; everything written is written

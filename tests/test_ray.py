"""Parallel nights on a real Ray cluster: started here on 127.0.0.1 (two CPUs), shared by the tests of this
file, stopped after. The night is a real `harness run --executor ray` subprocess, the cluster's driver."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.agents.base import Proposal
from harness.agents.replay import write_replay
from harness.ledger import Ledger, RunStatus
from harness.paths import NightPaths, run_id_for
from tests.helpers import wait_for
from tests.night_project import (
    as_a_terminal_starts_it,
    loss_edit,
    make_project,
    replay_night_args,
    run_harness,
)
from tests.test_parallel import ALL_CORES, PARALLEL, overlap, span

TOKEN_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
"""`ray start` (Ray >= 2.59) starts a cluster with token authentication, and a driver sends the token only
in this mode. The token is this session's own, passed in the environment: `ray start` refuses to start
without one, and ~/.ray/auth_token exists only where some earlier local `ray.init` happened to write it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-node Ray cluster on 127.0.0.1 with the machine's cores; its address."""
    assert len(ALL_CORES) >= 2, "a 2-worker night needs a machine with two cores"
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "ray-start.log"
    command = [
        str(Path(sys.executable).parent / "ray"),
        *("start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1"),
        *("--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"),
        *(f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}"),
        f"--metrics-export-port={free_port()}",
    ]

    with open(log, "w") as out:
        head = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=as_a_terminal_starts_it(ALL_CORES),  # the teardown stops it with SIGINT
            env={**os.environ, **TOKEN_AUTH},
        )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the Ray head did not start:\n" + log.read_text()
            time.sleep(0.2)
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(
                head.pid, signal.SIGINT
            )  # the cluster's processes, as Ctrl-C would (1.4 s; SIGTERM, 30 s)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def job_processes(run_id: str = "") -> list[int]:
    """The Ray worker processes running a night's job now (of `run_id`'s, when given): Ray titles a worker
    `ray::<task name>`, and a job's task is named after its run (`harness.ray_workers.task_name`)."""
    prefix = f"ray::worldloop {run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(prefix):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


HANGS = Proposal(hypothesis="a training step that hangs", edits=[loss_edit("import time\ntime.sleep(600)")])


def test_a_two_worker_night_on_ray_decides_in_finish_order_and_loses_a_run_whose_worker_dies_twice(
    ray_cluster: str, small_cache: Path, tmp_path: Path
):
    """`harness run --executor ray --workers 2` on the cluster: the baseline's seeds side by side, keeps and
    discards in finish order; the hanging run's worker is killed, Ray runs the job once more, that worker is
    killed too, and the run is recorded `lost` while the night goes on."""
    root = make_project(tmp_path / "project")
    residual, _, residual_again = PARALLEL
    replay = write_replay(tmp_path / "p.jsonl", [residual, HANGS, residual_again])
    args = replay_night_args(root, "r", replay, small_cache, per_run="1s")
    proc = run_harness(
        *args,
        *("--baseline-seeds", "2", "--max-runs", "4", "--workers", "2"),
        *("--executor", "ray", "--address", ray_cluster),
        env=TOKEN_AUTH,
        cores=ALL_CORES,
    )
    hanging = run_id_for("r", 2)
    killed: list[int] = []
    for _ in range(2):  # the job, then Ray's one retry of it
        wait_for(lambda: [p for p in job_processes(hanging) if p not in killed])
        victim = next(p for p in job_processes(hanging) if p not in killed)
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    paths = NightPaths(root, "r")
    records = Ledger(paths).read()
    by_id = {r.run_id: r for r in records}
    assert sorted(by_id) == [run_id_for("r", i) for i in range(4)]
    assert [r.finished_at for r in records] == sorted(r.finished_at for r in records)
    kept, again = sorted((by_id[run_id_for("r", i)] for i in (1, 3)), key=records.index)
    assert (kept.status, again.status) == (RunStatus.KEEP, RunStatus.DISCARD) and kept.run_id in again.reason
    assert by_id[hanging].status == RunStatus.LOST and "its worker died twice" in by_id[hanging].reason
    assert hanging in out

    first, second = by_id[run_id_for("r", 0)].trials  # two Ray workers (ip:pid), side by side
    assert re.fullmatch(r"[\d.]+:\d+", first.worker) and re.fullmatch(r"[\d.]+:\d+", second.worker)
    assert first.worker != second.worker and overlap(span(first), span(second))
    for r in records:
        if r.status != RunStatus.LOST:  # the run directories came back to the head node
            assert paths.report(r.run_id).exists() and (paths.run_dir(r.run_id) / "eval_val.json").exists()
    assert (paths.run_dir(kept.run_id) / "eval_test.json").exists()
    assert "2 ray workers" in paths.summary.read_text()
    assert not job_processes()  # nothing left running on the cluster


def test_with_storage_a_run_travels_through_the_shared_directory(
    ray_cluster: str, small_cache: Path, tmp_path: Path
):
    """`--storage`: the worker writes the trial directory in the night's directory there while the job runs
    (nothing is tarred through the object store), it comes back to runs/<tag>/<run-id>/, and the night
    leaves nothing in the storage."""
    root = make_project(tmp_path / "project")
    storage = tmp_path / "shared"
    storage.mkdir()
    replay = write_replay(tmp_path / "none.jsonl", [])
    proc = run_harness(
        *replay_night_args(root, "s", replay, small_cache, per_run="1s"),
        *("--max-runs", "1", "--executor", "ray", "--address", ray_cluster, "--storage", str(storage)),
        env=TOKEN_AUTH,
        cores=ALL_CORES,
    )
    in_storage = lambda: list(storage.glob("worldloop-*/s-000-*/train_log.csv"))  # noqa: E731
    wait_for(lambda: in_storage() or proc.poll() is not None)
    assert in_storage(), "the training never wrote into the storage"  # it trains there, as it goes
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert f"runstravelthrough{storage}" in "".join(out.split())  # rich wraps the line at its width
    (record,) = Ledger(NightPaths(root, "s")).read()
    run_dir = NightPaths(root, "s").run_dir(record.run_id)
    assert record.status == RunStatus.KEEP and record.metrics_val["mse"] > 0
    for name in ("train_log.csv", "model.safetensors", "eval_val.json", "metrics.json"):
        assert (run_dir / name).is_file(), name
    assert list(storage.iterdir()) == []

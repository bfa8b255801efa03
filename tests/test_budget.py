"""The fair budget: a run's budget counts the compute it got (CPU time on CPU), on the cores it was given.

These tests check the accounting, never the speed: the suite runs beside other programs on two cores, so a
step's wall time means nothing here, while CPU time, thread counts and signals do.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import harness.executor as executor_module
from harness.executor import CPU_LIMIT_REASON, Executor, split_cores
from harness.ledger import RunStatus
from models.openmp import DEFAULT_THREADS
from models.train import BudgetClock, Usage, cpu_threads, machine_busy_seconds
from tests.helpers import ROOT, write_config

ONE_CORE = [min(os.sched_getaffinity(0))]

RUSAGE_READS = 0.85
"""How far under an RLIMIT_CPU limit a killed process's rusage may read, as a share of the limit: the
kernel enforces the limit on its scheduler's clock, rusage reports tick-sampled time scaled to it (seen on
this machine under load: 0.90, 1.88, 3.89 and 3.75 s for limits of 1, 2, 4 and 4 s)."""


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(params=["forked", "fresh"])
def spawning(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the executor starts a subprocess: forked from the fork server, or a fresh interpreter."""
    monkeypatch.setenv(executor_module.FORKSERVER_ENV, "1" if request.param == "forked" else "0")
    return request.param


def test_a_run_pinned_to_one_core_trains_one_thread_for_its_cpu_budget(
    small_cache: Path, tmp_path: Path, spawning: str
):
    config = write_config(tmp_path / "tiny.toml", small_cache)
    executor = Executor(ROOT, small_cache, cores=ONE_CORE)
    budget = 2.0
    trained = executor.train(str(config), tmp_path / "run", budget, grace_s=60.0, seed=3, timeout_s=300.0)
    assert trained.ok, trained.reason + trained.tail
    m = metrics_of(tmp_path / "run")
    assert (m["threads"], m["cores"], m["omp_num_threads"]) == (1, ONE_CORE, "1")
    assert (m["omp_wait_policy"], m["gomp_spincount"]) == (None, "300")  # the harness's WAIT_POLICY
    assert m["clock"] == "cpu" and m["budget_seconds"] == budget and m["budget_cpu_seconds"] == budget
    # the loop stops at the first step past its budget: a tiny model's step is milliseconds of CPU
    assert budget <= m["cpu_seconds"] < budget + 0.5
    assert m["samples"] == m["steps"] * 4 and m["steps"] > 2 and m["seed"] == 3
    assert m["warmup_seconds"] > 0 and m["wall_seconds"] > 0 and m["samples_per_cpu_s"] > 0
    assert m["train_seconds"] >= m["wall_seconds"] + m["warmup_seconds"] - 0.01
    # one thread cannot use more than one core's worth of CPU time per wall second
    assert m["cpu_seconds"] <= m["wall_seconds"] * 1.05 + 0.05
    assert m["others_cores"] >= 0 and m["load_start"] >= 0 and m["load_end"] >= 0
    # the harness's own measure (rusage) covers the loop and what lies outside the budget
    assert trained.cpu_s is not None and trained.cpu_s > m["cpu_seconds"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["seed"] == 3


def test_seed_sets_the_initialisation_and_a_zero_budget_trains_exactly_the_warmup_step(
    small_cache: Path, tmp_path: Path
):
    config = write_config(tmp_path / "tiny.toml", small_cache)
    executor = Executor(ROOT, small_cache, cores=ONE_CORE)
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        trained = executor.train(str(config), tmp_path / name, 0.0, grace_s=60.0, seed=seed, timeout_s=300.0)
        assert trained.ok, trained.reason + trained.tail
        runs[name] = metrics_of(tmp_path / name)
    for m in runs.values():
        assert (m["steps"], m["samples"]) == (1, 4)  # the warm-up step trains; the budget starts after it
        assert 0 <= m["cpu_seconds"] < 0.5
    assert [runs[n]["seed"] for n in "abc"] == [5, 5, 6]
    assert runs["a"]["final_loss"] == runs["b"]["final_loss"] != runs["c"]["final_loss"]
    assert runs["a"]["val_loss"] == runs["b"]["val_loss"] != runs["c"]["val_loss"]
    weights = {n: (tmp_path / n / "model.safetensors").read_bytes() for n in "abc"}
    assert weights["a"] == weights["b"] != weights["c"]


@pytest.fixture
def burner(tmp_path: Path) -> Path:
    """A worktree whose `python -m burn` spins forever (optionally deaf to SIGXCPU): a training that never
    looks at its budget."""
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    (worktree / "burn.py").write_text(
        "import signal, sys\n"
        "if 'deaf' in sys.argv:\n"
        "    signal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
        "while True:\n"
        "    pass\n"
    )
    return worktree


def test_cpu_limit_kills_a_runaway_training_with_the_reason(burner: Path, tmp_path: Path):
    executor = Executor(burner, tmp_path, cores=ONE_CORE)
    result = executor._run("training", ["burn"], tmp_path / "burn.log", timeout_s=300.0, cpu_limit_s=1.0)
    assert not result.ok and result.status == RunStatus.CRASH
    assert result.reason.startswith(CPU_LIMIT_REASON), result.reason
    # stopped at the limit by the kernel, not later (rusage reads a little under it: RUSAGE_READS)
    assert result.cpu_s is not None and RUSAGE_READS * 1.0 < result.cpu_s < 1.5
    assert not list(burner.glob("core*"))  # SIGXCPU dumps core by default; not into the worktree


def test_a_training_deaf_to_sigxcpu_is_killed_a_margin_later(
    burner: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spawning: str
):
    monkeypatch.setattr(executor_module, "CPU_KILL_MARGIN_S", 1)
    executor = Executor(burner, tmp_path, cores=ONE_CORE)
    result = executor._run("training", ["burn", "deaf"], tmp_path / "b.log", timeout_s=300.0, cpu_limit_s=1.0)
    assert result.status == RunStatus.CRASH and result.reason.startswith(CPU_LIMIT_REASON), result.reason
    # SIGKILL at the hard limit (soft + margin = 2 s), not at the soft one
    assert result.cpu_s is not None and RUSAGE_READS * 2.0 < result.cpu_s < 2.5


def test_an_edited_loop_that_ignores_its_budget_is_stopped_by_the_harness(
    small_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """models/train.py is the agent's code: the CPU limit comes from the harness, not from the loop."""
    worktree = tmp_path / "worktree"
    shutil.copytree(ROOT / "models", worktree / "models", ignore=shutil.ignore_patterns("__pycache__"))
    train_py = worktree / "models" / "train.py"
    source = train_py.read_text()
    assert "while not budget.spent:" in source
    train_py.write_text(source.replace("while not budget.spent:", "while True:"))
    monkeypatch.setattr(executor_module, "MIN_CPU_ALLOWANCE_S", 0.0)
    executor = Executor(worktree, small_cache, cores=ONE_CORE)
    config = write_config(tmp_path / "tiny.toml", small_cache)
    limit = executor.cpu_limit(budget_s=1.0, grace_s=3.0)
    assert limit == 4.0  # (budget + grace) x 1 core
    result = executor.train(str(config), tmp_path / "run", 1.0, grace_s=3.0, seed=1, timeout_s=300.0)
    assert result.status == RunStatus.CRASH, result.tail
    assert result.reason.startswith(CPU_LIMIT_REASON) and "limit is 4" in result.reason
    assert result.cpu_s is not None and RUSAGE_READS * limit < result.cpu_s < limit + 1.0
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_cpu_limit_is_the_budget_on_every_thread_plus_the_grace_and_never_under_the_minimum(tmp_path: Path):
    cores = sorted(os.sched_getaffinity(0))
    for threads, n in ((1, 1), (2, min(2, len(cores))), (len(cores) + 5, len(cores))):
        executor = Executor(tmp_path, tmp_path, cores=cores, threads=threads)
        assert executor.threads == n  # never more threads than cores
        assert executor.cpu_limit(300.0, 60.0) == 300.0 * n + max(
            60.0 * n, executor_module.MIN_CPU_ALLOWANCE_S
        )
        assert executor.cpu_limit(2.0, 1.0) == 2.0 * n + executor_module.MIN_CPU_ALLOWANCE_S
        env = executor.thread_env()
        assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == str(n)
        assert env["GOMP_SPINCOUNT"] == "300" and "OMP_WAIT_POLICY" not in env


def test_a_run_trains_one_thread_on_any_of_the_harness_cores_by_default(small_cache: Path, tmp_path: Path):
    """One thread whatever the cores (DEFAULT_THREADS: the only count fair under a CPU-time budget), free
    to run on any core the harness has, so the scheduler puts it beside, not on top of, another program."""
    executor = Executor(ROOT, small_cache)
    assert (executor.threads, executor.cores) == (1, sorted(os.sched_getaffinity(0)))
    config = write_config(tmp_path / "tiny.toml", small_cache)
    trained = executor.train(str(config), tmp_path / "run", 0.5, grace_s=60.0, seed=1, timeout_s=300.0)
    assert trained.ok, trained.reason + trained.tail
    m = metrics_of(tmp_path / "run")
    assert (m["threads"], m["omp_num_threads"], m["cores"]) == (1, "1", sorted(os.sched_getaffinity(0)))
    assert m["budget_cpu_seconds"] == 0.5 and 0.5 <= m["cpu_seconds"] < 1.0


def test_executor_runs_on_its_own_affinity_by_default_and_refuses_cores_it_cannot_use(tmp_path: Path):
    assert Executor(tmp_path, tmp_path).cores == sorted(os.sched_getaffinity(0))
    assert Executor(tmp_path, tmp_path, cores=(ONE_CORE[0], ONE_CORE[0])).cores == ONE_CORE
    with pytest.raises(ValueError, match="subset"):
        Executor(tmp_path, tmp_path, cores=[max(os.sched_getaffinity(0)) + 1])
    with pytest.raises(ValueError, match="subset"):
        Executor(tmp_path, tmp_path, cores=[])
    with pytest.raises(ValueError, match="at least one thread"):
        Executor(tmp_path, tmp_path, threads=0)


def test_split_cores_gives_parallel_runs_equal_disjoint_shares():
    assert split_cores([0, 1], 2) == [[0], [1]]
    assert split_cores([0, 1], 1) == [[0, 1]]
    assert split_cores([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3]]  # core 4 stays with the harness
    assert split_cores([2, 5, 7, 9], 2) == [[2, 5], [7, 9]]
    with pytest.raises(ValueError, match="at least 3 cores"):
        split_cores([0, 1], 3)
    with pytest.raises(ValueError, match="at least one worker"):
        split_cores([0, 1], 0)


def test_threads_are_omp_num_threads_or_one_capped_by_the_affinity(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads() == DEFAULT_THREADS == 1
    for value, threads in (("2", 2), ("8", 3), ("1,1", 1), ("0", 1), ("many", 1)):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert cpu_threads() == threads, value


def test_budget_clock_counts_cpu_seconds_of_every_core_and_starts_after_the_warmup():
    cpu = BudgetClock("cpu", 5.0, threads=2)
    wall = BudgetClock("wall", 5.0, threads=2)
    assert (cpu.budget, wall.budget) == (10.0, 5.0)  # --budget 5s on 2 cores: 10 CPU-seconds
    assert (cpu.used, cpu.progress, cpu.spent) == (0.0, 0.0, False)  # not started: the warm-up is free
    cpu.start()
    assert cpu.begin is not None and 0.0 <= cpu.used < 1.0 and not cpu.spent
    assert BudgetClock("cpu", 0.0, threads=2).progress == 1.0
    zero = BudgetClock("cpu", 0.0, threads=1)
    assert not zero.spent
    zero.start()
    assert zero.spent  # a zero budget ends right after the warm-up step


def test_others_cores_is_the_machines_busy_time_less_our_own_per_wall_second():
    start = Usage(wall=100.0, cpu=10.0, machine_busy=1000.0, load=0.5)
    assert start.others_cores(Usage(wall=110.0, cpu=25.0, machine_busy=1025.0, load=1.0)) == 1.0
    # /proc/stat counts in 10 ms ticks: a little less than our own CPU time reads as nobody else
    assert start.others_cores(Usage(wall=110.0, cpu=30.0, machine_busy=1019.99, load=1.0)) == 0.0
    assert start.others_cores(Usage(wall=110.0, cpu=30.0, machine_busy=None, load=None)) is None
    before = machine_busy_seconds()
    assert before is not None and before > 0
    Usage.now()
    assert machine_busy_seconds() >= before

"""A night's jobs on a Ray cluster: `harness run --executor ray --workers N [--address ...]`.

Ray places each job (harness/workers.Job) where its resources are free (`--cpus-per-run`, `--gpus-per-run`);
the head node stays the only git writer. A job travels as bytes: the tree of its run's commit and the night's
pinned judge (tar archives, put in Ray's object store once per run and once per night), plus the trial
directory it judges; it runs in a temporary directory on its worker with the same code a local worker
runs (harness/workers.run_job), and its run directory comes back as a tar that the head unpacks into
`runs/<tag>/<run-id>/`. No shared filesystem is assumed, but the dataset must be at the same path on every
node (copy it there, or put it on shared storage).

`--storage DIR` names a filesystem every node mounts at the same path (NFS, a cluster's scratch): trial
directories then travel through it instead of the object store (a 224 px run's weights are hundreds of MB,
which the object store would hold in memory on the head). The night gets a directory of its own there
(`worldloop-<id>/`), checks at start that every node sees it, gives each job a directory in it that the
worker trains or judges in place, copies the job's directory into `runs/<tag>/<run-id>/` when it ends and
removes it; the night's directory goes when the night ends.

A worker process or node that dies mid-job: Ray runs the job once more (`max_retries=1`, on another worker
where it can; a training starts again from an empty directory); if that dies too, the job comes back
`lost`.

Ray is an optional extra (`pip install 'worldloop[ray]'`); only this module imports it.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import tarfile
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from harness.executor import Executor, StepResult
from harness.ledger import RunStatus
from harness.trees import extract_tree
from harness.workers import Job, JobResult, PhaseCallback, run_job
from models.errors import WorldloopError

try:
    import ray
    import ray.exceptions
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError:  # pragma: no cover - the message is the test
    raise WorldloopError(
        "--executor ray needs Ray: pip install 'worldloop[ray]' (or pip install 'ray[default]>=2.40')"
    ) from None


def pack(directory: Path) -> bytes:
    """A directory's files as an uncompressed tar, paths relative to it (empty when it does not exist)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        if Path(directory).is_dir():
            for path in sorted(Path(directory).rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=str(path.relative_to(directory)))
    return out.getvalue()


def unpack(archive: bytes, directory: Path) -> None:
    """Write an archive's files into `directory` (created; files already there are replaced)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    if not archive:  # nothing to send (a training starts from an empty directory)
        return
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        tar.extractall(directory, filter="data")


def task_name(job: Job) -> str:
    """A job's name on the cluster (its worker's process title is `ray::<name>`, and Ray's dashboard and
    `ray list tasks` show it): which night's run, and which of its jobs."""
    return f"worldloop {job.run_id} {job.label}"


@ray.remote(max_retries=1)  # a dead worker process or node: once more; an exception in the job: never
def _remote_job(
    job: Job, tree: bytes, judge: bytes, trial: bytes, dataset: str, threads: int, shared: str | None = None
) -> tuple:
    """One job on a Ray worker, in a temporary directory: returns (JobResult, the trial directory's tar).
    With `shared` (a directory under --storage) the job works in it, and nothing comes back but the result."""
    with tempfile.TemporaryDirectory(prefix="worldloop-job-") as tmp:
        work = Path(tmp)
        tree_dir = extract_tree(tree, work / "tree")
        judge_dir = extract_tree(judge, work / "judge")
        if shared is not None:
            directory = Path(shared)
            if job.train:  # Ray's retry after a dead worker starts from an empty directory, as the first try
                shutil.rmtree(directory, ignore_errors=True)
                directory.mkdir(parents=True)
        else:
            directory = work / "run"
            unpack(trial, directory)
        gpus = [str(g) for g in ray.get_gpu_ids()] or None  # Ray's choice for this task (--gpus-per-run)
        executor = Executor(tree_dir, Path(dataset), judge_root=judge_dir, threads=threads, gpus=gpus)
        worker = f"{ray.util.get_node_ip_address()}:{os.getpid()}"
        result = run_job(replace(job, directory=directory), executor, worker)
        return result, b"" if shared is not None else pack(directory)


@ray.remote(num_cpus=0, max_retries=0)
def _sees(path: str) -> bool:
    return Path(path).is_file()


def shared_directory(storage: Path) -> Path:
    """A directory of the night's own under `storage`, that every live node of the cluster sees (a probe
    task pinned to each node looks for a file the head wrote): else one line naming the nodes that do not."""
    storage = Path(storage).resolve()
    if not storage.is_dir():
        raise WorldloopError(f"--storage {storage}: no such directory")
    exchange = storage / f"worldloop-{uuid.uuid4().hex[:12]}"
    try:
        exchange.mkdir()
        (exchange / "probe").write_text("seen\n")
    except OSError as err:
        raise WorldloopError(f"--storage {storage}: cannot write there ({err.strerror})") from None
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    probes = [
        _sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
            str(exchange / "probe")
        )
        for node in nodes
    ]
    blind = [
        node["NodeManagerAddress"] for node, seen in zip(nodes, ray.get(probes), strict=True) if not seen
    ]
    if blind:
        shutil.rmtree(exchange, ignore_errors=True)
        raise WorldloopError(
            f"--storage {storage}: not seen from the Ray node(s) {', '.join(blind)}; name a filesystem that "
            "every node mounts at that same path"
        )
    return exchange


class RayWorkers:
    """`count` jobs at once on a Ray cluster: the one at `address` (auto, or ray://host:port), or a local
    one started here (and stopped with the night); trial directories through `storage` when it is given."""

    name = "ray"

    def __init__(
        self,
        dataset: Path,
        judge_root: Path,
        count: int = 1,
        cpus_per_run: int | None = None,
        gpus_per_run: float = 0.0,
        address: str | None = None,
        on_phase: PhaseCallback | None = None,
        storage: Path | None = None,
    ) -> None:
        self.dataset = Path(dataset).resolve()
        self.count = count
        self.cpus = cpus_per_run or 1
        self.gpus = gpus_per_run
        self.on_phase = on_phase
        self._started_here = not ray.is_initialized()
        if self._started_here:
            try:  # "local": a cluster of its own, never one a stale /tmp/ray file names (ray.init's None)
                ray.init(
                    address=address or "local",
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="error",
                )
            except ConnectionError as err:
                auth = (
                    ""
                    if os.environ.get("RAY_AUTH_MODE")
                    else "; a cluster with token auth needs RAY_AUTH_MODE=token"
                )
                raise WorldloopError(f"--address {address}: no Ray cluster there ({err}){auth}") from None
        try:
            self.shared = shared_directory(storage) if storage is not None else None
        except WorldloopError:
            if self._started_here:
                ray.shutdown()
            raise
        self._serial = itertools.count()
        self._judge = ray.put(pack(judge_root))
        self._trees: dict[Path, ray.ObjectRef] = {}
        self._refs: set[ray.ObjectRef] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(count, thread_name_prefix="ray-job")
        self._running = 0
        self.job_overheads: list[float] = []

    def free(self) -> int:
        with self._lock:
            return self.count - self._running

    def describe(self) -> str:
        resources = ray.cluster_resources()
        where = f"{int(resources.get('CPU', 0))} CPUs, {resources.get('GPU', 0):g} GPUs in the cluster"
        per_run = f"{self.cpus} CPU{'s' * (self.cpus > 1)}" + (f", {self.gpus:g} GPU" if self.gpus else "")
        through = f"; runs travel through {self.shared.parent}" if self.shared is not None else ""
        return f"{self.count} Ray workers ({per_run} each; {where}{through})"

    def submit(self, job: Job, tree: Path) -> Future[JobResult]:
        with self._lock:
            self._running += 1
            if tree not in self._trees:
                self._trees[tree] = ray.put(pack(tree))
            tree_ref = self._trees[tree]
            serial = next(self._serial)
        shared = None
        if self.shared is not None:  # the trial's directory, where the worker writes it
            shared = self.shared / f"{job.run_id}-{serial}"
            if job.train:
                shared.mkdir()
            else:
                shutil.copytree(job.directory, shared)
        trial = pack(job.directory) if not job.train and shared is None else b""
        ref = _remote_job.options(num_cpus=self.cpus, num_gpus=self.gpus, name=task_name(job)).remote(
            job, tree_ref, self._judge, trial, str(self.dataset), self.cpus, str(shared) if shared else None
        )
        with self._lock:
            self._refs.add(ref)
        if self.on_phase is not None:
            self.on_phase(job.run_id, job.label)
        return self._pool.submit(self._collect, job, ref, time.monotonic(), shared)

    def _collect(self, job: Job, ref: ray.ObjectRef, submitted: float, shared: Path | None) -> JobResult:
        try:
            result, archive = ray.get(ref)
            if shared is not None:
                shutil.copytree(shared, job.directory, dirs_exist_ok=True)
            else:
                unpack(archive, job.directory)
            self.job_overheads.append(time.monotonic() - submitted - result.steps_s)
            return result
        except ray.exceptions.RayTaskError as err:  # our code failed on the worker: a crash, with its cause
            reason = f"the job failed on its Ray worker: {str(err).strip().splitlines()[-1]}"
            return JobResult("ray", trained=StepResult(False, 0.0, RunStatus.CRASH, reason, str(err)[-3000:]))
        except ray.exceptions.RayError as err:  # its worker or node died twice, or the cluster went away
            return JobResult("ray", lost=f"{type(err).__name__}: {str(err).strip().splitlines()[0]}")
        finally:
            if shared is not None:
                shutil.rmtree(shared, ignore_errors=True)
            with self._lock:
                self._running -= 1
                self._refs.discard(ref)

    def forget(self, tree: Path) -> None:
        """The run of `tree` is recorded: its archive may leave the object store."""
        with self._lock:
            self._trees.pop(tree, None)

    def close(self, cancel: bool = False) -> None:
        if cancel:
            with self._lock:
                refs = list(self._refs)
            for ref in refs:
                ray.cancel(ref, force=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.shared is not None:
            shutil.rmtree(self.shared, ignore_errors=True)
        if self._started_here:
            ray.shutdown()

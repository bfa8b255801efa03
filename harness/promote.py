"""`harness promote <run-id>`: a run's checkpoint becomes a model the robot can load, with its own code.

The checkpoint is assembled in a temporary directory beside its destination and renamed into place, and the
alias is a symlink replaced by a rename: a robot loading `best` sees the old model or the new one, never half.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import git

from harness.durable import atomic_write_text
from harness.executor import Executor, StepResult
from harness.ledger import EVALUATED, NightInfo, find_run, load_metrics, now
from harness.pinned import extract_judge
from models.errors import WorldloopError
from models.promoted import (
    CHECKPOINTS_DIR,
    CODE_DIR,
    MANIFEST,
    RUN_DIR,
    hashed_files,
    known_checkpoints,
    verify,
)

RUN_FILES = (
    "config.json",
    "model.safetensors",
    "ema.safetensors",
    "metrics.json",
    "train_log.csv",
    "eval_val.json",
    "eval_test.json",
    "cf_val.npz",
    "cf_test.npz",
)
TEST_TIMEOUT_S = 900.0


@dataclass
class Promoted:
    run_id: str
    path: Path
    aliases: list[str]
    manifest: dict


def _code_snapshot(repo_root: Path, commit: str, dest: Path) -> None:
    """`models/` exactly as committed in `commit` (the night's refs keep every tried commit reachable)."""
    try:
        archive = git.Repo(repo_root).git.archive("--format=tar", commit, "models", stdout_as_string=False)
    except git.GitCommandError as err:
        raise WorldloopError(f"commit {commit[:7]} is not in {repo_root}: {err.stderr.strip()}") from None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")


def promote(root: Path, run_id: str, alias: str | None = "best", test_samples: int = 512) -> Promoted:
    """Copy a judged run into checkpoints/<run-id>/ with its code and manifest; point `alias` at it."""
    root = Path(root).resolve()
    paths, record = find_run(root, run_id)
    if record.status not in EVALUATED:
        raise WorldloopError(
            f"{run_id} cannot be promoted: it is a {record.status.value} run with no judged model"
        )
    run_dir = paths.run_dir(run_id)
    if not (run_dir / "config.json").exists():
        raise WorldloopError(f"{run_dir} has no config.json: the run directory is gone or incomplete")
    base = root / CHECKPOINTS_DIR
    base.mkdir(exist_ok=True)
    tmp = base / f".{run_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / RUN_DIR).mkdir(parents=True)
    for name in RUN_FILES:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, tmp / RUN_DIR / name)
    _code_snapshot(root, record.commit, tmp / CODE_DIR)
    config = json.loads((tmp / RUN_DIR / "config.json").read_text())
    kind = record.model_kind or config.get("model", {}).get("kind")
    test = record.metrics_test or load_metrics(tmp / RUN_DIR / "eval_test.json")
    if test is None:
        try:
            step, test = judge_on_test(root, NightInfo.read(paths), kind, tmp, test_samples)
            if test is None:
                raise WorldloopError(f"evaluating {run_id} on test failed: {step.reason}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / RUN_DIR / "eval_test.log").unlink(missing_ok=True)
    manifest = {
        "run_id": run_id,
        "tag": record.tag,
        "commit": record.commit,
        "hypothesis": record.hypothesis,
        "model_kind": kind,
        "canvas": config.get("canvas", {}),
        "metrics": {"val": record.metrics_val, "test": test},
        "promoted_at": now().isoformat(),
        "files": hashed_files(tmp),
    }
    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    dest = base / run_id
    old = base / f".{run_id}.old"
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    if alias:
        point_alias(root, alias, run_id)
    return Promoted(run_id, dest, aliases_of(root).get(run_id, []), manifest)


def judge_on_test(
    root: Path, info: NightInfo | None, kind: str, checkpoint: Path, samples: int
) -> tuple[StepResult, dict | None]:
    """The run's test metrics, judged now as its night would have: the night's judge (rebuilt from its base
    commit) and the night's task for the run's model kind, the model run by the checkpoint's own code."""
    if info is None or not info.base_commit:
        raise WorldloopError(f"night {info.tag if info else '?'} has no base commit on record to judge with")
    dataset = Path(info.dataset) if info.dataset else root / "data/sim"
    with tempfile.TemporaryDirectory(prefix="worldloop-judge-") as scratch:
        judge = extract_judge(root, info.base_commit, Path(scratch) / "judge")
        executor = Executor(checkpoint / CODE_DIR, dataset, judge_root=judge)
        task = info.experiment_of(kind)
        return executor.evaluate(checkpoint / RUN_DIR, "test", samples, TEST_TIMEOUT_S, task=task)


def point_alias(root: Path, alias: str, run_id: str) -> Path:
    """checkpoints/<alias> -> <run-id>, switched by one rename."""
    if "/" in alias or alias.startswith(".") or alias in known_runs(root):
        raise WorldloopError(f"{alias!r} cannot be an alias: use a plain name that is not a run id")
    base = Path(root) / CHECKPOINTS_DIR
    link = base / alias
    tmp = base / f".{alias}.link"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_id)
    os.replace(tmp, link)
    return link


def known_runs(root: Path) -> list[str]:
    base = Path(root) / CHECKPOINTS_DIR
    return [n for n in known_checkpoints(root) if not (base / n).is_symlink() and not n.startswith(".")]


def aliases_of(root: Path) -> dict[str, list[str]]:
    base = Path(root) / CHECKPOINTS_DIR
    out: dict[str, list[str]] = {}
    for name in known_checkpoints(root):
        if (base / name).is_symlink():
            out.setdefault(os.readlink(base / name), []).append(name)
    return out


def list_promoted(root: Path) -> list[Promoted]:
    """Every promoted checkpoint, verified: a damaged one is listed with its problem instead of metrics."""
    root = Path(root)
    aliases = aliases_of(root)
    out = []
    for run_id in known_runs(root):
        path = root / CHECKPOINTS_DIR / run_id
        try:
            manifest = verify(path)
        except WorldloopError as err:
            manifest = {"error": str(err)}
        out.append(Promoted(run_id, path, aliases.get(run_id, []), manifest))
    return out

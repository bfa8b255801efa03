"""The judge a proposal cannot reach: the same weights get the same scores, whatever the agent's code does.

A night-like project (tests/night_project.py) is committed and its judge extracted (harness/pinned.py); the
tiny trained DiT of tests/fixtures is judged on the task of that commit, its model run by a worktree copy
that each test edits the way a proposal could. Edits to pinned files are refused by the workspace; every
other edit reaches only the predictions: the judged metrics of the same weights stay exactly what they were,
or the judge refuses the model with a reason. The judge itself never imports a file of the worktree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import git
import pytest

from harness.executor import Executor
from harness.pinned import PINNED_FILES, extract_judge
from harness.workspace import ProposalRejected, check_path
from models.errors import WorldloopError
from models.evaluate import TIMING_KEYS, evaluate_run
from models.predictor import ATTACHED_ENV, PredictorError, _attached_predictor
from tests.helpers import ROOT
from tests.night_project import EXPERIMENT, make_project

FIXTURE = ROOT / "tests/fixtures/tiny-dit"  # trained on a 32 px canvas: the night project's task
TIMEOUT_S = 120.0
PREDICT = "    def predict(self, context: Tensor, actions: Tensor, seed: int | None = None) -> Tensor:\n"

Edit = Callable[[Path, Path], None]
"""An edit of (the worktree, the run directory), made after training."""


def replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {path}"
    path.write_text(text.replace(old, new))


def append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n" + code)


def scaled_to_tensor(tree: Path, run: Path) -> None:
    """The issue's proposal: world_model.to_tensor scaled by 0.1 (the judge once built its truth with it)."""
    append(
        tree / "models/world_model.py",
        "_pinned_to_tensor = to_tensor\n\n\n"
        "def to_tensor(canvases, device='cpu'):\n    return _pinned_to_tensor(canvases, device).mul_(0.1)\n",
    )


def bigger_val_split(tree: Path, run: Path) -> None:
    """An agent 'improving' the split in models/config.py: every config it loads has another val split."""
    replace(
        tree / "models/config.py",
        "from models.task import DataConfig\n",
        "from pydantic import field_validator\n\n"
        "from models.task import DataConfig as TaskData\n\n\n"
        "class DataConfig(TaskData):\n"
        "    @field_validator('val_fraction', 'split_seed')\n"
        "    @classmethod\n"
        "    def _more(cls, value):\n        return 0.5 if isinstance(value, float) else 7\n",
    )


def load_run_with_other_data(tree: Path, run: Path) -> None:
    """models/checkpoint.load_run returns a config with another dataset and split."""
    append(
        tree / "models/checkpoint.py",
        "_load_run = load_run\n\n\n"
        "def load_run(run_dir, ema=True, device='cpu'):\n"
        "    model, config = _load_run(run_dir, ema, device)\n"
        "    data = config.data.model_copy(update={'dataset': Path('/nowhere'), 'val_fraction': 0.5})\n"
        "    return model, config.model_copy(update={'data': data})\n",
    )


def run_config_data(tree: Path, run: Path) -> None:
    """The run's config.json rewritten after training: another dataset and split."""
    config = json.loads((run / "config.json").read_text())
    config["data"] = {"dataset": "/nowhere", "split_seed": 7, "val_fraction": 0.5, "test_fraction": 0.2}
    (run / "config.json").write_text(json.dumps(config))


def patches_numpy_and_torch_and_prints(tree: Path, run: Path) -> None:
    """Model code that, at import, makes numpy's mean and float64 powers in torch 100x smaller (what the judge
    computes its errors with), and prints to stdout, raw on fd 1 too, at import and in every predict."""
    append(
        tree / "models/dit.py",
        "import os as _os\n\nimport numpy as _np\n\n"
        "_mean, _pow, _tmean = _np.mean, torch.Tensor.__pow__, torch.mean\n"
        "_np.mean = lambda *a, **k: _mean(*a, **k) * 0.01\n"
        "torch.Tensor.__pow__ = lambda x, e: _pow(x, e) * (0.01 if x.dtype == torch.float64 else 1)\n"
        "torch.Tensor.pow = torch.Tensor.__pow__\n"
        "torch.mean = lambda x, *a, **k: _tmean(x, *a, **k) * (0.01 if x.dtype == torch.float64 else 1)\n"
        "print('dit.py: numpy and torch patched')\n",
    )
    replace(
        tree / "models/dit.py",
        PREDICT,
        PREDICT + "        print('predicting')\n        _os.write(1, b'WLP1 raw bytes on fd 1\\n')\n",
    )


HARMLESS: dict[str, tuple[list[str], Edit]] = {
    "to_tensor": (["models/world_model.py"], scaled_to_tensor),
    "split": (["models/config.py"], bigger_val_split),
    "load_run": (["models/checkpoint.py"], load_run_with_other_data),
    "config.json data": ([], run_config_data),
    "monkeypatch and print": (["models/dit.py"], patches_numpy_and_torch_and_prints),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed night project whose experiments/dit.toml is the tiny DiT's task (32 px frames)."""
    return make_project(tmp_path_factory.mktemp("isolation") / "project")


@pytest.fixture(scope="module")
def judge_root(project: Path) -> Path:
    return extract_judge(project, git.Repo(project).head.commit.hexsha, project.parent / "judge")


@pytest.fixture
def tree(project: Path, tmp_path: Path) -> Path:
    """A worktree-like copy of the project: what a proposal edits."""
    for name in ("models", "experiments"):
        shutil.copytree(
            project / name, tmp_path / "tree" / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    return tmp_path / "tree"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "run"))


def judge(run: Path, tree: Path, judge_root: Path, dataset: Path, **options: object) -> dict:
    """The night's judge (pinned code, the base commit's task), the model run by `tree`'s code."""
    task = judge_root / EXPERIMENT
    return evaluate_run(run, "val", task=task, dataset=dataset, predictor_root=tree, **options)


def scores(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


@pytest.fixture(scope="module")
def reference(project: Path, judge_root: Path, small_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """The unedited project's judgement of the fixture's weights."""
    run = Path(shutil.copytree(FIXTURE, tmp_path_factory.mktemp("reference") / "run"))
    metrics = judge(run, project, judge_root, small_cache)
    assert metrics["n_samples"] > 0 and metrics["cf_acc"] > 1 / 3 and 0 < metrics["mse"] < metrics["copy_mse"]
    return metrics


@pytest.mark.parametrize("name", HARMLESS)
def test_an_edit_outside_the_pinned_set_leaves_the_scores_of_the_same_weights(
    name: str, tree: Path, run: Path, judge_root: Path, small_cache: Path, reference: dict
):
    paths, edit = HARMLESS[name]
    for path in paths:
        assert check_path(path) == path  # a proposal may make this edit
    edit(tree, run)
    assert scores(judge(run, tree, judge_root, small_cache)) == scores(reference)


@pytest.mark.parametrize(
    "path",
    ["models/pixels.py", "models/task.py", "models/data.py", "models/evaluate.py", "models/serve.py",
     "models/predictor.py", "models/task/__init__.py", "models/evaluate.json"],
)  # fmt: skip
def test_the_conventions_the_task_and_the_judge_cannot_be_edited_or_shadowed(path: str):
    with pytest.raises(ProposalRejected, match="pinned"):
        check_path(path)


def test_a_run_whose_config_json_has_another_canvas_is_refused(
    tree: Path, run: Path, judge_root: Path, small_cache: Path
):
    config = json.loads((run / "config.json").read_text())
    config["canvas"]["velocity_range"] = 10.0
    (run / "config.json").write_text(json.dumps(config))
    message = r"another canvas than the task's: velocity_range 10.0 \(task: 20.0\)"
    with pytest.raises(WorldloopError, match=message):
        judge(run, tree, judge_root, small_cache)


def sabotage_pinned_copies(tree: Path) -> None:
    """The worktree's copies of judging code changed on disk (no proposal can; a bug or a person could):
    a judge that imported them would crash, or judge the train split."""
    (tree / "models/evaluate.py").write_text("raise RuntimeError('the worktree copy of the judge ran')\n")
    append(
        tree / "models/data.py",
        "_load_split = load_split\n\n\n"
        "def load_split(root, config, name, split=DEFAULT_SPLIT, cache_root=None):\n"
        "    return _load_split(root, config, 'train', split, cache_root)\n",
    )


def test_the_night_judge_never_runs_the_worktrees_copy_of_a_pinned_file(
    tree: Path, run: Path, judge_root: Path, small_cache: Path, reference: dict
):
    sabotage_pinned_copies(tree)
    executor = Executor(tree, small_cache, judge_root=judge_root)
    step, metrics = executor.evaluate(run, "val", 512, TIMEOUT_S, task=EXPERIMENT)
    assert step.ok, step.reason + "\n" + step.tail
    assert scores(metrics) == scores(reference)

    (tree / "models/evaluate.py").write_text((judge_root / "models/evaluate.py").read_text())
    step, fooled = Executor(tree, small_cache).evaluate(run, "val", 512, TIMEOUT_S, task=EXPERIMENT)
    assert step.ok and scores(fooled) != scores(reference)  # the sabotage bites a judge that runs it


MODULE_FILES = """
import json, sys
out, args = sys.argv[1], json.loads(sys.argv[2])
try:
    from models.evaluate import main
    main(args)
finally:
    files = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}
    open(out, "w").write(json.dumps(files))
"""
"""The judge's command line, as `python -m models.evaluate ARGS` runs it, writing as it ends the file of every
module it imported."""


def test_every_module_the_judge_imports_is_pinned_and_none_is_the_worktrees(
    tree: Path, run: Path, judge_root: Path, small_cache: Path, tmp_path: Path
):
    out = tmp_path / "modules.json"
    args = [str(run), "--task", str(judge_root / EXPERIMENT), "--dataset", str(small_cache)]
    args += ["--predictor-root", str(tree), "--max-samples", "4"]
    command = [sys.executable, "-c", MODULE_FILES, str(out), json.dumps(args)]
    env = {**os.environ, "PYTHONPATH": str(judge_root)}  # as the executor runs the judge
    result = subprocess.run(command, cwd=judge_root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    files = json.loads(out.read_text())
    ours = {name: Path(f) for name, f in files.items() if name == "models" or name.startswith("models.")}
    assert ours["models.evaluate"] == judge_root / "models/evaluate.py"
    assert {p.relative_to(judge_root).as_posix() for p in ours.values()} <= set(PINNED_FILES)
    assert not [f for f in files.values() if f and Path(f).is_relative_to(tree)]


def crash_in_predict(tree: Path) -> None:
    replace(tree / "models/dit.py", PREDICT, PREDICT + "        raise RuntimeError('boom in predict')\n")


def test_a_predictor_that_crashes_ends_the_judge_in_one_line(
    tree: Path, run: Path, judge_root: Path, small_cache: Path
):
    crash_in_predict(tree)
    step, metrics = Executor(tree, small_cache, judge_root=judge_root).evaluate(
        run, "val", 512, TIMEOUT_S, task=EXPERIMENT
    )
    assert metrics is None and not step.ok
    assert step.reason.endswith(
        "error: the model's predictor failed while predicting: RuntimeError: boom in predict"
    )
    assert "Traceback" in step.tail  # the predictor's own account is in the log


HANGS = "    import time\n    time.sleep(600)\n"
DIES = "    import os\n    os._exit(3)\n"


@pytest.mark.parametrize(
    ("code", "timeout_s", "message"),
    [
        (HANGS, 3.0, "did not answer within 3s (loading the run)"),
        (DIES, None, "exited with code 3 while loading the run"),
    ],
    ids=["hangs", "dies"],
)
def test_a_predictor_that_hangs_or_dies_is_named(
    code: str,
    timeout_s: float | None,
    message: str,
    tree: Path,
    run: Path,
    judge_root: Path,
    small_cache: Path,
):
    wrapper = "_load_run = load_run\n\n\ndef load_run(*args, **kwargs):\n"
    append(tree / "models/checkpoint.py", wrapper + code + "    return _load_run(*args, **kwargs)\n")
    with pytest.raises(PredictorError, match=re.escape(message)):
        judge(run, tree, judge_root, small_cache, timeout_s=timeout_s)


def _process(pid: int) -> tuple[str, int]:
    """(name, parent pid) of a process, from /proc."""
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return status["Name"].strip(), int(status["PPid"])


def _forked_predictors(tree: Path) -> list[tuple[int, str]]:
    """(pid, its parent's name) of the processes named models.serve running in `tree`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "cwd") == str(tree.resolve()):
                name, parent = _process(int(proc.name))
                if name == "models.serve":
                    found.append((int(proc.name), _process(parent)[0]))
        except OSError:  # gone, or not ours
            continue
    return found


@pytest.mark.parametrize(
    ("code", "message"),
    [(HANGS, "did not answer within 3s"), (DIES, "exited with code 3")],
    ids=["hangs", "dies"],
)
def test_the_harness_judge_takes_over_the_predictor_forked_beside_it(
    code: str, message: str, tree: Path, run: Path, judge_root: Path, small_cache: Path
):
    """The executor's judge finds its predictor already forked (the fork server's companion), as its own
    child: a hang and an exit code read as from one it started."""
    append(tree / "models/checkpoint.py", "_load_run = load_run\n\n\ndef load_run(*args, **kwargs):\n" + code)
    executor = Executor(tree, small_cache, judge_root=judge_root)
    seen: list[tuple[int, str]] = []
    watcher = threading.Thread(target=lambda: seen.extend(_wait_for_predictor(tree)), daemon=True)
    watcher.start()
    step, metrics = executor.evaluate(run, "val", 64, timeout_s=18.0, task=EXPERIMENT)  # the predictor: 3 s
    assert not step.ok and metrics is None and message in step.reason, step.reason
    if code == HANGS:  # while it hung: the judge's child, forked before the judge began
        watcher.join(timeout=5)
        assert [parent for _, parent in seen] == ["models.evaluate"], seen
    assert _forked_predictors(tree) == []  # none left behind


def _wait_for_predictor(tree: Path, timeout_s: float = 15.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := _forked_predictors(tree):
            return found
        time.sleep(0.05)
    return []


def test_an_announced_predictor_serves_only_the_run_it_was_forked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The judge takes over an announced predictor only if it runs exactly what the judge would start."""
    args = [str(tmp_path / "run"), "--device", "cpu"]
    for announced_args, taken in ((args, True), ([str(tmp_path / "other"), "--device", "cpu"], False)):
        stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        to_it, from_it = os.pipe(), os.pipe()
        announced = {"module": "models.serve", "args": announced_args, "cwd": str(tmp_path)}
        monkeypatch.setenv(
            ATTACHED_ENV,
            json.dumps({"pid": stand_in.pid, "stdin": to_it[1], "stdout": from_it[0], **announced}),
        )
        process = _attached_predictor(args, tmp_path)
        assert ATTACHED_ENV not in os.environ  # taken once
        if taken:
            assert process is not None and process.pid == stand_in.pid and process.poll() is None
            process.kill()
            assert process.wait(timeout=10) == -signal.SIGKILL
        else:
            assert process is None
            with pytest.raises(ChildProcessError):  # ended, and reaped
                os.waitpid(stand_in.pid, os.WNOHANG)

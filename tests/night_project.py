"""A project a night can run on: a git repository with this repository's `models/` and a tiny DiT config.

Its baseline is made deliberately bad (no residual, a learning rate far too small to change a weight), so
that "residual = true" (predict the last frame) is a certain improvement and turning it off again a certain
regression. Predictions then do not depend on the action, so counterfactual accuracy is exactly chance for
every run and its guard holds: keep and discard are decided by the real judge without training noise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import git

from harness.agents.base import FileEdit, Proposal
from harness.ledger import MemoryEdit
from harness.loop import NightSettings
from tests.helpers import ROOT

EXPERIMENT = "experiments/dit.toml"
BASE_CONFIG = """# tiny DiT for the loop tests: a baseline that cannot learn in seconds
[model]
kind = "dit"
patch = 8
width = 32
depth = 1
heads = 2
residual = false

[canvas]
frame_width = 32
frame_height = 32

[data]
dataset = "data/sim"

[train]
lr = 1e-30
warmup_steps = 0
log_every_s = 0.5
"""


def make_project(root: Path) -> Path:
    """A git repository holding what a night needs: models/, experiments/, LOOP.md, .gitignore."""
    shutil.copytree(ROOT / "models", root / "models", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "experiments").mkdir()
    (root / EXPERIMENT).write_text(BASE_CONFIG)
    shutil.copy(ROOT / "LOOP.md", root / "LOOP.md")
    shutil.copy(ROOT / ".gitignore", root / ".gitignore")
    git.Repo.init(root, initial_branch="main")
    return commit_all(root, "the project")


def commit_all(root: Path, message: str) -> Path:
    """Commit every change as the researcher (no global git identity needed)."""
    repo = git.Repo(root)
    repo.git.add("--all")
    actor = git.Actor("researcher", "researcher@example.com")
    repo.index.commit(message, author=actor, committer=actor)
    return root


def config_edit(search: str, replace: str) -> FileEdit:
    return FileEdit(path=EXPERIMENT, search=search, replace=replace)


def tiny_night(root: Path, tag: str, dataset: Path, **overrides: object) -> NightSettings:
    """Night settings for seconds-long runs on the tiny config; one baseline seed (the tiny baseline's seeds
    score alike, so a second one tells nothing: tests of the noise floor ask for it). Half a CPU-second of
    training per run: at the tiny config's lr of 1e-30 nothing is learned anyway, and what the tests check is
    where each run goes. A hung run is killed 3 budgets + the grace in (9.5 s); an honest one trains in well
    under a second of wall time, forked, so a machine 4x busier still leaves it seconds of room."""
    fields = {
        "budget_s": 600,
        "per_run_s": 0.5,
        "grace_s": 8,
        "eval_samples": 32,
        "baseline_seeds": 1,
        **overrides,
    }
    return NightSettings(root=root, tag=tag, dataset=dataset, **fields)


def as_a_terminal_starts_it(cores: list[int] | None = None) -> Callable[[], None]:
    """A `preexec_fn`: Ctrl-C at its default, even when the tests themselves run in the background (a shell's
    `&` starts them with SIGINT ignored, which a child keeps), on `cores` when given (the test's own
    affinity otherwise: one core under `make test`)."""

    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if cores is not None:
            os.sched_setaffinity(0, cores)

    return preexec


def run_harness(*args: str, env: dict | None = None, cores: list[int] | None = None) -> subprocess.Popen:
    """`harness run` as a terminal starts it (`as_a_terminal_starts_it`), on `cores` when given."""
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "run", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=as_a_terminal_starts_it(cores),
    )


def replay_night_args(root: Path, tag: str, replay: Path, dataset: Path, per_run: str) -> list[str]:
    """`harness run` arguments of a replay night on the tiny project."""
    return [
        *("--root", str(root), "--tag", tag, "--budget", "10m", "--per-run", per_run, "--grace", "15s"),
        *("--agent", "replay", "--replay", str(replay), "--dataset", str(dataset), "--eval-samples", "32"),
        *("--baseline-seeds", "1"),  # the noise floor is tested on the module's night
    ]


# ------------------------------------------------------------------ proposals with certain fates

LOSS_LINE = "    def loss(self, canvases: Tensor, actions: Tensor) -> Tensor:\n"


def loss_edit(body: str) -> FileEdit:
    """Code run at the top of DiT.loss: after the smoke step's single call, it misbehaves."""
    injected = "        self.calls = getattr(self, 'calls', 0) + 1\n        if self.calls > 3:\n" + "".join(
        f"            {line}\n" for line in body.splitlines()
    )
    return FileEdit(path="models/dit.py", search=LOSS_LINE, replace=LOSS_LINE + injected)


SAVE_LINE = "    save_weights(model, out / WEIGHTS_FILE)\n"


def odd_seeds(body: str) -> FileEdit:
    """An edit of models/train.py running `body` before the weights are saved, on odd seeds only."""
    lines = "".join(f"        {line}\n" for line in body.splitlines())
    return FileEdit(
        path="models/train.py",
        search=SAVE_LINE,
        replace=f"    if tc.seed % 2:  # the confirmation seed\n{lines}{SAVE_LINE}",
    )


RESIDUAL = config_edit("residual = false", "residual = true")
NO_RESIDUAL = config_edit("residual = true", "residual = false")
RUIN = odd_seeds(
    "with torch.no_grad():\n"
    "    for module in [model] + ([ema.model] if ema else []):\n"
    "        for p in module.parameters():\n"
    "            p.add_(0.5 * torch.randn_like(p))"
)
CRASH = odd_seeds("raise RuntimeError('boom on the confirmation seed')")

SNAPSHOT_MARK = 'SNAPSHOT_MARK = "promoted-code"\n'
MARKED = FileEdit(path="models/dit.py", search="import torch\n", replace="import torch\n\n" + SNAPSHOT_MARK)
"""A harmless mark in the confirmed keep's model code: its promoted checkpoint must load with its own code."""

NOTE = "the last frame is the floor to beat"
"""The agent's note to the research memory, sent with the confirmed keep's proposal."""
PROPOSALS = [
    Proposal(hypothesis="residual, but odd seeds are ruined", edits=[RESIDUAL, RUIN]),
    Proposal(hypothesis="residual, but odd seeds crash", edits=[RESIDUAL, CRASH]),
    Proposal(
        hypothesis="residual prediction starts at the copy baseline",
        edits=[RESIDUAL, MARKED],
        memory=[MemoryEdit(add=NOTE, section="principle")],
    ),
    Proposal(hypothesis="no residual again (worse)", edits=[NO_RESIDUAL]),
    Proposal(
        hypothesis="grade more kindly", edits=[FileEdit(path="models/evaluate.py", content="print('hi')\n")]
    ),
    Proposal(hypothesis="escape the project", edits=[FileEdit(path="../outside.py", content="x = 1\n")]),
    Proposal(hypothesis="touch git", edits=[FileEdit(path=".git/config", content="")]),
    Proposal(hypothesis="a learning rate that explodes", edits=[config_edit("lr = 1e-30", "lr = 1e30")]),
    Proposal(hypothesis="a training step that hangs", edits=[loss_edit("import time\ntime.sleep(600)")]),
    # The discarded change again, in other words: sent back once with t-004's result; the replay agent answers
    # the same again, which is rejected without training.
    Proposal(hypothesis="turn residual prediction off", edits=[NO_RESIDUAL]),
]
EXPECTED = [
    *("keep", "unconfirmed", "unconfirmed", "keep", "discard"),
    *("rejected", "rejected", "rejected", "crash", "timeout", "rejected"),
]
REPEAT = 10  # the record of the repeated change, sent back once (PROPOSALS[9] repeats record 4)
KEEP = 3  # the record of the confirmed keep (PROPOSALS[KEEP - 1]; record 0 is the baseline)

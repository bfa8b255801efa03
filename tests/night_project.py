"""A project a night can run on: a git repository with this repository's `models/` and a tiny DiT config.

Its baseline is made deliberately bad (no residual, a learning rate far too small to change a weight), so
that "residual = true" (predict the last frame) is a certain improvement and turning it off again a certain
regression. Predictions then do not depend on the action, so counterfactual accuracy is exactly chance for
every run and its guard holds: keep and discard are decided by the real judge without training noise.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import git

from harness.agents.base import FileEdit
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
    """Night settings for seconds-long runs on the tiny config."""
    fields = {"budget_s": 600, "per_run_s": 2, "grace_s": 12, "eval_samples": 32, **overrides}
    return NightSettings(root=root, tag=tag, dataset=dataset, **fields)

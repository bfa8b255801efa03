"""Running things as the harness and a user do: tiny experiments that train in seconds, the `harness` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from harness.agents.base import AgentContext
from harness.executor import Executor
from harness.pinned import ALLOWED_TEXT
from models.optim import Optimizer
from models.world_model import WorldModel

ROOT = Path(__file__).resolve().parents[1]
LOOP_RULES = (ROOT / "LOOP.md").read_text()
SMALL_CANVAS = {"frame_width": 32, "frame_height": 32}


def write_config(path: Path, dataset: Path, kind: str = "dit", **train: object) -> Path:
    """A tiny experiment TOML: 32 px frames, a one-block model, the session's sim dataset."""
    model = f'kind = "{kind}"\npatch = 8\nwidth = 32\ndepth = 1\nheads = 2\n'
    train_lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in {"log_every_s": 1.0, **train}.items())
    path.write_text(
        f"[model]\n{model}\n[canvas]\nframe_width = 32\nframe_height = 32\n\n"
        f'[data]\ndataset = "{dataset}"\n\n[train]\n{train_lines}'
    )
    return path


def run_train(config: Path, out: Path, budget: str = "3s") -> subprocess.CompletedProcess:
    """`python -m models.train` as the harness's executor runs it (forked from its fork server, on this
    process's cores); its output, in `<out>.log`, comes back as stderr."""
    args = ["models.train", "--config", str(config), "--budget", budget, "--out", str(out)]
    log = out.with_name(out.name + ".log")
    step = Executor(ROOT, ROOT)._run("training", args, log, timeout_s=300)
    return subprocess.CompletedProcess(args, step.code, "", log.read_text())


def run_module(module: str, *args: object, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in a subprocess, as a user runs a command."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def harness(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The `harness` command in a subprocess."""
    return run_module("harness", *args, cwd=cwd)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip()
    assert message.count("\n") == 0, message
    for needle in needles:
        assert needle in message, message


def agent_context(
    workspace: Path,
    history: list | None = None,
    index: int | None = None,
    **fields: object,
) -> AgentContext:
    """What the loop gives an agent (harness/loop.py builds the same): run `index` (default: after `history`)
    in `workspace`, the night's allowlist and LOOP.md, a 5-minute run in an hour left; `fields` override."""
    history = list(history or [])
    index = len(history) if index is None else index
    values: dict = {
        "run_id": f"r{index:03d}",
        "index": index,
        "workspace": workspace,
        "run_dir": workspace.parent / "run",
        "prompt": "",
        "history": history,
        "experiment": "experiments/dit.toml",
        "model_kinds": ("dit",),
        "per_run_s": 300.0,
        "remaining_s": 3600.0,
        "allowed": ALLOWED_TEXT,
        "rules": LOOP_RULES,
    }
    return AgentContext(**(values | fields))


def train_on_batch(
    model: WorldModel,
    optimizer: torch.optim.Optimizer | Optimizer,
    canvases: torch.Tensor,
    actions: torch.Tensor,
    steps: int,
) -> list[float]:
    """`steps` steps of `optimizer` (torch's, or models/optim.py's) on `model.loss` of one batch; the loss
    of each step."""
    losses = []
    for _ in range(steps):
        loss = model.loss(canvases, actions).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def processes_using(directory: Path) -> list[int]:
    """The processes with a file under `directory` open (a training writing its log there), from /proc: a
    forked training's command line is the fork server's, so its name says nothing."""
    inside = str(Path(directory).resolve()) + "/"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            targets = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:  # gone, or not ours to read
            continue
        if any(target.startswith(inside) for target in targets):
            found.append(int(proc.name))
    return found


def wait_for(condition, timeout_s: float = 240.0) -> None:
    """Poll a state of the files (not a timing): fails only if it never comes."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.2)

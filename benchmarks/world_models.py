"""World models on 2 CPU cores: quality against training time, inference speed, throughput.

    python -m benchmarks.world_models [--dit-minutes 2,5,10] [--gpt-minutes 10] [--dataset data/sim]

Each budget is its own training run (`python -m models.train`, the learning rate schedule follows the
budget), judged by the fixed evaluator on 512 val samples. The DiT is also judged at 1, 2 and 4 sampling
steps. Ratios to the copy-last-frame baseline on the same samples are the figures to compare across
machines; the GPT's KV-cached prediction is timed beside a full recompute.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import Row, print_table, write_section
from models.checkpoint import load_run
from models.data import load_split
from models.evaluate import evaluate
from models.serve import ModelPredictor
from models.world_model import to_tensor

NAME = "world_models"
TITLE = "World models: quality vs training time, inference speed (2 CPU cores)"
ROOT = Path(__file__).resolve().parents[1]


def train_run(config: Path, minutes: float, out: Path, dataset: Path) -> dict:
    command = [sys.executable, "-m", "models.train", "--config", str(config), "--budget", f"{minutes}m"]
    command += ["--out", str(out), "--dataset", str(dataset), "--quiet"]
    subprocess.run(command, cwd=ROOT, check=True)
    return json.loads((out / "metrics.json").read_text())


def judge(run: Path, dataset: Path, sample_steps: int | None = None) -> dict:
    model, config = load_run(run)
    if sample_steps is not None:
        model.config = model.config.model_copy(update={"sample_steps": sample_steps})
    split = load_split(dataset, config.canvas, "val", config.data.split())
    return evaluate(ModelPredictor(model), split, max_samples=512).metrics


def quality_rows(label: str, train: dict, metrics: dict) -> list[Row]:
    note = f"{train['samples']:,} samples, {train['samples_per_s']:.0f}/s"
    return [
        Row(f"{label}: cf_acc", metrics["cf_acc"], "", ">= 0.95 (DiT 10 min), >= 0.90 (GPT)", note),
        Row(f"{label}: mse / copy mse", metrics["mse_vs_copy"], "x", "< 1 (GPT)"),
        Row(f"{label}: dyn_mse / copy dyn_mse", metrics["dyn_mse_vs_copy"], "x", "<= 0.5 (DiT 10 min)"),
        Row(f"{label}: mse", metrics["mse"], "", "", f"copy {metrics['copy_mse']:.5f}"),
    ]


def gpt_cache_speedup(run: Path, dataset: Path) -> tuple[float, float]:
    """(ms cached, ms uncached) to predict 9 contexts x 3 actions."""
    model, config = load_run(run)
    split = load_split(dataset, config.canvas, "val", config.data.split())
    context = to_tensor(np.asarray(split.canvases[:9]))
    actions = torch.arange(3).repeat(9, 1)
    times = {}
    with torch.inference_mode():
        for name, call in (("cached", model.predict), ("uncached", model.predict_uncached)):
            call(context[:1], actions[:1])
            start = time.perf_counter()
            call(context, actions)
            times[name] = (time.perf_counter() - start) * 1000
    return times["cached"], times["uncached"]


LABELS = {"dit": "DiT", "gpt": "GPT"}


def timed_run(kind: str, minutes: float, dataset: Path, runs: Path) -> tuple[Path, list[Row]]:
    """Train experiments/<kind>.toml for `minutes`, judge it on val; the run dir and its table rows."""
    out = runs / f"{kind}-{minutes:g}m"
    train = train_run(ROOT / f"experiments/{kind}.toml", minutes, out, dataset)
    label = f"{LABELS[kind]} {minutes:g} min"
    rows = quality_rows(label, train, judge(out, dataset))
    rows.append(Row(f"{label}: training throughput", train["samples_per_s"], "samples/s"))
    return out, rows


def run(dit_minutes: list[float], gpt_minutes: list[float], dataset: Path, runs: Path) -> list[Row]:
    rows: list[Row] = []
    for minutes in dit_minutes:
        rows += timed_run("dit", minutes, dataset, runs)[1]
    if dit_minutes:
        longest = max(dit_minutes)
        for steps in (1, 2, 4):
            metrics = judge(runs / f"dit-{longest:g}m", dataset, sample_steps=steps)
            rows.append(
                Row(
                    f"DiT {longest:g} min, {steps} sampling step(s): 27 predictions",
                    metrics["infer_ms_27"],
                    "ms",
                    "<= 300 ms with cf_acc >= 0.95",
                    f"cf_acc {metrics['cf_acc']:.3f}, mse/copy {metrics['mse_vs_copy']:.3f}",
                )
            )
    for minutes in gpt_minutes:
        out, measured = timed_run("gpt", minutes, dataset, runs)
        rows += measured
        cached, uncached = gpt_cache_speedup(out, dataset)
        speedup = f"{uncached / cached:.0f}x faster than recompute"
        rows.append(Row("GPT: 27 predictions, KV cache", cached, "ms", "", speedup))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dit-minutes", default="2,5,10")
    parser.add_argument("--gpt-minutes", default="10")
    parser.add_argument("--dataset", type=Path, default=ROOT / "data/sim")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/bench")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--merge", action="store_true", help="keep the section's rows this run does not redo")
    args = parser.parse_args()

    def minutes(text: str) -> list[float]:
        return [float(m) for m in text.split(",") if m.strip()]

    rows = run(minutes(args.dit_minutes), minutes(args.gpt_minutes), args.dataset, args.runs)
    print_table(TITLE, rows)
    if not args.no_write:
        notes = (
            f"Simulated dataset {args.dataset.name} (200 episodes, 160 train), experiments/dit.toml and "
            "experiments/gpt.toml as committed, one training run per budget, judged on 512 val samples. "
            "Reference (published pixel DiT, same 2 cores): cf_acc 0.997 and mse 0.48x copy after 19 min, "
            "9 s for 27 predictions (50 steps)."
        )
        write_section(NAME, TITLE, rows, notes, merge=args.merge)


if __name__ == "__main__":
    main()

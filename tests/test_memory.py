"""The research memory (harness/memory.py): what it says of a night's runs, read from real proposal diffs,
and the bound it keeps whatever the agents send."""

from __future__ import annotations

from pathlib import Path

import git
import pytest
from pydantic import ValidationError

from harness.ledger import MemoryEdit, RunRecord, RunStatus, Trial
from harness.memory import AGENT_CHARS, MEMORY_CHARS, NOTE_CHARS, MemoryBuilder, moved_by
from harness.paths import NightPaths, run_id_for

CONFIG = "[model]\nwidth = 32\n\n[train]\nlr = 1e-3\nbatch_size = 16\n"
MODEL = (
    "import torch\n\n\nclass DiT:\n    def __init__(self):\n        self.a = 1\n        self.b = 2\n"
    "        self.c = 3\n        self.d = 4\n\n    def loss(self, x):\n        return x\n"
)


def real_diff(root: Path, config: str = CONFIG, model: str = MODEL) -> str:
    """The diff git writes for a change of the project's config and model file, as the loop keeps it."""
    (root / "experiments").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "experiments/dit.toml").write_text(CONFIG)
    (root / "models/dit.py").write_text(MODEL)
    repo = git.Repo.init(root, initial_branch="main")
    repo.git.add("--all")
    repo.git.commit("-m", "base", author="t <t@example.com>")
    (root / "experiments/dit.toml").write_text(config)
    (root / "models/dit.py").write_text(model)
    return repo.git.diff()


def test_a_diff_says_which_keys_and_functions_moved(tmp_path: Path):
    moved = moved_by(real_diff(tmp_path / "a", config=CONFIG.replace("lr = 1e-3", "lr = 3e-3")))
    assert moved.keys == {"lr": ("1e-3", "3e-3")} and moved.topic == "lr" and moved.values == "lr 3e-3"
    code = moved_by(real_diff(tmp_path / "b", model=MODEL.replace("return x", "return 2 * x")))
    assert code.keys == {} and code.code == {"models/dit.py": {"DiT"}}  # git names the enclosing top level
    assert code.topic == "models/dit.py (DiT)"
    # git may put a TOML line in a hunk header as the "function": it is context, not a moved key
    header = "--- a/e.toml\n+++ b/e.toml\n@@ -9,2 +9,2 @@ lr = 1e-3\n-batch_size = 4\n+batch_size = 8\n"
    assert moved_by(header).keys == {"batch_size": ("4", "8")}


class Night:
    """Records of a night written as the loop writes them (with the proposal diff in each run's directory)."""

    def __init__(self, root: Path):
        self.paths = NightPaths(root, "m")
        self.records: list[RunRecord] = []

    def add(
        self,
        status: RunStatus,
        mse: float | None,
        hypothesis: str = "an idea",
        diff: str = "",
        memory: list[MemoryEdit] | None = None,
        first_seed: float | None = None,
        reason: str = "",
    ) -> RunRecord:
        index = len(self.records)
        run_id = run_id_for("m", index)
        parent = next((r.run_id for r in reversed(self.records) if r.status == RunStatus.KEEP), None)
        metrics = {"mse": mse, "cf_acc": 0.9} if mse is not None else {}
        trials = [Trial(seed=index, directory=run_id, metrics_val={"mse": first_seed or mse, "cf_acc": 0.9})]
        record = RunRecord(
            run_id=run_id,
            index=index,
            tag="m",
            parent=parent,
            hypothesis=hypothesis,
            status=status,
            reason=reason,
            metrics_val=metrics,
            trials=trials if mse is not None else [],
            memory=memory or [],
        )
        self.paths.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        (self.paths.run_dir(run_id) / "proposal.diff").write_text(diff)
        self.records.append(record)
        return record


def key_diff(value: str, key: str = "lr") -> str:
    """A proposal's diff moving one key of the experiment config, as git writes it."""
    return (
        "--- a/experiments/dit.toml\n+++ b/experiments/dit.toml\n@@ -5 +5 @@ batch_size = 16\n"
        f"-{key} = 1e-3\n+{key} = {value}\n"
    )


def test_the_memory_says_what_held_what_did_not_and_what_is_open(tmp_path: Path):
    night = Night(tmp_path)
    night.add(RunStatus.KEEP, 0.010, "baseline")
    code = "--- a/models/dit.py\n+++ b/models/dit.py\n@@ -5 +5 @@ class DiT:\n-    return x\n+    return\n"
    night.add(RunStatus.KEEP, 0.008, "residual prediction", diff=code)
    night.add(RunStatus.DISCARD, 0.0084, "a higher lr", diff=key_diff("3e-3"))
    night.add(RunStatus.CRASH, None, "a much higher lr", diff=key_diff("1e-1"), reason="NaN loss: step 12")
    night.add(RunStatus.UNCONFIRMED, 0.0081, "a lower lr", diff=key_diff("5e-4"), first_seed=0.0076)
    note = MemoryEdit(add="lr above 3e-3 diverges on this model", section="dead end")
    night.add(RunStatus.DISCARD, 0.0090, "wider model", diff=key_diff("64", "width"), memory=[note])
    text = MemoryBuilder(night.paths).write(night.records)
    assert (night.paths.memory).read_text() == text + "\n"
    held, dead, open_ = text.split("### ")[1:]
    assert "m-001 kept: residual prediction (-20.0%)" in held and "baseline" not in held
    assert "- lr: m-002 lr 3e-3: discard +5.0%; m-003 lr 1e-1: crash (NaN loss)" in dead
    assert "- width: m-005 width 64: discard +12.5%" in dead
    assert "[N1] lr above 3e-3 diverges on this model (agent, m-005)" in dead
    assert "m-004 unconfirmed: a lower lr (first seed -5.0%, mean of two +1.2%)" in open_
    assert "m-004" not in dead  # an open question, not a dead end


def test_the_bound_holds_for_an_agent_that_tries_to_exceed_it(tmp_path: Path):
    night = Night(tmp_path)
    night.add(RunStatus.KEEP, 0.010, "baseline")
    for i in range(300):  # a long night: every run a dead end on its own key, every proposal a long note
        note = MemoryEdit(add=f"note {i}: " + "x" * 1000, section="principle")
        night.add(RunStatus.DISCARD, 0.011, f"idea {i}", diff=key_diff("1", f"k{i}"), memory=[note])
    text = MemoryBuilder(night.paths).render(night.records)
    assert len(text) <= MEMORY_CHARS
    notes = [line for line in text.splitlines() if line.startswith("- [N")]
    assert notes and all(len(line) <= NOTE_CHARS + 40 for line in notes)  # each cut to its limit
    assert sum(len(line) for line in notes) <= AGENT_CHARS
    assert "[N300] note 299" in text and "[N1] " not in text  # the newest stay, the oldest went
    assert "older agent notes fell out of the memory's bound" in text
    assert "older lines folded" in text and "k299" in text and "- k0:" not in text


def test_forget_takes_a_note_back_and_an_edit_is_one_thing(tmp_path: Path):
    night = Night(tmp_path)
    night.add(RunStatus.KEEP, 0.010, "baseline", memory=[MemoryEdit(add="batch size does not matter")])
    night.add(RunStatus.DISCARD, 0.011, "b", memory=[MemoryEdit(add="depth helps", section="question")])
    night.add(RunStatus.DISCARD, 0.011, "c", memory=[MemoryEdit(forget="n1")])
    text = MemoryBuilder(night.paths).render(night.records)
    assert (
        "batch size" not in text and "[N2] depth helps (agent, m-001)" in text.split("### Open questions")[1]
    )
    for bad in ({}, {"add": "x", "forget": "N1"}, {"add": "  "}, {"add": "x", "section": "gossip"}):
        with pytest.raises(ValidationError):
            MemoryEdit.model_validate(bad)

"""How new a proposal is (harness/novelty.py): its diff and words against every earlier run's."""

from __future__ import annotations

from pathlib import Path

from harness.ledger import RunRecord, RunStatus
from harness.novelty import DUPLICATE, NearDuplicate, NoveltyIndex, changed_lines

LR = "--- a/experiments/dit.toml\n+++ b/experiments/dit.toml\n@@ -5 +5 @@\n-lr = 1e-3\n+lr = {}\n"
CODE = (
    "--- a/models/dit.py\n+++ b/models/dit.py\n@@ -10,2 +10,3 @@ class DiT:\n"
    "-        x = self.norm(x)\n+        x = self.norm(x){}\n+        # a comment changes nothing\n+\n"
)


def night(tmp_path: Path, diffs: dict[str, str]) -> NoveltyIndex:
    for run_id, diff in diffs.items():
        (tmp_path / run_id).mkdir()
        (tmp_path / run_id / "proposal.diff").write_text(diff)
    return NoveltyIndex()


def test_changed_lines_ignore_whitespace_and_comments_and_know_their_file():
    lines = changed_lines(CODE.format("") + LR.format("3e-3"))
    assert lines == {
        "models/dit.py:-x = self.norm(x)",
        "models/dit.py:+x = self.norm(x)",
        "experiments/dit.toml:-lr = 1e-3",
        "experiments/dit.toml:+lr = 3e-3",
    }
    assert changed_lines(CODE.format("").replace("        x =", "x  =")) == changed_lines(CODE.format(""))


def test_the_same_change_in_other_words_is_a_near_duplicate_and_another_value_is_not(tmp_path: Path):
    index = night(tmp_path, {"n-001": LR.format("3e-3"), "n-002": CODE.format(" * 2")})
    earlier = [
        (tmp_path / "n-000", "baseline"),
        (tmp_path / "n-001", "a higher learning rate"),
        (tmp_path / "n-002", "double the norm"),
    ]
    again = index.compare(LR.format("3e-3"), "train faster with lr 3e-3", earlier)
    assert again.closest == "n-001" and again.duplicate and DUPLICATE <= again.similarity < 1.0
    assert again.score == round(1 - again.similarity, 4)
    same = index.compare(LR.format("3e-3"), "a higher learning rate", earlier)
    assert same.similarity == 1.0 and same.score == 0.0
    other = index.compare(LR.format("1e-4"), "a lower learning rate", earlier)
    assert other.closest == "n-001" and not other.duplicate and other.similarity < 0.6
    new = index.compare(CODE.format(" + x"), "a residual around the norm", earlier)
    assert new.closest == "n-002" and not new.duplicate
    assert index.compare(LR.format("3e-3"), "x", []).closest is None  # the first proposal: nothing before


def test_a_near_duplicate_says_what_the_run_it_repeats_gave(tmp_path: Path):
    index = night(tmp_path, {"n-001": LR.format("3e-3")})
    novelty = index.compare(LR.format("3e-3"), "lr 3e-3", [(tmp_path / "n-001", "lr 3e-3")])
    tried = RunRecord(
        run_id="n-001",
        index=1,
        tag="n",
        hypothesis="lr 3e-3",
        status=RunStatus.DISCARD,
        reason="mse 0.0021 is +3.0% vs the best 0.0020 (n-000); keeping needs more than 1.0% lower",
        metrics_val={"mse": 0.0021, "cf_acc": 0.9},
    )
    message = str(NearDuplicate(novelty, tried))
    assert message.startswith("a near-duplicate of n-001 (similarity 1.00), not trained: it was discard")
    assert "val mse 0.0021: mse 0.0021 is +3.0% vs the best" in message and "keeping needs" not in message
    assert str(NearDuplicate(novelty, None)).endswith("it is still training")

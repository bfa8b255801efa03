"""How new a proposal is, measured against every earlier proposal of the night before it trains.

An agent deep into a night proposes again what it tried hours ago; training it again buys nothing but a
second sample of the same noise. Each proposal's diff is compared with the diff of every earlier run (kept,
discarded, failed, in flight): the lines it adds and removes, per file, whitespace and comments aside
(`changed_lines`), and, weighted less, the words of its hypothesis. `similarity` is 0 for nothing in common
and 1 for the same change; a run's novelty is 1 minus its similarity to the closest earlier run. A proposal
at DUPLICATE or above is a near-duplicate: the night sends it back to the agent once, with the earlier run's
result, instead of training it (harness/loop.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.diffs import diff_lines
from harness.ledger import RunRecord
from harness.workspace import ProposalRejected

DUPLICATE = 0.85
"""Similarity at which a proposal repeats an earlier run: the same diff with other words scores 0.85."""
DIFF_WEIGHT = 0.85  # the rest is the hypothesis's words

_WORD = re.compile(r"[a-z][a-z0-9_]+|\d[\d.e+-]*")
_STOP = frozenset(
    ("the", "and", "for", "with", "from", "into", "than", "that", "this", "its", "use", "using", "more")
    + ("less", "an", "of", "to", "in", "on", "by", "it", "is", "be")
)


def changed_lines(diff: str) -> frozenset[str]:
    """The lines a unified diff adds and removes, as `path:+text` / `path:-text`, whitespace collapsed;
    blank and comment-only lines left out (they change no behavior)."""
    lines = set()
    for line in diff_lines(diff):
        text = " ".join(line.text.split())
        if line.kind in ("+", "-") and text and not text.startswith("#"):
            lines.add(f"{line.path}:{line.kind}{text}")
    return frozenset(lines)


def words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in _STOP)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@dataclass(frozen=True)
class Novelty:
    """A proposal against the earlier ones: its closest earlier run and their similarity (0..1)."""

    closest: str | None
    similarity: float

    @property
    def score(self) -> float:
        """1 for a change unlike every earlier one, 0 for the same change again."""
        return round(1.0 - self.similarity, 4)

    @property
    def duplicate(self) -> bool:
        return self.closest is not None and self.similarity >= DUPLICATE


class NoveltyIndex:
    """The proposals compared so far (a run's diff never changes: each is read once)."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[frozenset[str], frozenset[str]]] = {}

    def _signature(self, run_dir: Path, hypothesis: str) -> tuple[frozenset[str], frozenset[str]] | None:
        if run_dir not in self._seen:
            diff = run_dir / "proposal.diff"
            if not diff.exists():  # the baseline, or a proposal refused before it changed anything
                return None
            self._seen[run_dir] = (changed_lines(diff.read_text()), words(hypothesis))
        return self._seen[run_dir]

    def compare(self, diff: str, hypothesis: str, earlier: Iterable[tuple[Path, str]]) -> Novelty:
        """`diff` and `hypothesis` against the earlier runs, given as (run directory, hypothesis): the
        directory's name is the run's id."""
        lines, text = changed_lines(diff), words(hypothesis)
        best = Novelty(None, 0.0)
        for run_dir, their_hypothesis in earlier:
            signature = self._signature(run_dir, their_hypothesis)
            if signature is None:
                continue
            similarity = DIFF_WEIGHT * jaccard(lines, signature[0]) + (1 - DIFF_WEIGHT) * jaccard(
                text, signature[1]
            )
            if similarity > best.similarity:
                best = Novelty(run_dir.name, round(similarity, 4))
        return best


class NearDuplicate(ProposalRejected):
    """A proposal that repeats an earlier run; its message, for the agent and the ledger, says what that
    run gave."""

    def __init__(self, novelty: Novelty, repeated: RunRecord | None):
        self.novelty, self.repeated = novelty, repeated
        if repeated is None:
            outcome = "it is still training"
        else:
            result = f", val mse {repeated.primary:.6g}" if repeated.primary is not None else ""
            why = f": {repeated.reason.split(';')[0][:160]}" if repeated.reason else ""
            outcome = f"it was {repeated.status.value}{result}{why}"
        super().__init__(
            f"a near-duplicate of {novelty.closest} (similarity {novelty.similarity:.2f}), "
            f"not trained: {outcome}"
        )

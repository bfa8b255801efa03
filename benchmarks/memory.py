"""A researcher's night of 30 proposals: repeats caught before training, a no-op not kept, a prompt that stops
growing, a steering note in the very next prompt.

    python -m benchmarks.memory [--runs 30]

The night is the tiny project of the tests (tests/night_project.py, 1 CPU-second runs) with the Anthropic
agent talking to the fake Messages API of the tests (tests/fake_messages_api.py) on 127.0.0.1: each reply is
a scripted `propose`, so the requests are the real ones the agent sends. The script: learning rates far too
small to learn (every run is judged and discarded), with three planted repeats of earlier runs in other
words (each followed by the agent's second answer, a new value), and one no-op (a comment added to the
model). A steering note is sent while one proposal is being answered; the request for the next run must
carry it. Prompt size is the characters of each run's first request (system and user text): the agent's
whole input for that proposal, about 4 characters a token.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import tempfile
import threading
from pathlib import Path

from benchmarks.common import Row, print_table, write_section
from harness.agents.anthropic_agent import AnthropicAgent
from harness.agents.base import FileEdit
from harness.ledger import Ledger, RunStatus
from harness.loop import Night
from harness.paths import NightPaths
from harness.steering import send_note
from models.canvas import CanvasConfig
from models.data import build_cache
from robot.record import record_sim_dataset
from robot.sim import SimConfig
from tests.fake_messages_api import FakeMessagesAPI, message, tool_use_block, usage
from tests.helpers import SMALL_CANVAS
from tests.night_project import config_edit, make_project, tiny_night

NAME = "memory"
TITLE = "Research memory: 30 proposals, planted repeats and a no-op, prompt size, steering"
REPEATS = {8: 3, 15: 9, 22: 16}  # run index: the run whose change it repeats, in other words
NO_OP = 12  # run index of the comment-only change
STEER_AT = 20  # the note is sent while this run's proposal is answered; run STEER_AT + 1 must see it
NOTE = "Stop sweeping the learning rate: try the loss weighting next."
_RUN = re.compile(r"run (\d+) is next")
NO_OP_EDIT = FileEdit(
    path="models/dit.py",
    search="import torch\n",
    replace="import torch\n\n# the model predicts the next frame\n",
)


def lr_edit(k: int) -> FileEdit:
    return config_edit("lr = 1e-30", f"lr = {k}e-30")


def propose(hypothesis: str, edit: FileEdit) -> dict:
    return tool_use_block(
        "propose", {"hypothesis": hypothesis, "edits": [edit.model_dump(exclude_none=True)]}
    )


def script(runs: int, steered: threading.Event) -> list:
    """The fake API's replies in order: one per proposal, two for a planted repeat (it is sent back)."""
    replies = []
    for index in range(1, runs + 1):
        if index in REPEATS:
            earlier = REPEATS[index]
            replies.append(propose(f"a learning rate of {earlier + 1}e-30 once more", lr_edit(earlier + 1)))
            replies.append(propose(f"lr {index + 1}e-30", lr_edit(index + 1)))  # the answer after it
        elif index == NO_OP:
            replies.append(propose("a clarifying comment", NO_OP_EDIT))
        else:
            replies.append(propose(f"lr {index + 1}e-30", lr_edit(index + 1)))
    scripted = [message([reply], usage_=usage(1000, 60, 0, 0)) for reply in replies]
    gate = replies_through(STEER_AT) - 1  # run STEER_AT's (last) reply
    scripted[gate] = dataclasses.replace(scripted[gate], gate=steered)
    return scripted


def prompt_text(request: dict) -> str:
    """The user text of a request's first message: the prompt of the run it proposes for."""
    first = request["messages"][0]["content"]
    return first if isinstance(first, str) else "".join(b.get("text", "") for b in first)


def prompt_of(request: dict) -> tuple[int | None, int]:
    """The run a request proposes for (None when it is not a first request) and its characters (system and
    user text)."""
    system = "".join(block.get("text", "") for block in request.get("system", []))
    text = prompt_text(request)
    match = _RUN.search(text)
    return (int(match.group(1)) if match else None), len(system) + len(text)


def replies_through(run: int) -> int:
    """Scripted replies up to and including run `run`'s: two for a planted repeat (it is sent back)."""
    return sum(2 if i in REPEATS else 1 for i in range(1, run + 1))


def night(work: Path, dataset: Path, runs: int) -> dict:
    root = make_project(work / "project")
    steered = threading.Event()
    with FakeMessagesAPI() as api:
        api.enqueue(*script(runs, steered))
        paths = NightPaths(root, "m")

        def steer_when_asked() -> None:  # while run STEER_AT's proposal is held at the fake API
            while len(api.message_requests()) < replies_through(STEER_AT):
                threading.Event().wait(0.05)
            send_note(paths, NOTE)
            steered.set()

        steering = threading.Thread(target=steer_when_asked, daemon=True)
        steering.start()
        agent = AnthropicAgent(api_key="sk-ant-benchmark", base_url=api.url, max_retries=0)
        try:
            settings = tiny_night(root, "m", dataset, max_runs=runs + 1, baseline_seeds=1)
            Night(settings, agent).run()
        finally:
            agent.close()
            steered.set()
        requests = api.message_requests()
    records = Ledger(paths).read()
    by_index = {r.index: r for r in records}
    sizes: dict[int, int] = {}
    for request in requests:
        index, chars = prompt_of(request)
        if index is not None and index not in sizes:
            sizes[index] = chars
    steer_prompts = [r for r in requests if prompt_of(r)[0] == STEER_AT + 1]
    return {
        "caught": sum(1 for i in REPEATS if by_index[i].sent_back and by_index[i].trials[:1]),
        "repeats_trained": sum(1 for i in REPEATS if not by_index[i].sent_back),
        "no_op": by_index[NO_OP].status,
        "sizes": sizes,
        "steered": bool(steer_prompts) and "S1, " in prompt_text(steer_prompts[0]),
        "steered_before": any("S1, " in prompt_text(r) for r in requests if prompt_of(r)[0] == STEER_AT),
        "saw": by_index[STEER_AT + 1].steering,
        "runs": len(records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--beside", default="nothing else", help="what else ran on the machine meanwhile")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        dataset = Path(tmp) / "sim"
        record_sim_dataset(dataset, episodes=6, actions_per_episode=8, seed=7, config=SimConfig(), workers=1)
        build_cache(dataset, CanvasConfig(**SMALL_CANVAS))
        os.environ.pop("ANTHROPIC_API_KEY", None)
        got = night(Path(tmp), dataset, args.runs)
    sizes = got["sizes"]
    last = max(sizes)
    rows = [
        Row("planted repeats caught before training", got["caught"], f"of {len(REPEATS)}", "all"),
        Row("planted repeats trained", got["repeats_trained"], "runs", "0"),
        Row(
            "the no-op change kept",
            float(got["no_op"] == RunStatus.KEEP),
            "runs",
            "0",
            f"{got['no_op'].value}",
        ),
        Row("prompt at run 3", sizes[3], "chars", "", f"~{sizes[3] // 4:,} tokens"),
        Row(f"prompt at run {last}", sizes[last], "chars", "", f"~{sizes[last] // 4:,} tokens"),
        Row(f"prompt at run {last} / run 3", sizes[last] / sizes[3], "x", "<= 1.2"),
        Row("largest prompt / run 3", max(sizes.values()) / sizes[3], "x", "", f"runs 3-{last}"),
        Row(
            "steering note in the very next prompt",
            float(got["steered"]),
            "of 1",
            "1",
            f"sent during run {STEER_AT}'s proposal; run {STEER_AT + 1} recorded {got['saw']}",
        ),
        Row("steering note in a prompt before it was sent", float(got["steered_before"]), "of 1", "0"),
    ]
    assert got["no_op"] != RunStatus.KEEP, "the no-op change was kept"
    print_table(TITLE, rows)
    note = (
        f"One night of {args.runs} proposals after the baseline ({got['runs']} runs recorded), the Anthropic "
        f"agent against the tests' fake Messages API; beside it: {args.beside}."
    )
    write_section(NAME, TITLE, rows, note)


if __name__ == "__main__":
    main()

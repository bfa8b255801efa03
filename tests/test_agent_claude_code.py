"""The `claude-code` agent against a fake `claude` executable: a real subprocess found on PATH.

The fake behaves like Claude Code's print mode: it edits files in its working directory and prints one JSON
result. It records its argv, cwd and stdin so the tests can check how it was called.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from harness.agents.base import AgentContext, AgentError
from harness.agents.claude_code import (
    ALLOWED_TOOLS,
    MAX_ARGV_PROMPT,
    NOT_INSTALLED,
    TRANSCRIPT_NAME,
    ClaudeCodeAgent,
    parse_result_text,
)

FAKE_CLAUDE = """\
#!{python}
import json, os, pathlib, sys, time
mode = os.environ.get("FAKE_CLAUDE_MODE", "edit")
stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
pathlib.Path(os.environ["FAKE_CLAUDE_LOG"]).write_text(
    json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "stdin": stdin}})
)
result = {{"type": "result", "subtype": "success", "is_error": False, "duration_ms": 1234, "num_turns": 7,
          "session_id": "sess-1", "total_cost_usd": 0.0421,
          "usage": {{"input_tokens": 12, "output_tokens": 345, "cache_creation_input_tokens": 2000,
                    "cache_read_input_tokens": 15000}}}}
if mode == "edit":
    dit = pathlib.Path("models/dit.py")
    dit.write_text(dit.read_text().replace("depth = 1", "depth = 2"))
    pathlib.Path("experiments/deep.toml").write_text("[model]\\ndepth = 2\\n")
    pathlib.Path("models/old.py").unlink()
    pathlib.Path("models/__pycache__").mkdir(exist_ok=True)
    pathlib.Path("models/__pycache__/dit.cpython-311.pyc").write_bytes(b"\\0")
    result["result"] = ("**HYPOTHESIS:** Two blocks lower val mse.\\n"
                        "EXPERIMENT: experiments/deep.toml\\nThe model underfits.")
elif mode == "nohypothesis":
    pathlib.Path("models/dit.py").write_text("depth = 3\\n")
    result["result"] = "I made the model deeper.\\nIt should help."
elif mode == "noop":
    result["result"] = "HYPOTHESIS: nothing to do"
elif mode == "error":
    result.update(subtype="error_max_turns", is_error=True, result="")
elif mode == "garbage":
    print("Error: not logged in", file=sys.stderr)
    sys.exit(1)
elif mode == "sleep":
    time.sleep(60)
print(json.dumps(result))
"""

DIT = "class DiT:\n    depth = 1\n"


@pytest.fixture
def fake_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Puts a fake `claude` first on PATH; returns the file where it logs how it was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "claude"
    exe.write_text(FAKE_CLAUDE.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    log = tmp_path / "claude-call.json"
    monkeypatch.setenv("FAKE_CLAUDE_LOG", str(log))
    return log


def make_context(tmp_path: Path, prompt: str = "# LOOP.md\nImprove the model.\n") -> AgentContext:
    ws = tmp_path / "worktree"
    files = {
        "models/dit.py": DIT,
        "models/old.py": "x = 1\n",
        "experiments/base.toml": "[model]\ndepth = 1\n",
        "harness/loop.py": "# not editable\n",
        "LOOP.md": "# loop\n",
    }
    for rel, text in files.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    return AgentContext(
        run_id="r0002",
        index=2,
        workspace=ws,
        run_dir=tmp_path / "run",
        prompt=prompt,
        history=[],
        experiment="experiments/base.toml",
        model_kinds=("dit",),
        per_run_s=300.0,
        remaining_s=3600.0,
        allowed="models/** and experiments/**",
    )


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_edits_from_the_cli_become_a_proposal(tmp_path: Path, fake_claude: Path) -> None:
    context = make_context(tmp_path)
    before = snapshot(context.workspace)
    proposal = ClaudeCodeAgent(model="claude-sonnet-5-5").propose(context)

    assert proposal.hypothesis == "Two blocks lower val mse."
    assert proposal.experiment == "experiments/deep.toml"
    assert proposal.rationale == "The model underfits."
    edits = {e.path: e for e in proposal.edits}
    assert sorted(edits) == ["experiments/deep.toml", "models/dit.py", "models/old.py"]
    assert edits["models/dit.py"].content == DIT.replace("depth = 1", "depth = 2")
    assert edits["experiments/deep.toml"].content == "[model]\ndepth = 2\n"
    assert edits["models/old.py"].delete and edits["models/old.py"].content is None
    tokens = proposal.tokens
    assert (tokens.input_tokens, tokens.output_tokens) == (12, 345)
    assert (tokens.cache_write_tokens, tokens.cache_read_tokens, tokens.cost_usd) == (2000, 15000, 0.0421)
    assert proposal.meta == {"session_id": "sess-1", "num_turns": 7, "model": "claude-sonnet-5-5"}

    call = json.loads(fake_claude.read_text())
    argv = call["argv"]
    assert argv[0] == "-p" and argv[1].startswith(context.prompt) and "HYPOTHESIS:" in argv[1]
    assert argv[argv.index("--output-format") + 1] == "json"
    assert argv[argv.index("--permission-mode") + 1] == "acceptEdits"
    assert argv[argv.index("--allowedTools") + 1] == ALLOWED_TOOLS
    assert argv[argv.index("--model") + 1] == "claude-sonnet-5-5"
    # It ran in a scratch copy holding only the editable roots, which is gone; the worktree is untouched.
    cwd = Path(call["cwd"])
    assert cwd != context.workspace and not cwd.is_relative_to(context.workspace) and not cwd.exists()
    assert snapshot(context.workspace) == before

    (line,) = (context.run_dir / TRANSCRIPT_NAME).read_text().splitlines()
    record = json.loads(line)
    assert record["result"]["session_id"] == "sess-1" and "<prompt>" in record["command"]


def test_hypothesis_falls_back_to_the_first_line(
    tmp_path: Path, fake_claude: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CLAUDE_MODE", "nohypothesis")
    proposal = ClaudeCodeAgent().propose(make_context(tmp_path))
    assert proposal.hypothesis == "I made the model deeper."
    assert [(e.path, e.content) for e in proposal.edits] == [("models/dit.py", "depth = 3\n")]
    assert proposal.experiment is None and "model" not in proposal.meta


def test_a_long_prompt_goes_through_stdin(tmp_path: Path, fake_claude: Path) -> None:
    prompt = "# LOOP.md\n" + "x" * (MAX_ARGV_PROMPT + 10)
    ClaudeCodeAgent().propose(make_context(tmp_path, prompt))
    call = json.loads(fake_claude.read_text())
    assert call["stdin"].startswith(prompt) and len(call["argv"][1]) < 100


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("error", "claude failed \\(error_max_turns\\)"),
        ("garbage", "exited 1 without a JSON result: Error: not logged in"),
        ("noop", "changed no file"),
    ],
)
def test_failures_are_agent_errors(
    tmp_path: Path, fake_claude: Path, monkeypatch: pytest.MonkeyPatch, mode: str, message: str
) -> None:
    monkeypatch.setenv("FAKE_CLAUDE_MODE", mode)
    with pytest.raises(AgentError, match=message):
        ClaudeCodeAgent().propose(make_context(tmp_path))


def test_timeout_kills_the_cli(tmp_path: Path, fake_claude: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CLAUDE_MODE", "sleep")
    start = time.monotonic()
    with pytest.raises(AgentError, match="did not finish within 1s"):
        ClaudeCodeAgent(timeout_s=1).propose(make_context(tmp_path))
    assert time.monotonic() - start < 10


def test_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(AgentError) as err:
        ClaudeCodeAgent().propose(make_context(tmp_path))
    assert str(err.value) == NOT_INSTALLED
    assert "claude CLI is not installed" in NOT_INSTALLED and "--agent local" in NOT_INSTALLED


def test_parse_result_text() -> None:
    text = "Done.\n- **Hypothesis**: Wider MLP helps.\n**EXPERIMENT:** `experiments/wide.toml`\nBecause."
    assert parse_result_text(text) == ("Wider MLP helps.", "experiments/wide.toml", "Done.\n\nBecause.")
    assert parse_result_text("") == (None, None, "")

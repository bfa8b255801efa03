"""The `anthropic` agent end to end: the official SDK talking HTTP to a scripted fake of the Messages API.

Nothing of our code is mocked: the agent builds real requests, the SDK sends them (and retries a 529 itself),
the fake server answers with the real wire format and records what it received.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

import pytest

from harness.agents.anthropic_agent import (
    DEFAULT_MODEL,
    NUDGE,
    PRICES,
    TRANSCRIPT_NAME,
    AnthropicAgent,
    Price,
    ToolError,
    Transcript,
    WorkspaceView,
    price_for,
)
from harness.agents.base import AgentContext, AgentError
from harness.ledger import TokenUse
from harness.pinned import ALLOWED_TEXT
from tests.fake_messages_api import (
    FakeMessagesAPI,
    ScriptedResponse,
    api_error,
    malformed,
    message,
    overloaded,
    text_block,
    tool_use_block,
    usage,
)
from tests.helpers import agent_context

DIT = "class DiT:\n    depth = 1\n    width = 32\n"


def make_context(tmp_path: Path) -> AgentContext:
    """A small worktree (code, config, .git, data, run outputs) and a run directory next to it."""
    ws = tmp_path / "worktree"
    files = {
        "models/__init__.py": "",
        "models/dit.py": DIT,
        "experiments/base.toml": '[model]\nkind = "dit"\n',
        "LOOP.md": "# the loop\n",
        ".git/config": "[core]\n",
        "runs/night/ledger.jsonl": "{}\n",
        "data/sim/frames.bin": "xx",
        "models/__pycache__/dit.cpython-311.pyc": "xx",
    }
    for rel, text in files.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    (tmp_path / "outside.txt").write_text("not yours\n")
    return agent_context(
        ws,
        index=1,
        run_dir=tmp_path / "run",
        prompt="# LOOP.md\nImprove the world model.\n\n## Leaderboard\n(baseline only)\n",
        experiment="experiments/base.toml",
    )


@pytest.fixture
def canary(monkeypatch: pytest.MonkeyPatch) -> str:
    key = f"sk-ant-canary-{secrets.token_hex(16)}"
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    return key


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeMessagesAPI:
    with FakeMessagesAPI() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        yield server


def tool_results(request: dict) -> list[dict]:
    """The tool_result blocks of a request's last (user) message."""
    last = request["messages"][-1]
    assert last["role"] == "user"
    return [b for b in last["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]


def expected_cost(usages: list[dict[str, int]], price: Price) -> float:
    return (
        sum(
            u["input_tokens"] * price.input
            + u["output_tokens"] * price.output
            + u["cache_creation_input_tokens"] * price.cache_write
            + u["cache_read_input_tokens"] * price.cache_read
            for u in usages
        )
        / 1_000_000
    )


def test_one_full_iteration(tmp_path: Path, api: FakeMessagesAPI, canary: str) -> None:
    context = make_context(tmp_path)
    before = {p: p.read_bytes() for p in context.workspace.rglob("*") if p.is_file()}
    usages = [
        usage(120, 40, 1800, 0),
        usage(60, 50, 0, 1800),
        usage(90, 300, 0, 1800),
        usage(95, 420, 0, 1800),
    ]
    listing = tool_use_block("list_files", {"path": "."}, "toolu_list")
    reads = [
        tool_use_block("read_file", {"path": "models/dit.py"}, "toolu_read"),
        tool_use_block("read_file", {"path": "../outside.txt"}, "toolu_escape"),
        tool_use_block("read_file", {"path": ".git/config"}, "toolu_git"),
    ]
    bad = tool_use_block(
        "propose",
        {"hypothesis": "deeper", "edits": [{"path": "models/dit.py", "search": "depth = 1"}]},
        "toolu_bad",
    )
    good_input = {
        "hypothesis": "Two DiT blocks instead of one lower val mse.",
        "rationale": "The baseline underfits.",
        "experiment": "experiments/deep.toml",
        "edits": [
            {"path": "models/dit.py", "search": "depth = 1", "replace": "depth = 2"},
            {"path": "experiments/deep.toml", "content": '[model]\nkind = "dit"\ndepth = 2\n'},
        ],
        "memory": [{"add": "one block underfits", "section": "question"}, {"forget": "N2"}],
    }
    good = tool_use_block("propose", good_input, "toolu_good")
    api.enqueue(
        message([text_block("Let me look around."), listing], usage_=usages[0]),
        message(reads, usage_=usages[1]),
        overloaded(),  # the SDK retries it
        message([bad], usage_=usages[2]),
        message([text_block("Fixed."), good], usage_=usages[3]),
    )
    agent = AnthropicAgent(max_retries=2)
    try:
        proposal = agent.propose(context)
    finally:
        agent.close()

    # The proposal, and what it cost.
    assert proposal.hypothesis == good_input["hypothesis"]
    assert proposal.experiment == "experiments/deep.toml"
    assert [(e.path, e.search, e.replace, e.content) for e in proposal.edits] == [
        ("models/dit.py", "depth = 1", "depth = 2", None),
        ("experiments/deep.toml", None, None, '[model]\nkind = "dit"\ndepth = 2\n'),
    ]
    assert [(m.add, m.section, m.forget) for m in proposal.memory] == [
        ("one block underfits", "question", None),
        (None, "principle", "N2"),
    ]
    assert proposal.meta == {"model": DEFAULT_MODEL, "turns": 4}
    tokens = proposal.tokens
    assert tokens.input_tokens == sum(u["input_tokens"] for u in usages)
    assert tokens.output_tokens == sum(u["output_tokens"] for u in usages)
    assert tokens.cache_write_tokens == 1800
    assert tokens.cache_read_tokens == 3 * 1800
    assert tokens.cost_usd == pytest.approx(expected_cost(usages, PRICES[DEFAULT_MODEL]))
    assert tokens.cost_usd > 0

    # What went over the wire: 5 requests (the 529 and its retry), the key in a header of each.
    requests = api.message_requests()
    assert len(requests) == 5 and api.remaining == 0
    assert requests[2] == requests[3]
    assert api.requests[3].headers["x-stainless-retry-count"] == "1"
    assert all(any(canary in v for v in r.headers.values()) for r in api.requests)
    first = requests[0]
    assert first["model"] == DEFAULT_MODEL
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert ALLOWED_TEXT in first["system"][0]["text"]
    assert first["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": context.prompt, "cache_control": {"type": "ephemeral"}}],
        }
    ]
    assert [t["name"] for t in first["tools"]] == ["list_files", "read_file", "propose"]

    listed = tool_results(requests[1])
    assert [r["tool_use_id"] for r in listed] == ["toolu_list"] and not listed[0].get("is_error")
    files = listed[0]["content"].splitlines()
    assert {"models/dit.py", "models/__init__.py", "experiments/base.toml", "LOOP.md"} <= set(files)
    assert not [f for f in files if f.startswith((".git", "runs/", "data/")) or "__pycache__" in f]

    read, escape, git = tool_results(requests[2])
    assert read["tool_use_id"] == "toolu_read" and not read.get("is_error") and DIT in read["content"]
    assert escape["tool_use_id"] == "toolu_escape" and escape["is_error"] and "'..'" in escape["content"]
    assert git["tool_use_id"] == "toolu_git" and git["is_error"] and ".git" in git["content"]
    assert "not yours" not in json.dumps(requests[-1])

    (rejected,) = tool_results(requests[4])
    assert rejected["tool_use_id"] == "toolu_bad" and rejected["is_error"]
    assert "replace" in rejected["content"] and "call propose again" in rejected["content"]

    # The last request holds the whole conversation, turns alternating, each tool_use answered in order.
    convo = requests[4]["messages"]
    assert [m["role"] for m in convo] == ["user", "assistant"] * 3 + ["user"]
    asked = [
        b["id"] for m in convo if m["role"] == "assistant" for b in m["content"] if b["type"] == "tool_use"
    ]
    answered = [b["tool_use_id"] for m in convo[1:] if m["role"] == "user" for b in m["content"]]
    assert asked == answered == ["toolu_list", "toolu_read", "toolu_escape", "toolu_git", "toolu_bad"]

    # The transcript was written, the worktree was not, and the key is in no file at all.
    lines = (context.run_dir / TRANSCRIPT_NAME).read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert events[0] == "start" and events[-1] == "proposal" and events.count("reply") == 4
    assert {p: p.read_bytes() for p in context.workspace.rglob("*") if p.is_file()} == before
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and canary.encode() in p.read_bytes()]
    assert leaked == []


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (malformed(), "not JSON"),
        (ScriptedResponse(200, {"hello": "world"}), "Message"),
        (ScriptedResponse(200, [1]), "list"),
    ],
)
def test_malformed_reply_is_an_agent_error(
    tmp_path: Path, api: FakeMessagesAPI, canary: str, reply: ScriptedResponse, why: str
) -> None:
    api.enqueue(reply)
    with pytest.raises(AgentError, match="malformed reply") as err:
        AnthropicAgent(max_retries=0).propose(make_context(tmp_path))
    assert why in str(err.value) and "\n" not in str(err.value)


def test_persistent_500_fails_after_the_retries(tmp_path: Path, api: FakeMessagesAPI, canary: str) -> None:
    api.default = api_error(500, "api_error", "Internal server error")
    with pytest.raises(AgentError) as err:
        AnthropicAgent(max_retries=2).propose(make_context(tmp_path))
    text = str(err.value)
    assert "HTTP 500 after 2 retries" in text and "api_error" in text
    assert canary not in text and "\n" not in text
    assert len(api.message_requests()) == 3


def test_bad_key_names_the_status_not_the_key(tmp_path: Path, api: FakeMessagesAPI, canary: str) -> None:
    api.enqueue(api_error(401, "authentication_error", f"invalid x-api-key {canary}", None))
    with pytest.raises(AgentError) as err:
        AnthropicAgent(max_retries=3).propose(make_context(tmp_path))
    text = str(err.value)
    assert "HTTP 401" in text and "check ANTHROPIC_API_KEY" in text and "retries" not in text
    assert canary not in text and "[redacted]" in text
    assert len(api.message_requests()) == 1  # a 401 is not retried


def test_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(AgentError) as err:
        AnthropicAgent()
    text = str(err.value)
    assert "ANTHROPIC_API_KEY" in text and "--agent local" in text and "\n" not in text


def test_nudged_once_then_gives_up(tmp_path: Path, api: FakeMessagesAPI, canary: str) -> None:
    usages = [usage(1000, 200, 3000, 0), usage(50, 30, 0, 3000)]
    api.enqueue(
        message([text_block("I think depth matters.")], usage_=usages[0]),
        message([text_block("Indeed.")], usage_=usages[1]),
    )
    with pytest.raises(AgentError, match="without calling propose") as err:
        AnthropicAgent(max_retries=0).propose(make_context(tmp_path))
    requests = api.message_requests()
    assert len(requests) == 2
    assert requests[1]["messages"][-1] == {"role": "user", "content": [{"type": "text", "text": NUDGE}]}
    # The two replies were paid for: the failure carries their cost for the ledger.
    tokens = err.value.tokens
    assert (tokens.input_tokens, tokens.output_tokens) == (1050, 230)
    assert (tokens.cache_write_tokens, tokens.cache_read_tokens) == (3000, 3000)
    assert (
        tokens.cost_usd == pytest.approx(expected_cost(usages, PRICES[DEFAULT_MODEL])) and tokens.cost_usd > 0
    )
    assert err.value.meta == {"model": DEFAULT_MODEL, "turns": 2}


def test_max_turns(tmp_path: Path, api: FakeMessagesAPI, canary: str) -> None:
    api.enqueue(*(message([tool_use_block("list_files", {})], usage_=usage(100, 10)) for _ in range(2)))
    with pytest.raises(AgentError, match="after 2 model turns") as err:
        AnthropicAgent(max_turns=2, max_retries=0).propose(make_context(tmp_path))
    assert len(api.message_requests()) == 2
    assert (err.value.tokens.input_tokens, err.value.tokens.output_tokens) == (200, 20)
    assert err.value.meta == {"model": DEFAULT_MODEL, "turns": 2}


def test_an_api_failure_keeps_the_spend_of_the_turns_before_it(
    tmp_path: Path, api: FakeMessagesAPI, canary: str
) -> None:
    context = make_context(tmp_path)
    first = usage(700, 90, 1800, 0)
    api.enqueue(message([tool_use_block("list_files", {})], usage_=first))
    api.default = api_error(500, "api_error", "Internal server error")
    with pytest.raises(AgentError, match="HTTP 500") as err:
        AnthropicAgent(max_retries=0).propose(context)
    assert err.value.tokens.input_tokens == 700 and err.value.tokens.cache_write_tokens == 1800
    assert err.value.tokens.cost_usd == pytest.approx(expected_cost([first], PRICES[DEFAULT_MODEL]))
    assert err.value.meta == {"model": DEFAULT_MODEL, "turns": 2}
    last = json.loads((context.run_dir / TRANSCRIPT_NAME).read_text().splitlines()[-1])
    assert last["event"] == "error" and "HTTP 500" in last["error"] and last["tokens"]["input_tokens"] == 700


def test_a_failure_before_any_reply_costs_nothing(tmp_path: Path, api: FakeMessagesAPI, canary: str) -> None:
    api.default = api_error(500, "api_error", "Internal server error")
    with pytest.raises(AgentError) as err:
        AnthropicAgent(max_retries=0).propose(make_context(tmp_path))
    assert err.value.tokens.model_dump() == TokenUse().model_dump()
    assert err.value.meta == {"model": DEFAULT_MODEL, "turns": 1}


def test_cut_at_max_tokens_is_not_run_but_reported(tmp_path: Path, api: FakeMessagesAPI, canary: str) -> None:
    cut = tool_use_block("propose", {"hypothesis": "x", "edits": [{"path": "models/dit.py"}]}, "toolu_cut")
    fine = tool_use_block(
        "propose", {"hypothesis": "Wider.", "edits": [{"path": "models/x.py", "content": "x = 1\n"}]}
    )
    api.enqueue(message([cut], stop_reason="max_tokens"), message([fine]))
    proposal = AnthropicAgent(max_retries=0).propose(make_context(tmp_path))
    assert proposal.hypothesis == "Wider." and proposal.meta["turns"] == 2
    (result,) = tool_results(api.message_requests()[1])
    assert result["tool_use_id"] == "toolu_cut" and result["is_error"] and "max_tokens" in result["content"]


def test_unknown_model_costs_zero_with_a_warning(
    tmp_path: Path, api: FakeMessagesAPI, canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    propose = tool_use_block("propose", {"hypothesis": "Same.", "edits": []})
    api.enqueue(message([propose], usage_=usage(1000, 100)))
    with caplog.at_level(logging.WARNING, logger="harness.agents.anthropic_agent"):
        proposal = AnthropicAgent(model="claude-mystery-9", max_retries=0).propose(make_context(tmp_path))
    assert proposal.tokens.input_tokens == 1000 and proposal.tokens.cost_usd == 0.0
    assert "claude-mystery-9" in caplog.text
    assert api.message_requests()[0]["model"] == "claude-mystery-9"


def test_prices() -> None:
    assert price_for("claude-haiku-4-5-20251001") == PRICES["claude-haiku-4-5"]
    assert price_for("claude-sonnet-5-5") != price_for("claude-sonnet-5")
    assert price_for("claude-haiku-5-5", 100_000) == PRICES["claude-haiku-5-5"]
    assert price_for("claude-haiku-5-5", 100_001).input > PRICES["claude-haiku-5-5"].input
    assert price_for("claude-sonnet-5-7") is None
    assert DEFAULT_MODEL in PRICES


def test_workspace_view_stays_inside(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    (context.workspace / "models" / "link.py").symlink_to(tmp_path / "outside.txt")
    (context.workspace / ".env").write_text("ANTHROPIC_API_KEY=x\n")
    view = WorkspaceView(context.workspace)
    for bad in [
        "/etc/passwd",
        "../outside.txt",
        "models/../../outside.txt",
        ".git/config",
        "models/link.py",
        ".env",
    ]:
        with pytest.raises(ToolError):
            view.read_file(bad)
    with pytest.raises(ToolError):
        view.list_files("data")
    assert ".env" not in view.list_files(".").splitlines()
    lines = "".join(f"line {i}\n" for i in range(10))
    (context.workspace / "models" / "long.py").write_text(lines)
    window = view.read_file("models/long.py", offset_line=3, max_lines=2)
    assert window.splitlines() == [
        "[models/long.py: lines 4-5 of 10]",
        "line 3",
        "line 4",
        "[... 5 more lines: read_file offset_line=5]",
    ]


def test_transcript_redacts_secrets(tmp_path: Path) -> None:
    transcript = Transcript(tmp_path / "t.jsonl", ["sk-ant-secret-123"])
    transcript.write({"content": "the file said sk-ant-secret-123"})
    text = (tmp_path / "t.jsonl").read_text()
    assert "sk-ant-secret-123" not in text and "[redacted]" in text


@pytest.mark.parametrize(
    ("stop", "why"), [("refusal", "refused"), ("model_context_window_exceeded", "context window")]
)
def test_stops_that_cannot_be_retried(
    tmp_path: Path, api: FakeMessagesAPI, canary: str, stop: str, why: str
) -> None:
    api.enqueue(message([text_block("...")], stop_reason=stop))
    with pytest.raises(AgentError, match=why):
        AnthropicAgent(max_retries=0).propose(make_context(tmp_path))
    assert len(api.message_requests()) == 1


def test_unreachable_api(tmp_path: Path, canary: str) -> None:
    agent = AnthropicAgent(max_retries=0, base_url="http://127.0.0.1:9", timeout_s=5)
    with pytest.raises(AgentError, match="cannot reach the Anthropic API at http://127.0.0.1:9") as err:
        agent.propose(make_context(tmp_path))
    assert canary not in str(err.value)

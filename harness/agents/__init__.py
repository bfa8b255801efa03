"""The agents a night can use (`harness run --agent NAME`), built by name."""

from __future__ import annotations

import os
from pathlib import Path

from harness.agents.base import Agent, AgentError

AGENTS = ("anthropic", "claude-code", "local", "replay")


def default_agent() -> str:
    """The Messages API when a key is set, else the offline agent: a night always has someone proposing."""
    return "anthropic" if os.environ.get("ANTHROPIC_API_KEY") else "local"


def make_agent(name: str, model: str | None = None, replay_file: Path | None = None) -> Agent:
    if name == "anthropic":
        from harness.agents.anthropic_agent import AnthropicAgent

        return AnthropicAgent(model=model) if model else AnthropicAgent()
    if name == "claude-code":
        from harness.agents.claude_code import ClaudeCodeAgent

        return ClaudeCodeAgent(model=model)
    if name == "local":
        from harness.agents.local import LocalAgent

        return LocalAgent()
    if name == "replay":
        from harness.agents.replay import ReplayAgent

        if replay_file is None:
            raise AgentError("--agent replay needs --replay FILE (one proposal JSON per line)")
        return ReplayAgent(replay_file)
    raise AgentError(f"unknown agent {name!r}; agents: {', '.join(AGENTS)}")

"""The `claude-code` agent against a fake `claude` executable: a real subprocess found on PATH.

The fake (`FakeClaude` below, written into a script) stands in for Claude Code's print mode wherever the agent
relies on it: it parses argv the way the CLI's option parser does (an unknown option fails, tool lists are
variadic), loads the settings sources the flags select (by default the user's ~/.claude/settings.json, which
here allows every tool everywhere), offers the tools `--tools` leaves plus the user's MCP servers unless
`--strict-mcp-config`, decides every tool call with the CLI's rules (deny, then the block-outside settings,
then allow, then the mode; print mode cannot ask, so what would prompt is refused), keeps a session
transcript, a memory file and a telemetry cache in ~/.claude unless told not to, and prints the CLI's result
JSON, error shapes included (no `result`, an `errors` list; a failed API call as `success` with `is_error`).
Its scripted "model" edits files with those tools; in the `escape` script it also tries to get out.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import pytest

from harness.agents.base import AgentContext, AgentError
from harness.agents.claude_code import (
    FILE_TOOLS,
    MAX_ARGV_PROMPT,
    NOT_INSTALLED,
    QUIET_ENV,
    TRANSCRIPT_NAME,
    ClaudeCodeAgent,
    answered_model,
    confinement_settings,
    diff_edits,
    parse_result_text,
    scratch_files,
    tokens_from_result,
)
from tests.helpers import agent_context


class FakeClaude:
    """Claude Code's print mode as far as the agent depends on it. Runs as a script: standard library only."""

    OPTIONS = {
        "-p": "flag",
        "--print": "flag",
        "--output-format": "value",
        "--model": "value",
        "--max-turns": "value",
        "--permission-mode": "value",
        "--setting-sources": "value",
        "--settings": "value",
        "--tools": "variadic",
        "--allowedTools": "variadic",
        "--allowed-tools": "variadic",
        "--disallowedTools": "variadic",
        "--disallowed-tools": "variadic",
        "--add-dir": "variadic",
        "--mcp-config": "variadic",
        "--strict-mcp-config": "flag",
        "--no-session-persistence": "flag",
        "--dangerously-skip-permissions": "flag",
        "--verbose": "flag",
    }
    ALIASES = {
        "--print": "-p",
        "--allowed-tools": "--allowedTools",
        "--disallowed-tools": "--disallowedTools",
    }
    MODES = ("default", "acceptEdits", "plan", "auto", "dontAsk", "bypassPermissions")
    SOURCES = ("user", "project", "local")
    BUILTIN = (
        "Task",
        "Bash",
        "Glob",
        "Grep",
        "Read",
        "Edit",
        "Write",
        "NotebookEdit",
        "WebFetch",
        "WebSearch",
    )
    EDITS = ("Edit", "Write", "NotebookEdit")  # what Edit(...) rules and the write block cover
    READS = ("Read", "Glob", "Grep")  # what Read(...) rules and the read block cover
    ALIAS_MODELS = {"sonnet": "claude-sonnet-5-5", "opus": "claude-opus-5-5", "haiku": "claude-haiku-5-5"}
    DEFAULT_MODEL = "claude-sonnet-5-5"
    SIDE_MODEL = "claude-haiku-5-5"  # the small model the CLI calls on the side

    def __init__(self, argv: list[str]) -> None:
        self.cwd = Path.cwd().resolve()
        self.home = Path(os.environ["HOME"])
        self.config_dir = Path(os.environ.get("CLAUDE_CONFIG_DIR") or self.home / ".claude")
        self.opts, self.prompt = self.parse(argv)
        self.calls: list[dict[str, Any]] = []
        self.denials: list[dict[str, Any]] = []

    @staticmethod
    def fail(message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1)

    def parse(self, argv: list[str]) -> tuple[dict[str, Any], str | None]:
        """Commander's rules: a variadic option takes every following argument up to the next option."""
        opts: dict[str, Any] = {}
        prompt = None
        args = list(argv)
        while args:
            arg = args.pop(0)
            if not arg.startswith("-"):
                if prompt is not None:
                    self.fail(f"too many arguments: {arg!r}")
                prompt = arg
                continue
            name, has_value, inline = arg.partition("=")
            kind = self.OPTIONS.get(name)
            if kind is None:
                self.fail(f"unknown option '{name}'")
            key = self.ALIASES.get(name, name)
            if kind == "flag":
                opts[key] = True
            elif kind == "value":
                if not has_value and not args:
                    self.fail(f"option '{name} <value>' argument missing")
                opts[key] = inline if has_value else args.pop(0)
            else:
                values = [inline] if has_value else []
                while args and not args[0].startswith("-"):
                    values.append(args.pop(0))
                if not values:
                    self.fail(f"option '{name} <values...>' argument missing")
                opts[key] = [*opts.get(key, []), *values]
        return opts, prompt

    def rules(self, option: str) -> list[str]:
        """`Read,Edit` or `Bash(git:*) Edit`: a list's items, split on commas and spaces outside (...)."""
        return [
            r for value in self.opts.get(option, []) for r in re.findall(r"[^\s,(]+(?:\([^)]*\))?", value)
        ]

    def load_settings(self) -> None:
        chosen = self.opts.get("--setting-sources")
        names = list(self.SOURCES) if chosen is None else [n.strip() for n in chosen.split(",") if n.strip()]
        for name in names:
            if name not in self.SOURCES:
                self.fail(f"Invalid setting source: {name}. Valid options are: user, project, local")
        files = {
            "user": self.config_dir / "settings.json",
            "project": self.cwd / ".claude" / "settings.json",
            "local": self.cwd / ".claude" / "settings.local.json",
        }
        layers = [(n, json.loads(files[n].read_text())) for n in names if files[n].is_file()]
        if "--settings" in self.opts:  # flag settings load whatever --setting-sources says
            value = self.opts["--settings"]
            try:
                text = value if value.lstrip().startswith("{") else Path(value).read_text()
                layers.append(("flag", json.loads(text)))
            except (OSError, ValueError):
                self.fail(f"Invalid settings: {value[:60]}")
        self.sources = [name for name, _ in layers]
        perms = [layer.get("permissions", {}) for _, layer in layers]
        self.allow = [r for p in perms for r in p.get("allow", [])] + self.rules("--allowedTools")
        self.deny = [r for p in perms for r in p.get("deny", [])] + self.rules("--disallowedTools")
        self.block_reads = any(p.get("blockReadsOutsideWorkingDirectories") is True for p in perms)
        self.block_writes = any(p.get("blockWritesOutsideWorkingDirectories") is True for p in perms)
        modes = [p["defaultMode"] for p in perms if "defaultMode" in p]
        self.mode = self.opts.get("--permission-mode") or (modes[-1] if modes else "default")
        if self.opts.get("--dangerously-skip-permissions"):
            self.mode = "bypassPermissions"
        if self.mode not in self.MODES:
            self.fail(f"option '--permission-mode <mode>' argument '{self.mode}' is invalid")
        extra = [d for p in perms for d in p.get("additionalDirectories", [])]
        self.work_dirs = [self.cwd, *(Path(self.target(d)) for d in extra + self.opts.get("--add-dir", []))]
        memory = [layer["autoMemoryEnabled"] for _, layer in layers if "autoMemoryEnabled" in layer]
        self.auto_memory = not (os.environ.get("CLAUDE_CODE_DISABLE_AUTO_MEMORY") or memory[-1:] == [False])

    def offered_tools(self) -> list[str]:
        """--tools picks the built-in tools ("" none, "default" all), MCP servers add theirs, bare denies
        take tools away."""
        builtin = list(self.BUILTIN)
        if "--tools" in self.opts:
            chosen = self.rules("--tools")
            builtin = builtin if chosen == ["default"] else [t for t in chosen if t in self.BUILTIN]
        servers: dict[str, Any] = {}
        for config in self.opts.get("--mcp-config", []):
            loaded = json.loads(config if config.startswith("{") else Path(config).read_text())
            servers.update(loaded["mcpServers"])
        user_config = self.home / ".claude.json"
        if not self.opts.get("--strict-mcp-config") and user_config.is_file():
            servers.update(json.loads(user_config.read_text()).get("mcpServers", {}))
        denied = {r for r in self.deny if "(" not in r}
        return [t for t in [*builtin, *(f"mcp__{name}__run" for name in servers)] if t not in denied]

    def target(self, spec: str) -> str:
        """The absolute path a rule or directory names: //abs, ~/home, else relative to the working directory
        (a single leading / is relative to the settings file: no rule here uses it)."""
        spec = re.sub(r"\\(.)", r"\1", spec)  # escaped glob characters are literal
        if spec.startswith("//"):
            return spec[1:]
        if spec.startswith("~/"):
            return str(self.home) + spec[1:]
        return spec if spec.startswith("/") else str(self.cwd / spec.removeprefix("./"))

    def matches(self, rule: str, tool: str, path: Path | None) -> bool:
        name, paren, spec = rule.partition("(")
        if not paren:
            return name == tool  # a bare tool name matches every use of the tool, on any path
        family = "Edit" if tool in self.EDITS else "Read" if tool in self.READS else None
        if (
            name != family or path is None
        ):  # only Read(...) and Edit(...) rules name paths; Write(...) does not
            return False
        pattern, text = self.target(spec.removesuffix(")")), str(path)
        if pattern.endswith("/**"):
            return text == pattern[:-3] or text.startswith(pattern[:-2])
        return fnmatch.fnmatchcase(text, pattern) or text.startswith(pattern.rstrip("/") + "/")

    def permit(self, tool: str, path: Path | None) -> tuple[bool, str]:
        if tool not in self.offered:
            return False, "no such tool"
        if any(self.matches(r, tool, path) for r in self.deny):
            return False, "deny rule"
        inside = path is None or any(path == d or path.is_relative_to(d) for d in self.work_dirs)
        if not inside and (
            (tool in self.EDITS and self.block_writes) or (tool in self.READS and self.block_reads)
        ):
            return False, "outside the working directories"
        if any(self.matches(r, tool, path) for r in self.allow):
            return True, "allow rule"
        if self.mode == "bypassPermissions":
            return True, "bypassPermissions"
        if tool in self.READS and inside:
            return True, "a read in the working directory"
        if tool in self.EDITS and inside and self.mode == "acceptEdits":
            return True, "acceptEdits"
        return False, "needs approval, and print mode cannot ask"

    def use(self, tool: str, target: str | None = None, act: Any = None) -> Any:
        """One tool call by the model, run only if the permission rules allow it."""
        path = None if target is None else (self.cwd / target).resolve()
        allowed, why = self.permit(tool, path)
        self.calls.append({"tool": tool, "path": path and str(path), "allowed": allowed, "why": why})
        if not allowed:
            if tool in self.offered:
                tool_input = {"file_path": str(path)} if path else {}
                denial = {
                    "tool_name": tool,
                    "tool_input": tool_input,
                    "tool_use_id": f"toolu_{len(self.calls)}",
                }
                self.denials.append(denial)
            return None
        return act(path) if act else ""

    def read(self, target: str) -> str | None:
        return self.use("Read", target, lambda p: p.read_text() if p.is_file() else None)

    def write(self, target: str, text: str) -> None:
        def act(path: Path) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

        self.use("Write", target, act)

    def edit(self, target: str, old: str, new: str) -> None:
        self.use("Edit", target, lambda p: p.is_file() and p.write_text(p.read_text().replace(old, new)))

    # --- what the scripted model does, by FAKE_CLAUDE_MODE; each returns the result's own fields

    def session_edit(self) -> dict[str, Any]:
        self.use("Glob", ".")
        self.read("models/dit.py")
        self.edit("models/dit.py", "depth = 1", "depth = 2")
        self.write("experiments/deep.toml", "[model]\ndepth = 2\n")
        answer = "**HYPOTHESIS:** Two blocks lower val mse.\nEXPERIMENT: experiments/deep.toml\n"
        memory = "MEMORY dead end: wider blocks did not help\n- **Memory (question):** does depth help?\n"
        memory += "FORGET: N4\n"
        return {"result": answer + memory + "The model underfits."}

    def session_escape(self) -> dict[str, Any]:
        """Read a secret outside, plant files outside, run a shell and a sub-agent; then do the job."""
        secret = self.read(os.environ["FAKE_CLAUDE_SECRET"])
        self.use("Grep", str(Path(os.environ["FAKE_CLAUDE_SECRET"]).parent))
        for target in os.environ["FAKE_CLAUDE_TARGETS"].split(os.pathsep):
            self.edit(target, "depth = 1", "depth = 666")
            self.write(target, "planted = True\n")
        for tool in ("Bash", "Task", "WebFetch", *(t for t in self.offered if t.startswith("mcp__"))):
            self.use(tool)
        self.edit("models/dit.py", "depth = 1", "depth = 2")
        if secret:
            self.write("models/leak.py", f"SECRET = {secret!r}\n")
        return {"result": "HYPOTHESIS: Two blocks lower val mse." + (f"\nI found {secret}" if secret else "")}

    def session_nohypothesis(self) -> dict[str, Any]:
        self.write("models/dit.py", "depth = 3\n")
        return {"result": "I made the model deeper.\nIt should help."}

    def session_noop(self) -> dict[str, Any]:
        return {"result": "HYPOTHESIS: nothing to do"}

    def session_max_turns(self) -> dict[str, Any]:
        self.read("models/dit.py")
        turns = int(self.opts.get("--max-turns", 10)) + 1
        return {"subtype": "error_max_turns", "is_error": True, "num_turns": turns, "errors": []}

    def session_overloaded(self) -> dict[str, Any]:
        self.edit("models/dit.py", "depth = 1", "depth = 2")  # made before the failure: no proposal for it
        return {
            "subtype": "error_during_execution",
            "is_error": True,
            "api_error_status": 529,
            "errors": ["Overloaded"],
        }

    def session_api_error(self) -> dict[str, Any]:
        no_usage = {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        failed = {"is_error": True, "result": "API Error: 401 invalid x-api-key", "api_error_status": 401}
        return {**failed, "num_turns": 1, "total_cost_usd": 0, "usage": no_usage, "modelUsage": {}}

    def result(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The print-mode JSON: `usage` counts the main model only, `modelUsage` every model, so only the
        latter adds up to `total_cost_usd`; an error subtype has no `result`."""
        asked = self.opts.get("--model") or self.DEFAULT_MODEL
        model = self.ALIAS_MODELS.get(asked, asked)
        main = {
            "inputTokens": 12,
            "outputTokens": 345,
            "cacheReadInputTokens": 15000,
            "cacheCreationInputTokens": 2000,
        }
        side = {
            "inputTokens": 480,
            "outputTokens": 25,
            "cacheReadInputTokens": 0,
            "cacheCreationInputTokens": 0,
        }
        extra = {"webSearchRequests": 0, "contextWindow": 200000}
        usage = {
            "input_tokens": 12,
            "output_tokens": 345,
            "cache_creation_input_tokens": 2000,
            "cache_read_input_tokens": 15000,
        }
        result = {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "duration_ms": 1234,
            "duration_api_ms": 1100,
            "num_turns": 7,
            "session_id": "sess-1",
            "total_cost_usd": 0.0421,
            "usage": usage,
            "modelUsage": {
                model: {**main, **extra, "costUSD": 0.04},
                self.SIDE_MODEL: {**side, **extra, "costUSD": 0.0021},
            },
            "permission_denials": self.denials,
            "uuid": "0b1e0f3a-0000-4000-8000-000000000001",
        }
        return {**result, **fields}

    def leave_traces(self) -> None:
        """What the CLI keeps in its config directory unless told not to."""
        project = self.config_dir / "projects" / re.sub(r"[^A-Za-z0-9]", "-", str(self.cwd))
        if not self.opts.get("--no-session-persistence"):
            project.mkdir(parents=True, exist_ok=True)
            (project / "sess-1.jsonl").write_text('{"type": "user"}\n')
        if self.auto_memory:
            (project / "memory").mkdir(parents=True, exist_ok=True)
            (project / "memory" / "MEMORY.md").write_text("- the user likes deep models\n")
        if not os.environ.get("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"):
            (self.config_dir / "statsig").mkdir(parents=True, exist_ok=True)
            (self.config_dir / "statsig" / "statsig.cached.evaluations").write_text("{}")

    def main(self) -> int:
        stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
        if not self.opts.get("-p"):
            self.fail("this fake runs in print mode (-p) only")
        if not (self.prompt or stdin):
            self.fail(
                "Input must be provided either through stdin or as a prompt argument when using --print"
            )
        self.load_settings()
        self.offered = self.offered_tools()
        script = os.environ.get("FAKE_CLAUDE_MODE", "edit")
        if script == "garbage":
            print("Error: not logged in", file=sys.stderr)
            return 1
        if script == "sleep":
            time.sleep(60)
        result = self.result(getattr(self, f"session_{script}")())
        self.leave_traces()
        quiet = ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "CLAUDE_CODE_DISABLE_AUTO_MEMORY")
        record = {
            "argv": sys.argv[1:],
            "cwd": str(self.cwd),
            "stdin": stdin,
            "sources": self.sources,
            "mode": self.mode,
            "tools": self.offered,
            "allow": self.allow,
            "calls": self.calls,
            "env": {name: os.environ.get(name) for name in quiet},
        }
        Path(os.environ["FAKE_CLAUDE_LOG"]).write_text(json.dumps(record))
        print(json.dumps(result))
        return 1 if result["is_error"] else 0


def fake_claude_script() -> str:
    """FakeClaude as an executable script, run by this interpreter."""
    lines = [
        f"#!{sys.executable}",
        "from __future__ import annotations",
        "import fnmatch, json, os, re, sys, time",
        "from pathlib import Path",
        inspect.getsource(FakeClaude),
        "sys.exit(FakeClaude(sys.argv[1:]).main())",
    ]
    return "\n".join(lines) + "\n"


# The user's own Claude Code setup: every tool allowed everywhere, a permissive mode, an MCP server.
USER_SETTINGS = {
    "permissions": {
        "allow": ["Read", "Edit", "Write", "Glob", "Grep", "Bash", "WebFetch"],
        "defaultMode": "bypassPermissions",
        "additionalDirectories": ["//"],
    }
}
USER_MCP = {"mcpServers": {"evil": {"command": "evil-mcp"}}}
DIT = "class DiT:\n    depth = 1\n"
SECRET = "sk-outside-secret-4242"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME with the user's permissive settings in ~/.claude, and no quieting variables set."""
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / "settings.json").write_text(json.dumps(USER_SETTINGS))
    (home / ".claude.json").write_text(json.dumps(USER_MCP))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    for name in QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def fake_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    """Puts the fake `claude` first on PATH; returns the file where it logs how it was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "claude"
    exe.write_text(fake_claude_script())
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    log = tmp_path / "claude-call.json"
    monkeypatch.setenv("FAKE_CLAUDE_LOG", str(log))
    return log


@pytest.fixture
def escape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[Path]]:
    """The escape script's secret (outside everything the agent protects by name) and its write targets:
    a file of the worktree and a new file next to the secret."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text(SECRET + "\n")
    targets = [tmp_path / "worktree" / "models" / "dit.py", outside / "planted.py"]
    monkeypatch.setenv("FAKE_CLAUDE_MODE", "escape")
    monkeypatch.setenv("FAKE_CLAUDE_SECRET", str(secret))
    monkeypatch.setenv("FAKE_CLAUDE_TARGETS", os.pathsep.join(map(str, targets)))
    return secret, targets


def make_context(
    tmp_path: Path, prompt: str = "# LOOP.md\nImprove the model.\n", **fields: object
) -> AgentContext:
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
    return agent_context(
        ws, index=2, run_dir=tmp_path / "run", prompt=prompt, experiment="experiments/base.toml", **fields
    )


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_edits_from_the_cli_become_a_proposal(tmp_path: Path, fake_claude: Path) -> None:
    context = make_context(tmp_path)
    before = snapshot(context.workspace)
    proposal = ClaudeCodeAgent(model="claude-sonnet-5-5").propose(context)

    assert proposal.hypothesis == "Two blocks lower val mse."
    assert proposal.experiment == "experiments/deep.toml"
    assert proposal.rationale == "The model underfits."
    assert [(m.add, m.section, m.forget) for m in proposal.memory] == [
        ("wider blocks did not help", "dead end", None),
        ("does depth help?", "question", None),
        (None, "principle", "N4"),
    ]
    assert [(e.path, e.content) for e in proposal.edits] == [
        ("experiments/deep.toml", "[model]\ndepth = 2\n"),
        ("models/dit.py", DIT.replace("depth = 1", "depth = 2")),
    ]
    assert proposal.meta == {
        "session_id": "sess-1",
        "num_turns": 7,
        "model": "claude-sonnet-5-5",
        "models": ["claude-haiku-5-5", "claude-sonnet-5-5"],
    }

    call = json.loads(fake_claude.read_text())
    argv = call["argv"]
    assert argv[0] == "-p" and argv[1].startswith(context.rules)  # LOOP.md, then the night so far
    assert context.prompt in argv[1] and "HYPOTHESIS:" in argv[1] and "MEMORY <principle|dead end" in argv[1]
    assert option(argv, "--output-format") == "json"
    assert option(argv, "--tools") == FILE_TOOLS and "--allowedTools" not in argv
    assert option(argv, "--permission-mode") == "dontAsk"
    assert option(argv, "--setting-sources") == ""
    assert {"--strict-mcp-config", "--no-session-persistence"} <= set(argv) and "--mcp-config" not in argv
    assert option(argv, "--model") == "claude-sonnet-5-5" and option(argv, "--max-turns") == "60"
    # It ran in a scratch copy holding only the editable roots, which is gone; the worktree is untouched.
    cwd = Path(call["cwd"])
    assert cwd != context.workspace and not cwd.is_relative_to(context.workspace) and not cwd.exists()
    assert snapshot(context.workspace) == before
    assert json.loads(option(argv, "--settings"))["permissions"]["allow"] == [
        f"Read(/{cwd}/**)",
        f"Edit(/{cwd}/**)",
    ]
    assert call["env"] == {
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_DISABLE_AUTO_MEMORY": "1",
    }
    assert [(c["tool"], c["allowed"]) for c in call["calls"]] == [
        ("Glob", True),
        ("Read", True),
        ("Edit", True),
        ("Write", True),
    ]

    (line,) = (context.run_dir / TRANSCRIPT_NAME).read_text().splitlines()
    record = json.loads(line)
    assert record["result"]["session_id"] == "sess-1" and "<prompt>" in record["command"]


def test_the_cli_stays_in_its_scratch_copy(
    tmp_path: Path, fake_claude: Path, home: Path, escape: tuple[Path, list[Path]]
) -> None:
    secret, targets = escape
    context = make_context(tmp_path)
    worktree = snapshot(context.workspace)
    proposal = ClaudeCodeAgent().propose(context)

    # Only the edit inside the copy became the proposal; nothing outside was read or written.
    assert [(e.path, e.content) for e in proposal.edits] == [
        ("models/dit.py", DIT.replace("depth = 1", "depth = 2"))
    ]
    assert proposal.hypothesis == "Two blocks lower val mse." and proposal.rationale == ""
    assert SECRET not in proposal.model_dump_json()
    assert SECRET not in (context.run_dir / TRANSCRIPT_NAME).read_text()
    assert snapshot(context.workspace) == worktree
    assert sorted(p.name for p in secret.parent.iterdir()) == ["secret.txt"]

    call = json.loads(fake_claude.read_text())
    cwd = Path(call["cwd"])
    # Exactly the file tools were offered: no shell, web, sub-agent or the user's MCP server.
    assert sorted(call["tools"]) == sorted(FILE_TOOLS.split(","))
    # The user's settings (allow everything, bypassPermissions, every directory) were never loaded.
    assert call["sources"] == ["flag"] and call["mode"] == "dontAsk"
    assert call["allow"] == [f"Read(/{cwd}/**)", f"Edit(/{cwd}/**)"]
    decisions = [(c["tool"], c["path"], c["allowed"], c["why"]) for c in call["calls"]]
    worktree_dit, planted = map(str, targets)
    assert decisions == [
        ("Read", str(secret), False, "outside the working directories"),
        ("Grep", str(secret.parent), False, "outside the working directories"),
        ("Edit", worktree_dit, False, "deny rule"),
        ("Write", worktree_dit, False, "deny rule"),
        ("Edit", planted, False, "outside the working directories"),
        ("Write", planted, False, "outside the working directories"),
        ("Bash", None, False, "no such tool"),
        ("Task", None, False, "no such tool"),
        ("WebFetch", None, False, "no such tool"),
        ("Edit", str(cwd / "models" / "dit.py"), True, "allow rule"),
    ]
    # The refusals of tools it has are in the ledger: someone tried to get out.
    refused = [
        f"{tool} {path}" for tool, path, allowed, why in decisions if not allowed and why != "no such tool"
    ]
    assert proposal.meta["permission_denials"] == refused
    # Nothing was left in ~/.claude: no transcript, no memory, no telemetry cache.
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == [
        ".claude",
        ".claude.json",
        ".claude/settings.json",
    ]


def escape_argv(agent_argv: list[str], how: str) -> list[str]:
    """The command without one layer of the confinement, or as the agent used to build it."""
    if how == "as before":
        return ["-p", agent_argv[2], "--output-format", "json", "--permission-mode", "acceptEdits"] + [
            "--allowedTools",
            "Read,Edit,Write,Glob,Grep",
            "--disallowedTools",
            "Bash,WebFetch,WebSearch",
        ]
    at = agent_argv.index("--setting-sources")  # "with user settings": the CLI's default sources
    return agent_argv[1:at] + agent_argv[at + 2 :]


@pytest.mark.parametrize(
    ("how", "outside_written"),
    [("as before", ["dit.py", "planted.py"]), ("with user settings", ["planted.py"])],
)
def test_without_the_confinement_the_fake_lets_the_model_out(
    tmp_path: Path, home: Path, escape: tuple[Path, list[Path]], how: str, outside_written: list[str]
) -> None:
    """The control: the fake enforces no more than the CLI would, so the test above can fail."""
    secret, targets = escape
    context = make_context(tmp_path)
    scratch = (tmp_path / "scratch").resolve()
    (scratch / "models").mkdir(parents=True)
    (scratch / "models" / "dit.py").write_text(DIT)
    agent = ClaudeCodeAgent()
    argv = agent.command("claude", "Do the job.", confinement_settings(scratch, [context.workspace, home]))
    exe = tmp_path / "claude"
    exe.write_text(fake_claude_script())
    exe.chmod(0o755)
    log = tmp_path / "call.json"
    env = {**os.environ, "FAKE_CLAUDE_LOG": str(log)}
    done = subprocess.run(
        [exe, *escape_argv(argv, how)], cwd=scratch, env=env, capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert SECRET in result["result"] and SECRET in (scratch / "models" / "leak.py").read_text()
    assert [p.name for p in targets if p.read_text() == "planted = True\n"] == outside_written
    assert str(secret) in [c["path"] for c in json.loads(log.read_text())["calls"] if c["allowed"]]


def test_tokens_and_the_model_that_answered(tmp_path: Path, fake_claude: Path) -> None:
    """Tokens add up over every model, as the cost does; `sonnet` is what was asked, not what answered."""
    proposal = ClaudeCodeAgent(model="sonnet").propose(make_context(tmp_path))
    tokens = proposal.tokens
    assert (tokens.input_tokens, tokens.output_tokens) == (12 + 480, 345 + 25)
    assert (tokens.cache_read_tokens, tokens.cache_write_tokens, tokens.cost_usd) == (15000, 2000, 0.0421)
    assert proposal.meta["model"] == "claude-sonnet-5-5"


def test_the_model_is_recorded_when_none_was_asked_for(
    tmp_path: Path, fake_claude: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CLAUDE_MODE", "nohypothesis")
    proposal = ClaudeCodeAgent().propose(make_context(tmp_path))
    assert proposal.hypothesis == "I made the model deeper."
    assert [(e.path, e.content) for e in proposal.edits] == [("models/dit.py", "depth = 3\n")]
    assert proposal.experiment is None and proposal.meta["model"] == "claude-sonnet-5-5"
    assert "--model" not in json.loads(fake_claude.read_text())["argv"]


def test_tokens_from_result_without_model_usage() -> None:
    usage = {
        "input_tokens": 5,
        "output_tokens": 7,
        "cache_read_input_tokens": 11,
        "cache_creation_input_tokens": 13,
    }
    tokens = tokens_from_result({"usage": usage, "total_cost_usd": 0.5})
    assert tokens.model_dump() == {
        "input_tokens": 5,
        "output_tokens": 7,
        "cache_read_tokens": 11,
        "cache_write_tokens": 13,
        "cost_usd": 0.5,
    }
    per_model = {"a": {"inputTokens": 1, "costUSD": 0.25}, "b": {"outputTokens": 2, "costUSD": 0.5}}
    summed = tokens_from_result({"modelUsage": per_model})
    assert (summed.input_tokens, summed.output_tokens, summed.cost_usd) == (1, 2, 0.75)
    assert answered_model({"modelUsage": per_model}) == "b"
    assert answered_model({"usage": usage}) is None


@pytest.mark.parametrize(
    "prompt", ["# LOOP.md\n" + "x" * (MAX_ARGV_PROMPT + 10), "--- a prompt that looks like an option\n"]
)
def test_a_long_or_dashed_prompt_goes_through_stdin(tmp_path: Path, fake_claude: Path, prompt: str) -> None:
    ClaudeCodeAgent().propose(make_context(tmp_path, prompt, rules=""))  # the prompt comes first
    call = json.loads(fake_claude.read_text())
    assert call["stdin"].startswith(prompt) and len(call["argv"][1]) < 100


@pytest.mark.parametrize(
    ("mode", "message", "cost"),
    [
        ("max_turns", "claude failed (error_max_turns): stopped after 61 turns (--max-turns 60)", 0.0421),
        ("overloaded", "claude failed (error_during_execution): API error 529: Overloaded", 0.0421),
        ("api_error", "claude failed (api_error): API Error: 401 invalid x-api-key", 0.0),
        ("noop", "claude changed no file and named no experiment: HYPOTHESIS: nothing to do", 0.0421),
        ("garbage", "claude exited 1 without a JSON result: Error: not logged in", 0.0),
    ],
)
def test_failures_say_what_failed_and_keep_their_spend(
    tmp_path: Path, fake_claude: Path, monkeypatch: pytest.MonkeyPatch, mode: str, message: str, cost: float
) -> None:
    monkeypatch.setenv("FAKE_CLAUDE_MODE", mode)
    context = make_context(tmp_path)
    before = snapshot(context.workspace)
    with pytest.raises(AgentError) as err:
        ClaudeCodeAgent().propose(context)
    assert str(err.value) == message
    assert err.value.tokens.cost_usd == cost
    if cost:
        assert err.value.tokens.input_tokens == 12 + 480
        assert err.value.meta["model"] == "claude-sonnet-5-5" and err.value.meta["session_id"] == "sess-1"
    assert snapshot(context.workspace) == before


def test_timeout_kills_the_cli(tmp_path: Path, fake_claude: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CLAUDE_MODE", "sleep")
    start = time.monotonic()
    with pytest.raises(AgentError, match="did not finish within 1s") as err:
        ClaudeCodeAgent(timeout_s=1).propose(make_context(tmp_path))
    assert time.monotonic() - start < 10
    assert err.value.tokens.cost_usd == 0 and err.value.meta == {}


def test_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(AgentError) as err:
        ClaudeCodeAgent().propose(make_context(tmp_path))
    assert str(err.value) == NOT_INSTALLED
    assert "claude CLI is not installed" in NOT_INSTALLED and "--agent local" in NOT_INSTALLED


def test_confinement_settings(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp" / "worldloop-claude-x" / "project"
    settings = confinement_settings(scratch, [tmp_path / "worktree", tmp_path / "tmp", tmp_path / "a[1]*"])
    permissions = settings["permissions"]
    assert permissions["allow"] == [f"Read(/{scratch}/**)", f"Edit(/{scratch}/**)"]
    # A place that holds the scratch copy gets no deny (it would deny the copy); glob characters are escaped.
    assert permissions["deny"][-4:] == [
        f"Read(/{tmp_path}/worktree/**)",
        f"Edit(/{tmp_path}/worktree/**)",
        f"Read(/{tmp_path}/a\\[1\\]\\*/**)",
        f"Edit(/{tmp_path}/a\\[1\\]\\*/**)",
    ]
    assert {"Bash", "WebFetch", "Task"} <= set(permissions["deny"])
    assert permissions["blockReadsOutsideWorkingDirectories"] is True
    assert permissions["blockWritesOutsideWorkingDirectories"] is True
    assert settings["autoMemoryEnabled"] is False


def test_diff_of_the_scratch_copy(tmp_path: Path) -> None:
    (tmp_path / "models" / "__pycache__").mkdir(parents=True)
    (tmp_path / "models" / "__pycache__" / "dit.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "models" / "dit.py").write_text("depth = 2\n")
    (tmp_path / "models" / "blob.bin").write_bytes(b"\xff\xfe")
    before = {"models/dit.py": b"depth = 1\n", "models/old.py": b"x = 1\n"}
    edits, skipped = diff_edits(before, scratch_files(tmp_path))
    assert [(e.path, e.content, e.delete) for e in edits] == [
        ("models/dit.py", "depth = 2\n", False),
        ("models/old.py", None, True),
    ]
    assert skipped == ["models/blob.bin"]


def test_parse_result_text() -> None:
    text = "Done.\n- **Hypothesis**: Wider MLP helps.\n**EXPERIMENT:** `experiments/wide.toml`\nBecause."
    assert parse_result_text(text) == ("Wider MLP helps.", "experiments/wide.toml", "Done.\n\nBecause.")
    assert parse_result_text("") == (None, None, "")

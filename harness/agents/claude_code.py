"""The `claude-code` agent: Claude Code's CLI in non-interactive (print) mode, editing a scratch copy.

An agent must never write the worktree (the workspace applies, checks and commits edits), so the editable part
of the project (`models/` and `experiments/`) is copied into a temporary directory, `claude -p` works there
with file tools only (no shell, no web), and the difference between the copy and the originals becomes the
proposal's edits. The CLI's final JSON result gives the hypothesis (a first line `HYPOTHESIS: ...` that the
prompt asks for), the cost and the token counts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from harness.agents.base import Agent, AgentContext, AgentError, FileEdit, Proposal
from harness.files import append_line
from harness.ledger import TokenUse

log = logging.getLogger(__name__)

EDITABLE_ROOTS = ("models", "experiments")
IGNORED_PARTS = {"__pycache__", ".git", ".claude", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
ALLOWED_TOOLS = "Read,Edit,Write,Glob,Grep"
DISALLOWED_TOOLS = "Bash,WebFetch,WebSearch"
MAX_ARGV_PROMPT = 100_000  # bytes; a longer prompt goes through stdin (Linux caps one argument at 128 KiB)
TRANSCRIPT_NAME = "agent_transcript.jsonl"
INSTALL_URL = "https://docs.anthropic.com/en/docs/claude-code/setup"
NOT_INSTALLED = (
    f"the claude CLI is not installed (not on PATH): install Claude Code ({INSTALL_URL}) "
    "or use --agent anthropic / --agent local"
)

# "HYPOTHESIS: x", "**Hypothesis:** x", "- hypothesis: x": the model may dress the line in markdown.
_HYPOTHESIS = re.compile(
    r"^[ \t>*_#-]*hypothesis[*_ \t]*:[*_ \t]*(?P<text>\S.*?)[*_ \t]*$", re.IGNORECASE | re.MULTILINE
)
_EXPERIMENT = re.compile(
    r"^[ \t>*_#-]*experiment[*_ \t]*:[*_ \t`]*(?P<path>experiments/[^\s`*]+\.toml)[`*_ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)

WORK_RULES = """\

---
How this session works: you run non-interactively inside a scratch copy of the project that holds only
models/ and experiments/. Inspect the code with Read, Glob and Grep, then make the edits of ONE experiment
with Edit and Write. You may only change {allowed}. Do not try to run anything: after you finish, the harness
compiles and smoke-tests your change, trains {experiment} (or the config you name) and judges the result.

When you are done, reply with this first line:
HYPOTHESIS: <one sentence: what you changed and what it should do>
then, only if another experiment config than {experiment} should be trained, a line
EXPERIMENT: experiments/<name>.toml
then a short rationale."""


def build_prompt(context: AgentContext) -> str:
    rules = f"{context.rules}\n\n" if context.rules else ""
    return rules + context.prompt + WORK_RULES.format(allowed=context.allowed, experiment=context.experiment)


def _ignored(rel: PurePosixPath) -> bool:
    return any(p in IGNORED_PARTS for p in rel.parts) or rel.suffix == ".pyc"


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the editable roots of `root`, by posix path relative to it."""
    files: dict[str, bytes] = {}
    for top in EDITABLE_ROOTS:
        base = root / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            rel = PurePosixPath(path.relative_to(root).as_posix())
            if path.is_file() and not _ignored(rel):
                files[rel.as_posix()] = path.read_bytes()
    return files


def scratch_files(root: Path) -> dict[str, bytes]:
    """Every file of the scratch copy, wherever the CLI wrote it (the workspace refuses what it must)."""
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = PurePosixPath(path.relative_to(root).as_posix())
        if path.is_file() and not path.is_symlink() and not _ignored(rel):
            files[rel.as_posix()] = path.read_bytes()
    return files


def diff_edits(before: dict[str, bytes], after: dict[str, bytes]) -> tuple[list[FileEdit], list[str]]:
    """Whole-file edits turning `before` into `after`, and the paths skipped as not UTF-8 text."""
    edits: list[FileEdit] = []
    skipped: list[str] = []
    for path in sorted(set(before) | set(after)):
        if path not in after:
            edits.append(FileEdit(path=path, delete=True))
        elif before.get(path) != after[path]:
            try:
                edits.append(FileEdit(path=path, content=after[path].decode("utf-8")))
            except UnicodeDecodeError:
                skipped.append(path)
    return edits, skipped


def parse_result_text(text: str) -> tuple[str | None, str | None, str]:
    """(hypothesis, experiment, rationale) from the CLI's final answer; hypothesis None when it gave none."""
    match = _HYPOTHESIS.search(text)
    if match:
        hypothesis: str | None = match.group("text").strip()
        rest = (text[: match.start()] + text[match.end() :]).strip()
    else:
        lines = [ln.strip(" \t#*>-_`") for ln in text.splitlines()]
        hypothesis = next((ln for ln in lines if ln), None)
        rest = text.strip()
    exp = _EXPERIMENT.search(rest)
    experiment = exp.group("path") if exp else None
    if exp:
        rest = (rest[: exp.start()] + rest[exp.end() :]).strip()
    return hypothesis, experiment, re.sub(r"\n{3,}", "\n\n", rest)[:4000]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def tokens_from_result(result: dict[str, Any]) -> TokenUse:
    usage = result.get("usage") if isinstance(result.get("usage"), dict) else {}
    cost = result.get("total_cost_usd")
    return TokenUse(
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_tokens=_int(usage.get("cache_read_input_tokens")),
        cache_write_tokens=_int(usage.get("cache_creation_input_tokens")),
        cost_usd=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else 0.0,
    )


def _last_line(text: str, limit: int = 200) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else "(no output)"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def parse_output(stdout: str) -> dict[str, Any] | None:
    """The CLI's `result` object: one JSON object, or the last `result` entry of a JSON array (verbose)."""
    try:
        data = json.loads(stdout)
    except ValueError:
        lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
        try:  # a stray line before the JSON (a warning on stdout) must not lose the result
            data = json.loads(lines[-1]) if lines else None
        except ValueError:
            return None
    if isinstance(data, list):
        data = next((d for d in reversed(data) if isinstance(d, dict) and d.get("type") == "result"), None)
    return data if isinstance(data, dict) else None


class ClaudeCodeAgent(Agent):
    """Runs `claude -p` in a scratch copy of models/ and experiments/ and proposes what it changed."""

    name = "claude-code"
    typical_s = 180.0

    def __init__(
        self,
        model: str | None = None,
        timeout_s: float = 1200,
        max_turns: int | None = 60,
        executable: str = "claude",
    ) -> None:
        self.model = model
        self.timeout_s = timeout_s
        self.max_turns = max_turns
        self.executable = executable

    def command(self, executable: str, prompt_arg: str) -> list[str]:
        cmd = [executable, "-p", prompt_arg, "--output-format", "json", "--permission-mode", "acceptEdits"]
        cmd += ["--allowedTools", ALLOWED_TOOLS, "--disallowedTools", DISALLOWED_TOOLS]
        if self.model:
            cmd += ["--model", self.model]
        if self.max_turns:
            cmd += ["--max-turns", str(self.max_turns)]
        return cmd

    def propose(self, context: AgentContext) -> Proposal:
        executable = shutil.which(self.executable)
        if executable is None:
            raise AgentError(NOT_INSTALLED)
        originals = snapshot(Path(context.workspace))
        prompt = build_prompt(context)
        with tempfile.TemporaryDirectory(prefix="worldloop-claude-") as tmp:
            scratch = Path(tmp) / "project"
            for rel, data in originals.items():
                target = scratch / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            scratch.mkdir(exist_ok=True)
            result = self._run(executable, prompt, scratch, context)
            edits, skipped = diff_edits(originals, scratch_files(scratch))

        text = result.get("result") if isinstance(result.get("result"), str) else ""
        hypothesis, experiment, rationale = parse_result_text(text)
        if not edits and experiment is None:
            raise AgentError(f"claude changed no file and named no experiment: {_last_line(text)}")
        if hypothesis is None:
            hypothesis = "claude-code edit of " + ", ".join(e.path for e in edits[:3])
        meta: dict[str, Any] = {"session_id": result.get("session_id"), "num_turns": result.get("num_turns")}
        if self.model:
            meta["model"] = self.model
        if skipped:
            meta["skipped_binary"] = skipped
            log.warning("claude-code: ignored changes to non-text files %s", ", ".join(skipped))
        return Proposal(
            hypothesis=hypothesis,
            rationale=rationale,
            edits=edits,
            experiment=experiment,
            tokens=tokens_from_result(result),
            meta=meta,
        )

    def _run(self, executable: str, prompt: str, cwd: Path, context: AgentContext) -> dict[str, Any]:
        """Run the CLI to completion (killing its whole process group on timeout) and return its result."""
        via_stdin = len(prompt.encode("utf-8")) > MAX_ARGV_PROMPT
        prompt_arg = "Follow the instructions given on standard input." if via_stdin else prompt
        cmd = self.command(executable, prompt_arg)
        timeout = self.timeout_s if context.remaining_s <= 0 else min(self.timeout_s, context.remaining_s)
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.PIPE if via_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,  # its own process group, so a timeout kills the tools it started too
        )
        try:
            stdout, stderr = proc.communicate(prompt if via_stdin else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # it may have exited just now
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            self._record(context, cmd, proc.returncode, None, "")
            raise AgentError(f"claude did not finish within {timeout:.0f}s (agent timeout)") from None
        result = parse_output(stdout)
        self._record(context, cmd, proc.returncode, result, stderr)
        if result is None:
            raise AgentError(
                f"claude exited {proc.returncode} without a JSON result: {_last_line(stderr or stdout)}"
            )
        if result.get("is_error") or result.get("subtype", "success") != "success":
            what = result.get("result") if isinstance(result.get("result"), str) else ""
            raise AgentError(
                f"claude failed ({result.get('subtype', 'error')}): {_last_line(what or stderr)}"
            )
        return result

    def _record(
        self, context: AgentContext, cmd: list[str], returncode: int | None, result: Any, stderr: str
    ) -> None:
        """Keep what the CLI did in the run directory (the prompt is elided: the loop keeps it already)."""
        shown = [cmd[0], "-p", "<prompt>", *cmd[3:]]
        line = json.dumps(
            {
                "event": "claude_code",
                "command": shown,
                "returncode": returncode,
                "result": result,
                "stderr_tail": stderr[-2000:],
            },
            ensure_ascii=False,
            default=str,
        )
        for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
            secret = os.environ.get(name)
            if secret:
                line = line.replace(secret, "[redacted]")
        try:
            append_line(Path(context.run_dir) / TRANSCRIPT_NAME, line)
        except OSError as err:
            log.warning("could not write the agent transcript in %s: %s", context.run_dir, err)

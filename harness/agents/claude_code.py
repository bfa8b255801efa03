"""The `claude-code` agent: Claude Code's CLI in non-interactive (print) mode, editing a scratch copy.

An agent must never write the worktree (the workspace applies, checks and commits edits), so the editable part
of the project (`models/` and `experiments/`) is copied into a temporary directory, `claude -p` works there
with file tools only, and the difference between the copy and the originals becomes the proposal's edits. The
CLI's final JSON result gives the hypothesis (a first line `HYPOTHESIS: ...` that the prompt asks for), the
cost, the tokens and the model that answered.

The CLI is confined to the scratch copy by its own permission system, in layers, so that no single gap (an
older CLI without a setting, a rule the user wrote) opens a path (per Claude Code's CLI, settings and
permissions docs):

- `--tools Read,Edit,Write,Glob,Grep` is the whole tool set offered: no Bash, web, sub-agents (Task/Agent),
  notebooks or skills. `--allowedTools` is not used: it only pre-approves, and a bare `Write` there approves a
  write to any path on the machine.
- `--setting-sources ""` loads no user, project or local settings: the user's `~/.claude/settings.json` may
  allow `Read`/`Write` everywhere, add directories, hooks, plugins or a permissive default mode. Only managed
  (policy) settings, which an administrator enforces anyway, and our own `--settings` still apply.
- `--settings` allows `Read(//<scratch>/**)` and `Edit(//<scratch>/**)` (Edit rules cover Write; `//` is an
  absolute path), denies the file tools on the worktree, the checkout the harness runs from and the home
  directory (deny beats allow in every mode), and sets `blockReadsOutsideWorkingDirectories` and
  `blockWritesOutsideWorkingDirectories`, which refuse any file-tool path outside the working directory.
- `--permission-mode dontAsk` denies whatever those rules do not pre-approve, instead of prompting; unlike
  `acceptEdits` it has nothing to auto-approve.
- `--strict-mcp-config` without `--mcp-config`: no MCP server (the user's own would add tools).

It leaves no trace in `~/.claude`: `--no-session-persistence` (no transcript under `projects/`),
`CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1` (no telemetry, error reports, update checks or their caches),
`CLAUDE_CODE_DISABLE_AUTO_MEMORY=1` and `CLAUDE_CODE_DISABLE_FILE_CHECKPOINTING=1`. `HOME` and
`CLAUDE_CONFIG_DIR` are left as they are on purpose: the user's login lives there (`.credentials.json`, or a
macOS Keychain entry keyed by the config directory), and a private one would log a subscription user out;
`ANTHROPIC_API_KEY` works either way. Settings the user keeps in `~/.claude/settings.json` for the CLI itself
(an `apiKeyHelper`, an `env` block) are not read: export them in the environment instead.
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
from harness.durable import append_line
from harness.ledger import MemoryEdit, TokenUse
from harness.memory import NOTE_CHARS

log = logging.getLogger(__name__)

EDITABLE_ROOTS = ("models", "experiments")
IGNORED_PARTS = {"__pycache__", ".git", ".claude", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
FILE_TOOLS = "Read,Edit,Write,Glob,Grep"  # --tools: the only tools offered
# Denied as well, in case a CLI ignored --tools.
DISALLOWED_TOOLS = "Bash,WebFetch,WebSearch,Task,Agent,NotebookEdit"
# What the rules do not allow is denied, never prompted for (print mode has nobody to ask).
PERMISSION_MODE = "dontAsk"
# The CLI's side traffic and the files it keeps in ~/.claude for itself; nothing the agent needs.
QUIET_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_DISABLE_AUTO_MEMORY": "1",
    "CLAUDE_CODE_DISABLE_FILE_CHECKPOINTING": "1",
}
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

# "MEMORY principle: x", "- memory (dead end): x", "FORGET: N3": edits of the night's research memory.
_MEMORY = re.compile(
    r"^[ \t>*_#-]*memory[*_ \t(]*(?P<section>principle|dead end|question)[)*_ \t]*:"
    r"[*_ \t]*(?P<text>\S.*?)[*_ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_REVISIT = re.compile(r"^[ \t>*_#-]*revisit[*_ \t]*:[*_ \t`]*(?P<id>[\w.-]+-\d{3,})\b.*$", re.I | re.M)
_FORGET = re.compile(r"^[ \t>*_#-]*forget[*_ \t]*:[*_ \t]*(?P<id>N\d+)\b.*$", re.IGNORECASE | re.MULTILINE)

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
then, for each lesson the research memory should keep, a line
MEMORY <principle|dead end|question>: <the lesson, at most {note_chars} characters>
and for each memory note that no longer holds, a line FORGET: N<id>
and, only to retry a run the prompt lists as a revisit candidate, a line REVISIT: <its run id>
then a short rationale."""


def build_prompt(context: AgentContext) -> str:
    rules = f"{context.rules}\n\n" if context.rules else ""
    work = WORK_RULES.format(allowed=context.allowed, experiment=context.experiment, note_chars=NOTE_CHARS)
    return rules + context.prompt + work


def parse_memory(text: str) -> tuple[list[MemoryEdit], str]:
    """The memory edits of the CLI's final answer (MEMORY and FORGET lines), and the text without them."""
    edits = [
        MemoryEdit(add=m.group("text"), section=m.group("section").lower()) for m in _MEMORY.finditer(text)
    ]
    edits += [MemoryEdit(forget=m.group("id").upper()) for m in _FORGET.finditer(text)]
    rest = _FORGET.sub("", _MEMORY.sub("", text))
    return edits, rest


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


def _cost(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _model_usage(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The result's `modelUsage`: per model id, its tokens (camelCase) and `costUSD`; {} when absent."""
    usage = result.get("modelUsage")
    if not isinstance(usage, dict):
        return {}
    return {str(name): entry for name, entry in usage.items() if isinstance(entry, dict)}


def tokens_from_result(result: dict[str, Any]) -> TokenUse:
    """What the whole session cost, summed over every model it used.

    The CLI's `usage` counts only the main model's tokens, while `total_cost_usd` also pays for the small
    model the CLI calls on the side (and for a fallback model), so `usage` and the cost disagree. `modelUsage`
    has every model's tokens; `usage` is the fallback for a CLI that does not send it.
    """
    cost = _cost(result.get("total_cost_usd"))
    per_model = _model_usage(result)
    if per_model:
        entries = list(per_model.values())
        return TokenUse(
            input_tokens=sum(_int(e.get("inputTokens")) for e in entries),
            output_tokens=sum(_int(e.get("outputTokens")) for e in entries),
            cache_read_tokens=sum(_int(e.get("cacheReadInputTokens")) for e in entries),
            cache_write_tokens=sum(_int(e.get("cacheCreationInputTokens")) for e in entries),
            cost_usd=cost if "total_cost_usd" in result else sum(_cost(e.get("costUSD")) for e in entries),
        )
    usage = result.get("usage") if isinstance(result.get("usage"), dict) else {}
    return TokenUse(
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_tokens=_int(usage.get("cache_read_input_tokens")),
        cache_write_tokens=_int(usage.get("cache_creation_input_tokens")),
        cost_usd=cost,
    )


def answered_model(result: dict[str, Any]) -> str | None:
    """The model that did the work: the one `modelUsage` names, the biggest spender when there are several
    (the CLI's side calls go to a small model); None when the result names none."""
    per_model = _model_usage(result)

    def spend(name: str) -> tuple[float, int]:
        entry = per_model[name]
        tokens = sum(_int(entry.get(k)) for k in ("inputTokens", "outputTokens", "cacheReadInputTokens"))
        return _cost(entry.get("costUSD")), tokens

    return max(per_model, key=spend) if per_model else None


def denials(result: dict[str, Any], limit: int = 20) -> list[str]:
    """The tool calls the permission rules refused, as `Tool path`: an agent trying to leave its copy."""
    found = result.get("permission_denials")
    shown = []
    for denial in found if isinstance(found, list) else []:
        if isinstance(denial, dict):
            tool_input = denial.get("tool_input") if isinstance(denial.get("tool_input"), dict) else {}
            target = tool_input.get("file_path") or tool_input.get("path") or tool_input.get("pattern") or ""
            shown.append(f"{denial.get('tool_name', '?')} {target}".strip())
    return shown[:limit]


def describe_failure(result: dict[str, Any], stderr: str, max_turns: int | None) -> str:
    """What went wrong, in one line, from an error result.

    Two shapes reach here: an `error_*` subtype (max turns, budget, an error during execution), which has no
    `result` but an `errors` list; and a failed API call, which the CLI reports as subtype `success` with
    `is_error`, the message in `result` and the HTTP status in `api_error_status`.
    """
    subtype = result.get("subtype") if isinstance(result.get("subtype"), str) else ""
    status = result.get("api_error_status")
    status = status if isinstance(status, int) and not isinstance(status, bool) else None
    errors = result.get("errors") if isinstance(result.get("errors"), list) else []
    errors = [e.get("message", e) if isinstance(e, dict) else e for e in errors]
    messages = [" ".join(str(e).split()) for e in errors if str(e).strip()]
    text = result.get("result")
    if not messages and isinstance(text, str) and text.strip():
        messages = [" ".join(text.split())]
    if not messages and subtype == "error_max_turns":
        limit = f" (--max-turns {max_turns})" if max_turns else ""
        messages = [f"stopped after {_int(result.get('num_turns'))} turns{limit}"]
    if not messages and subtype == "error_max_budget_usd":
        messages = [f"stopped at its budget after ${_cost(result.get('total_cost_usd')):.2f}"]
    detail = "; ".join(messages) or (_last_line(stderr) if stderr.strip() else "no details given")
    if status is not None and str(status) not in detail:
        detail = f"API error {status}: {detail}"
    kind = subtype if subtype and subtype != "success" else ("api_error" if status is not None else "error")
    return f"claude failed ({kind}): {_clip(detail, 300)}"


def _rule_path(path: Path) -> str:
    """`path` as the absolute path of a permission rule (`//` then the path), glob characters escaped."""
    return "/" + re.sub(r"([*?\[\]{}])", r"\\\1", path.as_posix())


def confinement_settings(scratch: Path, protected: list[Path]) -> dict[str, Any]:
    """The `--settings` of one run: file tools inside `scratch` only.

    Allow rules name the scratch copy (Read rules also cover Glob and Grep, Edit rules cover Write); deny
    rules name the places an escape would hurt (each of `protected` that does not hold the scratch copy,
    since a deny there would deny the copy too), and the two `block...OutsideWorkingDirectories` switches
    refuse every other path outside the working directory, whatever the mode or another rule says.
    """
    inside = _rule_path(scratch)
    deny = DISALLOWED_TOOLS.split(",")
    for place in dict.fromkeys(protected):
        if not (scratch.is_relative_to(place) or place.is_relative_to(scratch)):
            deny += [f"Read({_rule_path(place)}/**)", f"Edit({_rule_path(place)}/**)"]
    return {
        "permissions": {
            "allow": [f"Read({inside}/**)", f"Edit({inside}/**)"],
            "deny": deny,
            "blockReadsOutsideWorkingDirectories": True,
            "blockWritesOutsideWorkingDirectories": True,
        },
        "autoMemoryEnabled": False,
    }


def protected_places(context: AgentContext) -> list[Path]:
    """Where the agent must never read or write: the night's worktree (and the pinned judge in it), the
    user's checkout the harness runs from, and the home directory (credentials, other projects)."""
    return [Path(context.workspace).resolve(), Path.cwd().resolve(), Path.home().resolve()]


def cli_environment() -> dict[str, str]:
    """The harness's environment (the key, the user's login), plus QUIET_ENV."""
    return {**os.environ, **QUIET_ENV}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _last_line(text: str, limit: int = 200) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return _clip(lines[-1] if lines else "(no output)", limit)


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
    concurrent = True  # no state between proposals: a parallel night asks several at once
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

    def command(self, executable: str, prompt_arg: str, settings: dict[str, Any]) -> list[str]:
        """The argv: the prompt right after `-p`, since the tool lists are variadic options that would take a
        prompt placed after them for one more tool name."""
        cmd = [executable, "-p", prompt_arg, "--output-format", "json", "--tools", FILE_TOOLS]
        cmd += ["--disallowedTools", DISALLOWED_TOOLS, "--permission-mode", PERMISSION_MODE]
        cmd += ["--setting-sources", "", "--settings", json.dumps(settings)]
        cmd += ["--strict-mcp-config", "--no-session-persistence"]
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
            # Resolved, so the rules name the path the CLI sees as its working directory (/tmp may be a link).
            scratch = Path(tmp).resolve() / "project"
            for rel, data in originals.items():
                target = scratch / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            scratch.mkdir(exist_ok=True)
            settings = confinement_settings(scratch, protected_places(context))
            result = self._run(executable, prompt, scratch, settings, context)
            edits, skipped = diff_edits(originals, scratch_files(scratch))

        tokens, meta = tokens_from_result(result), self._meta(result)
        text = result.get("result") if isinstance(result.get("result"), str) else ""
        memory, text = parse_memory(text)
        revisit = _REVISIT.search(text)
        text = _REVISIT.sub("", text)
        hypothesis, experiment, rationale = parse_result_text(text)
        if not edits and experiment is None:
            raise AgentError(
                f"claude changed no file and named no experiment: {_last_line(text)}",
                tokens=tokens,
                meta=meta,
            )
        if hypothesis is None:
            hypothesis = "claude-code edit of " + ", ".join(e.path for e in edits[:3])
        if skipped:
            meta["skipped_binary"] = skipped
            log.warning("claude-code: ignored changes to non-text files %s", ", ".join(skipped))
        return Proposal(
            hypothesis=hypothesis,
            rationale=rationale,
            edits=edits,
            experiment=experiment,
            memory=memory,
            revisit=revisit.group("id") if revisit else None,
            tokens=tokens,
            meta=meta,
        )

    def _meta(self, result: dict[str, Any]) -> dict[str, Any]:
        """For the ledger: the session, and the model that answered (the one asked for when the result names
        none), since without `--model` the CLI picks its own and `self.model` is None."""
        meta: dict[str, Any] = {"session_id": result.get("session_id"), "num_turns": result.get("num_turns")}
        model = answered_model(result) or self.model
        if model:
            meta["model"] = model
        used = sorted(_model_usage(result))
        if len(used) > 1:
            meta["models"] = used
        refused = denials(result)
        if refused:
            meta["permission_denials"] = refused
            log.warning("claude-code: the CLI refused %s", "; ".join(refused))
        return meta

    def _run(
        self, executable: str, prompt: str, cwd: Path, settings: dict[str, Any], context: AgentContext
    ) -> dict[str, Any]:
        """Run the CLI to completion (killing its whole process group on timeout) and return its result."""
        # A prompt starting with "-" would read as an option: it goes through stdin like a long one.
        via_stdin = len(prompt.encode("utf-8")) > MAX_ARGV_PROMPT or prompt.startswith("-")
        prompt_arg = "Follow the instructions given on standard input." if via_stdin else prompt
        cmd = self.command(executable, prompt_arg, settings)
        timeout = self.timeout_s if context.remaining_s <= 0 else min(self.timeout_s, context.remaining_s)
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=cli_environment(),
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
            raise AgentError(
                describe_failure(result, stderr, self.max_turns),
                tokens=tokens_from_result(result),
                meta=self._meta(result),
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
                "env": QUIET_ENV,
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

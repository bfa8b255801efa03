"""The `anthropic` agent: Claude over the Messages API, reading the worktree with tools and proposing edits.

One `propose` call is one short conversation. The system block (fixed instructions plus the night's allowlist)
and the rendered prompt are marked for prompt caching, since every turn of the conversation re-sends them. The
model may call `list_files` and `read_file` (read-only, confined to the worktree) as often as it likes, then
calls `propose`; an invalid proposal is answered with the validation error so the model can fix it. Transient
API failures (429, 5xx, 529 overloaded, timeouts, dropped connections) are retried by the SDK with exponential
backoff; what still fails becomes an `AgentError` whose message names the status, never the key. Every
`AgentError` of a conversation carries the tokens and cost of the replies before it, which were paid for.

The conversation is appended to `<run_dir>/agent_transcript.jsonl`, one JSON object a line, with the key
redacted from every line even if it somehow ended up in a file the model read.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import anthropic
from anthropic.types import Message, ToolUseBlock, Usage
from pydantic import ValidationError

from harness.agents.base import Agent, AgentContext, AgentError, Proposal
from harness.durable import append_line
from harness.ledger import TokenUse
from models.errors import describe_validation_error

log = logging.getLogger(__name__)

DEFAULT_MODEL = "claude-sonnet-5-5"
TRANSCRIPT_NAME = "agent_transcript.jsonl"


# --- prices -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    """USD per million tokens. `cache_write` is the 5-minute TTL rate, the one `ephemeral` blocks pay."""

    input: float
    output: float
    cache_write: float
    cache_read: float

    def cost(self, tokens: TokenUse) -> float:
        return (
            tokens.input_tokens * self.input
            + tokens.output_tokens * self.output
            + tokens.cache_write_tokens * self.cache_write
            + tokens.cache_read_tokens * self.cache_read
        ) / 1_000_000


# Source: Anthropic's pricing page (platform.claude.com/docs/en/about-claude/pricing) and model pages, as
# of 2026-11; Sonnet 5.5 cache reads at $0.10 since the 2026-10-07 cut. Update here and only here.
PRICES: dict[str, Price] = {
    "claude-fable-5-1": Price(10.00, 50.00, 12.50, 0.25),
    "claude-opus-5-5": Price(4.00, 20.00, 5.00, 0.20),
    "claude-sonnet-5-5": Price(2.00, 10.00, 2.50, 0.10),
    "claude-haiku-5-5": Price(0.10, 0.50, 0.125, 0.01),
    "claude-opus-5": Price(5.00, 25.00, 6.25, 0.50),
    "claude-sonnet-5": Price(2.00, 10.00, 2.50, 0.20),
    "claude-haiku-4-5": Price(1.00, 5.00, 1.25, 0.10),
    "claude-opus-4-6": Price(5.00, 25.00, 6.25, 0.50),
    "claude-sonnet-4-6": Price(3.00, 15.00, 3.75, 0.30),
}
# Models billed at a higher rate, on every token of a request, once its prompt (input + cache) passes a size.
LONG_PROMPT_PRICES: dict[str, tuple[int, Price]] = {
    "claude-haiku-5-5": (100_000, Price(0.50, 2.50, 0.625, 0.05)),
}
_SNAPSHOT_SUFFIX = re.compile(r"-\d{8}$")  # claude-haiku-4-5-20251001 is priced as claude-haiku-4-5
_warned_models: set[str] = set()


def price_for(model: str, prompt_tokens: int = 0) -> Price | None:
    """The price of one request to `model` with a prompt of `prompt_tokens`; None for an unknown model."""
    base = _SNAPSHOT_SUFFIX.sub("", model)
    long = LONG_PROMPT_PRICES.get(base)
    if long is not None and prompt_tokens > long[0]:
        return long[1]
    return PRICES.get(base)


def token_use(model: str, usage: Usage) -> TokenUse:
    """The tokens and cost of one reply. An unknown model costs 0 (logged once): it never fails a run."""
    tokens = TokenUse(
        input_tokens=usage.input_tokens or 0,
        output_tokens=usage.output_tokens or 0,
        cache_read_tokens=usage.cache_read_input_tokens or 0,
        cache_write_tokens=usage.cache_creation_input_tokens or 0,
    )
    prompt = tokens.input_tokens + tokens.cache_read_tokens + tokens.cache_write_tokens
    price = price_for(model, prompt)
    if price is None:
        if model not in _warned_models:
            _warned_models.add(model)
            log.warning("no price known for model %r: its cost is counted as 0 (add it to PRICES)", model)
        return tokens
    return tokens.model_copy(update={"cost_usd": price.cost(tokens)})


# --- the read-only view of the worktree that the tools use --------------------------------------------------


class ToolError(Exception):
    """A tool call the model got wrong: the message goes back to it as an is_error tool_result."""


SKIPPED_ANYWHERE = {".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SKIPPED_AT_ROOT = {"runs", "data", "reports", "checkpoints"}
MAX_LISTED = 1000
MAX_READ_BYTES = 2_000_000
MAX_LINES = 2000


class WorkspaceView:
    """Lists and reads files of the worktree, never outside it, never in .git, never a secrets file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def resolve(self, path: str) -> Path:
        text = (path or ".").strip().replace("\\", "/")
        if PurePosixPath(text).is_absolute() or PureWindowsPath(text).drive:
            raise ToolError(f"{path!r} is absolute: give a path relative to the project root, e.g. models/")
        parts = PurePosixPath(text).parts
        if ".." in parts:
            raise ToolError(f"{path!r} leaves the project: '..' is not allowed")
        if ".git" in parts:
            raise ToolError(f"{path!r} is inside .git, which is off limits")
        if any(p.startswith(".env") for p in parts):
            raise ToolError(f"{path!r} may hold secrets and is off limits")
        full = (self.root / text).resolve()
        if not full.is_relative_to(self.root):
            raise ToolError(f"{path!r} resolves outside the project (a symlink?)")
        return full

    @staticmethod
    def _skipped(rel: PurePosixPath) -> bool:
        """Build outputs, caches, datasets and secrets: nothing the model needs, some of it huge."""
        parts = rel.parts
        if any(p in SKIPPED_ANYWHERE or p.startswith(".env") for p in parts):
            return True
        return len(parts) > 0 and parts[0] in SKIPPED_AT_ROOT

    def list_files(self, path: str = ".") -> str:
        """Every file under `path`, recursively, relative to the project root, one a line."""
        start = self.resolve(path)
        rel_start = PurePosixPath(start.relative_to(self.root).as_posix())
        if self._skipped(rel_start):
            raise ToolError(f"{path!r} holds data or build outputs, not code: it is not listed")
        if start.is_file():
            return rel_start.as_posix()
        if not start.is_dir():
            raise ToolError(f"no such directory: {path!r} (call list_files with path='.' to see the project)")
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            here = PurePosixPath(Path(dirpath).relative_to(self.root).as_posix())
            dirnames[:] = sorted(d for d in dirnames if not self._skipped(here / d))
            found.extend(str(here / f) for f in sorted(filenames) if not self._skipped(here / f))
        if not found:
            return f"(no files under {path!r})"
        more = (
            f"\n... and {len(found) - MAX_LISTED} more: list a subdirectory"
            if len(found) > MAX_LISTED
            else ""
        )
        return "\n".join(found[:MAX_LISTED]) + more

    def read_file(self, path: str, offset_line: int = 0, max_lines: int = 400) -> str:
        """Lines [offset_line, offset_line + max_lines) of a text file, under a one-line header."""
        if not isinstance(offset_line, int) or offset_line < 0:
            raise ToolError("offset_line must be an integer >= 0")
        if not isinstance(max_lines, int) or max_lines < 1:
            raise ToolError("max_lines must be an integer >= 1")
        full = self.resolve(path)
        if not full.is_file():
            raise ToolError(f"no such file: {path!r} (use list_files to see what exists)")
        if full.stat().st_size > MAX_READ_BYTES:
            raise ToolError(f"{path!r} is larger than {MAX_READ_BYTES} bytes: not a source file")
        try:
            text = full.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ToolError(f"{path!r} is a binary file, not text") from None
        lines = text.splitlines(keepends=True)
        end = min(len(lines), offset_line + min(max_lines, MAX_LINES))
        rel = full.relative_to(self.root).as_posix()
        if offset_line >= len(lines) and lines:
            raise ToolError(f"{rel} has only {len(lines)} lines; offset_line {offset_line} is past its end")
        header = f"[{rel}: lines {offset_line + 1}-{end} of {len(lines)}]\n"
        body = "".join(lines[offset_line:end])
        if end < len(lines):
            body += "" if body.endswith("\n") else "\n"
            body += f"[... {len(lines) - end} more lines: read_file offset_line={end}]"
        return header + body


# --- the conversation ---------------------------------------------------------------------------------------

_EDIT_SCHEMA = {
    "type": "object",
    "description": "One file change: exactly one of content (whole new text), search + replace, or delete.",
    "properties": {
        "path": {"type": "string", "description": "Relative to the project root, e.g. models/dit.py."},
        "content": {"type": "string", "description": "The complete new text of the file."},
        "search": {"type": "string", "description": "Text that occurs exactly once in the current file."},
        "replace": {"type": "string", "description": "What replaces `search` (may be empty)."},
        "delete": {"type": "boolean", "description": "true to delete the file."},
    },
    "required": ["path"],
}
_MEMORY_SCHEMA = {
    "type": "object",
    "description": "An edit of the night's research memory: add a note (with its section), or forget one.",
    "properties": {
        "add": {"type": "string", "description": "A lesson from the results, one or two sentences."},
        "section": {"type": "string", "enum": ["principle", "dead end", "question"]},
        "forget": {
            "type": "string",
            "description": "The id of an earlier note that no longer holds, e.g. N3.",
        },
    },
}
TOOLS: list[dict[str, Any]] = [
    {
        "name": "list_files",
        "description": "List the project's files under a directory, recursively (build outputs left out).",
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "Directory relative to the project root."}
            },
        },
    },
    {
        "name": "read_file",
        "description": "Read a text file of the project, a window of lines at a time.",
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File relative to the project root."},
                "offset_line": {"type": "integer", "minimum": 0, "description": "First line, 0-based."},
                "max_lines": {"type": "integer", "minimum": 1, "maximum": MAX_LINES},
            },
            "required": ["path"],
        },
    },
    {
        "name": "propose",
        "description": "Submit the one experiment to run next. Call it exactly once, when you are ready.",
        "input_schema": {
            "type": "object",
            "properties": {
                "hypothesis": {
                    "type": "string",
                    "description": "One sentence: what changes, what it should do.",
                },
                "rationale": {
                    "type": "string",
                    "description": "Why, in a few sentences, citing the evidence.",
                },
                "experiment": {
                    "type": "string",
                    "description": "Experiment TOML to train, relative to the project; omit for the default.",
                },
                "edits": {"type": "array", "items": _EDIT_SCHEMA},
                "memory": {"type": "array", "items": _MEMORY_SCHEMA},
                "revisit": {
                    "type": "string",
                    "description": "Only to retry a run the prompt lists as a revisit candidate: its id.",
                },
            },
            "required": ["hypothesis", "edits"],
        },
    },
]
PROPOSE_FIELDS = {"hypothesis", "rationale", "experiment", "edits", "memory", "revisit"}

INSTRUCTIONS = """\
You are the research agent of worldloop, an overnight harness that improves action-conditioned robot world
models one experiment at a time. The harness applies your edits in its own git worktree, smoke-tests them,
trains the experiment within a fixed budget and judges it on a pinned validation split; it keeps the change
only if it beats the best run so far.

Work like this: read the state of the night in the user message, look at the code you need with list_files
and read_file (read-only), then call propose exactly once with one focused hypothesis and the edits that test
it. Prefer search/replace edits (the search text must occur exactly once in the current file, copied
verbatim); use content only for new or small files, delete to remove a file. Edits that do not apply, do not
compile or touch files outside the allowlist are rejected without training, so be exact. Do not repeat an
experiment that already ran unless you change something about it."""

NUDGE = (
    "You ended your turn without calling propose. Call the propose tool now with your hypothesis and edits; "
    "a reply without it ends this iteration."
)
TRUNCATED = (
    "Your reply hit the max_tokens limit and was cut off, so this tool call was not run. Try again with less "
    "text: search/replace edits instead of whole files, and a shorter rationale."
)

# Stop reasons after which asking again cannot help.
STOPS_THAT_END = {
    "refusal": "the model refused to propose",
    "model_context_window_exceeded": "the conversation outgrew the model's context window",
}


def system_text(context: AgentContext) -> str:
    """Fixed instructions plus what stays the same all night, so the block is a stable cache prefix."""
    kinds = ", ".join(context.model_kinds) or "any"
    text = f"{INSTRUCTIONS}\n\nFiles you may edit: {context.allowed}\nModel kinds this night trains: {kinds}"
    return f"{text}\n\n{context.rules}" if context.rules else text


class Transcript:
    """Appends the conversation to a JSONL file, with every secret replaced by [redacted]."""

    def __init__(self, path: Path, secrets: list[str]) -> None:
        self.path = path
        self._secrets = [s for s in secrets if s]

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str)
        for secret in self._secrets:
            line = line.replace(secret, "[redacted]")
        try:
            append_line(self.path, line)
        except OSError as err:  # a transcript is a convenience: losing it must not lose the proposal
            log.warning("could not write the agent transcript %s: %s", self.path, err)


def _one_line(text: str, secrets: list[str], limit: int = 300) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tool_result(tool_use_id: str, text: str, is_error: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id, "content": text}
    if is_error:
        result["is_error"] = True
    return result


class AnthropicAgent(Agent):
    """Claude through the official `anthropic` SDK. Needs ANTHROPIC_API_KEY; honors ANTHROPIC_BASE_URL."""

    name = "anthropic"
    concurrent = True  # no state between proposals: a parallel night asks several at once
    typical_s = 60.0

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        max_turns: int = 16,
        max_tokens: int = 8192,
        max_retries: int = 6,
        timeout_s: float = 300,
        api_key: str | None = None,
        base_url: str | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("ANTHROPIC_API_KEY", "")
        if not key.strip():
            raise AgentError(
                "ANTHROPIC_API_KEY is not set: export it to use --agent anthropic, or run with --agent local"
            )
        self.model = model
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self._secrets = [key, key.strip()]
        # base_url None lets the SDK read ANTHROPIC_BASE_URL itself (then its default, api.anthropic.com).
        self._client = anthropic.Anthropic(
            api_key=key.strip(), base_url=base_url, max_retries=max_retries, timeout=timeout_s
        )

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    def close(self) -> None:
        self._client.close()

    def propose(self, context: AgentContext) -> Proposal:
        transcript = Transcript(Path(context.run_dir) / TRANSCRIPT_NAME, self._secrets)
        view = WorkspaceView(context.workspace)
        system = [{"type": "text", "text": system_text(context), "cache_control": {"type": "ephemeral"}}]
        first = {"type": "text", "text": context.prompt, "cache_control": {"type": "ephemeral"}}
        messages: list[dict[str, Any]] = [{"role": "user", "content": [first]}]
        start = {"event": "start", "run_id": context.run_id, "model": self.model, "system": system}
        transcript.write({**start, "tools": TOOLS})
        transcript.write({"event": "message", **messages[0]})
        tokens = TokenUse()
        nudged = False
        turn = 0
        try:
            for turn in range(1, self.max_turns + 1):
                raw = self._create(system, messages)
                reply = self._parse(raw)
                tokens = tokens + token_use(self.model, reply.usage)
                transcript.write({"event": "reply", "turn": turn, "message": raw})
                # The reply goes back verbatim, thinking blocks included: the API wants its blocks back.
                messages.append({"role": "assistant", "content": raw["content"]})
                tool_uses = [b for b in reply.content if b.type == "tool_use"]

                if reply.stop_reason == "max_tokens":  # a cut tool call may hold half its input: run none
                    answer = [_tool_result(b.id, TRUNCATED, is_error=True) for b in tool_uses]
                    answer = answer or [{"type": "text", "text": TRUNCATED}]
                elif tool_uses:
                    proposal, answer = self._use_tools(tool_uses, view)
                    if proposal is not None:
                        proposal.tokens = tokens
                        proposal.meta = {**proposal.meta, "model": self.model, "turns": turn}
                        transcript.write({"event": "proposal", "turn": turn, "tokens": tokens.model_dump()})
                        return proposal
                elif reply.stop_reason in STOPS_THAT_END:
                    raise AgentError(f"{STOPS_THAT_END[reply.stop_reason]} (turn {turn}, {self.model})")
                elif nudged:
                    raise AgentError(f"the model ended its turn twice without calling propose ({self.model})")
                else:
                    nudged = True
                    answer = [{"type": "text", "text": NUDGE}]

                messages.append({"role": "user", "content": answer})
                transcript.write({"event": "message", **messages[-1]})
            raise AgentError(
                f"no valid proposal after {self.max_turns} model turns (max_turns) with {self.model}"
            )
        except AgentError as err:  # the turns before the failure were paid for: the ledger keeps their cost
            err.tokens = tokens
            err.meta = {**err.meta, "model": self.model, "turns": turn}
            transcript.write(
                {"event": "error", "turn": turn, "error": str(err), "tokens": tokens.model_dump()}
            )
            raise

    def _use_tools(
        self, tool_uses: list[ToolUseBlock], view: WorkspaceView
    ) -> tuple[Proposal | None, list[dict[str, Any]]]:
        """Run the turn's tool calls: a valid proposal ends the conversation, anything else gets a result."""
        answer: list[dict[str, Any]] = []
        for block in tool_uses:
            if block.name != "propose":
                answer.append(self._run_tool(view, block.id, block.name, block.input))
                continue
            proposal, problem = self._proposal(block.input)
            if proposal is not None:
                return proposal, answer
            answer.append(_tool_result(block.id, problem, is_error=True))
        return None, answer

    def _create(self, system: list[dict[str, Any]], messages: list[dict[str, Any]]) -> dict[str, Any]:
        """One API call (the SDK retries transient failures), returned as the reply's JSON object."""
        try:
            raw = self._client.messages.with_raw_response.create(
                model=self.model, max_tokens=self.max_tokens, system=system, tools=TOOLS, messages=messages
            )
        except anthropic.APIStatusError as err:
            raise AgentError(self._describe_status(err)) from None
        except anthropic.APITimeoutError:
            raise AgentError(
                f"the Anthropic API did not answer within {self.timeout_s:g}s ({self.max_retries} retries)"
            ) from None
        except anthropic.APIConnectionError as err:
            cause = _one_line(str(err.__cause__ or err), self._secrets, 160)
            raise AgentError(
                f"cannot reach the Anthropic API at {self.base_url} ({self.max_retries} retries): {cause}"
            ) from None
        body = raw.http_response.content
        try:
            data = json.loads(body)
        except ValueError:
            snippet = _one_line(body.decode("utf-8", "replace"), self._secrets, 120)
            raise AgentError(f"malformed reply from the Anthropic API: not JSON ({snippet!r})") from None
        if not isinstance(data, dict):
            raise AgentError(
                f"malformed reply from the Anthropic API: a JSON {type(data).__name__}, not a Message"
            )
        return data

    def _parse(self, data: dict[str, Any]) -> Message:
        try:
            return Message.model_validate(data)
        except ValidationError as err:
            why = describe_validation_error(err, "Message")
            raise AgentError(
                f"malformed reply from the Anthropic API: {_one_line(why, self._secrets)}"
            ) from None

    def _describe_status(self, err: anthropic.APIStatusError) -> str:
        body = err.body if isinstance(err.body, dict) else {}
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        kind = detail.get("type") or type(err).__name__
        text = _one_line(str(detail.get("message") or err.message), self._secrets, 200)
        status = err.status_code
        retried = status in (408, 409, 429) or status >= 500
        after = f" after {self.max_retries} retries" if retried else ""
        hint = " (check ANTHROPIC_API_KEY)" if status in (401, 403) else ""
        return f"the Anthropic API answered HTTP {status}{after}: {kind}: {text}{hint}"

    def _proposal(self, tool_input: Any) -> tuple[Proposal | None, str]:
        """The Proposal the model asked for, or None and the reason to send back to it."""
        if not isinstance(tool_input, dict):
            return None, "propose takes an object with hypothesis, rationale, experiment and edits"
        unknown = sorted(set(tool_input) - PROPOSE_FIELDS)
        if unknown:
            return (
                None,
                f"propose does not take {', '.join(unknown)}: only {', '.join(sorted(PROPOSE_FIELDS))}",
            )
        try:
            return Proposal.model_validate(tool_input), ""
        except ValidationError as err:
            why = describe_validation_error(err, "proposal")
            return None, f"{why}. Fix this and call propose again."

    def _run_tool(self, view: WorkspaceView, tool_use_id: str, name: str, tool_input: Any) -> dict[str, Any]:
        args = tool_input if isinstance(tool_input, dict) else {}
        try:
            if name == "list_files":
                return _tool_result(tool_use_id, view.list_files(str(args.get("path", "."))))
            if name == "read_file":
                if "path" not in args:
                    raise ToolError("read_file needs a path")
                text = view.read_file(
                    str(args["path"]), args.get("offset_line", 0), args.get("max_lines", 400)
                )
                return _tool_result(tool_use_id, text)
            raise ToolError(f"there is no tool {name!r}: use list_files, read_file or propose")
        except ToolError as err:
            return _tool_result(tool_use_id, str(err), is_error=True)

"""The night's git worktree: where proposals become commits, and the branch tip is always the best run.

    runs/<tag>/worktree/              a git worktree of the project on branch harness/<tag>
    refs/harness/<tag>/<run-id>       every discarded or crashed commit, so no diff is ever lost

The user's checkout and branch are never touched: everything happens in the worktree, created from the
commit that was HEAD when the night started (the night's base). Edits are allowed only under `models/` and
`experiments/`, minus the pinned files (harness/pinned.py), and an experiment config may not change the task
(its canvas and data sections must stay the base's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import git

from harness.agents.base import FileEdit, Proposal
from harness.pinned import ALLOWED_DIRS, ALLOWED_TEXT, EDITABLE_SUFFIXES, PINNED_FILES
from harness.secrets import redact
from models.errors import ConfigError, WorldloopError
from models.files import parse_toml
from models.task import TASK_SECTIONS, default_experiment

AUTHOR = git.Actor("worldloop harness", "harness@worldloop.invalid")


class WorkspaceError(WorldloopError):
    """Git state the harness cannot work with (not a repository, a dirty night branch...)."""


class ProposalRejected(WorldloopError):
    """A proposal that may not or cannot be applied; the message is fed back to the agent."""


def check_path(path: str) -> str:
    """The normalized project-relative path of an edit, or ProposalRejected saying why not."""
    raw = path.replace("\\", "/").strip()
    pure = PurePosixPath(raw)
    if pure.is_absolute() or raw.startswith("~"):
        raise ProposalRejected(f"{path}: absolute paths are not allowed; use a path relative to the project")
    if any(part == ".." for part in pure.parts):
        raise ProposalRejected(f"{path}: '..' is not allowed; edits stay inside the project")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts:
        raise ProposalRejected(f"{path!r}: not a file path")
    if ".git" in parts:
        raise ProposalRejected(f"{path}: git internals are not editable")
    normalized = "/".join(parts)
    if parts[0] not in ALLOWED_DIRS or len(parts) < 2:
        raise ProposalRejected(f"{normalized}: outside the allowlist ({ALLOWED_TEXT})")
    stem = normalized.rsplit(".", 1)[0]
    for pinned in PINNED_FILES:
        pinned_stem = pinned.rsplit(".", 1)[0]
        if normalized == pinned or stem == pinned_stem or normalized.startswith(pinned_stem + "/"):
            raise ProposalRejected(
                f"{normalized}: pinned (it decides how runs are judged); the allowlist is {ALLOWED_TEXT}"
            )
    if PurePosixPath(normalized).suffix not in EDITABLE_SUFFIXES:
        raise ProposalRejected(f"{normalized}: only {', '.join(EDITABLE_SUFFIXES)} files may be written")
    return normalized


@dataclass(frozen=True)
class Commit:
    sha: str
    diff: str
    diff_stat: str


class Workspace:
    """The worktree of one night (`harness/<tag>`), and the git operations the loop needs."""

    def __init__(self, project: Path, tag: str, path: Path) -> None:
        self.project = Path(project)
        self.tag = tag
        self.path = Path(path)
        self.repo = git.Repo(self.path)

    @property
    def branch(self) -> str:
        return f"harness/{self.tag}"

    @classmethod
    def create(cls, project: Path, tag: str, path: Path, start: str = "HEAD") -> Workspace:
        """A new worktree on a new branch `harness/<tag>` at the project's HEAD (or at `start`, the best
        commit of a night it continues)."""
        main = _repo(project)
        branch = f"harness/{tag}"
        if branch in [h.name for h in main.heads]:
            raise WorkspaceError(f"branch {branch} already exists: resume that night or pick another --tag")
        if not main.head.is_valid():
            raise WorkspaceError(f"{project} has no commits yet; commit the project first")
        path.parent.mkdir(parents=True, exist_ok=True)
        main.git.worktree("add", "-b", branch, str(path), start)
        return cls(project, tag, path)

    @classmethod
    def open(cls, project: Path, tag: str, path: Path) -> Workspace:
        """The worktree of an existing night; re-created from its branch if the directory was removed."""
        main = _repo(project)
        branch = f"harness/{tag}"
        if branch not in [h.name for h in main.heads]:
            raise WorkspaceError(f"no branch {branch} in {project}: the night {tag!r} was never started here")
        if not (path / ".git").exists():
            main.git.worktree("prune")
            path.parent.mkdir(parents=True, exist_ok=True)
            main.git.worktree("add", str(path), branch)
        return cls(project, tag, path)

    def uncommitted_in_project(self) -> bool:
        """Does the user's checkout have changes the night will not see (it starts from HEAD)?"""
        main = _repo(self.project)
        return bool(main.git.status("--porcelain", "--", *ALLOWED_DIRS).strip())

    # ------------------------------------------------------------------------------------ reading

    @property
    def head(self) -> str:
        return self.repo.head.commit.hexsha

    def read(self, path: str) -> str:
        return (self.path / path).read_text()

    # ----------------------------------------------------------------------------------- proposals

    def apply(self, proposal: Proposal) -> list[str]:
        """Check every edit against the allowlist, then write them; returns the paths changed.

        Nothing is written unless every edit is allowed and applies (search text found exactly once).
        """
        writes: dict[str, str | None] = {}
        for edit in proposal.edits:
            path = check_path(edit.path)
            current = writes[path] if path in writes else self._current(path)
            writes[path] = _edited(path, current, edit)
        if not writes:
            raise ProposalRejected("the proposal changes no file")
        for path, text in writes.items():
            target = self.path / path
            if text is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        return sorted(writes)

    def check(
        self, changed: list[str], base_commit: str | None = None, tasks: dict[str, str] | None = None
    ) -> None:
        """Changed Python compiles; changed experiment configs keep the base's task sections.

        Model code may import anything, the judge included: the judge runs in a process of its own, from a
        snapshot of the base commit, where no code of the agent's ever runs (harness/pinned.py)."""
        for path in changed:
            target = self.path / path
            if not target.exists():
                continue
            if path.endswith(".py"):
                source = target.read_text()
                try:
                    compile(source, path, "exec")
                except (SyntaxError, ValueError) as err:
                    raise ProposalRejected(f"{path} does not compile: {err}") from None
            elif path.endswith(".toml"):
                self._check_toml(path, base_commit, tasks or {})

    def _check_toml(self, path: str, base_commit: str | None, tasks: dict[str, str]) -> None:
        new = parse_toml(self.read(path), path, ProposalRejected)
        if base_commit is None or not path.startswith("experiments/"):
            return
        # A new experiment is held to the task its model kind is judged on this night (`tasks`, else the
        # kind's default experiment): a different canvas would cost a whole training before the judge
        # refused it.
        kind = str(new.get("model", {}).get("kind", "dit"))
        reference = path
        old = self._base_toml(base_commit, path)
        if old is None:
            reference = tasks.get(kind, default_experiment(kind))
            old = self._base_toml(base_commit, reference)
        for section in TASK_SECTIONS:
            if old is not None and new.get(section) != old.get(section):
                raise ProposalRejected(
                    f"{path}: the [{section}] section defines the task and must stay as in "
                    f"{reference} at the base commit"
                )

    def _base_toml(self, base_commit: str, path: str) -> dict | None:
        """A TOML file as committed at the night's base, or None when it is not there (or not TOML)."""
        try:
            return parse_toml(self.repo.git.show(f"{base_commit}:{path}"), path)
        except (git.GitCommandError, ConfigError):
            return None

    def commit(self, message: str) -> Commit:
        """Commit everything changed under the allowed directories on the night's branch."""
        self.repo.git.add("--all", "--", *ALLOWED_DIRS)
        if not self.repo.is_dirty(index=True, working_tree=False):
            raise ProposalRejected("the edits leave every file as it was: nothing to try")
        parent = self.head
        self.repo.index.commit(redact(message), author=AUTHOR, committer=AUTHOR)
        sha = self.head
        diff = self.repo.git.diff(parent, sha)
        stat = self.repo.git.diff("--stat", parent, sha)
        return Commit(sha, diff, stat)

    def diff_of_worktree(self) -> tuple[str, str]:
        """(diff, stat) of uncommitted edits, so a rejected proposal's change is still on record."""
        self.repo.git.add("--all", "--intent-to-add", "--", *ALLOWED_DIRS)
        return self.repo.git.diff("HEAD"), self.repo.git.diff("--stat", "HEAD")

    def set_aside(self, run_id: str, sha: str | None) -> None:
        """Keep a tried commit reachable under refs/harness/<tag>/<run-id>."""
        if sha:
            self.repo.git.update_ref(f"refs/harness/{self.tag}/{run_id}", sha)

    def reset(self, sha: str) -> None:
        """Branch and files back to `sha` (the best commit); untracked files under the allowlist removed."""
        self.repo.git.reset("--hard", sha)
        self.repo.git.clean("-fdq", "--", *ALLOWED_DIRS)

    def _current(self, path: str) -> str | None:
        target = self.path / path
        return target.read_text() if target.exists() else None


def _edited(path: str, current: str | None, edit: FileEdit) -> str | None:
    if edit.delete:
        if current is None:
            raise ProposalRejected(f"{path}: cannot delete a file that does not exist")
        return None
    if edit.content is not None:
        return edit.content
    if current is None:
        raise ProposalRejected(f"{path}: no such file to search in (write it whole with `content`)")
    count = current.count(edit.search)
    if count != 1:
        where = "not found" if count == 0 else f"found {count} times (make it unique)"
        raise ProposalRejected(f"{path}: search text {where}")
    return current.replace(edit.search, edit.replace or "", 1)


def _repo(project: Path) -> git.Repo:
    try:
        return git.Repo(project)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise WorkspaceError(
            f"{project} is not a git repository: the harness commits every proposal"
        ) from None

"""The pinned set: the files that decide how runs are judged, named in one place.

Everything else follows from this list: the workspace refuses a proposal that edits or shadows a pinned
file (harness/workspace.py), the judge of a night runs from a snapshot of these files at the night's base
commit and never from the worktree (`extract_judge`), and the allowlist the agent reads, in LOOP.md and in
its prompt, is rendered from here (`python -m harness.pinned --write-loop`; a test holds LOOP.md to it).

    python -m harness.pinned                  print LOOP.md's allowlist block as it should be
    python -m harness.pinned --write-loop     rewrite it in LOOP.md
    python -m harness.pinned --check          exit 1 when LOOP.md's block is stale
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import git

from models.errors import WorldloopError, run_command
from models.task import TASK_SECTIONS

ALLOWED_DIRS = ("models", "experiments")
"""Where a proposal may write at all."""

EDITABLE_SUFFIXES = (".py", ".toml", ".md", ".txt", ".json")
"""What a proposal may write: text only; no binaries (a compiled module could shadow a pinned one)."""

PINNED: dict[str, str] = {
    "models/evaluate.py": "the judge",
    "models/predictor.py": "how the judge asks a model for frames (the request, the wire)",
    "models/serve.py": "runs your model for the judge, in a process of its own",
    "models/pixels.py": "pixel conventions: uint8 canvases <-> tensors in [-1, 1], dynamic pixels",
    "models/task.py": "the task: canvas, dataset and split (`DataConfig`)",
    "models/data.py": "splits, samples, the canvas cache",
    "models/canvas.py": "what a sample looks like",
    "models/lerobot/__init__.py": "the LeRobot dataset package",
    "models/lerobot/format.py": "the LeRobot v3.0 on-disk format",
    "models/lerobot/reader.py": "reading the dataset",
    "models/lerobot/writer.py": "writing a dataset (recordings, the simulator)",
    "models/episode.py": "an episode as read from the dataset",
    "models/vocab.py": "action ids and colors, how actions are derived",
    "models/errors.py": "the errors the judge reports",
    "models/files.py": "how files are read and written: whole or not at all, TOML, checksums",
    "models/openmp.py": "how many CPU threads a run trains on, and how they wait (the fair budget's rules)",
    "models/__init__.py": "the package, imported before the judge",
    "experiments/space.toml": "the offline agent's search space (the researcher's, not the agent's)",
}
"""Pinned files under the allowed directories, and why each is pinned."""

PINNED_FILES = tuple(PINNED)

ALLOWED_TEXT = (
    f"files under {' and '.join(d + '/' for d in ALLOWED_DIRS)}, except "
    + ", ".join(PINNED_FILES)
    + f"; experiment configs keep their {' and '.join(f'[{s}]' for s in TASK_SECTIONS)} sections"
)
"""The allowlist in one line, for the agent's prompt and for rejection messages."""

LOOP_FILE = Path(__file__).resolve().parents[1] / "LOOP.md"
LOOP_BEGIN = "<!-- pinned:begin (generated from harness/pinned.py: python -m harness.pinned --write-loop) -->"
LOOP_END = "<!-- pinned:end -->"


# ---------------------------------------------------------------------------------------------- LOOP.md


def loop_block() -> str:
    """LOOP.md's allowlist, markers included."""
    sections = " and ".join(f"`[{s}]`" for s in TASK_SECTIONS)
    suffixes = ", ".join(f"`{s}`" for s in EDITABLE_SUFFIXES)
    lines = [
        LOOP_BEGIN,
        "- Anything under `models/` and `experiments/`: the models (`models/dit.py`, `models/gpt.py`,",
        "  `models/blocks.py`, `models/world_model.py`), training (`models/train.py`, the optimizer in",
        "  `models/optim.py`), loading a run (`models/checkpoint.py`), configs (`models/config.py`,",
        "  `experiments/*.toml`), new files there.",
        "- Not the pinned files, which decide how runs are judged. The judge runs them as they were when the",
        "  night started, whatever a proposal does, and a proposal that edits or shadows one is rejected:",
        *(f"  - `{path}`: {why}" for path, why in PINNED.items()),
        f"- An experiment config keeps its {sections} sections: they define the task every run is judged",
        "  on, and the judge reads them from the night's experiment config as it was when the night started.",
        f"- Nothing outside those directories. Only text files ({suffixes}).",
        LOOP_END,
    ]
    return "\n".join(lines)


def with_loop_block(text: str) -> str:
    """`text` (LOOP.md) with its allowlist block replaced by the current one."""
    begin = text.find(LOOP_BEGIN.split(" (", 1)[0])
    end = text.find(LOOP_END)
    if begin < 0 or end < begin:
        raise WorldloopError(f"LOOP.md has no allowlist block ({LOOP_BEGIN[:18]}... {LOOP_END}) to replace")
    return text[:begin] + loop_block() + text[end + len(LOOP_END) :]


def write_loop(path: Path = LOOP_FILE) -> bool:
    """Rewrite LOOP.md's allowlist block; True when it changed."""
    text = Path(path).read_text()
    new = with_loop_block(text)
    if new != text:
        Path(path).write_text(new)
    return new != text


# ------------------------------------------------------------------------------------------ the judge


def judge_files(repo_dir: Path, commit: str) -> dict[str, bytes]:
    """What a judge snapshot holds, as committed in `commit`: the pinned modules (the judge's code, every
    one required) and the experiment configs (where the task is read; space.toml among them if there)."""
    try:
        tree = git.Repo(repo_dir).commit(commit).tree
    except (ValueError, git.BadName, git.BadObject, git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise WorldloopError(f"commit {commit!r} is not in the git repository {repo_dir}") from None
    files = {}
    for path in (p for p in PINNED_FILES if p.endswith(".py")):
        try:
            files[path] = (tree / path).data_stream.read()
        except KeyError:
            raise WorldloopError(
                f"{path} is not in commit {commit[:7]}: the judge needs every pinned module"
            ) from None
    experiments = tree / "experiments"
    for blob in experiments.blobs:
        if blob.name.endswith(".toml"):
            files[f"experiments/{blob.name}"] = blob.data_stream.read()
    return files


def snapshot_files(root: Path) -> dict[str, bytes]:
    """The files of a judge snapshot on disk (Python's caches left out)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def extract_judge(repo_dir: Path, commit: str, dest: Path) -> Path:
    """Write the judge of `commit` (the pinned files and experiment configs) into the new directory `dest`.

    It is assembled in a temporary directory beside `dest` and renamed into place, so `dest` is complete
    or absent. Run from `dest` (cwd and PYTHONPATH), `python -m models.evaluate` imports nothing else:
    every module it needs is pinned. Called again for the same commit (a resumed night), it returns the
    existing snapshot; a snapshot of other files is refused rather than mixed.
    """
    files = judge_files(repo_dir, commit)
    dest = Path(dest)
    if dest.exists():
        if snapshot_files(dest) != files:
            raise WorldloopError(f"{dest} holds a judge that is not commit {commit[:7]}'s; remove it first")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        for path, data in files.items():
            (tmp / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp / path).write_bytes(data)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# -------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    run_command(lambda: _main(argv))


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.pinned", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write-loop", action="store_true", help="rewrite the allowlist block of LOOP.md")
    action.add_argument("--check", action="store_true", help="exit 1 when LOOP.md's block is stale")
    parser.add_argument("--loop", type=Path, default=LOOP_FILE, help="the LOOP.md to read or write")
    args = parser.parse_args(argv)
    if args.write_loop:
        print(f"{args.loop}: {'rewritten' if write_loop(args.loop) else 'already current'}")
    elif args.check:
        if with_loop_block(args.loop.read_text()) != args.loop.read_text():
            print(f"{args.loop}: the allowlist block is stale; run python -m harness.pinned --write-loop")
            sys.exit(1)
    else:
        print(loop_block())


if __name__ == "__main__":
    main()

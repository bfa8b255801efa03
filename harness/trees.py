"""The exact tree of a commit, as a run and its agent see it: never the worktree the harness commits in.

A run trains, and an agent reads, in a copy of its commit's files (`git archive`), so runs in flight side by
side and proposals made at once never see each other's edits, and the same bytes can travel to a worker on
another machine (harness/workers.py). Only the harness writes git; these copies are read-only by contract.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import git


def tree_archive(repo: git.Repo, commit: str) -> bytes:
    """The files of `commit` as an uncompressed tar (what `git archive` writes)."""
    out = io.BytesIO()
    repo.git.archive(commit, format="tar", output_stream=out)
    return out.getvalue()


def extract_tree(archive: bytes, dest: Path) -> Path:
    """Unpack a tree archive into the new directory `dest`, atomically: it is complete or absent. An
    existing `dest` is replaced (a run restarted after a kill gets its commit's files afresh)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            tar.extractall(tmp, filter="data")  # no absolute paths, links out of the tree or device files
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def export_tree(repo: git.Repo, commit: str, dest: Path) -> Path:
    """`commit`'s files in `dest` (replacing what was there)."""
    return extract_tree(tree_archive(repo, commit), dest)

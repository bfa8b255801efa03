"""The pinned set in one place: LOOP.md and the workspace follow it, the judge's code stays inside it, and a
judge snapshot holds exactly it, as committed."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import git
import pytest

from harness import workspace
from harness.pinned import (
    ALLOWED_TEXT,
    LOOP_FILE,
    PINNED_FILES,
    extract_judge,
    loop_block,
    main,
    snapshot_files,
    with_loop_block,
    write_loop,
)
from harness.workspace import ProposalRejected, check_path
from models.errors import WorldloopError
from tests.helpers import ROOT
from tests.night_project import commit_all

NOT_THE_JUDGES = {"models/serve.py": {"models.checkpoint"}, "models/__init__.py": {"models.promoted"}}
"""Imports of pinned modules, inside functions, that the judge never makes: the predictor loads a run with
the tree's own `load_run` (in the agent's process), and `models.load_promoted` is the robot's."""


def test_loop_md_states_the_allowlist_of_the_pinned_set():
    text = LOOP_FILE.read_text()
    assert loop_block() in text, "LOOP.md is stale: run `python -m harness.pinned --write-loop`"
    assert with_loop_block(text) == text
    for path in PINNED_FILES:
        assert f"`{path}`" in loop_block() and path in ALLOWED_TEXT
    contract = text.split("## The contract a model keeps")[1].split("\n## ")[0]
    assert "[-1, 1]" in contract and "[0, 1]" not in contract  # what predict returns; [0, 1] is mse's scale


def test_write_loop_renews_a_stale_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    loop = tmp_path / "LOOP.md"
    loop.write_text(LOOP_FILE.read_text().replace("`models/task.py`", "`models/old.py`"))
    with pytest.raises(SystemExit) as stale:
        main(["--check", "--loop", str(loop)])
    assert stale.value.code == 1 and "stale" in capsys.readouterr().out
    assert write_loop(loop) and loop.read_text() == LOOP_FILE.read_text()
    assert not write_loop(loop)
    main(["--check", "--loop", str(loop)])
    loop.write_text("# no block\n")
    with pytest.raises(WorldloopError, match="no allowlist block"):
        write_loop(loop)


def test_the_workspace_refuses_exactly_what_is_pinned():
    assert workspace.ALLOWED_TEXT is ALLOWED_TEXT
    for path in PINNED_FILES:
        with pytest.raises(ProposalRejected, match="pinned"):
            check_path(path)
        stem = path.rsplit(".", 1)[0]
        for shadow in (f"{stem}/__init__.py", f"{stem}.json"):
            with pytest.raises(ProposalRejected, match="pinned"):
                check_path(shadow)
    for path in ("models/world_model.py", "models/checkpoint.py", "models/config.py", "experiments/dit.toml"):
        assert check_path(path) == path


def models_imported(source: str) -> set[str]:
    """The `models.*` modules a Python source imports (`from models import x` counts as models.x)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "models"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "models":
            if node.module == "models":
                found |= {f"models.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return found


def test_pinned_modules_import_only_pinned_modules():
    for path in PINNED_FILES:
        assert (ROOT / path).is_file(), path
        if not path.endswith(".py"):
            continue
        for module in models_imported((ROOT / path).read_text()) - NOT_THE_JUDGES.get(path, set()):
            name = module.replace(".", "/")
            files = {f"{name}.py", f"{name}/__init__.py"}  # a module or a package
            assert files & set(PINNED_FILES), f"{path} imports {module}, not pinned"
    found = models_imported("from models import vocab\nimport models.data\n")
    assert found == {"models.vocab", "models.data"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(ROOT / "models", root / "models", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "experiments", root / "experiments")
    git.Repo.init(root, initial_branch="main")
    return commit_all(root, "the project")


def test_a_judge_snapshot_is_the_pinned_set_as_committed(repo: Path, tmp_path: Path):
    head = git.Repo(repo).head.commit.hexsha
    (repo / "models/evaluate.py").write_text("# edited after the commit\n")
    (repo / "experiments/dit.toml").write_text("[canvas]\nframe_width = 8\n")
    judge = extract_judge(repo, head, tmp_path / "night/judge")
    files = snapshot_files(judge)
    tomls = {p.relative_to(ROOT).as_posix() for p in (ROOT / "experiments").glob("*.toml")}
    assert set(files) == {p for p in PINNED_FILES if p.endswith(".py")} | tomls
    assert files["models/evaluate.py"] == (ROOT / "models/evaluate.py").read_bytes()
    assert files["experiments/dit.toml"] == (ROOT / "experiments/dit.toml").read_bytes()
    assert [p.name for p in judge.parent.iterdir()] == ["judge"]  # no temporary directory left
    assert extract_judge(repo, head, judge) == judge  # a resumed night finds its judge
    (judge / "models/data.py").write_text("# not the commit's\n")
    with pytest.raises(WorldloopError, match="not commit"):
        extract_judge(repo, head, judge)


def test_a_commit_without_the_judges_code_has_no_judge(repo: Path, tmp_path: Path):
    (repo / "models/serve.py").unlink()
    commit_all(repo, "before the predictor existed")
    with pytest.raises(WorldloopError, match="models/serve.py is not in commit"):
        extract_judge(repo, git.Repo(repo).head.commit.hexsha, tmp_path / "judge")
    with pytest.raises(WorldloopError, match="is not in the git repository"):
        extract_judge(repo, "0" * 40, tmp_path / "judge")
    assert not (tmp_path / "judge").exists()


def test_an_experiment_keeps_the_task_whether_edited_or_new(repo: Path, tmp_path: Path):
    ws = workspace.Workspace.create(repo, "t", tmp_path / "worktree")
    base = ws.head
    dit = (repo / "experiments/dit.toml").read_text()
    other_canvas = dit.replace("frame_width = 64", "frame_width = 32")
    assert other_canvas != dit
    cases = {
        "experiments/dit.toml": other_canvas,  # the night's own experiment
        "experiments/small.toml": other_canvas,  # a new one: held to its kind's default experiment
    }
    for path, text in cases.items():
        (ws.path / path).write_text(text)
        with pytest.raises(
            ProposalRejected, match=r"\[canvas\] section defines the task .* experiments/dit.toml"
        ):
            ws.check([path], base_commit=base)
        ws.reset(base)
    (ws.path / "experiments/deeper.toml").write_text(dit.replace("depth = 4", "depth = 6"))
    ws.check(["experiments/deeper.toml"], base_commit=base)  # a new experiment on the same task is fine

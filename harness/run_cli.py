"""`harness run`: start (or resume) a night."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import typer

from harness.agents import AGENTS, default_agent, make_agent
from harness.ledger import LedgerError, NightInfo
from harness.loop import Night, NightSettings
from harness.loop import model_kind as experiment_kind
from harness.nights import continuation
from harness.paths import NightPaths
from models.config import parse_duration
from models.errors import WorldloopError

REPLAY_OPTION = typer.Option(None, "--replay", help="proposals file for --agent replay")
DATASET_OPTION = typer.Option(
    None, "--dataset", help="LeRobot v3.0 dataset to train on (default: data/sim, or the continued night's)"
)
DEFAULT_DATASET = Path("data/sim")
STORAGE_OPTION = typer.Option(
    None,
    "--storage",
    help="a directory every Ray node mounts at the same path: runs travel through it, not the object store",
)
ROOT_OPTION = typer.Option(
    Path("."), "--root", help="the project: a git repository with models/, experiments/"
)

KINDS = {"dit": ("dit",), "gpt": ("gpt",), "both": ("dit", "gpt")}


def _seconds(text: str, option: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as err:
        raise WorldloopError(f"{option}: {err}") from None
    if value <= 0:
        raise WorldloopError(f"{option} must be positive, got {text!r}")
    return value


def _night_experiment(root: Path, experiment: str, kind: str | None) -> tuple[str, str]:
    """`--experiment`: a config under experiments/ (its path as the night keeps it) and its model kind, which
    `--model-kind`, when given, must name."""
    path = Path(experiment)
    try:
        relative = path.resolve().relative_to(root) if path.is_absolute() else path
    except ValueError:
        raise WorldloopError(f"--experiment {experiment}: not in the project {root}") from None
    text = relative.as_posix()
    if not text.startswith("experiments/") or relative.suffix != ".toml" or ".." in relative.parts:
        raise WorldloopError(f"--experiment {experiment}: name a .toml file under experiments/")
    if not (root / relative).is_file():
        raise WorldloopError(f"--experiment {experiment}: no such file in {root / 'experiments'}")
    trains = experiment_kind(root / relative)
    if kind is not None and kind != trains:
        raise WorldloopError(f"--experiment {experiment} trains a {trains}; --model-kind says {kind}")
    return text, trains


def _new_tag(root: Path) -> str:
    """Today's date; a second night on the same day gets -2, -3..."""
    base = date.today().isoformat()
    tag, n = base, 1
    while NightPaths(root, tag).runs.exists():
        n += 1
        tag = f"{base}-{n}"
    return tag


def run(
    budget: str = typer.Option("8h", help="the whole night, e.g. 8h, 90m; no run starts that cannot finish"),
    per_run: str = typer.Option(
        "5m",
        "--per-run",
        help="training compute of each run: on CPU, 5m is 5 minutes of CPU time of its one training "
        "thread (a run slowed by other programs takes longer but trains as much); on a GPU, 5 minutes",
    ),
    baseline_seeds: int = typer.Option(
        2, "--baseline-seeds", help="seeds the baseline trains on; their spread is the night's noise floor"
    ),
    agent: str = typer.Option(
        None, help=f"{' | '.join(AGENTS)} (default: anthropic with ANTHROPIC_API_KEY, else local)"
    ),
    model: str = typer.Option(None, "--model", help="the agent's LLM (anthropic, claude-code)"),
    tag: str = typer.Option(None, "--tag", help="name of the night (default: today's date)"),
    model_kind: str = typer.Option(None, "--model-kind", help="dit | gpt | both (default: dit)"),
    experiment: str = typer.Option(
        None,
        "--experiment",
        help="the night's config for its kind instead of experiments/<kind>.toml, e.g. "
        "experiments/dit_224.toml: runs change it and are judged on its task (canvas, data)",
    ),
    plateau: int = typer.Option(
        None,
        "--plateau",
        help="runs without a kept improvement after which the agent is asked for a structural change "
        "(default: an eighth of the runs the night expects, 4 to 20)",
    ),
    resume: str = typer.Option(None, "--resume", help="continue the night with this tag"),
    continue_from: str = typer.Option(
        None,
        "--continue",
        help="a new night that starts from that night's best run (its baseline, measured again), with what "
        "it learned: its research memory and the changes it tried; its model kind, experiment and dataset "
        "unless given",
    ),
    max_runs: int = typer.Option(None, "--max-runs", help="stop after this many runs (baseline included)"),
    replay: Path = REPLAY_OPTION,
    dataset: Path = DATASET_OPTION,
    grace: str = typer.Option(
        None, "--grace", help="time past --per-run before a run is killed (default 30s + 10%)"
    ),
    eval_samples: int = typer.Option(512, "--eval-samples", help="val samples the judge scores"),
    executor: str = typer.Option("local", "--executor", help="local | ray: where the runs execute"),
    workers: int = typer.Option(1, "--workers", help="runs in flight at once"),
    cpus_per_run: int = typer.Option(
        None, "--cpus-per-run", help="cores each run gets (default: local, an equal share; ray, 1)"
    ),
    gpus_per_run: float = typer.Option(
        None, "--gpus-per-run", help="GPUs each run gets (local: default an equal share, 0 for CPU only)"
    ),
    address: str = typer.Option(
        None, "--address", help="the Ray cluster: auto, or ray://host:port (default: start a local one)"
    ),
    storage: Path = STORAGE_OPTION,
    backlog: int = typer.Option(
        None, "--backlog", help="proposals asked for ahead of a free worker (default: 0 for one worker, N/2)"
    ),
    root: Path = ROOT_OPTION,
) -> None:
    """Run the overnight loop: propose, commit, train, judge, report, until the budget ends."""
    root = root.resolve()
    if plateau is not None and plateau < 1:
        raise WorldloopError(f"--plateau must be at least 1, got {plateau}")
    if executor not in ("local", "ray"):
        raise WorldloopError(f"--executor must be local or ray, got {executor!r}")
    if workers < 1:
        raise WorldloopError(f"--workers must be at least 1, got {workers}")
    if backlog is not None and backlog < 0:
        raise WorldloopError(f"--backlog must be 0 or more, got {backlog}")
    if cpus_per_run is not None and cpus_per_run < 1:
        raise WorldloopError(f"--cpus-per-run must be at least 1, got {cpus_per_run}")
    if executor == "local" and (address or storage):
        raise WorldloopError(f"{'--address' if address else '--storage'} is for --executor ray")
    if storage is not None and not storage.is_dir():
        raise WorldloopError(f"--storage {storage}: no such directory")
    scale = dict(
        workers=workers,
        executor=executor,
        cpus_per_run=cpus_per_run,
        gpus_per_run=gpus_per_run,
        address=address,
        plateau_after=plateau,
        storage=storage.resolve() if storage is not None else None,
        backlog=backlog,
    )
    if resume and continue_from:
        raise WorldloopError(
            "--resume goes on with a night, --continue starts a new one from it: one of them"
        )
    if resume:
        info = NightInfo.read(NightPaths(root, resume))
        if info is None:
            raise LedgerError(f"nothing to resume: no night tagged {resume!r} under {root / 'runs'}")
        settings = NightSettings(
            root=root,
            tag=resume,
            budget_s=info.budget_s,
            per_run_s=info.per_run_s,
            dataset=Path(info.dataset or dataset or DEFAULT_DATASET),
            model_kinds=tuple(info.model_kind.split("+")),
            grace_s=_seconds(grace, "--grace") if grace else None,
            max_runs=max_runs,
            eval_samples=eval_samples,
            baseline_seeds=info.baseline_seeds,
            experiment=info.experiment,
            resume=True,
            **scale,
        )
        agent_name, agent_model = agent or info.agent, model or info.agent_model
    else:
        if baseline_seeds < 1:
            raise WorldloopError(f"--baseline-seeds must be at least 1, got {baseline_seeds}")
        if continue_from:  # said before anything is created; its settings unless given
            continuation(root, continue_from)
            before = NightInfo.read(NightPaths(root, continue_from))
            model_kind = model_kind or {"+".join(v): k for k, v in KINDS.items()}.get(before.model_kind)
            experiment = experiment or before.experiment
            dataset = dataset or (Path(before.dataset) if before.dataset else None)
        if experiment is not None:
            experiment, model_kind = _night_experiment(root, experiment, model_kind)
        model_kind = model_kind or "dit"
        dataset = dataset or DEFAULT_DATASET
        if model_kind not in KINDS:
            raise WorldloopError(f"--model-kind must be one of {', '.join(KINDS)}, got {model_kind!r}")
        settings = NightSettings(
            root=root,
            tag=tag or _new_tag(root),
            budget_s=_seconds(budget, "--budget"),
            per_run_s=_seconds(per_run, "--per-run"),
            dataset=(root / dataset)
            if not (dataset := dataset or DEFAULT_DATASET).is_absolute()
            else dataset,
            model_kinds=KINDS[model_kind],
            grace_s=_seconds(grace, "--grace") if grace else None,
            max_runs=max_runs,
            eval_samples=eval_samples,
            baseline_seeds=baseline_seeds,
            experiment=experiment,
            continues=continue_from,
            **scale,
        )
        agent_name, agent_model = agent or default_agent(), model
    if not (settings.dataset / "meta" / "info.json").exists():
        raise WorldloopError(
            f"no dataset at {settings.dataset}: record one with `harness data synth --out {settings.dataset}`"
        )
    night_agent = make_agent(agent_name, agent_model, replay)
    try:
        Night(settings, night_agent).run()
    finally:
        night_agent.close()

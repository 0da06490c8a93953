"""One training run of a pipeline: data version, checks, training, evaluation gate, promotion.

In order: read the data version the pipeline names (recording its DVC hash and path); check
the frame against the champion's signature, nulls and ranges (a failure ends the run, FAILED,
with the report as an artifact, and nothing is registered); split it with a fixed seed; fit the
task's model; score the new model and the current champion on the same held-out rows; register
the new version with the scores, the gate's decision and the data, code and image it came from
as tags; point `challenger` at it; and move `champion` (or the canary alias) only when the gate
passes. Every step is printed, so a Job's log reads as the run's story.
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from services.training.checks import DataCheckError, check_frame, frame_schema
from services.training.data import DataVersion, load_data
from services.training.gate import Decision, Score, decide
from services.training.settings import TrainingSettings
from services.training.task import Task, load_task

TAG_PREFIX = "mlops."
"""Tags the runner writes on runs and versions: `mlops.gate.decision`, `mlops.data.dvc_md5`, ..."""
PASSWORD_VARIABLE = "MLFLOW_TRACKING_PASSWORD"
"""Where MLflow's client reads the tracking user's password (mlflow.utils.credentials.read_mlflow_creds)."""


@dataclass(frozen=True)
class Outcome:
    pipeline: str
    model: str
    run_id: str
    version: str | None
    """The registered version (None when `promote` is off: nothing is registered)."""
    metric: str
    challenger: Score
    champion: Score | None
    decision: Decision
    data: DataVersion

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def say(message: str) -> None:
    print(f"[training] {message}", flush=True)


def without_password(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The environment for a child process: everything but the tracking password."""
    return {key: value for key, value in environ.items() if key != PASSWORD_VARIABLE}


def code_revision(settings: TrainingSettings) -> str:
    if settings.code_revision:
        return settings.code_revision
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).parent,
            env=without_password(os.environ),
        )
        return found.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance_tags(settings: TrainingSettings, data: DataVersion, revision: str) -> dict[str, str]:
    """Where a run and its version came from: pipeline, trigger, data version, code and image."""
    tags = {
        "pipeline": settings.pipeline,
        "trigger": settings.trigger,
        "trigger.reason": settings.trigger_reason or f"{settings.trigger} run",
        "data.path": data.path,
        "data.dvc_md5": data.md5,
        "data.size": str(data.size),
        "data.source": data.source,
        "code.revision": revision,
        "image": settings.image or "local",
    }
    if data.dvc_file:
        tags["data.dvc_file"] = data.dvc_file
    return {TAG_PREFIX + key: value for key, value in tags.items()}


def champion_version(client: MlflowClient, model: str, alias: str) -> str | None:
    try:
        return client.get_model_version_by_alias(model, alias).version
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def expected_columns(task: Task, model: str, champion: str | None, frame: pd.DataFrame) -> dict[str, str | None]:
    """Feature columns and their signature types: the task's, else the champion's signature, else the frame's."""
    signature_types: dict[str, str | None] = {}
    if champion is not None:
        signature = mlflow.models.get_model_info(f"models:/{model}/{champion}").signature
        if signature is not None and signature.inputs is not None:
            signature_types = {c["name"]: c["type"] for c in signature.inputs.to_dict() if "name" in c}
    if task.features:
        return {name: signature_types.get(name) for name in task.features}
    if signature_types:
        return signature_types
    return {str(c): None for c in frame.columns if c != task.target}


def split(frame: pd.DataFrame, columns: list[str], target: str, settings: TrainingSettings):
    """(train_x, holdout_x, train_y, holdout_y); a fixed seed, so a data version always splits alike."""
    from sklearn.model_selection import train_test_split

    if settings.sample_fraction < 1:
        frame = frame.sample(frac=settings.sample_fraction, random_state=settings.split_seed)
    return train_test_split(
        frame[columns], frame[target], test_size=settings.holdout_fraction, random_state=settings.split_seed
    )


def score(task: Task, model_uri: str, version: str | None, features: pd.DataFrame, labels: pd.Series) -> Score:
    """The model as it will be served (its logged pyfunc) scored on the held-out rows.

    Errors are recorded, not raised."""
    try:
        predictions = mlflow.pyfunc.load_model(model_uri).predict(features)
        return Score(version=version, value=task.score(labels.to_numpy(), predictions))
    except Exception as exc:  # any failure to load or predict is the gate's evidence, not a crash
        return Score(version=version, error=f"{type(exc).__name__}: {exc}"[:500])


def read_tracking_password(settings: TrainingSettings) -> str | None:
    """The password in `TRAINING_TRACKING_PASSWORD_FILE`, if set; SystemExit with one line when it cannot be used."""
    if not settings.tracking_password_file:
        return None
    try:
        password = Path(settings.tracking_password_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SystemExit(
            f"TRAINING_TRACKING_PASSWORD_FILE: cannot read {settings.tracking_password_file}: {reason}"
        ) from None
    if not password:
        raise SystemExit(f"TRAINING_TRACKING_PASSWORD_FILE: {settings.tracking_password_file} is empty")
    return password


@contextmanager
def environment_password(password: str | None) -> Iterator[None]:
    """`password` (when there is one) in this process's environment, where MLflow's client reads it, for the block
    only; the variable is as it was afterwards."""
    saved = os.environ.get(PASSWORD_VARIABLE)
    if password is not None:
        os.environ[PASSWORD_VARIABLE] = password
    try:
        yield
    finally:
        os.environ.pop(PASSWORD_VARIABLE, None) if saved is None else os.environ.__setitem__(PASSWORD_VARIABLE, saved)


@contextmanager
def hidden_password() -> Iterator[None]:
    """No tracking password in the environment while the pipeline's own code runs (it logs nothing: the runner does)."""
    saved = os.environ.pop(PASSWORD_VARIABLE, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[PASSWORD_VARIABLE] = saved


def run(settings: TrainingSettings) -> Outcome:
    """One run end to end (see the module docstring). Raises `DataCheckError` for a bad frame.

    The tracking password enters the environment (from its file) only after `git rev-parse` ran (which gets an
    environment without it in any case), MLflow's run context was resolved (GitPython runs `git` for the
    `mlflow.source.git.*` tags, once per process) and the pipeline's module was imported, and leaves it while the
    pipeline's `fit` runs. MLflow's client needs it from there on; what MLflow itself starts meanwhile (the requirements
    inference of `log_model` when the task names no `pip_requirements`) and the fitted model's `predict` in scoring
    run with it."""
    from mlflow.tracking.context.registry import resolve_tags

    password = read_tracking_password(settings)
    revision = code_revision(settings)
    with hidden_password():
        resolve_tags()  # MLflow's run context: its git lookups run `git` (GitPython) and are cached for the process
        task = load_task(settings.entry_point)
    with environment_password(password):
        return _run(settings, task, revision)


def _run(settings: TrainingSettings, task: Task, revision: str) -> Outcome:
    params = {**task.default_params, **settings.params}
    frame, data = load_data(settings)
    say(f"data {data.path}: md5 {data.md5}, {len(frame)} rows, from {data.source}")
    client = MlflowClient()
    champion = champion_version(client, settings.model_name, settings.champion_alias)
    columns = expected_columns(task, settings.model_name, champion, frame)
    tags = provenance_tags(settings, data, revision)
    mlflow.set_experiment(settings.experiment_name)
    with mlflow.start_run(run_name=f"{settings.pipeline}-{settings.trigger}", tags=tags) as active:
        log_data_version(frame, data, task.target)
        frame = checked(frame, columns, task)
        train_x, holdout_x, train_y, holdout_y = split(frame, list(columns), task.target, settings)
        say(f"training on {len(train_x)} rows, holding out {len(holdout_x)}; params {params}")
        mlflow.log_params({**params, "holdout_fraction": settings.holdout_fraction, "split_seed": settings.split_seed})
        with hidden_password():
            model = task.fit(train_x, train_y, params)
        model_info = log_model(task, model, train_x)
        challenger = score(task, model_info.model_uri, None, holdout_x, holdout_y)
        current = (
            score(task, f"models:/{settings.model_name}/{champion}", champion, holdout_x, holdout_y)
            if champion
            else None
        )
        log_scores(task.metric, challenger, current)
    decision = decide(
        challenger,
        current,
        metric=task.metric,
        greater_is_better=task.greater_is_better,
        min_improvement=settings.min_improvement,
        canary_alias=settings.canary_alias,
    )
    say(f"gate: {decision.outcome}: {decision.reason}")
    version = (
        register(
            client, settings, model_info.model_uri, active.info.run_id, tags, task.metric, challenger, current, decision
        )
        if settings.promote
        else None
    )
    outcome = Outcome(
        settings.pipeline,
        settings.model_name,
        active.info.run_id,
        version,
        task.metric,
        challenger,
        current,
        decision,
        data,
    )
    if settings.report_path:
        Path(settings.report_path).write_text(outcome.as_json())
    return outcome


def checked(frame: pd.DataFrame, columns: dict[str, str | None], task: Task) -> pd.DataFrame:
    """The frame after its data checks; on failure the report is logged and the run ends FAILED."""
    try:
        frame = check_frame(frame, frame_schema(columns, task.target, task.ranges))
    except DataCheckError as exc:
        mlflow.set_tag(TAG_PREFIX + "data.checks", "failed")
        mlflow.log_text(exc.report, "data-checks.txt")
        say(exc.report)
        raise
    mlflow.set_tag(TAG_PREFIX + "data.checks", "passed")
    say(
        f"data checks passed: {len(columns)} feature columns and {task.target}, no nulls, ranges of "
        f"{len(task.ranges)} column(s)"
    )
    return frame


def log_data_version(frame: pd.DataFrame, data: DataVersion, target: str) -> None:
    """The data version as the run's MLflow dataset input: source, digest (DVC md5) and DVC tags. MLflow keeps one
    dataset per experiment for each (name, digest), so the name is the data's full path: the same bytes under
    another path are another input."""
    from mlflow.data.pandas_dataset import from_pandas

    dataset = from_pandas(frame, source=data.source, targets=target, name=data.path, digest=data.md5)
    mlflow.log_input(
        dataset,
        context="training",
        tags={"dvc.md5": data.md5, "dvc.path": data.path, **({"dvc.file": data.dvc_file} if data.dvc_file else {})},
    )


def log_model(task: Task, model: Any, train_x: pd.DataFrame):
    from mlflow.models import infer_signature

    from services.serving.drift import reference_statistics

    return mlflow.sklearn.log_model(
        model,
        name="model",
        signature=infer_signature(train_x, model.predict(train_x.head(50))),
        input_example=train_x.head(3),
        pip_requirements=list(task.pip_requirements) or None,
        # the model server measures drift against the training data's statistics stored with the version
        metadata={"drift_reference": reference_statistics(train_x)},
    )


def log_scores(metric: str, challenger: Score, champion: Score | None) -> None:
    if challenger.ok and challenger.value is not None:
        mlflow.log_metric(f"holdout_{metric}", challenger.value)
    if champion is not None and champion.ok and champion.value is not None:
        mlflow.log_metric(f"champion_holdout_{metric}", champion.value)
    say(
        f"held-out {metric}: new {challenger.value if challenger.ok else challenger.error}; "
        + (
            f"champion v{champion.version} {champion.value if champion.ok else champion.error}"
            if champion
            else "no champion"
        )
    )


def register(
    client: MlflowClient,
    settings: TrainingSettings,
    model_uri: str,
    run_id: str,
    tags: dict[str, str],
    metric: str,
    challenger: Score,
    champion: Score | None,
    decision: Decision,
) -> str:
    """Register the version with its evidence as tags, alias it `challenger`, and promote it if the gate passed."""
    gate = {
        "gate.metric": metric,
        "gate.challenger_score": f"{challenger.value:.6g}" if challenger.ok else f"error: {challenger.error}",
        "gate.champion_score": "none"
        if champion is None
        else (f"{champion.value:.6g}" if champion.ok else f"error: {champion.error}"),
        "gate.champion_version": champion.version if champion else "none",
        "gate.min_improvement": f"{settings.min_improvement:g}",
        "gate.decision": decision.outcome,
        "gate.reason": decision.reason,
        "data.checks": "passed",
    }
    version = mlflow.register_model(
        model_uri, settings.model_name, tags={**tags, **{TAG_PREFIX + k: v for k, v in gate.items()}}
    ).version
    client.set_model_version_tag(settings.model_name, version, TAG_PREFIX + "run_id", run_id)
    client.set_registered_model_alias(settings.model_name, settings.challenger_alias, version)
    say(f"registered {settings.model_name} version {version} as @{settings.challenger_alias}")
    if decision.promote:
        alias = settings.canary_alias or settings.champion_alias
        client.set_registered_model_alias(settings.model_name, alias, version)
        say(f"promoted {settings.model_name} version {version} to @{alias}")
    else:
        say(f"@{settings.champion_alias} stays on version {champion.version if champion else 'none'}")
    return str(version)

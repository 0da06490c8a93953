"""The contract between infra and services (issue 15 item 4): every environment variable a component sets on a
service's container is read by that service, and a service refuses a variable with its prefix that it does not read.

The variables come from the rendered workloads of an offline preview (Pulumi mocks), not from the components'
source: a prod-profile stack (tests/unit/builders.profile_settings: a CPU endpoint and a GPU one with a canary) with
two training pipelines, one retraining on drift, declares every kind of container the platform runs from its own
images (model servers, the tracking server and its Jobs, pipeline CronJobs, the drift receiver).
Each kind's settings class names what it reads (`env_prefix` + field names); variables read by third-party code are
listed in THIRD_PARTY, per service, with the place that reads them, and a test checks each against the pinned
library.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from infra.stackfile import REPO_ROOT
from services.env_settings import UnknownSettingError, setting_names
from services.serving.settings import ServingSettings
from services.tracking.settings import TrackingSettings
from services.training.receiver import ReceiverSettings
from services.training.settings import TrainingSettings
from tests.unit.builders import profile_settings, program_inventory

REPOSITORIES = {"repositories": ["serving", "tracking", "drift", "training"]}
PIPELINES = [
    {
        "name": "diabetes",
        "model": "diabetes",
        "entryPoint": "examples.diabetes:task",
        "data": "examples/data/diabetes.csv.dvc",
        "endpoint": "diabetes",
    },
    {
        "name": "reranker",
        "model": "reranker",
        "entryPoint": "rerank.train:task",
        "data": "s3://team-data/rerank.parquet.dvc",
        "schedule": "0 3 * * 1",
        "gpu": 1,
    },
]
MLFLOW_URI = "MLflow's client: mlflow.environment_variables.MLFLOW_TRACKING_URI (get_tracking_uri)"
MLFLOW_USERNAME = "MLflow's client: mlflow.utils.credentials.read_mlflow_creds (basic auth user)"
BOTO_REGION = "boto3/botocore: botocore.configprovider.BOTOCORE_DEFAUT_SESSION_VARIABLES['region']"
THIRD_PARTY: dict[type[BaseSettings], dict[str, str]] = {
    ServingSettings: {"MLFLOW_TRACKING_URI": MLFLOW_URI},
    TrackingSettings: {"AWS_DEFAULT_REGION": BOTO_REGION},  # Secrets Manager and S3 (artifacts) from the server
    TrainingSettings: {
        "MLFLOW_TRACKING_URI": MLFLOW_URI,
        "MLFLOW_TRACKING_USERNAME": MLFLOW_USERNAME,  # its password comes from TRAINING_TRACKING_PASSWORD_FILE
        "AWS_DEFAULT_REGION": BOTO_REGION,  # the datasets bucket (DVC remote)
    },
    ReceiverSettings: {},
}
"""Per service: the variables the components set on its containers for code that is not the platform's -> where
that code reads them. A variable is accounted for only on the services it is listed for."""
REQUIRED_ONE_OF: dict[type[BaseSettings], list[set[str]]] = {
    TrackingSettings: [
        {"TRACKING_ADMIN_PASSWORD", "TRACKING_ADMIN_PASSWORD_SECRET_ARN"},  # entrypoint.resolve_secrets
        {"TRACKING_FLASK_SECRET_KEY", "TRACKING_FLASK_SECRET_KEY_SECRET_ARN"},  # entrypoint.resolve_secrets
        {"TRACKING_DATABASE_PASSWORD", "TRACKING_DATABASE_PASSWORD_SECRET_ARN"},  # entrypoint.server_login (Postgres)
        {"TRACKING_BACKEND_STORE_URI"},  # else a sqlite file in the pod's /tmp, lost on restart
        {"TRACKING_AUTH_DATABASE_URI"},  # the same for users and permissions
    ],
}
"""What a service cannot start without (or without losing its data) that its settings class cannot declare as a
required field, because either of two variables supplies it or a default serves local runs: one of each set."""


def settings_of(image: str, args: list[str] | None) -> type[BaseSettings] | None:
    """The settings class of a container of one of the platform's images (None: not one of ours)."""
    repository = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    if repository == "serving":
        return ServingSettings
    if repository == "tracking":
        return TrackingSettings
    if repository == "training":
        return ReceiverSettings if args == ["receiver"] else TrainingSettings
    return None


def pod_spec(resource) -> dict[str, Any] | None:
    spec = resource.inputs.get("spec")
    if not isinstance(spec, dict):
        return None
    if "jobTemplate" in spec:
        spec = spec["jobTemplate"]["spec"]
    template = spec.get("template")
    return template.get("spec") if isinstance(template, dict) else None


def containers(inventory) -> list[tuple[str, type[BaseSettings], list[str]]]:
    """(workload, settings class, environment variable names) of every container of the platform's images."""
    found = []
    for resource in inventory.resources:
        pod = pod_spec(resource) if resource.type.startswith("kubernetes:") else None
        for container in (pod or {}).get("containers", []) + (pod or {}).get("initContainers", []):
            settings = settings_of(container["image"], container.get("args"))
            if settings is not None:
                kind, name = resource.type.rsplit(":", 1)[-1], resource.inputs["metadata"]["name"]
                workload = f"{kind} {name}/{container['name']}"
                found.append((workload, settings, [e["name"] for e in container.get("env", [])]))
    return found


def unread(settings: type[BaseSettings], names: list[str]) -> list[str]:
    """Variables of `names` that neither the settings class nor a third-party reader listed for it reads."""
    return sorted(set(names) - set(setting_names(settings)) - set(THIRD_PARTY[settings]))


@pytest.fixture(scope="module")
def workloads():
    return containers(program_inventory("prod", profile_settings("prod", registry=REPOSITORIES, pipelines=PIPELINES)))


def test_every_variable_a_component_sets_is_read_by_its_service(workloads):
    kinds = {settings for _, settings, _ in workloads}
    assert kinds == {ServingSettings, TrackingSettings, TrainingSettings, ReceiverSettings}
    assert len(workloads) >= 8  # model-server tracks, tracking server and Jobs, CronJobs, receiver
    problems = {workload: unread(settings, names) for workload, settings, names in workloads if unread(settings, names)}
    assert problems == {}


def required_variables(settings: type[BaseSettings]) -> list[set[str]]:
    """One set per thing the service cannot start without: its required fields (one variable each), then
    REQUIRED_ONE_OF."""
    prefix = settings.model_config["env_prefix"]
    fields = [{f"{prefix}{name}".upper()} for name, field in settings.model_fields.items() if field.is_required()]
    return fields + REQUIRED_ONE_OF.get(settings, [])


def test_each_settings_class_gets_what_it_cannot_start_without(workloads):
    checked = set()
    for workload, settings, names in workloads:
        missing = [sorted(one_of) for one_of in required_variables(settings) if not one_of & set(names)]
        assert missing == [], workload
        checked.add(settings)
    assert checked == {ServingSettings, TrackingSettings, TrainingSettings, ReceiverSettings}
    assert len(required_variables(TrackingSettings)) == 5  # no required field: what it needs is listed here


def test_a_tracking_workload_without_its_admin_password_is_found(workloads):
    """The check itself on the tracking server, whose settings class has no required field."""
    workload, settings, names = next(w for w in workloads if w[1] is TrackingSettings)
    without = [n for n in names if not n.startswith("TRACKING_ADMIN_PASSWORD")]
    assert [one_of for one_of in required_variables(settings) if not one_of & set(without)] == [
        {"TRACKING_ADMIN_PASSWORD", "TRACKING_ADMIN_PASSWORD_SECRET_ARN"}
    ]


def test_a_variable_no_service_reads_is_found(workloads):
    """The check itself: one more variable on a model server, a misspelt one on a pipeline, are reported."""
    workload, settings, names = next(w for w in workloads if w[1] is ServingSettings)
    extra = ["SERVING_BATCH_SIZ", "MLFLOW_TRACKING_PASSWORD"]
    assert unread(settings, [*names, *extra]) == sorted(extra)
    assert unread(TrainingSettings, ["TRAINING_PIPELINE", "TRAINING_TRACKING_PASSWORD_FIEL", "AWS_REGION"]) == [
        "AWS_REGION",
        "TRAINING_TRACKING_PASSWORD_FIEL",
    ]
    # a third-party variable counts only for the services it is listed for: MLflow's user on the tracking server's
    # own pods, the region on a model server (it reads neither there)
    assert unread(TrackingSettings, ["TRACKING_HOST", "MLFLOW_TRACKING_USERNAME"]) == ["MLFLOW_TRACKING_USERNAME"]
    assert unread(ServingSettings, ["MLFLOW_TRACKING_URI", "AWS_DEFAULT_REGION"]) == ["AWS_DEFAULT_REGION"]


def test_third_party_variables_are_read_where_the_list_says(monkeypatch):
    import botocore.session
    import mlflow
    from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES
    from mlflow.utils.credentials import read_mlflow_creds

    assert set().union(*THIRD_PARTY.values()) == {
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "AWS_DEFAULT_REGION",
    }
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "training-diabetes")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")  # no profile may supply a region
    assert mlflow.environment_variables.MLFLOW_TRACKING_URI.name == "MLFLOW_TRACKING_URI"
    assert mlflow.get_tracking_uri() == "http://tracking.example:5000"
    assert read_mlflow_creds().username == "training-diabetes"
    assert BOTOCORE_DEFAUT_SESSION_VARIABLES["region"][1] == "AWS_DEFAULT_REGION"
    assert botocore.session.Session().get_config_variable("region") == "eu-west-3"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert botocore.session.Session().get_config_variable("region") is None  # why the components set AWS_DEFAULT_REGION


@pytest.mark.parametrize(
    "settings, typo, suggestion",
    [
        (ServingSettings, "SERVING_PORTT", "SERVING_PORT"),
        (TrackingSettings, "TRACKING_DEFAULT_PERMISION", "TRACKING_DEFAULT_PERMISSION"),
        (TrainingSettings, "TRAINING_SPLIT_SEEDD", "TRAINING_SPLIT_SEED"),
        (ReceiverSettings, "RECEIVER_PORTT", "RECEIVER_PORT"),
    ],
)
def test_an_unknown_variable_with_the_prefix_stops_the_settings(settings, typo, suggestion, monkeypatch):
    prefix = settings.model_config["env_prefix"]
    monkeypatch.setenv(typo, "1")
    with pytest.raises(UnknownSettingError) as caught:
        settings()
    message = caught.value.message
    assert message.startswith(f"unknown setting {typo} (did you mean {suggestion}?): ")
    assert f"{settings.__name__} reads no such {prefix}* variable" in message
    assert message.endswith(f"allowed: {', '.join(setting_names(settings))}")


def test_a_variable_like_no_setting_gets_no_suggestion(monkeypatch):
    monkeypatch.setenv("SERVING_ZZZZZZZZZZZZ", "1")
    with pytest.raises(UnknownSettingError) as caught:
        ServingSettings()
    assert caught.value.message.startswith("unknown setting SERVING_ZZZZZZZZZZZZ: ServingSettings reads no such")


def test_kubernetes_service_links_are_not_taken_for_settings(monkeypatch):
    """An endpoint named `serving-x` has a Service `serving-x-stable`: Kubernetes sets its link variables in every
    pod of the namespace; they are recognised by their `_SERVICE_HOST` and left alone, a typo next to them is not."""
    links = {
        "SERVING_X_STABLE_SERVICE_HOST": "10.0.0.9",
        "SERVING_X_STABLE_SERVICE_PORT": "8080",
        "SERVING_X_STABLE_SERVICE_PORT_HTTP": "8080",
        "SERVING_X_STABLE_PORT": "tcp://10.0.0.9:8080",
        "SERVING_X_STABLE_PORT_8080_TCP": "tcp://10.0.0.9:8080",
        "SERVING_X_STABLE_PORT_8080_TCP_ADDR": "10.0.0.9",
    }
    for name, value in {**links, "SERVING_MODEL_NAME": "m"}.items():
        monkeypatch.setenv(name, value)
    assert ServingSettings().model_name == "m"
    monkeypatch.setenv("SERVING_X_CANARY_PORT", "tcp://10.0.0.10:8080")  # no SERVING_X_CANARY_SERVICE_HOST: not a link
    with pytest.raises(UnknownSettingError, match="SERVING_X_CANARY_PORT"):
        ServingSettings()


@pytest.mark.parametrize(
    "command, env, typo, expected",
    [
        (["-m", "services.serving"], {"SERVING_MODEL_NAME": "m"}, "SERVING_BATCH_SIZ", "SERVING_BATCH_WAIT_MS"),
        (["-m", "services.tracking.entrypoint", "serve"], {}, "TRACKING_ADMIN_PASWORD", "TRACKING_ADMIN_PASSWORD"),
        (
            ["-m", "services.training", "run"],
            {
                "TRAINING_PIPELINE": "p",
                "TRAINING_MODEL_NAME": "m",
                "TRAINING_ENTRY_POINT": "a:b",
                "TRAINING_DATA": "x.csv",
            },
            "TRAINING_TRACKING_PASWORD_FILE",
            "TRAINING_TRACKING_PASSWORD_FILE",
        ),
        (
            ["-m", "services.training", "receiver"],
            {"RECEIVER_PIPELINES_FILE": "/nonexistent"},
            "RECEIVER_TOKN",
            "RECEIVER_TOKEN",
        ),
    ],
)
def test_a_service_started_with_a_misspelt_variable_exits_naming_it(command, env, typo, expected):
    """The real entry points, as the images run them: exit 1 at once, the variable and the allowed ones on stderr."""
    import os

    prefixes = ("SERVING_", "TRACKING_", "TRAINING_", "RECEIVER_")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    result = subprocess.run(
        [sys.executable, *command],
        cwd=REPO_ROOT,
        env={**clean, **env, typo: "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"unknown setting {typo}" in last and "Traceback" not in result.stderr
    assert "allowed: " in last and expected in last.split("allowed: ")[1]

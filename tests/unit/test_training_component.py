"""The Training component built from explicit args (tests/unit/builders.py): pipelines become CronJobs with
scoped roles, their own tracking users, GPU placement, suspension without a schedule, deadlines, retries and TTL,
valid for the cluster version, and the drift receiver. What the program makes of a stack's `pipelines` runs from
explicit settings (builders.program_inventory); the shipped stacks' training: tests/stacks/test_stack_components.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from infra.inventory import SECRET, Inventory
from services.training.dvc import DVC_PREFIX
from tests.conftest import declare, policy
from tests.unit.builders import (
    DATASETS_BUCKET,
    KEY_ARN,
    PREFIX,
    REGION,
    TRAINING_IMAGE,
    Parts,
    platform,
    profile_settings,
    program_inventory,
)

CRONJOB = "kubernetes:batch/v1:CronJob"
REPOSITORIES = {"repositories": ["serving", "tracking", "drift", "training"]}
PIPELINES: list[dict[str, Any]] = [
    {
        "name": "diabetes",
        "model": "diabetes",
        "entry_point": "examples.diabetes:task",
        "data": "examples/data/diabetes.csv.dvc",
        "endpoint": "diabetes",
        "params": {"alpha": 0.5},
        "scratch": "5Gi",
        "retrain_min_interval_minutes": 360,
    },
    {
        "name": "reranker",
        "model": "reranker",
        "entry_point": "rerank.train:task",
        "data": "s3://team-data/pointers/rerank.parquet.dvc",
        "schedule": "0 3 * * 1",
        "gpu": 1,
        "cpu": "8",
        "memory": "32Gi",
        "timeout_minutes": 240,
        "retries": 2,
        "endpoint": "reranker",
        "canary_alias": "challenger",
        "retrain_min_interval_minutes": 120,
    },
]
"""`PipelineArgs` overrides: one on demand retraining `diabetes` (no canary), one weekly on a GPU with a canary."""
PIPELINE_SETTINGS: list[dict[str, Any]] = [
    {
        "name": "diabetes",
        "model": "diabetes",
        "entryPoint": "examples.diabetes:task",
        "data": "examples/data/diabetes.csv.dvc",
        "endpoint": "diabetes",
        "params": {"alpha": 0.5},
    },
    {
        "name": "reranker",
        "model": "reranker",
        "entryPoint": "rerank.train:task",
        "data": "s3://team-data/pointers/rerank.parquet.dvc",
        "schedule": "0 3 * * 1",
        "gpu": 1,
        "endpoint": "reranker",
    },
]
"""The same pipelines as a stack's `mlops-platform:pipelines` (builders.PROFILE_SETTINGS' prod endpoints)."""


@pytest.fixture(scope="module")
def training() -> Inventory:
    """The two pipelines beside a tracking server and monitoring."""
    return declare(lambda: platform(Parts(monitoring={}, tracking={}, pipelines=PIPELINES)))


def cron_jobs(inventory) -> dict:
    return {r.inputs["metadata"]["name"]: r for r in inventory.of_type(CRONJOB)}


def pod_of(cron_job) -> dict:
    return cron_job.inputs["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def env_of(cron_job) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod_of(cron_job)["containers"][0]["env"]}


def test_a_pipeline_without_a_schedule_is_a_suspended_cron_job(training):
    job = cron_jobs(training)["diabetes"]
    assert job.inputs["spec"]["suspend"] is True and job.inputs["spec"]["schedule"] == "0 0 31 2 *"
    env = env_of(job)
    assert env["TRAINING_TRIGGER"] == "manual" and json.loads(env["TRAINING_PARAMS"]) == {"alpha": 0.5}
    assert env["TRAINING_DATA"] == "examples/data/diabetes.csv.dvc"
    assert env["TRAINING_ENTRY_POINT"] == "examples.diabetes:task" and env["TRAINING_MODEL_NAME"] == "diabetes"
    assert env["TRAINING_DVC_REMOTE"] == f"s3://{DATASETS_BUCKET}/{DVC_PREFIX}"
    assert env["AWS_DEFAULT_REGION"] == REGION
    assert "TRAINING_CANARY_ALIAS" not in env  # no canary alias given


def test_a_scheduled_gpu_pipeline_runs_on_the_gpu_pool_with_its_limits(training):
    job = cron_jobs(training)["reranker"]
    spec = job.inputs["spec"]
    assert spec["suspend"] is False and spec["schedule"] == "0 3 * * 1" and spec["timeZone"] == "Etc/UTC"
    assert spec["concurrencyPolicy"] == "Forbid"
    job_spec = spec["jobTemplate"]["spec"]
    deadline_retries_ttl = (
        job_spec["activeDeadlineSeconds"],
        job_spec["backoffLimit"],
        job_spec["ttlSecondsAfterFinished"],
    )
    assert deadline_retries_ttl == (240 * 60, 2, 7 * 24 * 3600)
    pod = pod_of(job)
    assert pod["nodeSelector"] == {"mlops.platform/pool": "gpu"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    ]
    requests = pod["containers"][0]["resources"]["requests"]
    assert requests["nvidia.com/gpu"] == "1" and requests["cpu"] == "8" and requests["memory"] == "32Gi"
    env = env_of(job)
    assert env["TRAINING_TRIGGER"] == "schedule" and env["TRAINING_CANARY_ALIAS"] == "challenger"
    assert pod["containers"][0]["image"] == TRAINING_IMAGE


def test_the_cpu_pipeline_is_not_on_the_gpu_pool(training):
    pod = pod_of(cron_jobs(training)["diabetes"])
    assert "tolerations" not in pod and "nvidia.com/gpu" not in pod["containers"][0]["resources"]["requests"]
    assert "nodeSelector" not in pod  # no node selector given: anywhere (the CPU pool)


def test_a_cpu_pipeline_takes_the_given_node_selector():
    system = {"mlops.platform/pool": "system"}
    parts = Parts(monitoring={}, tracking={}, pipelines=[PIPELINES[0]], training={"node_selector": system})
    pod = pod_of(cron_jobs(declare(lambda: platform(parts)))["diabetes"])
    assert pod["nodeSelector"] == system and "tolerations" not in pod


def test_pods_are_locked_down_without_an_api_token(training):
    for job in cron_jobs(training).values():
        pod = pod_of(job)
        assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
        assert pod["securityContext"]["runAsNonRoot"] is True
        context = pod["containers"][0]["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        (volume,) = [v for v in pod["volumes"] if "emptyDir" in v]
        assert [v["name"] for v in pod["volumes"]] == ["tmp", "tracking-password"]  # scratch and the password file
        assert volume["emptyDir"]["sizeLimit"] == pod["containers"][0]["resources"]["requests"]["ephemeral-storage"]
    assert pod_of(cron_jobs(training)["diabetes"])["volumes"][0]["emptyDir"]["sizeLimit"] == "5Gi"  # as given
    (namespace,) = [
        n for n in training.of_type("kubernetes:core/v1:Namespace") if n.inputs["metadata"]["name"] == "training"
    ]
    assert namespace.inputs["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert namespace.inputs["metadata"]["labels"]["mlops.platform/tracking-client"] == "true"  # reaches tracking


def test_each_pipeline_role_reads_the_datasets_bucket_and_nothing_else(training):
    roles = {r.name: r for r in training.of_type("aws:iam/role:Role") if "-training-" in r.name}
    assert set(roles) == {f"{PREFIX}-training-diabetes-workload", f"{PREFIX}-training-reranker-workload"}
    for pipeline in ("diabetes", "reranker"):
        trust = json.loads(roles[f"{PREFIX}-training-{pipeline}-workload"].inputs["assumeRolePolicy"])
        (statement,) = trust["Statement"]
        (subject,) = [v for k, v in statement["Condition"]["StringEquals"].items() if k.endswith(":sub")]
        assert subject == f"system:serviceaccount:training:pipeline-{pipeline}"
        (grant,) = [
            p
            for p in training.of_type("aws:iam/rolePolicy:RolePolicy")
            if p.name == f"{PREFIX}-training-{pipeline}-workload-policy"
        ]
        statements = policy(grant)["Statement"]
        assert {s["Sid"]: (s["Action"], s["Resource"]) for s in statements} == {
            "ReadDatasets": ("s3:GetObject", f"arn:aws:s3:::{DATASETS_BUCKET}/*"),
            "ListDatasets": ("s3:ListBucket", f"arn:aws:s3:::{DATASETS_BUCKET}"),
            "DecryptDatasets": ("kms:Decrypt", KEY_ARN),
        }
        assert statements[2]["Condition"] == {"StringEquals": {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}}
    attachments = training.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert not [p for p in attachments if "-training-" in p.name]


def test_the_cron_job_waits_for_its_role_policy(training):
    job = cron_jobs(training)["reranker"]
    assert any(d.endswith(f"{PREFIX}-training-reranker-workload-policy") for d in job.depends_on)


def test_each_pipeline_has_its_own_tracking_user_with_a_generated_password(training):
    job = cron_jobs(training)["diabetes"]
    env = env_of(job)
    assert env["MLFLOW_TRACKING_USERNAME"] == "training-diabetes"
    # the password is a file from the pipeline's Secret (read-only volume), in no env variable (checkov CKV_K8S_35)
    assert "MLFLOW_TRACKING_PASSWORD" not in env and not [v for v in env.values() if isinstance(v, dict)]
    pod = pod_of(job)
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"] == {"secretName": "pipeline-diabetes-tracking", "defaultMode": 0o440}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and env["TRAINING_TRACKING_PASSWORD_FILE"] == mount["mountPath"] + "/password"
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    writers = tracking_writers(training)
    assert {p: w["model"] for p, w in writers.items()} == {"diabetes": "diabetes", "reranker": "reranker"}
    assert all(w["password_secret_arn"].startswith("arn:aws:secretsmanager:") for w in writers.values())
    (tracking_grant,) = [
        p for p in training.of_type("aws:iam/rolePolicy:RolePolicy") if p.name == f"{PREFIX}-tracking-workload-policy"
    ]
    readable = [s for s in policy(tracking_grant)["Statement"] if s["Sid"] == "OwnSecrets"][0]["Resource"]
    assert {w["password_secret_arn"] for w in writers.values()} <= set(readable)  # ensure-user reads them
    secrets = [
        s for s in training.of_type("kubernetes:core/v1:Secret") if s.inputs["metadata"]["name"].startswith("pipeline-")
    ]
    assert len(secrets) == 2 and all(s.inputs["stringData"] == SECRET for s in secrets)  # encrypted in state


def tracking_writers(inventory: Inventory) -> dict:
    """The pipeline users the tracking server's ensure-user Job keeps (`TRACKING_WRITERS`)."""
    (ensure,) = [j for j in inventory.of_type("kubernetes:batch/v1:Job") if j.name.endswith("-ensure-reader")]
    env = {e["name"]: e["value"] for e in ensure.inputs["spec"]["template"]["spec"]["containers"][0]["env"]}
    return json.loads(env["TRACKING_WRITERS"])


def test_pipeline_pods_may_reach_only_dns_the_tracking_server_and_https(training):
    (netpol,) = [
        n
        for n in training.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
        if n.inputs["metadata"]["name"] == "pipelines"
    ]
    spec = netpol.inputs["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/component": "pipeline"}} and spec["ingress"] == []
    assert [rule["ports"][0]["port"] for rule in spec["egress"]] == [53, 5000, 443]
    for job in cron_jobs(training).values():
        labels = job.inputs["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "pipeline"


def test_rendered_cron_jobs_are_valid_for_the_cluster_version(training):
    from infra.manifests import manifest_of, validate
    from infra.settings import KUBERNETES_VERSIONS

    objects = [
        r
        for r in training.resources
        if r.name.startswith(f"{PREFIX}-training-") and r.type.startswith("kubernetes:") and r.custom
    ]
    assert {r.type for r in objects} >= {CRONJOB, "kubernetes:core/v1:ServiceAccount", "kubernetes:core/v1:Secret"}
    for version in KUBERNETES_VERSIONS:
        for resource in objects:
            assert validate(manifest_of(resource), version) == [], (resource.name, version)


def test_a_cron_job_with_a_typo_is_caught_by_the_validation(training):
    from infra.manifests import manifest_of, validate

    manifest = copy.deepcopy(manifest_of(cron_jobs(training)["reranker"]))  # the module's inventory stays as it was
    manifest["spec"]["jobTemplate"]["spec"]["activeDeadlineSecond"] = 60
    assert validate(manifest, "1.35") != []


# -- the program: a stack's `pipelines` settings ------------------------------------------------
def stack_with_pipelines(profile: str, pipelines: list[dict], **overrides) -> Inventory:
    """A stack of `profile` from explicit settings (no stack file), with the training image in its registry."""
    settings = profile_settings(profile, registry=REPOSITORIES, pipelines=pipelines, **overrides)
    return program_inventory(profile, settings)


def test_the_program_gives_pipelines_their_endpoints_canary_the_stacks_image_bucket_and_tracking_users():
    """prod's endpoints (builders.PROFILE_SETTINGS): `reranker` has a canary `challenger`, `diabetes` none."""
    prod = stack_with_pipelines("prod", PIPELINE_SETTINGS)
    jobs = cron_jobs(prod)
    assert "TRAINING_CANARY_ALIAS" not in env_of(jobs["diabetes"])
    assert env_of(jobs["reranker"])["TRAINING_CANARY_ALIAS"] == "challenger"  # the endpoint's canary
    datasets = prod.outputs["datasetBucket"]  # the stack's datasets bucket (the storage component's)
    for job in jobs.values():
        assert "/mlops-prod/training:0.1.0@sha256:" in pod_of(job)["containers"][0]["image"]  # the stack's registry
        assert env_of(job)["TRAINING_DVC_REMOTE"] == f"s3://{datasets}/{DVC_PREFIX}"
    (grant,) = [
        p
        for p in prod.of_type("aws:iam/rolePolicy:RolePolicy")
        if p.name == "mlops-prod-training-reranker-workload-policy"
    ]
    assert policy(grant)["Statement"][1]["Resource"] == f"arn:aws:s3:::{datasets}"
    assert {p: w["model"] for p, w in tracking_writers(prod).items()} == {
        "diabetes": "diabetes",
        "reranker": "reranker",
    }
    assert set(json.loads(receiver_objects(prod, "mlops-prod")["ConfigMap"].inputs["data"]["pipelines.json"])) == {
        "diabetes",
        "reranker",
    }
    assert "retrain" in alertmanager_receivers(prod)


def test_with_workloads_off_no_pipeline_is_declared():
    inventory = stack_with_pipelines("dev", [{**PIPELINE_SETTINGS[0], "endpoint": None}], deployWorkloads=False)
    assert not inventory.of_type(CRONJOB)


def test_without_retraining_pipelines_there_is_no_receiver_and_no_route():
    inventory = stack_with_pipelines("dev", [{**PIPELINE_SETTINGS[0], "endpoint": None}])
    assert cron_jobs(inventory)  # the pipeline is declared
    assert not [r for r in inventory.resources if "-training-receiver" in r.name]
    assert alertmanager_receivers(inventory) == ["null"]


def alertmanager_receivers(inventory: Inventory) -> list[str]:
    (release,) = [
        r for r in inventory.of_type("kubernetes:helm.sh/v3:Release") if r.name.endswith("-kube-prometheus-stack")
    ]
    return [r["name"] for r in release.inputs["values"]["alertmanager"]["config"]["receivers"]]


def settings_problems(**overrides) -> list[str]:
    """The problems of a dev-profile stack's settings (builders.PROFILE_SETTINGS) with top-level keys replaced."""
    from infra.settings import SettingsError, load_settings

    try:
        load_settings(profile_settings("dev", **overrides), stack="dev", region=REGION)
    except SettingsError as exc:
        return exc.problems
    return []


def test_pipeline_settings_errors_name_the_key_and_what_is_allowed():
    pipeline = {**PIPELINE_SETTINGS[0]}
    assert settings_problems(registry=REPOSITORIES, pipelines=[pipeline]) == []
    assert settings_problems(pipelines=[pipeline]) == [
        'mlops-platform:registry.repositories: got ["serving", "tracking", "drift"]; must include "training": '
        "the stack pulls the image of the training pipelines from its own registry"
    ]
    allowed_keys = "allowed keys here: cpu, data, endpoint, entryPoint, gpu"
    cases = {
        "schedule": ("every monday", 'pipelines[0].schedule: got "every monday"; not a cron schedule of 5 fields'),
        "data": ("/data/train.csv", 'pipelines[0].data: got "/data/train.csv"; not a .dvc file'),
        "endpoint": ("nowhere", 'pipelines[0].endpoint: got "nowhere"; allowed: "diabetes"'),
        "gpu": (9, "pipelines[0].gpu: got 9; expected less than or equal to 8"),
        "entryPoint": ("train.py", 'pipelines[0].entryPoint: got "train.py"'),
        "retrainEvery": (5, f"pipelines[0].retrainEvery: unknown key; {allowed_keys}"),
    }
    for key, (value, message) in cases.items():
        problems = settings_problems(registry=REPOSITORIES, pipelines=[{**pipeline, key: value}])
        assert any(p.startswith("mlops-platform:" + message) for p in problems), (key, problems)
    assert settings_problems(registry=REPOSITORIES, pipelines=[{**pipeline, "model": "other"}]) == [
        'mlops-platform:pipelines[0].endpoint: "diabetes" serves model "diabetes", not this pipeline\'s "other"'
    ]
    assert settings_problems(registry=REPOSITORIES, pipelines=[pipeline, pipeline]) == [
        'mlops-platform:pipelines[1].name: got "diabetes" twice; pipeline names must be unique'
    ]
    assert settings_problems(registry=REPOSITORIES, pipelines=[{**pipeline, "gpu": 3}]) == [
        "mlops-platform:pipelines[0].gpu: got 3; cluster.gpuPool.maxGpus is 2"
    ]


@pytest.mark.parametrize("schedule", ["0 3 * * 1", "*/15 1-5 * * MON-FRI", "0 0 1,15 * *", "@daily"])
def test_cron_schedules_kubernetes_accepts_are_accepted(schedule):
    assert settings_problems(registry=REPOSITORIES, pipelines=[{**PIPELINE_SETTINGS[0], "schedule": schedule}]) == []


def test_a_weak_pipeline_password_is_refused_by_ensure_user():
    from services.tracking.credentials import StartupError
    from services.tracking.settings import TrackingSettings
    from services.tracking.writers import writers_from_settings

    settings = TrackingSettings(writers={"diabetes": {"model": "diabetes", "password": "password123password"}})
    with pytest.raises(StartupError, match="the password of pipeline user training-diabetes is weak"):
        writers_from_settings(settings)


# -- retraining on drift: the receiver --------------------------------------------------------------
def receiver_objects(inventory: Inventory, prefix: str = PREFIX) -> dict:
    return {
        r.type.rsplit(":", 1)[-1]: r
        for r in inventory.resources
        if r.name.startswith(f"{prefix}-training-receiver-") and r.custom
    }


def test_the_receiver_may_only_create_jobs_in_the_training_namespace(training):
    objects = receiver_objects(training)
    role, binding = objects["Role"], objects["RoleBinding"]
    assert role.inputs["metadata"]["namespace"] == "training"
    assert role.inputs["rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]}]
    assert binding.inputs["subjects"] == [
        {"kind": "ServiceAccount", "name": "retrain-receiver", "namespace": "training"}
    ]
    assert binding.inputs["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "retrain-receiver",
    }
    cluster_wide = ("ClusterRole", "ClusterRoleBinding")
    assert not [r for r in training.resources if r.type.endswith(cluster_wide) and "training" in r.name]
    pod = objects["Deployment"].inputs["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True and pod["serviceAccountName"] == "retrain-receiver"
    assert objects["ServiceAccount"].inputs["automountServiceAccountToken"] is False  # no other pod gets a token


def test_only_alertmanagers_namespace_reaches_the_receiver(training):
    netpol = receiver_objects(training)["NetworkPolicy"].inputs["spec"]
    assert netpol["ingress"] == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {"mlops.platform/monitoring": "true"}}}],
            "ports": [{"protocol": "TCP", "port": 8080}],
        }
    ]
    service = receiver_objects(training)["Service"].inputs["spec"]
    assert service["ports"][0]["port"] == service["ports"][0]["targetPort"] == 8080


def test_the_receiver_creates_the_cron_jobs_own_job(training):
    pipelines = json.loads(receiver_objects(training)["ConfigMap"].inputs["data"]["pipelines.json"])
    assert set(pipelines) == {"diabetes", "reranker"}
    for name, spec in pipelines.items():
        assert spec["job"] == cron_jobs(training)[name].inputs["spec"]["jobTemplate"]
        assert spec["endpoint"] == name
    assert {n: s["min_interval_seconds"] for n, s in pipelines.items()} == {"diabetes": 360 * 60, "reranker": 120 * 60}


def test_alertmanager_routes_drift_to_the_receiver_with_a_token(training):
    from components.training import RECEIVER_URL

    (release,) = [
        r for r in training.of_type("kubernetes:helm.sh/v3:Release") if r.name.endswith("-kube-prometheus-stack")
    ]
    alertmanager = release.inputs["values"]["alertmanager"]
    assert "alertmanager-retrain" in alertmanager["alertmanagerSpec"]["secrets"]
    (retrain,) = [r for r in alertmanager["config"]["receivers"] if r["name"] == "retrain"]
    webhook = retrain["webhook_configs"][0]
    assert webhook["url"] == RECEIVER_URL
    assert webhook["http_config"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/etc/alertmanager/secrets/alertmanager-retrain/token",
    }
    secrets = {
        (s.inputs["metadata"]["namespace"], s.inputs["metadata"]["name"])
        for s in training.of_type("kubernetes:core/v1:Secret")
    }
    assert {("monitoring", "alertmanager-retrain"), ("training", "retrain-receiver")} <= secrets


def test_without_retraining_pipelines_the_component_declares_no_receiver():
    parts = Parts(monitoring={}, tracking={}, pipelines=[{**PIPELINES[0], "endpoint": None}])
    inventory = declare(lambda: platform(parts))
    assert cron_jobs(inventory) and not receiver_objects(inventory)

"""The TrackingServer component built from explicit args (tests/unit/builders.py): database, secrets, workload
role, rollout order, managed mode. What each shipped stack makes of it: tests/stacks/test_stack_components.py."""

from __future__ import annotations

import json

import pytest

from components.tracking import DatabaseArgs, ManagedTrackingArgs, SelfHostedTrackingArgs, TrackingServer
from infra.inventory import Inventory
from tests.conftest import declare
from tests.unit.builders import ARTIFACT_BUCKET, KEY_ARN, PREFIX, TRACKING_IMAGE, Parts, platform, tracking_args

RDS = "aws:rds/instance:Instance"
PROTECTED = {
    "protect": True,
    "replicas": 2,
    "database": DatabaseArgs(
        instance_class="db.m6g.large",
        multi_az=True,
        allocated_storage_gb=100,
        backup_retention_days=14,
        engine_version="17",
    ),
}
"""Tracking args overrides of a protected, Multi-AZ server with two replicas (as prod's is)."""


def tracking(endpoints: tuple[str, ...] = ("diabetes",), **overrides) -> Inventory:
    """The tracking server with one read-only user per endpoint (and the endpoints themselves)."""
    parts = Parts(monitoring={}, tracking=overrides, endpoints=[{"endpoint": e, "model": e} for e in endpoints])
    return declare(lambda: platform(parts))


@pytest.fixture(scope="module")
def server() -> Inventory:
    return tracking()


def db(inventory):
    (instance,) = inventory.of_type(RDS)
    return instance


def test_database_is_encrypted_private_and_reachable_only_from_the_cluster(server):
    database_private(server)


def database_private(inventory: Inventory) -> None:
    instance = db(inventory).inputs
    assert instance["storageEncrypted"] is True and instance["kmsKeyId"].startswith("arn:aws:kms:")
    assert instance["publiclyAccessible"] is False
    assert (
        instance["manageMasterUserPassword"] is True and "password" not in instance
    )  # RDS keeps it in Secrets Manager
    (sg,) = [g for g in inventory.of_type("aws:ec2/securityGroup:SecurityGroup") if g.name.endswith("-tracking-db-sg")]
    (rule,) = sg.inputs["ingress"]
    assert rule["fromPort"] == rule["toPort"] == 5432 and "cidrBlocks" not in rule
    (source,) = rule["securityGroups"]
    assert source.startswith("sg-") and source.endswith("-cluster")  # the EKS cluster security group (offline id)
    (subnets,) = inventory.of_type("aws:rds/subnetGroup:SubnetGroup")
    assert all("private" in s for s in subnets.inputs["subnetIds"])
    (params,) = inventory.of_type("aws:rds/parameterGroup:ParameterGroup")
    assert any(p["name"] == "rds.force_ssl" and p["value"] == "1" for p in params.inputs["parameters"])


def test_database_protection_and_multi_az_follow_the_args(server):
    database_protected_or_not(protected=db(tracking(**PROTECTED)), unprotected=db(server))


def database_protected_or_not(*, protected, unprotected) -> None:
    prod, dev = protected, unprotected
    assert prod.protect and prod.inputs["deletionProtection"] is True and prod.inputs["multiAz"] is True
    assert prod.inputs["skipFinalSnapshot"] is False and prod.inputs["finalSnapshotIdentifier"]
    assert prod.inputs["backupRetentionPeriod"] >= 7
    assert not dev.protect and dev.inputs["deletionProtection"] is False and dev.inputs["skipFinalSnapshot"] is True


def test_generated_secrets_are_kms_encrypted_and_never_in_plain_text(server):
    generated_secrets_kept_secret(server, f"{PREFIX}-tracking-")


def generated_secrets_kept_secret(inventory: Inventory, prefix: str) -> None:
    secrets = [s for s in inventory.of_type("aws:secretsmanager/secret:Secret") if "-tracking-" in s.name]
    # admin, Flask key, the server's database role, one reader per endpoint (one here)
    assert sorted(s.name.removeprefix(prefix) for s in secrets) == [
        "admin-password-secret",
        "database-password-secret",
        "flask-secret-key-secret",
        "reader-diabetes-password-secret",
    ]
    assert all(s.inputs["kmsKeyId"].startswith("arn:aws:kms:") for s in secrets)
    for version in inventory.of_type("aws:secretsmanager/secretVersion:SecretVersion"):
        assert version.inputs["secretString"] == "[secret]"
    text = json.dumps([r.inputs for r in inventory.resources])
    assert "offline-random-value" not in text  # the mock's generated value never leaks into the inventory


def test_workload_role_reads_and_writes_only_its_bucket_prefix(server):
    workload_role_scoped(server, ARTIFACT_BUCKET, readers=1)


def workload_role_scoped(inventory: Inventory, bucket: str, readers: int) -> None:
    (policy,) = [
        p for p in inventory.of_type("aws:iam/rolePolicy:RolePolicy") if p.name.endswith("-tracking-workload-policy")
    ]
    statements = json.loads(policy.inputs["policy"])["Statement"]
    s3 = [
        s
        for s in statements
        if any(str(a).startswith("s3:") for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"]))
    ]
    objects = next(s for s in s3 if s["Sid"] == "ObjectsUnderPrefix")
    assert objects["Resource"] == f"arn:aws:s3:::{bucket}/mlflow/*"
    listing = next(s for s in s3 if s["Sid"] == "ListPrefix")
    assert listing["Resource"] == f"arn:aws:s3:::{bucket}" and listing["Condition"] == {
        "StringLike": {"s3:prefix": ["mlflow/*", "mlflow"]}
    }
    assert len(s3) == 2
    secrets = next(s for s in statements if s["Sid"] == "OwnSecrets")
    # the RDS master secret, admin, Flask key, database role and each endpoint's reader
    assert len(secrets["Resource"]) == 4 + readers and all(
        r.startswith("arn:aws:secretsmanager:") for r in secrets["Resource"]
    )


def test_migration_job_precedes_the_deployment(server):
    inventory = server
    (job,) = [j for j in inventory.of_type("kubernetes:batch/v1:Job") if j.name.endswith("-migrate")]
    (deployment,) = [
        d for d in inventory.of_type("kubernetes:apps/v1:Deployment") if d.name.endswith("-tracking-server")
    ]
    assert job.urn in deployment.depends_on
    (reader,) = [j for j in inventory.of_type("kubernetes:batch/v1:Job") if j.name.endswith("-ensure-reader")]
    assert deployment.urn in reader.depends_on  # the reader user is created once the server runs
    assert db(inventory).urn in job.depends_on
    assert job.inputs["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    assert (
        job.inputs["spec"]["template"]["spec"]["containers"][0]["image"]
        == deployment.inputs["spec"]["template"]["spec"]["containers"][0]["image"]
    )


def test_a_new_image_gets_a_new_migration_job():
    def job_name(tag):
        inventory = tracking(image=TRACKING_IMAGE.replace(":3.17.2-1@", f":{tag}@"))
        return next(j for j in inventory.of_type("kubernetes:batch/v1:Job") if j.name.endswith("-migrate")).inputs[
            "metadata"
        ]["name"]

    assert job_name("3.17.2-1") != job_name("3.17.2-2")


def test_server_pods_are_locked_down_and_exposed_on_an_internal_alb():
    server_locked_down_behind_the_alb(tracking(**PROTECTED), replicas=2)


def server_locked_down_behind_the_alb(inventory: Inventory, replicas: int, image: str = TRACKING_IMAGE) -> None:
    (deployment,) = [
        d for d in inventory.of_type("kubernetes:apps/v1:Deployment") if d.name.endswith("-tracking-server")
    ]
    spec = deployment.inputs["spec"]
    assert spec["replicas"] == replicas
    container = spec["template"]["spec"]["containers"][0]
    assert (
        container["securityContext"]["readOnlyRootFilesystem"] is True
        and container["securityContext"]["runAsNonRoot"] is True
    )
    assert image in container["image"]  # pinned by the digest the registry holds
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (
        env["TRACKING_BACKEND_STORE_URI"].endswith("/mlflow?sslmode=require")
        and "{password}" in env["TRACKING_BACKEND_STORE_URI"]
    )
    assert env["TRACKING_AUTH_DATABASE_URI"].endswith("/mlflow_auth?sslmode=require")
    (ingress,) = [
        i for i in inventory.of_type("kubernetes:networking.k8s.io/v1:Ingress") if i.name.endswith("-tracking-ingress")
    ]
    assert ingress.inputs["metadata"]["annotations"]["alb.ingress.kubernetes.io/scheme"] == "internal"
    lbc = next(
        r for r in inventory.of_type("kubernetes:helm.sh/v3:Release") if r.name.endswith("aws-load-balancer-controller")
    )
    assert lbc.urn in ingress.depends_on  # destroy removes the ALB while the controller runs
    (pdb,) = [
        p for p in inventory.of_type("kubernetes:policy/v1:PodDisruptionBudget") if p.name.endswith("-tracking-pdb")
    ]
    assert pdb.inputs["spec"]["minAvailable"] == 1
    (namespace,) = [
        n for n in inventory.of_type("kubernetes:core/v1:Namespace") if n.inputs["metadata"]["name"] == "mlflow"
    ]
    assert namespace.inputs["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_no_pod_of_the_server_mounts_an_api_token_and_each_has_a_cpu_limit(server):
    no_api_token_and_a_cpu_limit(server)


def no_api_token_and_a_cpu_limit(inventory: Inventory) -> None:
    """Issue 13 item 9 (checkov CKV_K8S_38, CKV_K8S_11): the server and its Jobs never call the Kubernetes
    API, and IRSA's token is a volume of its own; a sub-core request may burst to one core, no further."""
    objects = [
        r
        for r in inventory.resources
        if "-tracking-" in r.name and r.type in ("kubernetes:apps/v1:Deployment", "kubernetes:batch/v1:Job")
    ]
    assert len(objects) == 3  # server, migrate, ensure-reader
    for workload in objects:
        pod = workload.inputs["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, workload.name
        assert pod["containers"][0]["resources"]["limits"]["cpu"] == "1", workload.name


def test_managed_mode_declares_no_database_or_deployment():
    managed = ManagedTrackingArgs(
        artifact_bucket=ARTIFACT_BUCKET,
        artifact_bucket_arn=f"arn:aws:s3:::{ARTIFACT_BUCKET}",
        kms_key_arn=KEY_ARN,
        size="Small",
    )
    inventory = declare(lambda: TrackingServer("t", managed))
    assert inventory.of_type(RDS) == [] and inventory.of_type("aws:secretsmanager/secret:Secret") == []
    assert [r for r in inventory.resources if r.type.startswith("kubernetes:")] == []
    (server,) = inventory.of_type("aws:sagemaker/mlflowTrackingServer:MlflowTrackingServer")
    assert (
        server.inputs["artifactStoreUri"] == f"s3://{ARTIFACT_BUCKET}/mlflow"
        and server.inputs["trackingServerSize"] == "Small"
    )


def managed_stack_checks_and_costs(inventory: Inventory) -> None:
    """A stack with managed tracking passes every check, and the managed server is priced."""
    from infra.checks import run_checks
    from infra.cost.estimate import estimate
    from infra.cost.prices import PriceTable
    from infra.cost.usage import DEFAULT_USAGE

    assert run_checks(inventory).findings == []
    lines = estimate(inventory, table=PriceTable.load(), region="us-east-1", usage=dict(DEFAULT_USAGE)).lines
    assert any(line.item.startswith("SageMaker managed MLflow") and line.monthly for line in lines)


def self_hosted_args(**overrides) -> SelfHostedTrackingArgs:
    """builders.tracking_args without a platform (checks of the args alone), exposed in the cluster only."""
    return tracking_args(None, **{"exposure": "clusterOnly", **overrides})


@pytest.mark.parametrize("image", ["repo/tracking:latest", "repo/tracking", ""])
def test_unpinned_images_are_rejected(image):
    with pytest.raises(ValueError, match="image"):
        self_hosted_args(image=image)
    assert self_hosted_args(image="repo/tracking@sha256:" + "0" * 64).image.startswith("repo/")


def test_self_hosted_and_managed_are_two_shapes_without_placeholders():
    """Issue 15 item 3: managed args carry no database, VPC or image; self-hosted args require them, no "" default."""
    import dataclasses

    managed = {f.name for f in dataclasses.fields(ManagedTrackingArgs)}
    assert managed == {"artifact_bucket", "artifact_bucket_arn", "artifact_prefix", "kms_key_arn", "size"}
    required = {
        f.name
        for f in dataclasses.fields(SelfHostedTrackingArgs)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    assert {
        "vpc_id",
        "subnet_ids",
        "cluster_security_group_id",
        "identity",
        "image",
        "replicas",
        "database",
        "exposure",
        "protect",
    } <= required
    assert not [f.name for f in dataclasses.fields(SelfHostedTrackingArgs) if f.default == ""]
    with pytest.raises(TypeError, match="size"):
        ManagedTrackingArgs(artifact_bucket="b", artifact_bucket_arn="arn", kms_key_arn="k")  # type: ignore[call-arg]


def pins(path) -> dict[str, str]:
    """`name==version` lines of a requirements file, names normalised, extras dropped."""
    import re

    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[re.sub(r"\[.*\]", "", name).strip().lower().replace("_", "-")] = version.strip()
    return found


def test_the_uri_names_the_driver_the_image_ships_and_sqlalchemy_resolves_it(server):
    """Issue 11 item 5: SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, which the image lacks."""
    import sqlalchemy

    from infra.stackfile import REPO_ROOT

    (deployment,) = [d for d in server.of_type("kubernetes:apps/v1:Deployment") if d.name.endswith("-tracking-server")]
    env = {e["name"]: e["value"] for e in deployment.inputs["spec"]["template"]["spec"]["containers"][0]["env"]}
    for key in ("TRACKING_BACKEND_STORE_URI", "TRACKING_AUTH_DATABASE_URI"):
        assert env[key].startswith("postgresql+psycopg2://{user}:{password}@") and env[key].endswith(
            "?sslmode=require"
        ), env[key]
        dialect = sqlalchemy.engine.make_url(env[key].format(user="u", password="p")).get_dialect()
        assert dialect.driver == "psycopg2" and dialect.import_dbapi().__name__ == "psycopg2"
    # pinned in the image (tests/unit/test_image_requirements.py checks the versions equal the lock's)
    assert {"psycopg2-binary", "sqlalchemy", "mlflow", "zxcvbn"} <= pins(
        REPO_ROOT / "services/tracking/requirements.txt"
    ).keys()


def test_each_endpoint_logs_in_as_its_own_read_only_user():
    each_endpoint_its_own_reader(tracking(("diabetes", "reranker")), PREFIX, {"diabetes", "reranker"})


def each_endpoint_its_own_reader(inventory: Inventory, prefix: str, names: set[str]) -> None:
    """Issue 13 item 11: one user and one password secret per endpoint, and each endpoint may read only its own."""
    (job,) = [j for j in inventory.of_type("kubernetes:batch/v1:Job") if j.name.endswith("-ensure-reader")]
    readers = json.loads(
        {e["name"]: e["value"] for e in job.inputs["spec"]["template"]["spec"]["containers"][0]["env"]}[
            "TRACKING_READERS"
        ]
    )
    endpoints = {}
    for deployment in inventory.of_type("kubernetes:apps/v1:Deployment"):
        env = {e["name"]: e.get("value") for e in deployment.inputs["spec"]["template"]["spec"]["containers"][0]["env"]}
        if "SERVING_TRACKING_USERNAME" in env:
            endpoints[env["SERVING_ENDPOINT"]] = (
                env["SERVING_TRACKING_USERNAME"],
                env["SERVING_TRACKING_PASSWORD_SECRET_ARN"],
            )
    assert set(endpoints) == names
    assert {user: arn for user, arn in endpoints.values()} == readers
    assert all(user == f"serving-{endpoint}" for endpoint, (user, _) in endpoints.items())
    assert len(set(readers.values())) == len(readers)  # no shared secret
    for endpoint, (_, arn) in endpoints.items():
        (policy,) = [
            p
            for p in inventory.of_type("aws:iam/rolePolicy:RolePolicy")
            if p.name == f"{prefix}-ep-{endpoint}-workload-policy"
        ]
        reader = next(s for s in json.loads(policy.inputs["policy"])["Statement"] if s["Sid"] == "TrackingReader")
        assert reader["Resource"] == arn


def test_only_the_migration_job_reads_the_rds_master_secret(server):
    """Issue 11 item 12: the server logs in as its own role; the master password, which RDS rotates, is migrate's
    alone."""
    inventory = server

    def env_of(resource):
        return {e["name"]: e.get("value") for e in resource.inputs["spec"]["template"]["spec"]["containers"][0]["env"]}

    (migrate,) = [j for j in inventory.of_type("kubernetes:batch/v1:Job") if j.name.endswith("-migrate")]
    (server,) = [d for d in inventory.of_type("kubernetes:apps/v1:Deployment") if d.name.endswith("-tracking-server")]
    master = db(inventory)
    assert env_of(migrate)["TRACKING_DATABASE_SECRET_ARN"].startswith("arn:aws:secretsmanager:")
    assert "TRACKING_DATABASE_SECRET_ARN" not in env_of(server)
    for resource in (migrate, server):
        assert (
            f":secret:{PREFIX}-tracking-database-password-secret-"
            in env_of(resource)["TRACKING_DATABASE_PASSWORD_SECRET_ARN"]
        )
    assert master.inputs["username"] == "mlflow" and master.inputs["manageMasterUserPassword"] is True

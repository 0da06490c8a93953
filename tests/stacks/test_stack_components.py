"""What each shipped stack's settings make of its components: the values in stacks/*.yaml and the
profiles reach the resources, and the component properties of tests/unit hold for every shipped stack.

The component tests (tests/unit/test_cluster*.py, test_monitoring_component.py, ...) build each
component from explicit args; this module is where the shipped stack files are the subject. Where a
property is the same for any args, the component test's own function runs here on each stack's
inventory, so the two never drift apart.
"""

from __future__ import annotations

import json

import pytest

from infra.settings import PlatformSettings, load_settings
from infra.stackfile import load_stack_config, stack_names
from tests.unit import test_ci_access as ci_tests
from tests.unit import test_cluster as cluster_tests
from tests.unit import test_cluster_deploy as deploy_tests
from tests.unit import test_iam_upstream as iam_tests
from tests.unit import test_monitoring_component as monitoring_tests
from tests.unit import test_network_policies as netpol_tests
from tests.unit import test_serving_component as serving_tests
from tests.unit import test_tracking_component as tracking_tests
from tests.unit import test_training_component as training_tests
from tests.unit import test_upstream_contracts as upstream_tests
from tests.unit.builders import RETRAINING_SETTINGS

STACKS = stack_names()
"""Every stack with a file: dev, staging, prod, then any other."""
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
RELEASE = "kubernetes:helm.sh/v3:Release"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"


def settings_of(stack: str) -> PlatformSettings:
    config = load_stack_config(stack)
    return load_settings(config.namespace("mlops-platform"), stack=stack, region=config.values["aws:region"])


# -- cluster and node pools -------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_gpu_pool_follows_the_stacks_settings(stack_inventories, stack):
    gpu = cluster_tests.pool(stack_inventories[stack], "gpu").inputs["spec"]
    settings = settings_of(stack).cluster.gpu_pool
    assert gpu["template"]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
    assert gpu["limits"] == {"nvidia.com/gpu": str(settings.max_gpus)}
    requirements = {r["key"]: r["values"] for r in gpu["template"]["spec"]["requirements"]}
    assert requirements["karpenter.sh/capacity-type"] == [settings.capacity_type]
    assert requirements["karpenter.k8s.aws/instance-family"] == list(settings.instance_families)
    assert gpu["template"]["spec"]["expireAfter"] == settings.expire_after
    assert gpu["disruption"]["consolidateAfter"] == settings.consolidate_after


def test_gpu_defaults_spot_in_dev_on_demand_in_prod(stack_inventories):
    def requirements(stack):
        spec = cluster_tests.pool(stack_inventories[stack], "gpu").inputs["spec"]["template"]["spec"]
        return {r["key"]: r["values"] for r in spec["requirements"]}

    capacity = {stack: requirements(stack)["karpenter.sh/capacity-type"] for stack in ("dev", "prod")}
    assert capacity == {"dev": ["spot"], "prod": ["on-demand"]}
    limits = {
        s: int(cluster_tests.pool(stack_inventories[s], "gpu").inputs["spec"]["limits"]["nvidia.com/gpu"])
        for s in ("dev", "prod")
    }
    assert limits["dev"] < limits["prod"]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_both_pools_scale_to_zero_when_idle(stack_inventories, stack):
    for name, policy in (("cpu", "WhenEmptyOrUnderutilized"), ("gpu", "WhenEmpty")):
        spec = cluster_tests.pool(stack_inventories[stack], name).inputs["spec"]
        assert spec["disruption"]["consolidationPolicy"] == policy
        assert spec["disruption"]["consolidateAfter"].endswith(("s", "m"))  # minutes, not hours
        assert "replicas" not in spec  # no static capacity: an idle pool has no nodes
    assert "taints" not in cluster_tests.pool(stack_inventories[stack], "cpu").inputs["spec"]["template"]["spec"]


def test_cluster_endpoint_private_in_prod_allow_listed_in_dev(stack_inventories):
    prod = stack_inventories["prod"].of_type("aws:eks/cluster:Cluster")[0].inputs["vpcConfig"]
    assert prod["endpointPublicAccess"] is False and prod["endpointPrivateAccess"] is True
    dev = stack_inventories["dev"].of_type("aws:eks/cluster:Cluster")[0].inputs["vpcConfig"]
    assert (
        dev["endpointPublicAccess"] is True
        and dev["publicAccessCidrs"] == settings_of("dev").cluster.public_access_cidrs
    )
    assert stack_inventories["dev"].of_type(INGRESS_RULE) == []  # an allow-listed public endpoint needs no runner rule


@pytest.mark.parametrize("stack", STACKS)
def test_cluster_logging_and_version_follow_the_stack(stack_inventories, stack):
    inventory, settings = stack_inventories[stack], settings_of(stack).cluster
    cluster = inventory.of_type("aws:eks/cluster:Cluster")[0].inputs
    assert cluster["encryptionConfig"]["resources"] == ["secrets"]
    assert cluster["enabledClusterLogTypes"] == settings.log_types
    assert cluster["version"] == settings.kubernetes_version and cluster["upgradePolicy"] == {"supportType": "STANDARD"}
    assert (
        inventory.of_type("aws:cloudwatch/logGroup:LogGroup")[0].inputs["retentionInDays"]
        == settings.log_retention_days
    )


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_workload_role_trusts_only_its_own_service_account(stack_inventories, stack):
    federated = [
        r for r in stack_inventories[stack].of_type("aws:iam/role:Role") if "Federated" in r.inputs["assumeRolePolicy"]
    ]
    expected = {
        "-karpenter": "kube-system:karpenter",
        "-lbc": "kube-system:aws-load-balancer-controller",
        "-ebs-csi": "kube-system:ebs-csi-controller-sa",
        "-tracking-workload": "mlflow:mlflow-tracking",
    }
    expected.update({f"-ep-{e.name}-workload": f"serving:{e.name}" for e in settings_of(stack).endpoints})
    assert len(federated) == len(expected)
    for role in federated:
        (statement,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
        (sub,) = [v for k, v in statement["Condition"]["StringEquals"].items() if k.endswith(":sub")]
        suffix = next(s for s in expected if role.name.endswith(s))
        assert sub == f"system:serviceaccount:{expected[suffix]}" and "StringLike" not in statement["Condition"]


def test_prod_runs_the_eight_pinned_charts(stack_inventories):
    cluster_tests.test_chart_versions_are_pinned(stack_inventories["prod"])


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_private_endpoint_stacks_admit_their_deploy_runner(stack_inventories, stack):
    deploy_tests.admits_the_runner(stack_inventories[stack], settings_of(stack).cluster.deploy_runner_cidrs)


@pytest.mark.parametrize(("stack", "replicas"), [("dev", 1), ("prod", 2)])
def test_metrics_server_replicas_follow_the_profile(stack_inventories, stack, replicas):
    assert settings_of(stack).cluster.addon_replicas == replicas
    deploy_tests.metrics_server_on_system_nodes(stack_inventories[stack], replicas)


@pytest.mark.parametrize("stack", STACKS)
def test_component_properties_hold_for_every_shipped_stack(stack_inventories, stack):
    """The component tests' checks that hold for any args, on this stack's inventory."""
    inventory = stack_inventories[stack]
    cluster_tests.test_every_kubernetes_resource_uses_the_cluster_provider(inventory)
    cluster_tests.test_destroy_ordering_edges(inventory)
    cluster_tests.nodes_require_imdsv2(inventory, cluster_name=settings_of(stack).cluster_name, stack=stack)
    deploy_tests.one_entry_per_principal(inventory)
    deploy_tests.stack_tag_reaches_everything(inventory, stack)
    deploy_tests.test_karpenter_nodes_have_their_own_role_entry_and_pass_role(inventory)
    deploy_tests.test_every_user_of_a_role_depends_on_its_policies(inventory)
    deploy_tests.test_the_vpc_cni_outlives_the_nodes_and_depends_on_the_node_role(inventory)
    deploy_tests.test_vpc_cni_enforces_network_policies(inventory)
    deploy_tests.test_cpu_autoscaled_endpoints_have_a_metrics_api(inventory)
    deploy_tests.test_node_class_tags_avoid_the_keys_karpenter_reserves(inventory)
    iam_tests.lbc_policy_is_upstreams(inventory)
    iam_tests.karpenter_policy_is_upstreams(inventory, settings_of(stack).cluster_name)
    upstream_tests.helm_values_are_the_charts(inventory)
    upstream_tests.custom_resources_validate(inventory)
    for resource in inventory.of_type(NODE_POOL) + inventory.of_type("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"):
        assert cluster_tests.validate(cluster_tests.manifest_of(resource), "1.35") == [], resource.name


# -- monitoring -------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_monitoring_follows_the_stacks_settings(stack_inventories, stack):
    inventory, settings = stack_inventories[stack], settings_of(stack)
    values = monitoring_tests.kps(inventory).inputs["values"]
    monitoring_tests.prometheus_on_retention_and_storage(
        values, settings.monitoring.retention_days, settings.monitoring.storage_gb
    )
    monitoring_tests.endpoints_monitored(inventory, {e.name: e.latency_objective_ms for e in settings.endpoints})
    monitoring_tests.eks_hidden_parts_off(values)
    monitoring_tests.volumes_outlive_nothing_they_need(inventory)
    monitoring_tests.service_monitors_keep_the_endpoint_label(inventory)
    (grafana,) = [
        s for s in inventory.of_type("aws:secretsmanager/secret:Secret") if s.name.endswith("-grafana-admin-secret")
    ]
    assert grafana.protect is settings.deletion_protection is (stack == "prod")


def test_retention_grows_with_the_profile(stack_inventories):
    def days(stack):
        return int(
            monitoring_tests.kps(stack_inventories[stack]).inputs["values"]["prometheus"]["prometheusSpec"][
                "retention"
            ][:-1]
        )

    found = [days(s) for s in ("dev", "staging", "prod")]
    assert found == sorted(found) and found[0] < found[-1]


def test_the_stacks_slack_webhook_secret_reaches_alertmanager_through_secrets_only():
    """The program reads the secret `mlops-platform:alertSlackWebhook` of the stack (`pulumi config set --secret`)."""
    from infra.offline import run_offline
    from infra.program import main as program

    webhook = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX"
    config = load_stack_config("dev")
    runtime = {**config.runtime_config(), "mlops-platform:alertSlackWebhook": webhook}
    inventory = run_offline(
        program, project=config.project, stack="dev", config=runtime, secret_keys=["mlops-platform:alertSlackWebhook"]
    )
    monitoring_tests.slack_webhook_kept_secret(inventory, webhook)


# -- serving ----------------------------------------------------------------------------------


def test_the_dev_endpoint_follows_the_dev_stack(stack_inventories):
    (endpoint,) = settings_of("dev").endpoints
    objects = serving_tests.endpoint_objects(stack_inventories["dev"], endpoint.name)
    (deployment,) = serving_tests.of(objects, "kubernetes:apps/v1:Deployment")
    container = deployment.inputs["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (env["SERVING_MODEL_NAME"], env["SERVING_MODEL_ALIAS"]) == (endpoint.model, endpoint.alias)
    assert (
        env["SERVING_CAPTURE_FRACTION"] == str(endpoint.capture_fraction)
        and env["SERVING_PATH_PREFIX"] == f"/{endpoint.name}"
    )
    assert container["resources"]["requests"] == {"cpu": endpoint.cpu, "memory": endpoint.memory}
    assert (
        f"/mlops-dev/serving:{endpoint.image_tag}@sha256:" in container["image"]
    )  # pinned by the digest the registry holds
    assert deployment.inputs["spec"]["template"]["spec"]["nodeSelector"] == {
        "mlops.platform/pool": "system"
    }  # dev: no pool node at idle
    (hpa,) = serving_tests.of(objects, "kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    assert (hpa.inputs["spec"]["minReplicas"], hpa.inputs["spec"]["maxReplicas"]) == (
        endpoint.replicas.min,
        endpoint.replicas.max,
    )


@pytest.mark.parametrize("stack", STACKS)
def test_endpoints_of_every_stack(stack_inventories, stack):
    inventory, settings = stack_inventories[stack], settings_of(stack)
    serving_tests.pods_locked_down(inventory)
    serving_tests.one_listener_set(inventory, settings.tracking.certificate_arn)
    assert (settings.tracking.certificate_arn is None) == (stack != "prod")  # HTTPS only in prod
    for endpoint in settings.endpoints:
        if endpoint.canary:
            serving_tests.canary_weights_add_up(inventory, endpoint.name, endpoint.canary.weight)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_shared_alb_drains_and_gates_pods_in_every_stack(stack_inventories, stack):
    serving_tests.target_groups_drain_within_the_pods_grace(stack_inventories[stack])
    serving_tests.readiness_gate_on_every_alb_namespace(stack_inventories[stack])


def test_prods_endpoints_share_one_alb_and_its_gpu_endpoint_lands_on_the_gpu_pool(stack_inventories):
    serving_tests.one_internal_alb(stack_inventories["prod"], "mlops-prod-internal")
    serving_tests.gpu_endpoints_on_the_gpu_pool(stack_inventories["prod"], gpu="reranker", cpu="diabetes")


def test_the_dev_endpoint_role_writes_only_its_capture_prefix(stack_inventories):
    serving_tests.test_endpoint_role_writes_only_its_capture_prefix(stack_inventories["dev"])


def test_pool_floor_counts_the_stacks_always_on_pods(stack_inventories):
    from infra.cost.estimate import workload_demand

    assert workload_demand(stack_inventories["dev"], "cpu", "cpu") == (0.0, 0)  # dev pins them to the system nodes
    cpus, pods = workload_demand(stack_inventories["prod"], "cpu", "cpu")
    assert cpus == pytest.approx(3 * 2 + 2 * 0.25) and pods == 5
    assert workload_demand(stack_inventories["prod"], "gpu", "gpu") == (2.0, 2)  # reranker stable + canary


# -- tracking ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_the_tracking_server_of_every_stack(stack_inventories, stack):
    inventory, settings = stack_inventories[stack], settings_of(stack)
    tracking_tests.database_private(inventory)
    tracking_tests.no_api_token_and_a_cpu_limit(inventory)
    if len(settings.endpoints) == 1:  # the check lists the secrets of a server with one reader
        tracking_tests.generated_secrets_kept_secret(inventory, f"{settings.name_prefix}-tracking-")
    tracking_tests.workload_role_scoped(inventory, inventory.outputs["artifactBucket"], readers=len(settings.endpoints))
    if settings.tracking.replicas > 1:  # the check expects the two-replica disruption budget
        image = f"/{settings.name_prefix}/tracking:{settings.tracking.image_tag}@sha256:"
        tracking_tests.server_locked_down_behind_the_alb(inventory, settings.tracking.replicas, image)
    tracking_tests.each_endpoint_its_own_reader(inventory, settings.name_prefix, {e.name for e in settings.endpoints})
    assert tracking_tests.db(inventory).inputs["multiAz"] is settings.database.multi_az


def test_database_protection_and_multi_az_follow_the_profile(stack_inventories):
    tracking_tests.database_protected_or_not(
        protected=tracking_tests.db(stack_inventories["prod"]), unprotected=tracking_tests.db(stack_inventories["dev"])
    )


def test_a_managed_tracking_stack_keeps_the_outputs_passes_the_checks_and_is_priced():
    from infra.offline import run_offline
    from infra.program import main as program

    config = load_stack_config("dev")
    runtime = config.runtime_config()
    runtime["mlops-platform:tracking"] = json.dumps({"mode": "managed"})
    runtime["mlops-platform:endpoints"] = "[]"  # endpoints need the self-hosted server
    inventory = run_offline(program, project=config.project, stack="dev", config=runtime)
    assert inventory.of_type(tracking_tests.RDS) == [] and inventory.of_type("kubernetes:apps/v1:Deployment") == []
    (server,) = inventory.of_type("aws:sagemaker/mlflowTrackingServer:MlflowTrackingServer")
    assert server.inputs["artifactStoreUri"] == f"s3://{inventory.outputs['artifactBucket']}/mlflow"
    assert "trackingUrl" in inventory.outputs
    tracking_tests.managed_stack_checks_and_costs(inventory)


# -- CI roles ---------------------------------------------------------------------------------


def test_the_preview_role_covers_every_data_source_the_shipped_stacks_read(monkeypatch):
    from tests.conftest import offline_stack

    ci = {"githubRepository": ci_tests.REPO}
    invokes = ci_tests.invokes_of(monkeypatch, [lambda s=s: offline_stack(s, ci=ci) for s in STACKS])
    ci_tests.preview_role_covers(invokes, offline_stack("dev", ci=ci))


# -- network policies -------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_network_policies_admit_every_call_of_the_shipped_stacks(stack_inventories, stack):
    inventory = stack_inventories[stack]
    netpol_tests.calls_admitted(inventory, training=False)
    netpol_tests.egress_names_the_container_port(inventory)
    netpol_tests.alb_admitted_by_its_own_subnets_only(inventory)
    netpol_tests.tracking_url_accepted(inventory)


def test_network_policies_admit_the_dev_stacks_training_calls():
    from tests.conftest import offline_stack

    inventory = offline_stack("dev", **RETRAINING_SETTINGS)
    netpol_tests.calls_admitted(inventory, training=True)
    netpol_tests.egress_names_the_container_port(inventory)


# -- training ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_a_shipped_stack_without_pipelines_declares_nothing_of_training(stack_inventories, stack):
    """The shipped stacks set no `pipelines`; the training component's own checks are in tests/unit (explicit args)."""
    inventory = stack_inventories[stack]
    assert settings_of(stack).pipelines == []
    assert not inventory.of_type(training_tests.CRONJOB)
    assert not [r for r in inventory.resources if "-training" in r.name]

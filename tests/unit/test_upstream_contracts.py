"""The contracts with upstream that mocks cannot check (issue 11, "Done when").

- Every Helm value the components set is a value of the pinned chart (its committed default
  `values.yaml`, subcharts included): Helm ignores a misspelt key, so the setting silently
  does nothing.
- Every custom resource the components declare validates against the upstream CRD of the pinned
  version, strict about unknown fields: the API server would prune them silently.

The components are built from explicit args (tests/unit/builders.py), once with single replicas and
once with two (which adds disruption budgets to the values); tests/stacks/test_stack_components.py
runs the same checks on every shipped stack.
"""

from __future__ import annotations

import copy

import pytest

from components import versions
from infra.inventory import Inventory
from infra.manifests import is_manifest, manifest_of, validate
from infra.upstream import CRD_FILES, MissingReference, chart_defaults, chart_name, value_problems, values_file
from tests.conftest import declare
from tests.unit.builders import Parts, platform

RELEASE = "kubernetes:helm.sh/v3:Release"


@pytest.fixture(scope="module", params=[1, 2], ids=["one-replica", "two-replicas"])
def full(request) -> Inventory:
    """Every chart and custom resource: compute, monitoring, tracking and an endpoint; add-ons with `param` replicas."""
    replicas = request.param
    parts = Parts(
        addons={"replicas": replicas},
        pools={"replicas": replicas},
        monitoring={},
        tracking={"replicas": replicas},
        endpoints=[{}],
    )
    return declare(lambda: platform(parts))


def release_problems(release) -> list[str]:
    return value_problems(release.inputs["chart"], release.inputs["version"], release.inputs.get("values") or {})


def release_of(inventory, chart: str):
    return next(r for r in inventory.of_type(RELEASE) if chart_name(r.inputs["chart"]) == chart)


def test_every_pinned_chart_has_its_default_values_committed():
    charts = [c for c in vars(versions).values() if isinstance(c, versions.HelmChart)]
    assert len(charts) >= 7
    for chart in charts:
        assert values_file(chart_name(chart.chart), chart.version).is_file()


def test_every_helm_value_the_components_set_is_a_value_of_the_pinned_chart(full):
    helm_values_are_the_charts(full)


def helm_values_are_the_charts(inventory: Inventory) -> None:
    releases = inventory.of_type(RELEASE)
    assert {chart_name(r.inputs["chart"]) for r in releases} >= {
        "kube-prometheus-stack",
        "prometheus-adapter",
        "dcgm-exporter",
        "karpenter",
        "karpenter-crd",
        "aws-load-balancer-controller",
        "nvidia-device-plugin",
    }
    problems = {f"{r.inputs['chart']} {r.inputs['version']}": release_problems(r) for r in releases}
    assert {chart: found for chart, found in problems.items() if found} == {}


def test_a_misspelt_or_misplaced_value_is_caught(full):
    release = copy.deepcopy(release_of(full, "kube-prometheus-stack"))
    values = release.inputs["values"]
    values["prometheus"]["prometheusSpec"]["retentionn"] = "7d"
    values["grafana"]["sidecar"]["dashboard"] = {"enabled": True}  # a subchart's key: `dashboards`
    values.setdefault("kube-state-metrics", {})[
        "metricLabelsAllowList"
    ] = []  # the chart's key: `metricLabelsAllowlist`
    values["kubeEtcd"] = {"enabled": {"really": False}}  # a map where the chart has a boolean
    values["grafana"]["nodeSelector"] = {"any.label/key": "x"}  # label maps are the user's: fine
    assert sorted(release_problems(release)) == [
        "grafana.sidecar.dashboard: not a value of the chart",
        "kube-state-metrics.metricLabelsAllowList: not a value of the chart",
        "kubeEtcd.enabled: the chart has a bool here, not a map",
        "prometheus.prometheusSpec.retentionn: not a value of the chart",
    ]
    lbc = copy.deepcopy(release_of(full, "aws-load-balancer-controller"))
    lbc.inputs["values"]["clustername"] = "x"
    assert release_problems(lbc) == ["clustername: not a value of the chart"]


def test_a_chart_without_committed_values_is_an_error_that_says_what_to_commit():
    with pytest.raises(MissingReference, match="components/upstream/dcgm-exporter-4.8.3/values.yaml"):
        chart_defaults("dcgm-exporter", "4.8.3")


def custom_resources(inventory) -> list[dict]:
    """Every object of an API group that is not Kubernetes' own (core, `*.k8s.io`)."""
    objects = [manifest_of(r) for r in inventory.resources if is_manifest(r)]
    return [
        m
        for m in objects
        if "." in m["apiVersion"].split("/")[0] and not m["apiVersion"].split("/")[0].endswith(".k8s.io")
    ]


def test_every_custom_resource_validates_against_its_upstream_crd(full):
    custom_resources_validate(full)


def custom_resources_validate(inventory: Inventory) -> None:
    objects = custom_resources(inventory)
    kinds = {(m["apiVersion"], m["kind"]) for m in objects}
    assert kinds == set(CRD_FILES)  # NodePool, EC2NodeClass, ServiceMonitor, PrometheusRule; nothing without a CRD
    for manifest in objects:
        assert validate(manifest, "1.35") == [], (manifest["kind"], manifest["metadata"]["name"])


def test_a_wrong_field_in_a_custom_resource_is_caught(full):
    objects = {m["kind"]: m for m in custom_resources(full)}
    monitor = copy.deepcopy(objects["ServiceMonitor"])
    monitor["spec"]["endpoints"][0]["metricRelabellings"] = monitor["spec"]["endpoints"][0].pop("metricRelabelings")
    assert any("metricRelabellings" in p for p in validate(monitor, "1.35"))
    monitor = copy.deepcopy(objects["ServiceMonitor"])
    monitor["spec"]["endpoints"][0]["metricRelabelings"][0]["action"] = "rename"
    assert any(p.startswith("spec/endpoints/0/metricRelabelings/0/action") for p in validate(monitor, "1.35"))
    rule = copy.deepcopy(objects["PrometheusRule"])
    rule["spec"]["groups"][0]["rules"][0]["expression"] = rule["spec"]["groups"][0]["rules"][0].pop("expr")
    assert any("expression" in p for p in validate(rule, "1.35"))
    node_class = copy.deepcopy(objects["EC2NodeClass"])
    node_class["spec"]["metadataOptions"] = {"httpTokens": "sometimes"}
    assert any(p.startswith("spec/metadataOptions/httpTokens") for p in validate(node_class, "1.35"))


def test_the_crds_cel_rules_are_enforced(full):
    """The API server also runs the CRDs' CEL rules (`x-kubernetes-validations`); so does validate()."""
    objects = {m["kind"]: m for m in custom_resources(full)}
    node_class = copy.deepcopy(objects["EC2NodeClass"])
    node_class["spec"]["instanceProfile"] = "some-profile"  # the class already names a role
    node_class["spec"]["tags"] = {**node_class["spec"].get("tags", {}), "kubernetes.io/cluster/other": "owned"}
    problems = validate(node_class, "1.35")
    assert any("instanceProfile" in p and p.startswith("spec:") for p in problems), problems
    assert any(p.startswith("spec/tags:") and "kubernetes.io/cluster" in p for p in problems), problems
    node_pool = copy.deepcopy(objects["NodePool"])
    requirements = node_pool["spec"]["template"]["spec"]["requirements"]
    requirements.append({"key": "karpenter.sh/nodepool", "operator": "In", "values": ["x"]})
    assert any(p.startswith("spec/template/spec/requirements") for p in validate(node_pool, "1.35"))


def test_rendering_manifests_leaves_the_inventory_as_recorded(full):
    """A Secret's masked data renders empty with a `redacted` annotation on a copy: whoever reads the same
    inventory next (the deploy plan compares two previews) sees the inputs the program declared."""
    import json

    from infra.manifests import manifests

    before = json.dumps([r.inputs for r in full.resources], sort_keys=True, default=str)
    redacted = [m for m in manifests(full) if "mlops.platform/redacted" in (m["metadata"].get("annotations") or {})]
    assert redacted  # the Grafana admin Secret, among others
    assert json.dumps([r.inputs for r in full.resources], sort_keys=True, default=str) == before

"""The NetworkPolicies of a stack of each profile admit each in-cluster call the platform makes, as the
VPC CNI's network policy agent enforces them (issue 11 item 10 follow-up). The stacks are the program
run from explicit settings (tests/unit/builders.py); tests/stacks/test_stack_components.py runs the same
checks on every shipped stack.

The agent's controller (aws/amazon-network-policy-controller-k8s, `pkg/resolvers/endpoints.go`)
adds a Service's ClusterIP to an egress rule when the Service's *selector* satisfies the rule
peer's podSelector, with the rule's ports looked up among the Service's ports; EKS documents that
the Service port must equal the container port ("network policy considerations";
aws/aws-network-policy-agent#166). So for each client's URL `http://<svc>.<ns>.svc...:<port>`:
the Service listens on that port and forwards it unchanged, a pod behind it listens there, the
client's egress admits the Service on that port, and the server's ingress admits the client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from infra.checks.rules import workloads
from infra.inventory import Inventory, Resource
from tests.unit.builders import RETRAINING_SETTINGS, profile_settings, program_inventory

NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
SERVICE = "kubernetes:core/v1:Service"
CLUSTER_URL = re.compile(
    r"^https?://(?P<service>[a-z0-9-]+)\.(?P<namespace>[a-z0-9-]+)\.svc(\.cluster\.local)?(:(?P<port>\d+))?(/.*)?$"
)
STACKS = ("dev", "staging", "prod")


@pytest.fixture(scope="module")
def inventories() -> dict[str, Inventory]:
    stacks = {profile: program_inventory(profile, profile_settings(profile)) for profile in STACKS}
    # dev with a training pipeline retrained on drift: its CronJob and the drift receiver join the calls
    return {**stacks, "dev+training": program_inventory("dev", profile_settings("dev", **RETRAINING_SETTINGS))}


@dataclass(frozen=True)
class Pod:
    """Where a workload's pods are: namespace, labels, and the ports their containers listen on."""

    workload: str
    namespace: str
    labels: dict
    ports: frozenset[int]


def namespace_of(resource: Resource) -> str:
    return (resource.inputs.get("metadata") or {}).get("namespace", "default")


def selects(selector: dict | None, labels: dict) -> bool:
    """A label selector (matchLabels only: the platform writes no matchExpressions) against labels."""
    selector = selector or {}
    assert not selector.get("matchExpressions"), "extend this test for matchExpressions"
    return (selector.get("matchLabels") or {}).items() <= labels.items()


def pods(inventory: Inventory) -> list[Pod]:
    found = []
    for resource, pod in workloads(inventory):
        spec = resource.inputs.get("spec") or {}
        template = (
            ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
            if resource.type.endswith(":CronJob")
            else spec.get("template")
        )
        labels = ((template or {}).get("metadata") or {}).get("labels") or {}
        ports = frozenset(p["containerPort"] for c in pod.get("containers") or [] for p in c.get("ports") or [])
        found.append(Pod(resource.name, namespace_of(resource), labels, ports))
    return found


def namespace_labels(inventory: Inventory) -> dict[str, dict]:
    """Each namespace's labels, with the `kubernetes.io/metadata.name` the API server adds."""
    labels = {}
    for ns in inventory.of_type("kubernetes:core/v1:Namespace"):
        meta = ns.inputs.get("metadata") or {}
        labels[meta["name"]] = {**(meta.get("labels") or {}), "kubernetes.io/metadata.name": meta["name"]}
    return labels


def peer_admits(peer: dict, policy_namespace: str, namespace: str, ns_labels: dict, selected_labels: dict) -> bool:
    """Does one `from`/`to` peer cover `selected_labels` in `namespace`? (ipBlocks never cover in-cluster names.)"""
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
    elif namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), selected_labels)


def rule_admits(rule: dict, peers_key: str, port: int, **where) -> bool:
    ports = rule.get("ports")
    if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
        return False
    peers = rule.get(peers_key)
    return not peers or any(peer_admits(peer, **where) for peer in peers)


def policies_for(inventory: Inventory, pod: Pod, kind: str) -> list[dict]:
    """Specs of the policies that select `pod` and restrict `kind` (Ingress or Egress)."""
    specs = [p.inputs.get("spec") or {} for p in inventory.of_type(NETWORK_POLICY) if namespace_of(p) == pod.namespace]
    return [
        s for s in specs if selects(s.get("podSelector"), pod.labels) and kind in (s.get("policyTypes") or ["Ingress"])
    ]


def cluster_calls(inventory: Inventory) -> list[tuple[Pod, str, str, int]]:
    """(client, service, namespace, port) for every in-cluster URL a workload's environment names."""
    by_name = {p.workload: p for p in pods(inventory)}
    calls = []
    for resource, pod in workloads(inventory):
        for container in pod.get("containers") or []:
            for env in container.get("env") or []:
                match = CLUSTER_URL.match(str(env.get("value", "")))
                if match:
                    port = int(match["port"] or (443 if env["value"].startswith("https") else 80))
                    calls.append((by_name[resource.name], match["service"], match["namespace"], port))
    return calls


@pytest.mark.parametrize("stack", [*STACKS, "dev+training"])
def test_every_in_cluster_call_is_admitted_end_to_end(inventories, stack):
    calls_admitted(inventories[stack], training="training" in stack)


def calls_admitted(inventory: Inventory, *, training: bool) -> None:
    calls = cluster_calls(inventory)
    # serving -> tracking (every endpoint track), the ensure-user Job -> tracking, training runs -> tracking
    expected = {("serving", "mlflow-tracking"), ("mlflow", "mlflow-tracking")} | (
        {("training", "mlflow-tracking")} if training else set()
    )
    assert {(c.namespace, s) for c, s, _, _ in calls} >= expected
    ns_labels = namespace_labels(inventory)
    for client, service_name, namespace, port in calls:
        call = f"{client.workload} -> {service_name}.{namespace}:{port}"
        (service,) = [
            s
            for s in inventory.of_type(SERVICE)
            if s.inputs["metadata"]["name"] == service_name and namespace_of(s) == namespace
        ]
        spec = service.inputs["spec"]
        (service_port,) = [p for p in spec["ports"] if p["port"] == port] or [None]
        assert service_port is not None, f"{call}: the Service listens on {[p['port'] for p in spec['ports']]}"
        assert service_port.get("targetPort", port) == port, (
            f"{call}: Service port {port} forwards to {service_port['targetPort']}"
        )
        servers = [
            p for p in pods(inventory) if p.namespace == namespace and spec["selector"].items() <= p.labels.items()
        ]
        assert servers and all(port in p.ports for p in servers), f"{call}: no pod behind the Service listens on {port}"

        for egress in policies_for(inventory, client, "Egress"):
            assert any(
                rule_admits(
                    r,
                    "to",
                    port,
                    policy_namespace=client.namespace,
                    namespace=namespace,
                    ns_labels=ns_labels[namespace],
                    selected_labels=spec["selector"],
                )
                for r in egress.get("egress") or []
            ), f"{call}: the client's egress drops it"
        for server in servers:
            for ingress in policies_for(inventory, server, "Ingress"):
                assert any(
                    rule_admits(
                        r,
                        "from",
                        port,
                        policy_namespace=namespace,
                        namespace=client.namespace,
                        ns_labels=ns_labels[client.namespace],
                        selected_labels=client.labels,
                    )
                    for r in ingress.get("ingress") or []
                ), f"{call}: {server.workload}'s ingress drops it"


@pytest.mark.parametrize("stack", [*STACKS, "dev+training"])
def test_egress_rules_to_in_cluster_services_name_the_container_port(inventories, stack):
    egress_names_the_container_port(inventories[stack])


def egress_names_the_container_port(inventory: Inventory) -> None:
    """Every egress rule whose peers cover a Service of the stack: the ports it allows are Service
    ports equal to the container ports behind them (what the agent matches on a ClusterIP)."""
    ns_labels = namespace_labels(inventory)
    checked = 0
    for policy in inventory.of_type(NETWORK_POLICY):
        for rule in (policy.inputs.get("spec") or {}).get("egress") or []:
            allowed = {p.get("port") for p in rule.get("ports") or []}
            for service in inventory.of_type(SERVICE):
                spec, namespace = service.inputs["spec"], namespace_of(service)
                covered = [
                    peer
                    for peer in rule.get("to") or []
                    if peer_admits(peer, namespace_of(policy), namespace, ns_labels[namespace], spec["selector"])
                ]
                if not covered:
                    continue
                checked += 1
                ports = [p for p in spec["ports"] if p["port"] in allowed]
                assert ports, (
                    f"{policy.name} reaches {service.name} but allows {sorted(allowed)}, not its ports "
                    f"{[p['port'] for p in spec['ports']]}"
                )
                for p in ports:
                    assert p.get("targetPort", p["port"]) == p["port"], (
                        f"{service.name}: port {p['port']} forwards to {p['targetPort']}"
                    )
    assert checked, "no egress rule reaches a Service of the stack"


def test_the_tracking_url_is_one_constant_that_the_server_accepts_as_host(inventories):
    tracking_url_accepted(inventories["dev+training"])


def tracking_url_accepted(inventory: Inventory) -> None:
    """Clients send `Host: <name>:<port>` for a non-default port; the server's allowed hosts
    (MLflow's own check) must accept the host the shared URL makes, and every client names it."""
    from urllib.parse import urlsplit

    from mlflow.server.security_utils import is_allowed_host_header

    from components.tracking import CLUSTER_URL as URL
    from components.tracking import PORT

    urls = {
        str(e["value"])
        for _, pod in workloads(inventory)
        for c in pod["containers"]
        for e in c.get("env") or []
        if str(e.get("value", "")).startswith("http://mlflow-tracking.")
    }
    assert urls == {URL} and urlsplit(URL).port == PORT
    (server,) = [r for r, _ in workloads(inventory) if r.name.endswith("-tracking-server")]
    env = {e["name"]: e["value"] for e in server.inputs["spec"]["template"]["spec"]["containers"][0]["env"]}
    allowed = env["TRACKING_ALLOWED_HOSTS"].split(",")
    assert is_allowed_host_header(allowed, urlsplit(URL).netloc)
    assert not is_allowed_host_header(allowed, "evil.example.com")


@pytest.mark.parametrize("stack", STACKS)
def test_the_internal_alb_is_admitted_by_its_own_subnets_only(inventories, stack):
    alb_admitted_by_its_own_subnets_only(inventories[stack])


def alb_admitted_by_its_own_subnets_only(inventory: Inventory) -> None:
    """Workloads behind the internal ALB (IP targets) admit its subnets' blocks, which hold nothing else:
    not the VPC, not the private subnets where nodes and pods take their addresses."""
    import ipaddress

    subnets = inventory.of_type("aws:ec2/subnet:Subnet")
    lb_blocks = sorted(
        s.inputs["cidrBlock"] for s in subnets if s.inputs["tags"].get("kubernetes.io/role/internal-elb") == "1"
    )
    others = [ipaddress.ip_network(s.inputs["cidrBlock"]) for s in subnets if s.inputs["cidrBlock"] not in lb_blocks]
    assert lb_blocks and not any(ipaddress.ip_network(b).overlaps(o) for b in lb_blocks for o in others)
    behind_alb = {
        (i.inputs["metadata"]["namespace"], path["backend"]["service"]["name"])
        for i in inventory.of_type("kubernetes:networking.k8s.io/v1:Ingress")
        for rule in i.inputs["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert behind_alb
    for policy in inventory.of_type(NETWORK_POLICY):
        blocks = sorted(
            peer["ipBlock"]["cidr"]
            for rule in policy.inputs["spec"].get("ingress") or []
            for peer in rule.get("from") or []
            if "ipBlock" in peer
        )
        namespace = namespace_of(policy)
        selector = policy.inputs["spec"]["podSelector"]
        fronted = any(
            ns == namespace and selects(selector, s.inputs["spec"]["selector"])
            for ns, name in behind_alb
            for s in inventory.of_type(SERVICE)
            if namespace_of(s) == ns and s.inputs["metadata"]["name"] in (name, name.replace("-weighted", "-stable"))
        )
        assert blocks == (lb_blocks if fronted else []), policy.name


def test_a_cluster_only_tracking_server_admits_no_load_balancer():
    inventory = program_inventory("dev", profile_settings("dev", tracking={"exposure": "clusterOnly"}))
    assert not inventory.of_type("kubernetes:networking.k8s.io/v1:Ingress") or all(
        namespace_of(i) != "mlflow" for i in inventory.of_type("kubernetes:networking.k8s.io/v1:Ingress")
    )
    (policy,) = [p for p in inventory.of_type(NETWORK_POLICY) if namespace_of(p) == "mlflow"]
    assert not [peer for rule in policy.inputs["spec"]["ingress"] for peer in rule["from"] if "ipBlock" in peer]

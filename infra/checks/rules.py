"""The platform's security and reliability rules, written once over the inventory.

Each rule has a stable ID, a severity, a one-line fix and a function that yields findings for
one inventory. `check` runs them offline; `policy/__main__.py` wraps the same functions as a
Pulumi CrossGuard pack for `pulumi preview --policy-pack policy`.

The environment of a resource comes from its `env` tag (the platform tags everything), so
prod-only rules work on real previews too.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from components.k8s_workload import digest_pinned
from infra.inventory import Inventory, Resource
from infra.stackfile import StackConfig

HIGH, MEDIUM, LOW = "high", "medium", "low"


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    resource: str
    """The resource's logical name (what a waiver names)."""
    urn: str
    message: str
    fix: str


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    title: str
    fix: str
    check: Callable[[Inventory], Iterable[tuple[Resource, str]]] | None = None
    stack_file_check: Callable[[StackConfig], Iterable[tuple[str, str]]] | None = None
    """A rule over the stack file instead of the inventory: yields (`config:<key>`, message)."""

    def findings(self, inventory: Inventory, stack_file: StackConfig | None = None) -> list[Finding]:
        if self.stack_file_check is not None:
            found = self.stack_file_check(stack_file) if stack_file is not None else ()
            return [Finding(self.id, self.severity, where, "", message, self.fix) for where, message in found]
        if self.check is None:
            raise TypeError(f"rule {self.id} has neither an inventory check nor a stack-file check")
        return [
            Finding(self.id, self.severity, r.name, r.urn, message, self.fix) for r, message in self.check(inventory)
        ]


RULES: list[Rule] = []


def rule(rule_id: str, severity: str, title: str, fix: str):
    def register(fn: Callable[[Inventory], Iterable[tuple[Resource, str]]]) -> Callable:
        RULES.append(Rule(rule_id, severity, title, fix, check=fn))
        return fn

    return register


def stack_file_rule(rule_id: str, severity: str, title: str, fix: str):
    """Register a rule that reads the stack file (waived like any other, by its `config:<key>`)."""

    def register(fn: Callable[[StackConfig], Iterable[tuple[str, str]]]) -> Callable:
        RULES.append(Rule(rule_id, severity, title, fix, stack_file_check=fn))
        return fn

    return register


# -- helpers ------------------------------------------------------------------------------


def profile_of(inventory: Inventory) -> str:
    """The stack's environment, from the `env` tag most AWS resources carry."""
    envs = [r.inputs.get("tags", {}).get("env") for r in inventory.resources if isinstance(r.inputs.get("tags"), dict)]
    envs = [e for e in envs if e]
    return max(set(envs), key=envs.count) if envs else "dev"


def is_prod(inventory: Inventory) -> bool:
    return profile_of(inventory) == "prod"


def _bucket_refs(bucket: Resource) -> set[str]:
    """What a bucket's companion resources may hold in `bucket`: its id or name (offline: `<name>-<suffix>[-id]`)."""
    return {bucket.name, bucket.inputs.get("bucket", "")} - {""}


def _companions(inventory: Inventory, bucket: Resource, type_token: str) -> list[Resource]:
    refs = _bucket_refs(bucket)
    found = []
    for r in inventory.of_type(type_token):
        target = str(r.inputs.get("bucket", ""))
        if any(target == ref or target.startswith(ref + "-") for ref in refs) or (
            r.parent == bucket.parent and r.name.startswith(bucket.name + "-")
        ):
            found.append(r)
    return found


def _statements(policy: Any) -> list[dict[str, Any]]:
    if isinstance(policy, str):
        try:
            policy = json.loads(policy)
        except json.JSONDecodeError:
            return []
    if not isinstance(policy, dict):
        return []
    statements = policy.get("Statement", [])
    return statements if isinstance(statements, list) else [statements]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# -- S3 -----------------------------------------------------------------------------------


@rule(
    "MLOPS-S3-001",
    HIGH,
    "buckets are encrypted with a KMS key",
    "add a BucketServerSideEncryptionConfiguration with sse_algorithm aws:kms (components/storage.py does)",
)
def _s3_kms(inv: Inventory):
    for bucket in inv.of_type("aws:s3/bucket:Bucket"):
        configs = _companions(
            inv, bucket, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
        )
        algorithms = {
            (rule.get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm")
            for c in configs
            for rule in c.inputs.get("rules") or []
        }
        if not algorithms & {"aws:kms", "aws:kms:dsse"}:
            yield bucket, "no SSE-KMS default encryption"


@rule(
    "MLOPS-S3-002",
    HIGH,
    "bucket public access is fully blocked",
    "add a BucketPublicAccessBlock with all four flags true",
)
def _s3_public(inv: Inventory):
    flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    for bucket in inv.of_type("aws:s3/bucket:Bucket"):
        blocks = _companions(inv, bucket, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
        if not any(all(b.inputs.get(f) is True for f in flags) for b in blocks):
            yield bucket, "public access is not fully blocked"


@rule(
    "MLOPS-S3-003",
    MEDIUM,
    "bucket policy denies requests without TLS",
    "add a Deny statement on aws:SecureTransport=false (components/storage.tls_only_policy)",
)
def _s3_tls(inv: Inventory):
    for bucket in inv.of_type("aws:s3/bucket:Bucket"):
        policies = _companions(inv, bucket, "aws:s3/bucketPolicy:BucketPolicy")
        denies_http = any(
            s.get("Effect") == "Deny"
            and (s.get("Condition") or {}).get("Bool", {}).get("aws:SecureTransport") in ("false", False)
            for p in policies
            for s in _statements(p.inputs.get("policy"))
        )
        if not denies_http:
            yield bucket, "no bucket policy denies non-TLS requests"


@rule(
    "MLOPS-S3-004",
    MEDIUM,
    "buckets are versioned in prod",
    "set storage.versioning: true (required by the prod profile)",
)
def _s3_versioning(inv: Inventory):
    if not is_prod(inv):
        return
    for bucket in inv.of_type("aws:s3/bucket:Bucket"):
        versions = _companions(inv, bucket, "aws:s3/bucketVersioning:BucketVersioning")
        if not any((v.inputs.get("versioningConfiguration") or {}).get("status") == "Enabled" for v in versions):
            yield bucket, "versioning is not enabled in prod"


# -- ECR ----------------------------------------------------------------------------------


@rule("MLOPS-ECR-001", MEDIUM, "registry tags are immutable", "set image_tag_mutability='IMMUTABLE'")
def _ecr_immutable(inv: Inventory):
    for repo in inv.of_type("aws:ecr/repository:Repository"):
        if repo.inputs.get("imageTagMutability") != "IMMUTABLE":
            yield repo, f"imageTagMutability is {repo.inputs.get('imageTagMutability', 'MUTABLE')}"


@rule("MLOPS-ECR-002", MEDIUM, "images are scanned on push", "set image_scanning_configuration.scan_on_push=True")
def _ecr_scan(inv: Inventory):
    for repo in inv.of_type("aws:ecr/repository:Repository"):
        if (repo.inputs.get("imageScanningConfiguration") or {}).get("scanOnPush") is not True:
            yield repo, "scan on push is off"


# -- EKS ----------------------------------------------------------------------------------


@rule(
    "MLOPS-EKS-001",
    HIGH,
    "Kubernetes secrets are encrypted with KMS",
    "set encryption_config with resources=['secrets'] and a KMS key",
)
def _eks_secrets(inv: Inventory):
    for cluster in inv.of_type("aws:eks/cluster:Cluster"):
        if "secrets" not in ((cluster.inputs.get("encryptionConfig") or {}).get("resources") or []):
            yield cluster, "secrets are not envelope-encrypted"


@rule("MLOPS-EKS-002", MEDIUM, "control-plane audit logs are on", "include at least api and audit in cluster.logTypes")
def _eks_logs(inv: Inventory):
    for cluster in inv.of_type("aws:eks/cluster:Cluster"):
        missing = {"api", "audit"} - set(cluster.inputs.get("enabledClusterLogTypes") or [])
        if missing:
            yield cluster, f"control-plane log types missing: {', '.join(sorted(missing))}"


@rule(
    "MLOPS-EKS-003",
    HIGH,
    "the API endpoint is private in prod and never open to the internet",
    "set cluster.endpointPublicAccess: false (prod) or an allow-list of CIDRs",
)
def _eks_endpoint(inv: Inventory):
    for cluster in inv.of_type("aws:eks/cluster:Cluster"):
        vpc = cluster.inputs.get("vpcConfig") or {}
        public = vpc.get("endpointPublicAccess", True)
        if public and is_prod(inv):
            yield cluster, "public API endpoint in prod"
        elif public and any(c.endswith("/0") for c in vpc.get("publicAccessCidrs") or ["0.0.0.0/0"]):
            yield cluster, "public API endpoint open to 0.0.0.0/0"


# -- RDS ----------------------------------------------------------------------------------


@rule("MLOPS-RDS-001", HIGH, "databases are encrypted at rest", "set storage_encrypted=True")
def _rds_encrypted(inv: Inventory):
    for db in inv.of_type("aws:rds/instance:Instance"):
        if db.inputs.get("storageEncrypted") is not True:
            yield db, "storage is not encrypted"


@rule("MLOPS-RDS-002", HIGH, "databases are not publicly accessible", "set publicly_accessible=False")
def _rds_public(inv: Inventory):
    for db in inv.of_type("aws:rds/instance:Instance"):
        if db.inputs.get("publiclyAccessible") is True:
            yield db, "publicly accessible"


@rule("MLOPS-RDS-003", MEDIUM, "databases keep backups (7 days in prod)", "set database.backupRetentionDays")
def _rds_backups(inv: Inventory):
    floor = 7 if is_prod(inv) else 1
    for db in inv.of_type("aws:rds/instance:Instance"):
        days = db.inputs.get("backupRetentionPeriod", 0)
        if days < floor:
            yield db, f"backup retention {days} days, below {floor}"


@rule(
    "MLOPS-RDS-004",
    HIGH,
    "prod databases have deletion protection and Multi-AZ",
    "use the prod profile defaults (deletionProtection, database.multiAz)",
)
def _rds_prod(inv: Inventory):
    if not is_prod(inv):
        return
    for db in inv.of_type("aws:rds/instance:Instance"):
        if db.inputs.get("deletionProtection") is not True:
            yield db, "deletion protection is off in prod"
        if db.inputs.get("multiAz") is not True:
            yield db, "single-AZ database in prod"


# -- network and IAM ----------------------------------------------------------------------

LOAD_BALANCER_ROLE_TAG = ("mlops.platform/role", "load-balancer")


@rule(
    "MLOPS-NET-001",
    HIGH,
    "no security group admits 0.0.0.0/0 except load balancer listeners",
    "narrow the CIDR, or tag the group mlops.platform/role=load-balancer and allow only 80/443",
)
def _open_ingress(inv: Inventory):
    key, value = LOAD_BALANCER_ROLE_TAG
    for sg in inv.of_type("aws:ec2/securityGroup:SecurityGroup"):
        is_lb = (sg.inputs.get("tags") or {}).get(key) == value
        for ingress in sg.inputs.get("ingress") or []:
            if not {"0.0.0.0/0"} & set(ingress.get("cidrBlocks") or []) and not {"::/0"} & set(
                ingress.get("ipv6CidrBlocks") or []
            ):
                continue
            ports = (ingress.get("fromPort"), ingress.get("toPort"))
            if is_lb and ports in ((80, 80), (443, 443)):
                continue
            yield sg, f"ingress from anywhere on ports {ports[0]}-{ports[1]}"
    for rule_ in inv.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"):
        if rule_.inputs.get("cidrIpv4") == "0.0.0.0/0" or rule_.inputs.get("cidrIpv6") == "::/0":
            yield rule_, "ingress rule from anywhere"


@rule(
    "MLOPS-NET-002",
    HIGH,
    "Services listen on their pods' container port",
    "set the Service's port equal to its targetPort (and name that port in clients' URLs and egress rules)",
)
def _service_port(inv: Inventory):
    """The VPC CNI's network policy agent admits traffic sent to a ClusterIP only when the
    Service port equals the container port (EKS user guide, "network policy considerations";
    aws/aws-network-policy-agent#166): a client whose egress rule allows the container port is
    dropped when it calls a Service that maps 80 to it."""
    for service in inv.of_type("kubernetes:core/v1:Service"):
        for port in (service.inputs.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if target != port.get("port"):
                yield (
                    service,
                    f"port {port.get('name') or port.get('port')}: "
                    f"Service port {port.get('port')} forwards to {target}",
                )


def _covers(
    block: ipaddress.IPv4Network | ipaddress.IPv6Network, network: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> bool:
    """`block` contains `network`; False across IP versions (supernet_of raises TypeError there)."""
    if isinstance(block, ipaddress.IPv4Network) and isinstance(network, ipaddress.IPv4Network):
        return block.supernet_of(network)
    if isinstance(block, ipaddress.IPv6Network) and isinstance(network, ipaddress.IPv6Network):
        return block.supernet_of(network)
    return False


@rule(
    "MLOPS-NET-003",
    HIGH,
    "NetworkPolicies admit named clients, never the whole VPC or the internet",
    "admit clients by namespace/pod selector, and the internal ALB by its own subnets' blocks "
    "(components/k8s_workload.load_balancer_ingress)",
)
def _policy_ingress_sources(inv: Inventory):
    """An ingress peer that is the whole VPC admits every pod, node and load balancer in it (pods take
    VPC addresses); 0.0.0.0/0, or a rule without `from`, admits anything that can route to the pod."""
    vpcs = [
        ipaddress.ip_network(v.inputs["cidrBlock"]) for v in inv.of_type("aws:ec2/vpc:Vpc") if v.inputs.get("cidrBlock")
    ]
    for policy in inv.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy"):
        for index, ingress in enumerate((policy.inputs.get("spec") or {}).get("ingress") or []):
            if not ingress.get("from"):
                yield policy, f"ingress[{index}] has no `from`: it admits every source"
            for peer in ingress.get("from") or []:
                cidr = (peer.get("ipBlock") or {}).get("cidr")
                if not cidr:
                    continue
                block = ipaddress.ip_network(cidr, strict=False)
                if block.prefixlen == 0:
                    yield policy, f"ingress[{index}] admits {cidr}: the internet"
                elif any(_covers(block, vpc) for vpc in vpcs):
                    yield policy, f"ingress[{index}] admits {cidr}: the whole VPC"


_ALB = "alb.ingress.kubernetes.io/"


def _alb_ingresses(inv: Inventory) -> list[Resource]:
    return [
        i
        for i in inv.of_type("kubernetes:networking.k8s.io/v1:Ingress")
        if (i.inputs.get("spec") or {}).get("ingressClassName") == "alb"
        or ((i.inputs.get("metadata") or {}).get("annotations") or {}).get("kubernetes.io/ingress.class") == "alb"
    ]


@rule(
    "MLOPS-NET-004",
    HIGH,
    "ALB Ingresses listen on HTTPS only in prod",
    "set tracking.certificateArn (required in prod): "
    "every Ingress of the internal ALB then lists only HTTPS 443, with the certificate "
    "(components/k8s_workload.alb_listener_annotations)",
)
def _https_ingress(inv: Inventory):
    """Basic-auth passwords and model inputs cross the VPC on whatever the ALB listens on. The
    controller's default listener is HTTP 80 unless the Ingress names a certificate; a group shares
    its certificates (LB controller v2.14: `listen-ports` and `certificate-arn` merge)."""
    if not is_prod(inv):
        return
    ingresses = _alb_ingresses(inv)
    annotations = {i.name: (i.inputs.get("metadata") or {}).get("annotations") or {} for i in ingresses}
    certified = {a.get(_ALB + "group.name") for a in annotations.values() if a.get(_ALB + "certificate-arn")} - {None}
    for ingress in ingresses:
        a = annotations[ingress.name]
        own = bool(a.get(_ALB + "certificate-arn") or (ingress.inputs.get("spec") or {}).get("tls"))
        try:
            listen = json.loads(a.get(_ALB + "listen-ports") or ('[{"HTTPS": 443}]' if own else '[{"HTTP": 80}]'))
        except json.JSONDecodeError:
            yield ingress, "listen-ports is not valid JSON"
            continue
        plain = sorted(
            f"{protocol} {port}" for entry in listen for protocol, port in entry.items() if protocol != "HTTPS"
        )
        if plain:
            yield ingress, f"listens on {', '.join(plain)} in prod"
        elif not (own or a.get(_ALB + "group.name") in certified):
            yield (
                ingress,
                "HTTPS listener without a certificate (certificate-arn on it or on its group, or spec.tls hosts)",
            )


@rule(
    "MLOPS-IAM-001",
    HIGH,
    "no IAM policy allows every action on every resource",
    "list the actions the workload needs, or scope Resource",
)
def _iam_star(inv: Inventory):
    for r in inv.resources:
        if r.type not in ("aws:iam/rolePolicy:RolePolicy", "aws:iam/policy:Policy", "aws:iam/role:Role"):
            continue
        for key in ("policy", "inlinePolicies"):
            documents = (
                [p.get("policy") for p in r.inputs.get(key) or []] if key == "inlinePolicies" else [r.inputs.get(key)]
            )
            for document in documents:
                for s in _statements(document):
                    if s.get("Effect") != "Allow":
                        continue
                    actions = [str(a) for a in _as_list(s.get("Action", []))]
                    if "*" in _as_list(s.get("Resource", [])) and any(a == "*" or a.endswith(":*") for a in actions):
                        yield r, f"allows {', '.join(a for a in actions if a == '*' or a.endswith(':*'))} on *"


@rule(
    "MLOPS-IAM-002",
    HIGH,
    "each workload role trusts exactly one service account",
    "use components.identity.workload_role, which pins sub to system:serviceaccount:<ns>:<sa>",
)
def _iam_trust(inv: Inventory):
    for role in inv.of_type("aws:iam/role:Role"):
        for s in _statements(role.inputs.get("assumeRolePolicy")):
            if "Federated" not in (s.get("Principal") or {}) or s.get("Effect") != "Allow":
                continue
            conditions = s.get("Condition") or {}
            subs = [v for op in conditions.values() for k, v in op.items() if k.endswith(":sub")]
            if (
                "StringLike" in conditions
                or len(subs) != 1
                or not re.fullmatch(r"system:serviceaccount:[a-z0-9-]+:[a-z0-9-]+", str(subs[0]))
            ):
                yield role, "web-identity trust is not pinned to a single service account"


# -- Kubernetes workloads -----------------------------------------------------------------

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}


def workloads(inv: Inventory) -> Iterator[tuple[Resource, dict[str, Any]]]:
    """(resource, pod spec) for every Kubernetes workload object of the stack."""
    for r in inv.resources:
        if not r.type.startswith("kubernetes:") or r.type.rsplit(":", 1)[-1] not in WORKLOAD_KINDS:
            continue
        spec = r.inputs.get("spec") or {}
        if r.type.endswith(":CronJob"):
            spec = (spec.get("jobTemplate") or {}).get("spec") or {}
        yield r, (spec.get("template") or {}).get("spec") or {}


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("containers") or []) + list(pod.get("initContainers") or [])


def _container_rule(
    rule_id: str,
    title: str,
    fix: str,
    bad: Callable[[dict[str, Any], dict[str, Any]], str | None],
    severity: str = MEDIUM,
):
    def check(inv: Inventory):
        for r, pod in workloads(inv):
            for container in _containers(pod):
                problem = bad(container, pod)
                if problem:
                    yield r, f"container {container.get('name')}: {problem}"

    RULES.append(Rule(rule_id, severity, title, fix, check))


def _security(container: dict[str, Any], pod: dict[str, Any], key: str) -> Any:
    """A security setting from the container, falling back to the pod's securityContext."""
    own = (container.get("securityContext") or {}).get(key)
    return own if own is not None else (pod.get("securityContext") or {}).get(key)


_container_rule(
    "MLOPS-K8S-001",
    "containers declare CPU and memory requests and a memory limit",
    "set resources.requests.cpu/memory and resources.limits.memory",
    lambda c, p: (
        None
        if ((c.get("resources") or {}).get("requests") or {}).keys() >= {"cpu", "memory"}
        and "memory" in ((c.get("resources") or {}).get("limits") or {})
        else "resources incomplete"
    ),
)
_container_rule(
    "MLOPS-K8S-003",
    "containers run as non-root",
    "set securityContext.runAsNonRoot: true and a non-zero runAsUser",
    lambda c, p: (
        None
        if _security(c, p, "runAsNonRoot") is True and _security(c, p, "runAsUser") not in (0, "0")
        else "may run as root"
    ),
    HIGH,
)
_container_rule(
    "MLOPS-K8S-004",
    "root file systems are read-only",
    "set securityContext.readOnlyRootFilesystem: true; mount an emptyDir where the process writes",
    lambda c, p: (
        None if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is True else "writable root file system"
    ),
)
_container_rule(
    "MLOPS-K8S-005",
    "no privilege escalation",
    "set securityContext.allowPrivilegeEscalation: false (and never privileged)",
    lambda c, p: (
        None
        if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is False
        and not (c.get("securityContext") or {}).get("privileged")
        else "privilege escalation allowed"
    ),
    HIGH,
)
_container_rule(
    "MLOPS-K8S-006",
    "all capabilities dropped",
    "set securityContext.capabilities.drop: [ALL]",
    lambda c, p: (
        None
        if "ALL" in (((c.get("securityContext") or {}).get("capabilities") or {}).get("drop") or [])
        else "capabilities not dropped"
    ),
)
_container_rule(
    "MLOPS-K8S-007",
    "RuntimeDefault seccomp profile",
    "set securityContext.seccompProfile.type: RuntimeDefault (pod or container)",
    lambda c, p: (
        None
        if (_security(c, p, "seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
        else "no seccomp profile"
    ),
)


_container_rule(
    "MLOPS-K8S-008",
    "images are pinned to a tag or digest, never latest",
    "reference images as repo:version or repo@sha256:...",
    lambda c, p: None if digest_pinned(str(c.get("image", ""))) else f"image {c.get('image')!r} is not pinned",
    HIGH,
)


_container_rule(
    "MLOPS-K8S-010",
    "containers declare a CPU limit",
    "set resources.limits.cpu (components/k8s_workload.resources does: the request, at least one core)",
    lambda c, p: None if "cpu" in ((c.get("resources") or {}).get("limits") or {}) else "no CPU limit",
)

KUBERNETES_API_SKIP = "CKV_K8S_38"


def _needs_kubernetes_api(workload: Resource) -> bool:
    """Marked as calling the Kubernetes API: checkov's in-manifest skip of CKV_K8S_38, with a reason."""
    annotations = (workload.inputs.get("metadata") or {}).get("annotations") or {}
    return any(
        key.startswith("checkov.io/skip")
        and str(value).startswith(KUBERNETES_API_SKIP + "=")
        and str(value).split("=", 1)[1].strip()
        for key, value in annotations.items()
    )


@rule(
    "MLOPS-K8S-011",
    MEDIUM,
    "pods mount no service-account token unless marked as calling the Kubernetes API",
    "set the pod's automountServiceAccountToken: false (IRSA needs no API token), or mark the workload with "
    "components/k8s_workload.kubernetes_api_client(reason)",
)
def _service_account_token(inv: Inventory):
    """A mounted token lets anyone who takes over the pod call the API server as its service account.
    The pod spec must say false itself (checkov's CKV_K8S_38 reads the pod spec, not the account)."""
    for r, pod in workloads(inv):
        if pod.get("automountServiceAccountToken") is not False and not _needs_kubernetes_api(r):
            yield (
                r,
                "mounts a service-account token (automountServiceAccountToken is not false) and is not marked as "
                "calling the Kubernetes API",
            )


@rule(
    "MLOPS-K8S-002",
    MEDIUM,
    "long-running containers have readiness and liveness probes",
    "add readinessProbe and livenessProbe",
)
def _probes(inv: Inventory):
    for r, pod in workloads(inv):
        if r.type.endswith((":Job", ":CronJob")):
            continue
        for container in pod.get("containers") or []:
            missing = [p for p in ("readinessProbe", "livenessProbe") if not container.get(p)]
            if missing:
                yield r, f"container {container.get('name')}: no {' or '.join(missing)}"


@rule(
    "MLOPS-K8S-009",
    MEDIUM,
    "every workload is selected by a NetworkPolicy",
    "declare a NetworkPolicy whose podSelector matches the workload's pod labels",
)
def _network_policy(inv: Inventory):
    policies = [
        (
            (p.inputs.get("metadata") or {}).get("namespace", "default"),
            ((p.inputs.get("spec") or {}).get("podSelector") or {}).get("matchLabels") or {},
        )
        for p in inv.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    ]
    for r, _ in workloads(inv):
        namespace = (r.inputs.get("metadata") or {}).get("namespace", "default")
        spec = r.inputs.get("spec") or {}
        template = (
            (spec.get("jobTemplate") or {}).get("spec", {}).get("template")
            if r.type.endswith(":CronJob")
            else spec.get("template")
        )
        labels = ((template or {}).get("metadata") or {}).get("labels") or {}
        if not any(ns == namespace and selector.items() <= labels.items() for ns, selector in policies):
            yield r, f"no NetworkPolicy in {namespace} selects its pods"


# -- secrets ------------------------------------------------------------------------------

_SECRET_NAME = re.compile(r"(password|passwd|secret|token|api[_-]?key|webhook|private[_-]?key)", re.IGNORECASE)
_NOT_SECRET_VALUES = {"", "[secret]", "offline-secret-placeholder"}
_REFERENCE_SUFFIXES = ("_ARN", "_ARNS", "_FILE", "_PATH", "_NAME", "_REF")


@rule(
    "MLOPS-SEC-001",
    HIGH,
    "no secret is set in plain text",
    "keep it in Secrets Manager (or `pulumi config set --secret`) and reference it",
)
def _plain_secrets(inv: Inventory):
    for r, pod in workloads(inv):
        for container in _containers(pod):
            for env in container.get("env") or []:
                name, value = str(env.get("name", "")), str(env.get("value", ""))
                if name.endswith(_REFERENCE_SUFFIXES) or value.startswith("arn:"):
                    continue  # where the secret lives, not the secret
                if _SECRET_NAME.search(name) and "value" in env and value not in _NOT_SECRET_VALUES:
                    yield r, f"env {env['name']} holds a literal value"
    for r in inv.of_type("kubernetes:helm.sh/v3:Release"):
        for path, value in _leaves(r.inputs.get("values") or {}):
            key = re.sub(r"\[\d+\]$", "", path.rsplit(".", 1)[-1])
            if key in ("secrets", "existingSecret", "secretName") or key.endswith(
                ("Ref", "Name", "Key", "File", "_file")
            ):
                continue  # names of secrets and paths to them, not secrets
            if _SECRET_NAME.search(key) and isinstance(value, str) and value not in _NOT_SECRET_VALUES:
                yield r, f"Helm value {path} holds a literal secret"
    for r in inv.of_type("kubernetes:core/v1:Secret"):
        for field in ("stringData", "data"):
            content = r.inputs.get(field) or {}
            if not isinstance(content, dict):
                continue  # the whole mapping is a Pulumi secret
            for key, value in content.items():
                if value not in _NOT_SECRET_VALUES:
                    yield (
                        r,
                        f"{field}.{key} is stored in plain text in the program (use Secrets Manager or a secret "
                        "config value)",
                    )


@stack_file_rule(
    "MLOPS-SEC-002",
    HIGH,
    "no secret-looking setting in plain text in the stack file",
    "set it with `pulumi config set --secret`, or keep it in Secrets Manager",
)
def _plain_secret_settings(stack_file: StackConfig):
    """Settings whose key names a secret but whose value is not a `secure:` (encrypted) one."""
    for key, value in stack_file.values.items():
        if key in stack_file.secret_keys:
            continue
        for path, leaf in _leaves(value, key):
            name = path.rsplit(".", 1)[-1].rsplit(":", 1)[-1]
            if _SECRET_NAME.search(name) and isinstance(leaf, str) and leaf:
                yield f"config:{path}", "a secret-looking setting is stored in plain text in the stack file"


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


# -- teardown safety ----------------------------------------------------------------------

STATEFUL_TYPES = (
    "aws:s3/bucket:Bucket",
    "aws:kms/key:Key",
    "aws:ecr/repository:Repository",
    "aws:rds/instance:Instance",
    "aws:eks/cluster:Cluster",
)


@rule(
    "MLOPS-DATA-001",
    HIGH,
    "prod resources that hold data are protected",
    "pass protect=True (or retain_on_delete=True) for stateful prod resources",
)
def _protected(inv: Inventory):
    if not is_prod(inv):
        return
    for r in inv.resources:
        if r.type in STATEFUL_TYPES and not (r.protect or r.retain_on_delete):
            yield r, "not protected from `pulumi destroy`"


@rule(
    "MLOPS-DATA-002",
    LOW,
    "non-prod stacks can be destroyed in one pass",
    "outside prod: force_destroy buckets, force_delete registries, no protect, skip the final DB snapshot",
)
def _destroyable(inv: Inventory):
    if is_prod(inv):
        return
    for r in inv.resources:
        if r.type in STATEFUL_TYPES and r.protect:
            yield r, "protected outside prod: `pulumi destroy` will stop here"
    for r in inv.of_type("aws:s3/bucket:Bucket"):
        if r.inputs.get("forceDestroy") is not True:
            yield r, "non-empty bucket blocks destroy (forceDestroy is off)"
    for r in inv.of_type("aws:ecr/repository:Repository"):
        if r.inputs.get("forceDelete") is not True:
            yield r, "repository with images blocks destroy (forceDelete is off)"
    for r in inv.of_type("aws:rds/instance:Instance"):
        if r.inputs.get("deletionProtection") is True:
            yield r, "deletion protection blocks destroy"


def rule_by_id(rule_id: str) -> Rule | None:
    return next((r for r in RULES if r.id == rule_id), None)

"""Every rule has a passing and a failing fixture; waivers; the CrossGuard adapter; the commands."""

from __future__ import annotations

import copy
import json
import py_compile
import subprocess
import sys
from types import SimpleNamespace

import pytest

from infra.checks import Waiver, config_findings, run_checks
from infra.checks.crossguard import stack_policies, validator
from infra.checks.rules import RULES, rule_by_id
from infra.inventory import Inventory, Resource
from infra.settings import SettingsError, load_settings
from infra.stackfile import REPO_ROOT


def r(name, type_, protect=False, **inputs):
    return Resource(
        urn=f"urn:pulumi:t::p::{type_}::{name}",
        type=type_,
        name=name,
        parent=None,
        custom=True,
        inputs=inputs,
        protect=protect,
    )


def secure_container(**overrides):
    container = {
        "name": "app",
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/serving:1.2.3",
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
    }
    container.update(overrides)
    return container


def good(env: str = "dev") -> list[Resource]:
    prod = env == "prod"
    tags = {"env": env}
    trust = {
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": "arn:oidc"},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {"oidc:sub": "system:serviceaccount:ml:serving", "oidc:aud": "sts.amazonaws.com"}
                },
            }
        ]
    }
    return [
        r("b", "aws:s3/bucket:Bucket", protect=prod, forceDestroy=not prod, tags=tags),
        r(
            "b-encryption",
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
            bucket="b-id",
            rules=[{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": "arn:k"}}],
        ),
        r(
            "b-public-access",
            "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
            bucket="b-id",
            blockPublicAcls=True,
            blockPublicPolicy=True,
            ignorePublicAcls=True,
            restrictPublicBuckets=True,
        ),
        r(
            "b-tls-only",
            "aws:s3/bucketPolicy:BucketPolicy",
            bucket="b-id",
            policy=json.dumps(
                {
                    "Statement": [
                        {
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "s3:*",
                            "Resource": "*",
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        }
                    ]
                }
            ),
        ),
        r(
            "b-versioning",
            "aws:s3/bucketVersioning:BucketVersioning",
            bucket="b-id",
            versioningConfiguration={"status": "Enabled"},
        ),
        r(
            "repo",
            "aws:ecr/repository:Repository",
            protect=prod,
            imageTagMutability="IMMUTABLE",
            imageScanningConfiguration={"scanOnPush": True},
            forceDelete=not prod,
            tags=tags,
        ),
        r(
            "eks",
            "aws:eks/cluster:Cluster",
            protect=prod,
            encryptionConfig={"resources": ["secrets"]},
            enabledClusterLogTypes=["api", "audit"],
            vpcConfig={"endpointPublicAccess": not prod, "publicAccessCidrs": ["203.0.113.0/24"]},
            tags=tags,
        ),
        r(
            "db",
            "aws:rds/instance:Instance",
            protect=prod,
            storageEncrypted=True,
            publiclyAccessible=False,
            backupRetentionPeriod=7,
            deletionProtection=prod,
            multiAz=prod,
            tags=tags,
        ),
        r(
            "sg",
            "aws:ec2/securityGroup:SecurityGroup",
            ingress=[{"protocol": "tcp", "fromPort": 5432, "toPort": 5432, "cidrBlocks": ["10.0.0.0/16"]}],
            tags=tags,
        ),
        r(
            "lb-sg",
            "aws:ec2/securityGroup:SecurityGroup",
            ingress=[{"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidrBlocks": ["0.0.0.0/0"]}],
            tags={**tags, "mlops.platform/role": "load-balancer"},
        ),
        r("role", "aws:iam/role:Role", assumeRolePolicy=json.dumps(trust), tags=tags),
        r(
            "role-policy",
            "aws:iam/rolePolicy:RolePolicy",
            policy=json.dumps(
                {
                    "Statement": [
                        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/models/*"},
                        {"Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"},
                    ]
                }
            ),
        ),
        r(
            "serving",
            "kubernetes:apps/v1:Deployment",
            metadata={"name": "serving", "namespace": "ml"},
            spec={
                "template": {
                    "metadata": {"labels": {"app": "serving", "tier": "model"}},
                    "spec": {
                        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                        "automountServiceAccountToken": False,
                        "containers": [secure_container()],
                    },
                }
            },
        ),
        r("vpc", "aws:ec2/vpc:Vpc", cidrBlock="10.0.0.0/16", tags=tags),
        r(
            "serving-netpol",
            "kubernetes:networking.k8s.io/v1:NetworkPolicy",
            metadata={"namespace": "ml"},
            spec={
                "podSelector": {"matchLabels": {"app": "serving"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [
                            {"ipBlock": {"cidr": "10.0.192.0/22"}},
                            {"namespaceSelector": {"matchLabels": {"monitoring": "true"}}},
                        ],
                        "ports": [{"protocol": "TCP", "port": 8080}],
                    }
                ],
            },
        ),
        r(
            "serving-svc",
            "kubernetes:core/v1:Service",
            metadata={"name": "serving", "namespace": "ml"},
            spec={"selector": {"app": "serving"}, "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]},
        ),
        r(
            "serving-ingress",
            "kubernetes:networking.k8s.io/v1:Ingress",
            metadata={
                "name": "serving",
                "namespace": "ml",
                "annotations": {
                    "alb.ingress.kubernetes.io/listen-ports": '[{"HTTPS": 443}]',
                    "alb.ingress.kubernetes.io/group.name": "internal",
                    "alb.ingress.kubernetes.io/certificate-arn": "arn:aws:acm:us-east-1:123456789012:certificate/0",
                },
            },
            spec={
                "ingressClassName": "alb",
                "rules": [
                    {
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": "serving", "port": {"number": 8080}}},
                                }
                            ]
                        }
                    }
                ],
            },
        ),
        r("chart", "kubernetes:helm.sh/v3:Release", values={"grafana": {"admin": {"existingSecret": "grafana-admin"}}}),
    ]


def mutate(resources: list[Resource], name: str, change) -> list[Resource]:
    resources = copy.deepcopy(resources)
    target = next(x for x in resources if x.name == name)
    change(target)
    return resources


def container_of(res):
    return res.inputs["spec"]["template"]["spec"]["containers"][0]


def drop(name):
    return lambda rs: [x for x in rs if x.name != name]


# rule id -> (environment, how to break the good inventory, the resource that must be flagged)
BREAKS = {
    "MLOPS-S3-001": ("dev", drop("b-encryption"), "b"),
    "MLOPS-S3-002": (
        "dev",
        lambda rs: mutate(rs, "b-public-access", lambda x: x.inputs.update(restrictPublicBuckets=False)),
        "b",
    ),
    "MLOPS-S3-003": ("dev", drop("b-tls-only"), "b"),
    "MLOPS-S3-004": (
        "prod",
        lambda rs: mutate(
            rs, "b-versioning", lambda x: x.inputs.update(versioningConfiguration={"status": "Suspended"})
        ),
        "b",
    ),
    "MLOPS-ECR-001": (
        "dev",
        lambda rs: mutate(rs, "repo", lambda x: x.inputs.update(imageTagMutability="MUTABLE")),
        "repo",
    ),
    "MLOPS-ECR-002": (
        "dev",
        lambda rs: mutate(rs, "repo", lambda x: x.inputs.update(imageScanningConfiguration={"scanOnPush": False})),
        "repo",
    ),
    "MLOPS-EKS-001": ("dev", lambda rs: mutate(rs, "eks", lambda x: x.inputs.pop("encryptionConfig")), "eks"),
    "MLOPS-EKS-002": (
        "dev",
        lambda rs: mutate(rs, "eks", lambda x: x.inputs.update(enabledClusterLogTypes=["api"])),
        "eks",
    ),
    "MLOPS-EKS-003": (
        "prod",
        lambda rs: mutate(rs, "eks", lambda x: x.inputs["vpcConfig"].update(endpointPublicAccess=True)),
        "eks",
    ),
    "MLOPS-RDS-001": ("dev", lambda rs: mutate(rs, "db", lambda x: x.inputs.update(storageEncrypted=False)), "db"),
    "MLOPS-RDS-002": ("dev", lambda rs: mutate(rs, "db", lambda x: x.inputs.update(publiclyAccessible=True)), "db"),
    "MLOPS-RDS-003": ("prod", lambda rs: mutate(rs, "db", lambda x: x.inputs.update(backupRetentionPeriod=3)), "db"),
    "MLOPS-RDS-004": ("prod", lambda rs: mutate(rs, "db", lambda x: x.inputs.update(multiAz=False)), "db"),
    "MLOPS-NET-001": (
        "dev",
        lambda rs: mutate(rs, "sg", lambda x: x.inputs["ingress"][0].update(cidrBlocks=["0.0.0.0/0"])),
        "sg",
    ),
    "MLOPS-NET-003": (
        "dev",
        lambda rs: mutate(
            rs,
            "serving-netpol",
            lambda x: x.inputs["spec"]["ingress"][0]["from"][0]["ipBlock"].update(cidr="10.0.0.0/16"),
        ),
        "serving-netpol",
    ),
    "MLOPS-NET-004": (
        "prod",
        lambda rs: mutate(
            rs,
            "serving-ingress",
            lambda x: x.inputs["metadata"]["annotations"].update(
                {"alb.ingress.kubernetes.io/listen-ports": '[{"HTTP": 80}, {"HTTPS": 443}]'}
            ),
        ),
        "serving-ingress",
    ),
    "MLOPS-NET-002": (
        "dev",
        lambda rs: mutate(rs, "serving-svc", lambda x: x.inputs["spec"]["ports"][0].update(port=80)),
        "serving-svc",
    ),
    "MLOPS-IAM-001": (
        "dev",
        lambda rs: mutate(
            rs,
            "role-policy",
            lambda x: x.inputs.update(
                policy=json.dumps({"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
            ),
        ),
        "role-policy",
    ),
    "MLOPS-IAM-002": (
        "dev",
        lambda rs: mutate(
            rs,
            "role",
            lambda x: x.inputs.update(
                assumeRolePolicy=x.inputs["assumeRolePolicy"]
                .replace("StringEquals", "StringLike")
                .replace("ml:serving", "ml:*")
            ),
        ),
        "role",
    ),
    "MLOPS-K8S-001": ("dev", lambda rs: mutate(rs, "serving", lambda x: container_of(x).pop("resources")), "serving"),
    "MLOPS-K8S-002": (
        "dev",
        lambda rs: mutate(rs, "serving", lambda x: container_of(x).pop("livenessProbe")),
        "serving",
    ),
    "MLOPS-K8S-003": (
        "dev",
        lambda rs: mutate(rs, "serving", lambda x: container_of(x)["securityContext"].update(runAsUser=0)),
        "serving",
    ),
    "MLOPS-K8S-004": (
        "dev",
        lambda rs: mutate(
            rs, "serving", lambda x: container_of(x)["securityContext"].update(readOnlyRootFilesystem=False)
        ),
        "serving",
    ),
    "MLOPS-K8S-005": (
        "dev",
        lambda rs: mutate(
            rs, "serving", lambda x: container_of(x)["securityContext"].update(allowPrivilegeEscalation=True)
        ),
        "serving",
    ),
    "MLOPS-K8S-006": (
        "dev",
        lambda rs: mutate(
            rs, "serving", lambda x: container_of(x)["securityContext"].update(capabilities={"drop": []})
        ),
        "serving",
    ),
    "MLOPS-K8S-007": (
        "dev",
        lambda rs: mutate(
            rs,
            "serving",
            lambda x: (
                x.inputs["spec"]["template"]["spec"].pop("securityContext"),
                container_of(x)["securityContext"].pop("seccompProfile"),
            ),
        ),
        "serving",
    ),
    "MLOPS-K8S-008": (
        "dev",
        lambda rs: mutate(rs, "serving", lambda x: container_of(x).update(image="serving:latest")),
        "serving",
    ),
    "MLOPS-K8S-009": ("dev", drop("serving-netpol"), "serving"),
    "MLOPS-K8S-010": (
        "dev",
        lambda rs: mutate(rs, "serving", lambda x: container_of(x)["resources"]["limits"].pop("cpu")),
        "serving",
    ),
    "MLOPS-K8S-011": (
        "dev",
        lambda rs: mutate(
            rs, "serving", lambda x: x.inputs["spec"]["template"]["spec"].update(automountServiceAccountToken=True)
        ),
        "serving",
    ),
    "MLOPS-SEC-001": (
        "dev",
        lambda rs: mutate(
            rs, "serving", lambda x: container_of(x)["env"].append({"name": "API_TOKEN", "value": "hunter2"})
        ),
        "serving",
    ),
    "MLOPS-DATA-001": ("prod", lambda rs: mutate(rs, "b", lambda x: setattr(x, "protect", False)), "b"),
    "MLOPS-DATA-002": ("dev", lambda rs: mutate(rs, "b", lambda x: x.inputs.update(forceDestroy=False)), "b"),
}


def inventory(resources, stack="t"):
    return Inventory(project="p", stack=stack, source="offline", resources=resources)


def test_every_rule_has_a_failing_fixture():
    assert {rule.id for rule in RULES if rule.stack_file_check is None} == set(BREAKS)
    assert {rule.id for rule in RULES if rule.stack_file_check is not None} == {"MLOPS-SEC-002"}  # fixtures below
    assert len({rule.id for rule in RULES}) == len(RULES)  # IDs are unique


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_the_good_fixture_passes_every_rule(env):
    report = run_checks(inventory(good(env)))
    assert report.findings == [], [(f.rule, f.resource, f.message) for f in report.findings]


@pytest.mark.parametrize("rule_id", sorted(BREAKS))
def test_each_rule_flags_its_failing_fixture(rule_id):
    env, brk, culprit = BREAKS[rule_id]
    rule = rule_by_id(rule_id)
    assert rule.findings(inventory(good(env))) == []
    findings = rule.findings(inventory(brk(good(env))))
    assert [f.resource for f in findings] == [culprit], findings
    assert findings[0].fix and findings[0].severity in ("high", "medium", "low")


@pytest.mark.parametrize(
    ("ingress", "message"),
    [
        (
            {"from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]},
            "ingress[0] admits 0.0.0.0/0: the internet",
        ),
        ({"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}, "ingress[0] admits 10.0.0.0/8: the whole VPC"),
        ({"ports": [{"port": 8080}]}, "ingress[0] has no `from`: it admits every source"),
    ],
)
def test_network_policy_ingress_from_anywhere_is_flagged(ingress, message):
    bad = mutate(good(), "serving-netpol", lambda x: x.inputs["spec"].update(ingress=[ingress]))
    assert [f.message for f in rule_by_id("MLOPS-NET-003").findings(inventory(bad))] == [message]


def test_prod_alb_ingress_https_rule_reads_the_controller_defaults_and_the_group():
    rule = rule_by_id("MLOPS-NET-004")

    def annotations(x, **values):
        x.inputs["metadata"]["annotations"] = values

    no_listen_ports = mutate(
        good("prod"), "serving-ingress", lambda x: annotations(x)
    )  # the controller's default: HTTP 80
    assert [f.message for f in rule.findings(inventory(no_listen_ports))] == ["listens on HTTP 80 in prod"]
    https_no_cert = mutate(
        good("prod"),
        "serving-ingress",
        lambda x: annotations(x, **{"alb.ingress.kubernetes.io/listen-ports": '[{"HTTPS": 443}]'}),
    )
    assert [f.message for f in rule.findings(inventory(https_no_cert))] == [
        "HTTPS listener without a certificate (certificate-arn on it or on its group, or spec.tls hosts)"
    ]
    sibling = copy.deepcopy(next(x for x in good("prod") if x.name == "serving-ingress"))
    sibling.name = "tracking-ingress"
    sibling.inputs["metadata"]["annotations"].pop(
        "alb.ingress.kubernetes.io/certificate-arn"
    )  # the group's certificate covers it
    assert rule.findings(inventory([*good("prod"), sibling])) == []
    assert rule.findings(inventory(BREAKS["MLOPS-NET-004"][1](good("dev")))) == []  # plain HTTP is allowed outside prod


def test_a_workload_marked_as_calling_the_kubernetes_api_keeps_its_token():
    from components.k8s_workload import kubernetes_api_client

    rule = rule_by_id("MLOPS-K8S-011")
    with_token = BREAKS["MLOPS-K8S-011"][1](good())
    marked = mutate(
        with_token,
        "serving",
        lambda x: x.inputs["metadata"].update(annotations=kubernetes_api_client("creates Jobs in its namespace")),
    )
    assert rule.findings(inventory(marked)) == []
    no_reason = mutate(
        with_token, "serving", lambda x: x.inputs["metadata"].update(annotations={"checkov.io/skip1": "CKV_K8S_38="})
    )
    unset = mutate(
        good(), "serving", lambda x: x.inputs["spec"]["template"]["spec"].pop("automountServiceAccountToken")
    )  # the account's default
    assert [f.resource for f in rule.findings(inventory(no_reason)) + rule.findings(inventory(unset))] == [
        "serving",
        "serving",
    ]
    with pytest.raises(ValueError, match="a reason without '='"):
        kubernetes_api_client("a=b")


def test_helm_values_with_a_literal_password_are_flagged():
    bad = mutate(good(), "chart", lambda x: x.inputs.update(values={"grafana": {"adminPassword": "admin"}}))
    (finding,) = rule_by_id("MLOPS-SEC-001").findings(inventory(bad))
    assert "grafana.adminPassword" in finding.message


def test_plain_secret_settings_in_the_stack_file_are_flagged():
    findings = config_findings(
        {
            "mlops-platform:slackWebhook": "https://hooks.example/x",
            "mlops-platform:dbPassword": "offline-secret-placeholder",
            "mlops-platform:owner": "team",
        },
        secret_keys={"mlops-platform:dbPassword"},
    )
    assert [f.resource for f in findings] == ["config:mlops-platform:slackWebhook"] and findings[
        0
    ].rule == "MLOPS-SEC-002"


# -- issue 13, item 7: MLOPS-SEC-002 is a registered rule: listed, waivable, in the CrossGuard pack ----


def test_sec_002_is_a_registered_rule_listed_and_in_the_pack():
    rule = rule_by_id("MLOPS-SEC-002")
    assert rule is not None and rule.severity == "high"
    listed = run_cli("check", "--list-rules")
    assert "MLOPS-SEC-002  high    no secret-looking setting in plain text in the stack file" in listed.stdout
    assert "mlops-sec-002" in [p["name"] for p in stack_policies()]
    load_settings(
        {
            **BASE,
            "waivers": [
                {
                    "rule": "MLOPS-SEC-002",
                    "resource": "config:datadog:apiKey",
                    "reason": "a public demo key, rotated daily",
                }
            ],
        },
        stack="dev",
        region="us-east-1",
    )  # a waiver for it is accepted


def test_sec_002_fails_the_check_and_a_waiver_moves_it_aside(tmp_path):
    plain = (REPO_ROOT / "stacks" / "Pulumi.dev.yaml").read_text() + "  datadog:apiKey: 0123456789abcdef\n"
    leaky = tmp_path / "Pulumi.leaky.yaml"
    leaky.write_text(plain)
    failed = run_cli("check", "--stack-file", str(leaky))
    assert failed.returncode == 1 and "FAIL MLOPS-SEC-002 [high] config:datadog:apiKey" in failed.stdout, (
        failed.stdout + failed.stderr
    )
    waived = tmp_path / "Pulumi.leaky2.yaml"
    waived.write_text(
        plain + "  mlops-platform:waivers:\n"
        '    - {rule: MLOPS-SEC-002, resource: "config:datadog:apiKey", reason: "a public demo key, rotated daily"}\n'
    )
    passed = run_cli("check", "--stack-file", str(waived))
    assert passed.returncode == 0 and "WAIVED MLOPS-SEC-002 [high] config:datadog:apiKey" in passed.stdout, (
        passed.stdout + passed.stderr
    )


def test_crossguard_reports_sec_002_from_the_stack_file():
    from infra.stackfile import StackConfig

    leaky = StackConfig(project="p", stack="t", path=REPO_ROOT, values={"datadog:apiKey": "0123456789abcdef"})
    violations = []
    validate = validator(rule_by_id("MLOPS-SEC-002"), waivers=lambda stack: [], stack_files=lambda stack: leaky)
    validate(
        SimpleNamespace(resources=policy_resources(inventory(good()))),
        lambda message, urn=None: violations.append((message, urn)),
    )
    assert violations == [
        (
            "config:datadog:apiKey: a secret-looking setting is stored in plain text in the stack file. "
            "Fix: set it with `pulumi config set --secret`, or keep it in Secrets Manager",
            None,
        )
    ]


# -- issue 13, item 8: an unknown key inside a list entry is the usual settings error -------------


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        (
            {"bogus": 1},
            "mlops-platform:endpoints[0].bogus: unknown key; allowed keys here: alias, autoscaling, canary,",
        ),
        (
            {"canary": {"alias": "challenger", "weight": 10, "bogus": 2}},
            "mlops-platform:endpoints[0].canary.bogus: unknown key; allowed keys here: alias, weight",
        ),
        (
            {"replicas": {"min": 1, "max": 2, "most": 3}},
            "mlops-platform:endpoints[0].replicas.most: unknown key; allowed keys here: max, min",
        ),
    ],
)
def test_an_unknown_key_in_an_endpoint_or_canary_names_the_key(endpoint, message):
    with pytest.raises(SettingsError) as info:
        load_settings(
            {**BASE, "endpoints": [{"name": "diabetes", "model": "diabetes", **endpoint}]},
            stack="dev",
            region="us-east-1",
        )
    assert any(p.startswith(message) for p in info.value.problems), info.value.problems


def test_waivers_move_findings_aside_and_unused_ones_are_reported():
    bad = BREAKS["MLOPS-ECR-002"][1](good())
    waivers = [
        Waiver("MLOPS-ECR-002", "repo", "scanning happens in the CI pipeline before push"),
        Waiver("MLOPS-S3-001", "nothing", "stale waiver for a removed bucket"),
    ]
    report = run_checks(inventory(bad), waivers)
    assert report.findings == [] and not report.failed
    assert [(f.rule, reason) for f, reason in report.waived] == [
        ("MLOPS-ECR-002", "scanning happens in the CI pipeline before push")
    ]
    assert [w.resource for w in report.unused_waivers] == ["nothing"]


BASE = {
    "profile": "dev",
    "budget": {"alertEmails": ["a@example.com"]},
    "cluster": {"publicAccessCidrs": ["203.0.113.0/24"]},
}


@pytest.mark.parametrize(
    ("waiver", "message"),
    [
        ({"rule": "MLOPS-ECR-002", "resource": "repo"}, "waivers[0].reason: required"),
        (
            {"rule": "MLOPS-ECR-002", "resource": "repo", "reason": "because"},
            'waivers[0].reason: got "because"; expected at least 15 characters',
        ),
        (
            {"rule": "MLOPS-XYZ-001", "resource": "repo", "reason": "a long enough reason here"},
            'waivers[0].rule: got "MLOPS-XYZ-001"; no such rule',
        ),
        ({"rule": "ECR-2", "resource": "repo", "reason": "a long enough reason here"}, 'waivers[0].rule: got "ECR-2"'),
    ],
)
def test_a_waiver_without_a_reason_or_for_an_unknown_rule_is_rejected(waiver, message):
    with pytest.raises(SettingsError) as info:
        load_settings({**BASE, "waivers": [waiver]}, stack="dev", region="us-east-1")
    assert any(message in p for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_every_shipped_stack_passes_with_no_unwaived_finding(stack_inventories, stack):
    report = run_checks(stack_inventories[stack])
    assert report.findings == [], [(f.rule, f.resource, f.message) for f in report.findings]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_check_command_fails_on_a_finding_and_passes_once_waived(tmp_path):
    weak = tmp_path / "Pulumi.weak.yaml"
    weak.write_text(
        (REPO_ROOT / "stacks" / "Pulumi.dev.yaml").read_text() + "  mlops-platform:storage:\n    forceDestroy: false\n"
    )
    failed = run_cli("check", "--stack-file", str(weak))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAIL MLOPS-DATA-002 [low] mlops-weak-storage-artifacts" in failed.stdout
    waived = tmp_path / "Pulumi.weak2.yaml"
    waived.write_text(
        weak.read_text().replace("weak", "weak2")
        + "  mlops-platform:waivers:\n"
        + "".join(
            f"    - {{rule: MLOPS-DATA-002, resource: mlops-weak2-storage-{role}, "
            'reason: "shared data, emptied by hand before teardown"}\n'
            for role in ("artifacts", "datasets")
        )
    )
    passed = run_cli("check", "--stack-file", str(waived))
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert (
        "WAIVED MLOPS-DATA-002" in passed.stdout
        and "reason: shared data, emptied by hand before teardown" in passed.stdout
    )


def test_list_rules_names_every_rule_with_its_fix():
    out = run_cli("check", "--list-rules").stdout
    for rule in RULES:
        assert rule.id in out and rule.fix in out


def policy_resources(inv: Inventory):
    """The shape pulumi_policy hands a stack policy."""
    return [
        SimpleNamespace(
            resource_type=x.type,
            props=x.inputs,
            urn=x.urn,
            name=x.name,
            opts=SimpleNamespace(protect=x.protect),
            parent=None,
            dependencies=[],
            provider=None,
        )
        for x in inv.resources
    ]


def test_crossguard_policies_report_the_same_findings():
    bad = inventory(BREAKS["MLOPS-RDS-002"][1](good()))
    violations = []
    validate = validator(rule_by_id("MLOPS-RDS-002"), waivers=lambda stack: [])
    validate(
        SimpleNamespace(resources=policy_resources(bad)), lambda message, urn=None: violations.append((message, urn))
    )
    assert violations == [
        (
            "db: publicly accessible. Fix: set publicly_accessible=False",
            "urn:pulumi:t::p::aws:rds/instance:Instance::db",
        )
    ]
    quiet = []
    validator(rule_by_id("MLOPS-RDS-002"), waivers=lambda stack: [])(
        SimpleNamespace(resources=policy_resources(inventory(good()))), lambda *a: quiet.append(a)
    )
    assert quiet == []


def test_crossguard_pack_has_one_policy_per_rule_and_compiles():
    policies = stack_policies()
    assert [p["name"] for p in policies] == [rule.id.lower() for rule in RULES]
    py_compile.compile(str(REPO_ROOT / "policy" / "__main__.py"), doraise=True)


def test_crossguard_accepts_the_prod_stack(stack_inventories):
    violations = []
    for kwargs in stack_policies():
        kwargs["validate"](
            SimpleNamespace(resources=policy_resources(stack_inventories["prod"])), lambda *a: violations.append(a)
        )
    assert violations == []


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_rendered_manifests_of_every_stack_validate(tmp_path, stack):
    result = run_cli("render", "--stack", stack, "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout
    assert "0 problem(s)" in result.stdout and len(list(tmp_path.glob("*.yaml"))) >= 4


def test_render_reports_an_invalid_core_object():
    from infra.manifests import validate

    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "two", "selector": {}, "template": {}},
    }
    assert validate(bad, "1.35")


def test_the_readme_lists_every_rule():
    readme = (REPO_ROOT / "README.md").read_text()
    for rule in RULES:
        assert f"`{rule.id}`" in readme and rule.fix in readme, rule.id

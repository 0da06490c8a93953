"""Run the real stack program in-process under Pulumi mocks and record what it declares.

No Pulumi CLI, provider plugin or cloud credentials are involved: ``pulumi.runtime.set_mocks``
replaces the engine, and a recording monitor captures every resource registration (type,
name, parent, inputs, protect, dependencies, provider) into an ``Inventory``. The mocks
answer the few data-source calls the program makes (availability zones, caller identity)
and give resources the computed outputs downstream resources read (ARNs, ids, endpoints).
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import json
from typing import Any, Callable

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.config import set_all_config
from pulumi.runtime.stack import Stack, run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from infra.inventory import STACK_TYPE, Inventory, Resource, mask_secrets
from infra.settings import CONFIG_NAMESPACE

ACCOUNT_ID = "123456789012"
"""The documentation account id AWS itself uses in examples; offline ARNs are built from it."""


def physical_name(name: str, inputs: dict[str, Any]) -> str:
    """What auto-naming would give: the logical name plus a stable 7-character suffix."""
    suffix = hashlib.sha256(name.encode()).hexdigest()[:7]
    return inputs.get("name") or f"{name}-{suffix}"


class OfflineMocks(pulumi.runtime.Mocks):
    """Plausible cloud answers, deterministic so two previews of the same code are identical.

    The offline registry holds every image a stack asks for (the steady state, images pushed):
    with the digest the stack file records under `imageDigests`, else one derived from the name."""

    def __init__(self, region: str, image_digests: dict[tuple[str, str], str] | None = None) -> None:
        self.region = region
        self.image_digests = image_digests or {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        physical = physical_name(args.name, args.inputs)
        service = args.typ.split(":")[1].split("/")[0] if ":" in args.typ else "x"
        outputs = dict(args.inputs)
        outputs.setdefault("arn", f"arn:aws:{service}:{self.region}:{ACCOUNT_ID}:{physical}")
        outputs.update(self._computed(args.typ, physical, args.inputs))
        return f"{physical}-id", outputs

    def _computed(self, typ: str, physical: str, inputs: dict[str, Any]) -> dict[str, Any]:
        region = self.region
        if typ == "aws:s3/bucket:Bucket":
            bucket = inputs.get("bucket") or physical
            return {"bucket": bucket, "arn": f"arn:aws:s3:::{bucket}", "bucketDomainName": f"{bucket}.s3.amazonaws.com"}
        if typ == "aws:kms/key:Key":
            return {"keyId": f"{physical}-key-id", "arn": f"arn:aws:kms:{region}:{ACCOUNT_ID}:key/{physical}"}
        if typ == "aws:ecr/repository:Repository":
            return {"name": physical, "repositoryUrl": f"{ACCOUNT_ID}.dkr.ecr.{region}.amazonaws.com/{physical}"}
        if typ == "aws:iam/role:Role":
            return {"name": physical, "arn": f"arn:aws:iam::{ACCOUNT_ID}:role/{physical}"}
        if typ == "aws:iam/policy:Policy":
            return {"name": physical, "arn": f"arn:aws:iam::{ACCOUNT_ID}:policy/{physical}"}
        if typ == "aws:eks/cluster:Cluster":
            issuer = f"https://oidc.eks.{region}.amazonaws.com/id/{hashlib.md5(physical.encode()).hexdigest().upper()}"
            return {
                "name": physical,
                "endpoint": f"https://{hashlib.md5(physical.encode()).hexdigest()}.gr7.{region}.eks.amazonaws.com",
                "certificateAuthority": {"data": base64.b64encode(b"offline-certificate-authority").decode()},
                "identities": [{"oidcs": [{"issuer": issuer}]}],
                "vpcConfig": {**(inputs.get("vpcConfig") or {}), "clusterSecurityGroupId": f"sg-{physical}-cluster"},
            }
        if typ == "aws:iam/openIdConnectProvider:OpenIdConnectProvider":
            return {"arn": f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{inputs.get('url', '').removeprefix('https://')}"}
        if typ == "aws:sqs/queue:Queue":
            return {"name": physical, "url": f"https://sqs.{region}.amazonaws.com/{ACCOUNT_ID}/{physical}"}
        if typ == "aws:rds/instance:Instance":
            return {
                "address": f"{physical}.abc123.{region}.rds.amazonaws.com",
                "endpoint": f"{physical}.abc123.{region}.rds.amazonaws.com:5432",
                "masterUserSecrets": [
                    {"secretArn": f"arn:aws:secretsmanager:{region}:{ACCOUNT_ID}:secret:rds!{physical}"}
                ],
            }
        if typ == "aws:ec2/launchTemplate:LaunchTemplate":
            return {"latestVersion": 1}
        if typ == "aws:secretsmanager/secret:Secret":
            return {"arn": f"arn:aws:secretsmanager:{region}:{ACCOUNT_ID}:secret:{physical}"}
        if typ.startswith("aws:lb/loadBalancer") or typ.startswith("aws:alb/"):
            return {"dnsName": f"internal-{physical}.{region}.elb.amazonaws.com"}
        if typ.startswith("random:"):
            return {"result": "offline-random-value"}
        if typ == "kubernetes:helm.sh/v3:Release":
            return {"status": {"namespace": inputs.get("namespace", "default"), "name": inputs.get("name", physical)}}
        return {"name": inputs.get("name", physical)} if "name" not in inputs else {}

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        token = args.token
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            letters = "abcdef"
            return {
                "names": [f"{self.region}{c}" for c in letters],
                "zoneIds": [f"use1-az{i + 1}" for i in range(len(letters))],
                "id": self.region,
            }, []
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT_ID, "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/offline", "userId": "OFFLINE"}, []
        if token == "aws:index/getRegion:getRegion":
            return {"region": self.region, "name": self.region, "id": self.region}, []
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}, []
        if token == "aws:ecr/getImage:getImage":
            return self._image(args.args["repositoryName"], args.args["imageTag"]), []
        raise NotImplementedError(
            f"offline preview has no answer for the data source {token}; add one in infra/offline.py"
        )

    def _image(self, repository_name: str, tag: str) -> dict[str, Any]:
        repository = repository_name.split("/", 1)[-1]  # without the stack's namespace
        digest = self.image_digests.get((repository, tag)) or offline_image_digest(repository_name, tag)
        host = f"{ACCOUNT_ID}.dkr.ecr.{self.region}.amazonaws.com"
        return {
            "imageDigest": digest,
            "imageTag": tag,
            "imageTags": [tag],
            "repositoryName": repository_name,
            "registryId": ACCOUNT_ID,
            "imageUri": f"{host}/{repository_name}@{digest}",
            "id": digest,
        }


def offline_image_digest(repository_name: str, tag: str) -> str:
    """The made-up digest the offline registry gives an image no stack file records."""
    return "sha256:" + hashlib.sha256(f"{repository_name}:{tag}".encode()).hexdigest()


def recorded_image_digests(config: dict[str, str]) -> dict[tuple[str, str], str]:
    """`imageDigests` of a stack's runtime config, as `{(repository, tag): digest}`."""
    raw = config.get(f"{CONFIG_NAMESPACE}:imageDigests")
    try:
        recorded = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}  # the settings model reports it
    if not isinstance(recorded, dict):
        return {}
    return {
        (repo, tag): digest for repo, tags in recorded.items() if isinstance(tags, dict) for tag, digest in tags.items()
    }


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The mock engine, plus a record of every registration with the options mocks hide."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.recorded: list[Resource] = []
        self.engine_urns: dict[str, str] = {}
        """Mock URN -> the URN the engine would give the same registration."""

    def RegisterResource(self, request):  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        urn = self._engine_urn(request, response.urn)
        if request.type != STACK_TYPE:
            inputs = rpc.deserialize_properties(request.object)
            parent = self.engine_urns.get(request.parent) if request.parent else None
            if parent and f"::{STACK_TYPE}::" in parent:
                parent = None
            provider_urn, _, provider_id = request.provider.rpartition("::")
            self.recorded.append(
                Resource(
                    urn=urn,
                    type=request.type,
                    name=request.name,
                    parent=parent,
                    custom=bool(request.custom),
                    inputs=_plain(mask_secrets(inputs)),
                    protect=bool(request.protect),
                    retain_on_delete=bool(request.retainOnDelete),
                    depends_on=[self.engine_urns.get(u, u) for u in request.dependencies],
                    provider=f"{self.engine_urns.get(provider_urn, provider_urn)}::{provider_id}"
                    if request.provider
                    else "",
                )
            )
        return response

    def _engine_urn(self, request, mock_urn: str) -> str:
        """The URN the real engine gives: the parent's whole type chain, then the type (a resource
        directly under the stack has none). The mock monitor keeps only the parent's last type and
        puts the stack's type in front of top-level components; the SDK refers to resources by
        the mock's URNs, so each is mapped as it registers (parents register first)."""
        parent = self.engine_urns.get(request.parent) if request.parent else None
        if parent is None or request.type == STACK_TYPE or f"::{STACK_TYPE}::" in parent:
            qualified = request.type
        else:
            qualified = parent.split("::")[2] + "$" + request.type
        stack_and_project = mock_urn.split("::")[:2]
        self.engine_urns[mock_urn] = "::".join([*stack_and_project, qualified, request.name])
        return self.engine_urns[mock_urn]


def _plain(value: Any) -> Any:
    """Inputs as JSON-ready data: resource references become their URN."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, pulumi.Resource):
        return f"<resource {type(value).__name__}>"
    if isinstance(value, float) and value.is_integer():
        return int(value)  # the wire only has doubles; 7.0 days reads better as 7
    return value


def run_offline(
    program: Callable[[], None],
    *,
    project: str,
    stack: str,
    config: dict[str, str],
    secret_keys: list[str] | None = None,
) -> Inventory:
    """Run ``program`` as ``pulumi up`` would (not a dry run: every output resolves) and
    return what it declared. Each call starts from a clean Pulumi runtime, in its own context."""
    return contextvars.copy_context().run(_run, program, project, stack, config, secret_keys or [])


def _run(
    program: Callable[[], None], project: str, stack: str, config: dict[str, str], secret_keys: list[str]
) -> Inventory:
    region = config.get("aws:region", "us-east-1")
    monitor = RecordingMonitor(OfflineMocks(region, recorded_image_digests(config)))
    pulumi_settings.ROOT.set(None)
    set_all_config(config, secret_keys)
    pulumi.runtime.set_mocks(monitor.mocks, project=project, stack=stack, preview=False, monitor=monitor)
    root = pulumi_settings.get_root_resource()
    assert root is None or isinstance(root, Stack), "set_mocks declares a pulumi Stack as the root resource"
    _sync_await(run_pulumi_func(program))
    outputs = _resolve_exports(root.outputs if root is not None else {})
    return Inventory(
        project=project, stack=stack, source="offline", resources=monitor.recorded, outputs=outputs, region=region
    )


def _resolve_exports(exports: dict[str, Any]) -> dict[str, Any]:
    resolved: dict[str, Any] = {}
    for key, value in exports.items():
        output = pulumi.Output.from_input(value)
        resolved[key] = _plain(mask_secrets(_sync_await(output.future())))
        if _sync_await(output.is_secret()):
            resolved[key] = "[secret]"
    return resolved

"""Which image each platform workload runs: the stack's own registry, a tag, and a digest.

The self-hosted tracking server and the model endpoints run images the platform builds
(`services/`) and pushes to the stack's own ECR repositories, which that same stack creates.
So a workload can only be declared once its image is there: the first `pulumi up` of a stack
runs with `deployWorkloads: false` (no workload, nothing pulls a platform image), the images
are pushed, and the next `up` creates the workloads (README: First deploy and teardown).

With workloads on, the program looks every image up in the registry *before it declares any
resource*. A missing image stops `pulumi up` with the settings key to fix and nothing
changed, instead of a migration Job stuck in ImagePullBackOff until its timeout. During a
preview (`pulumi preview`, or the preview step of `up`) a missing image is a warning, so a
pull request that bumps a tag can be previewed before its image is pushed.

Workloads then run `<registry>/<prefix>/<repository>:<tag>@<digest>`: the digest the registry
holds for the tag (tags are immutable there, so it never changes under a running stack), or
the one recorded under `imageDigests` by whoever pushed the image (CI), which must agree
with the registry. The tag stays in the reference for people reading it; the runtime pulls
by digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import pulumi
import pulumi_aws as aws

from infra.settings import CONFIG_NAMESPACE, PlatformSettings, SettingsError

FIRST_DEPLOY_HINT = (
    f"push it first, or set {CONFIG_NAMESPACE}:deployWorkloads false (README: First deploy and teardown)"
)


@dataclass(frozen=True)
class ImageUse:
    """One image of the stack's own registry, and the settings keys that ask for it."""

    repository: str
    """Repository name inside the stack's namespace, e.g. `serving` (ECR name `<prefix>/serving`)."""
    tag: str
    keys: tuple[str, ...]
    """Settings keys (without the namespace) that select this image, for error messages."""


Lookup = Callable[[str, str], str]
"""`(ECR repository name, tag) -> digest`; raises `LookupError` when the registry has no such image."""


def image_uses(settings: PlatformSettings) -> list[ImageUse]:
    """Every platform image the stack's workloads run, once each, in a stable order."""
    wanted: dict[tuple[str, str], list[str]] = {}
    if settings.tracking.mode == "selfHosted":
        wanted.setdefault(("tracking", settings.tracking.image_tag), []).append("tracking.imageTag")
    for index, endpoint in enumerate(settings.endpoints):
        wanted.setdefault(("serving", endpoint.image_tag), []).append(f"endpoints[{index}].imageTag")
    for index, pipeline in enumerate(settings.pipelines):
        wanted.setdefault(("training", pipeline.image_tag), []).append(f"pipelines[{index}].imageTag")
    return [ImageUse(repository, tag, tuple(keys)) for (repository, tag), keys in wanted.items()]


def image_reference(
    registry_host: str, settings: PlatformSettings, repository: str, tag: str, digest: str | None
) -> str:
    """`<registry>/<prefix>/<repository>:<tag>[@<digest>]`."""
    reference = f"{registry_host}/{settings.name_prefix}/{repository}:{tag}"
    return f"{reference}@{digest}" if digest else reference


def resolve_digests(
    settings: PlatformSettings, lookup: Lookup, *, dry_run: bool, warn: Callable[[str], None]
) -> dict[tuple[str, str], str | None]:
    """The digest each workload image will run, keyed by `(repository, tag)`.

    Raises `SettingsError` (one line per image) when an image is missing from the registry or a
    recorded digest disagrees with it. In a preview a missing image is only warned about, and
    the workload is shown with the recorded digest, or by tag.
    """
    digests: dict[tuple[str, str], str | None] = {}
    problems: list[str] = []
    for use in image_uses(settings):
        recorded = settings.image_digests.get(use.repository, {}).get(use.tag)
        name = f"{settings.name_prefix}/{use.repository}:{use.tag}"
        try:
            found = lookup(f"{settings.name_prefix}/{use.repository}", use.tag)
        except LookupError as exc:
            message = (
                f"{CONFIG_NAMESPACE}:{use.keys[0]}: image {name} is not in the stack's registry ({exc}); "
                f"{FIRST_DEPLOY_HINT}"
            )
            if not dry_run:
                problems.append(message)
            else:
                warn(message + "; `pulumi up` will stop here")
            digests[(use.repository, use.tag)] = recorded
            continue
        if recorded is not None and recorded != found:
            problems.append(
                f"{CONFIG_NAMESPACE}:imageDigests.{use.repository}.{use.tag}: got {json.dumps(recorded)}; "
                f"the registry holds {json.dumps(found)} for {name} (tags there are immutable: record the digest "
                "the push printed)"
            )
        digests[(use.repository, use.tag)] = found
    if problems:
        raise SettingsError(problems)
    return digests


def ecr_lookup(repository_name: str, tag: str) -> str:
    """The digest ECR holds for `repository_name:tag` (the `ecr:DescribeImages` call behind `aws.ecr.get_image`)."""
    try:
        return aws.ecr.get_image(repository_name=repository_name, image_tag=tag).image_digest
    except Exception as exc:  # the provider reports RepositoryNotFound/ImageNotFound/AccessDenied as a plain error
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise LookupError(reason) from None


def workload_images(settings: PlatformSettings, lookup: Lookup = ecr_lookup) -> dict[tuple[str, str], str]:
    """The full reference of every workload image, keyed by `(repository, tag)`; empty with workloads off.

    Runs before any resource is declared, so a missing image changes nothing (see module docstring)."""
    if not settings.deploy_workloads:
        return {}
    digests = resolve_digests(settings, lookup, dry_run=pulumi.runtime.is_dry_run(), warn=pulumi.log.warn)
    host = f"{aws.get_caller_identity().account_id}.dkr.ecr.{settings.region}.amazonaws.com"
    return {key: image_reference(host, settings, key[0], key[1], digest) for key, digest in digests.items()}

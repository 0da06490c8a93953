"""Registry: one ECR repository per platform service image.

Tags are immutable (a tag always means the same image, so a rollback is exact), every push
is scanned, images are encrypted with the platform's KMS key, and a lifecycle policy keeps
the last N tagged images and drops untagged layers after a day.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import pulumi
import pulumi_aws as aws

TOKEN = "mlops:registry:Registry"


@dataclass(frozen=True, kw_only=True)
class RegistryArgs:
    """Values from the stack's `registry` settings (defaults in infra/profiles.py only)."""

    namespace: str
    """Repository name prefix (`<namespace>/<repo>`), e.g. `mlops-dev`: ECR names are per account and region."""
    repositories: Sequence[str]
    """Repository names, one per service image."""
    kms_key_arn: pulumi.Input[str]
    """Customer-managed key that encrypts the images."""
    keep_images: int
    """Tagged images kept per repository."""
    force_delete: bool
    """Allow `pulumi destroy` to delete repositories that still hold images."""
    protect: bool
    """Mark repositories `protect`ed (prod)."""

    def __post_init__(self) -> None:
        if not self.repositories:
            raise ValueError("invalid RegistryArgs: repositories: at least one is required")
        if self.keep_images < 1:
            raise ValueError(f"invalid RegistryArgs: keep_images: got {self.keep_images}, expected >= 1")


def lifecycle_policy(keep_images: int) -> str:
    return json.dumps(
        {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": "drop untagged images after a day",
                    "selection": {
                        "tagStatus": "untagged",
                        "countType": "sinceImagePushed",
                        "countUnit": "days",
                        "countNumber": 1,
                    },
                    "action": {"type": "expire"},
                },
                {
                    "rulePriority": 2,
                    "description": f"keep the last {keep_images} images",
                    "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep_images},
                    "action": {"type": "expire"},
                },
            ]
        }
    )


class Registry(pulumi.ComponentResource):
    repository_urls: dict[str, pulumi.Output[str]]
    """`<account>.dkr.ecr.<region>.amazonaws.com/<repo>` per repository name."""

    def __init__(self, name: str, args: RegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, None, opts)
        self.repository_urls = {}
        for repo in args.repositories:
            repository = aws.ecr.Repository(
                f"{name}-{repo}",
                name=f"{args.namespace}/{repo}",
                image_tag_mutability="IMMUTABLE",
                image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
                encryption_configurations=[
                    aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="KMS", kms_key=args.kms_key_arn)
                ],
                force_delete=args.force_delete,
                opts=pulumi.ResourceOptions(parent=self, protect=args.protect, delete_before_replace=True),
            )
            aws.ecr.LifecyclePolicy(
                f"{name}-{repo}-lifecycle",
                repository=repository.name,
                policy=lifecycle_policy(args.keep_images),
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.repository_urls[repo] = repository.repository_url
        self.register_outputs({"repository_urls": self.repository_urls})

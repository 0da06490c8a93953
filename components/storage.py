"""Storage: the customer-managed KMS key and the artifact and dataset buckets.

For each bucket, in order: the bucket; ownership controls (ACLs disabled); a full public
access block; SSE-KMS with the platform key (bucket keys on, to cut KMS request cost);
versioning; lifecycle rules; and a bucket policy that refuses any request not made over TLS.
The policy waits for the public access block, so no moment exists where the bucket could
accept a public policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

TOKEN = "mlops:storage:Storage"
BUCKET_ROLES = ("artifacts", "datasets")
"""`artifacts`: MLflow runs, models and inference captures; `datasets`: training and reference data."""


@dataclass(frozen=True, kw_only=True)
class StorageArgs:
    """Values from the stack's `storage` settings (defaults in infra/profiles.py and infra/settings.py only)."""

    versioning: bool
    """Keep previous object versions (models and datasets survive an overwrite)."""
    force_destroy: bool
    """Allow `pulumi destroy` to delete buckets that still hold objects."""
    noncurrent_version_days: int
    """Days a previous version is kept before it expires."""
    abort_incomplete_upload_days: int
    """Days before parts of an abandoned multipart upload are removed."""
    datasets_infrequent_access_days: int | None
    """Move dataset objects to STANDARD_IA after this many days; None keeps them in STANDARD."""
    protect: bool
    """Mark the key and buckets `protect`ed so Pulumi refuses to delete them (prod)."""

    def __post_init__(self) -> None:
        if self.noncurrent_version_days < 1:
            raise ValueError(
                f"invalid StorageArgs: noncurrent_version_days: got {self.noncurrent_version_days}, expected >= 1"
            )
        if self.datasets_infrequent_access_days is not None and self.datasets_infrequent_access_days < 30:
            raise ValueError("invalid StorageArgs: datasets_infrequent_access_days: S3 requires at least 30")


def tls_only_policy(bucket_arn: str) -> str:
    """Bucket policy denying every request made without TLS."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn, f"{bucket_arn}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ],
        }
    )


class Storage(pulumi.ComponentResource):
    key_arn: pulumi.Output[str]
    """ARN of the platform's data key (buckets, registry, database, secrets)."""
    bucket_names: dict[str, pulumi.Output[str]]
    """Physical bucket name per role (`artifacts`, `datasets`)."""
    bucket_arns: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: StorageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self, protect=args.protect)

        key = aws.kms.Key(
            f"{name}-key",
            description=f"{name}: encrypts platform data at rest (buckets, registry, database, secrets)",
            enable_key_rotation=True,
            deletion_window_in_days=30 if args.protect else 7,
            opts=child,
        )
        aws.kms.Alias(
            f"{name}-key-alias",
            name=f"alias/{name}",
            target_key_id=key.key_id,
            opts=pulumi.ResourceOptions(parent=self),
        )

        self.bucket_names, self.bucket_arns = {}, {}
        for role in BUCKET_ROLES:
            bucket = self._bucket(name, role, key, args, child)
            self.bucket_names[role] = bucket.bucket
            self.bucket_arns[role] = bucket.arn

        self.key_arn = key.arn
        self.register_outputs(
            {"key_arn": self.key_arn, "bucket_names": self.bucket_names, "bucket_arns": self.bucket_arns}
        )

    def _bucket(
        self, name: str, role: str, key: aws.kms.Key, args: StorageArgs, child: pulumi.ResourceOptions
    ) -> aws.s3.Bucket:
        parent = pulumi.ResourceOptions(parent=self)
        bucket = aws.s3.Bucket(f"{name}-{role}", force_destroy=args.force_destroy, opts=child)
        aws.s3.BucketOwnershipControls(
            f"{name}-{role}-ownership",
            bucket=bucket.id,
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
            opts=parent,
        )
        public_access_block = aws.s3.BucketPublicAccessBlock(
            f"{name}-{role}-public-access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=parent,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-{role}-encryption",
            bucket=bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                        sse_algorithm="aws:kms", kms_master_key_id=key.arn
                    ),
                    bucket_key_enabled=True,
                )
            ],
            opts=parent,
        )
        versioning = aws.s3.BucketVersioning(
            f"{name}-{role}-versioning",
            bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(
                status="Enabled" if args.versioning else "Suspended"
            ),
            opts=parent,
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-{role}-lifecycle",
            bucket=bucket.id,
            rules=self._lifecycle_rules(role, args),
            # S3 rejects noncurrent-version rules until versioning is configured.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]),
        )
        aws.s3.BucketPolicy(
            f"{name}-{role}-tls-only",
            bucket=bucket.id,
            policy=bucket.arn.apply(tls_only_policy),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[public_access_block]),
        )
        return bucket

    @staticmethod
    def _lifecycle_rules(role: str, args: StorageArgs) -> list[aws.s3.BucketLifecycleConfigurationRuleArgs]:
        everything = aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix="")
        rules = [
            aws.s3.BucketLifecycleConfigurationRuleArgs(
                id="abort-incomplete-uploads",
                status="Enabled",
                filter=everything,
                abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                    days_after_initiation=args.abort_incomplete_upload_days
                ),
            ),
            aws.s3.BucketLifecycleConfigurationRuleArgs(
                id="expire-noncurrent-versions",
                status="Enabled",
                filter=everything,
                noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                    noncurrent_days=args.noncurrent_version_days
                ),
            ),
        ]
        if role == "datasets" and args.datasets_infrequent_access_days:
            rules.append(
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="datasets-to-infrequent-access",
                    status="Enabled",
                    filter=everything,
                    transitions=[
                        aws.s3.BucketLifecycleConfigurationRuleTransitionArgs(
                            days=args.datasets_infrequent_access_days, storage_class="STANDARD_IA"
                        )
                    ],
                )
            )
        return rules

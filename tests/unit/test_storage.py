from __future__ import annotations

import pytest

from components.storage import Storage
from tests.conftest import declare, only, policy
from tests.unit.builders import storage_args

BUCKET = "aws:s3/bucket:Bucket"


def storage(**overrides):
    """Storage from tests/unit/builders.py's args: versioned, 30 noncurrent days, uploads aborted after 7,
    unprotected."""
    return declare(lambda: Storage("st", storage_args(**overrides)))


def test_two_buckets_encrypted_with_the_rotating_customer_key():
    inventory = storage()
    key = only(inventory, "aws:kms/key:Key")
    assert key.inputs["enableKeyRotation"] is True
    encryptions = inventory.of_type(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    )
    assert len(inventory.of_type(BUCKET)) == len(encryptions) == 2
    for enc in encryptions:
        rule = enc.inputs["rules"][0]
        assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
        assert rule["applyServerSideEncryptionByDefault"]["kmsMasterKeyId"].startswith("arn:aws:kms:")
        assert rule["bucketKeyEnabled"] is True


def test_public_access_fully_blocked_and_acls_disabled():
    inventory = storage()
    blocks = inventory.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert len(blocks) == 2
    for block in blocks:
        for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
            assert block.inputs[flag] is True, flag
    for ownership in inventory.of_type("aws:s3/bucketOwnershipControls:BucketOwnershipControls"):
        assert ownership.inputs["rule"]["objectOwnership"] == "BucketOwnerEnforced"


def test_bucket_policy_denies_requests_without_tls_and_waits_for_the_access_block():
    inventory = storage()
    for bucket_policy in inventory.of_type("aws:s3/bucketPolicy:BucketPolicy"):
        (statement,) = policy(bucket_policy)["Statement"]
        assert statement["Effect"] == "Deny" and statement["Principal"] == "*" and statement["Action"] == "s3:*"
        assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert any(r.endswith("/*") for r in statement["Resource"])
        assert any("public-access" in dep for dep in bucket_policy.depends_on)


@pytest.mark.parametrize(("versioning", "status"), [(True, "Enabled"), (False, "Suspended")])
def test_versioning_follows_the_setting(versioning, status):
    inventory = storage(versioning=versioning)
    assert {
        v.inputs["versioningConfiguration"]["status"]
        for v in inventory.of_type("aws:s3/bucketVersioning:BucketVersioning")
    } == {status}


def test_lifecycle_expires_noncurrent_versions_and_abandoned_uploads():
    inventory = storage(noncurrent_version_days=21, datasets_infrequent_access_days=60)
    rules = {
        r.name: {rule["id"]: rule for rule in r.inputs["rules"]}
        for r in inventory.of_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    }
    assert (
        rules["st-artifacts-lifecycle"]["expire-noncurrent-versions"]["noncurrentVersionExpiration"]["noncurrentDays"]
        == 21
    )
    assert (
        rules["st-artifacts-lifecycle"]["abort-incomplete-uploads"]["abortIncompleteMultipartUpload"][
            "daysAfterInitiation"
        ]
        == 7
    )
    assert "datasets-to-infrequent-access" not in rules["st-artifacts-lifecycle"]
    assert (
        rules["st-datasets-lifecycle"]["datasets-to-infrequent-access"]["transitions"][0]["storageClass"]
        == "STANDARD_IA"
    )


@pytest.mark.parametrize("protect", [True, False])
def test_force_destroy_and_protection_follow_the_settings(protect):
    inventory = storage(force_destroy=not protect, protect=protect)
    for bucket in inventory.of_type(BUCKET):
        assert bucket.inputs["forceDestroy"] is (not protect)
        assert bucket.protect is protect
    assert only(inventory, "aws:kms/key:Key").protect is protect


def test_bad_args_are_rejected():
    with pytest.raises(ValueError, match="noncurrent_version_days"):
        storage_args(noncurrent_version_days=0)
    with pytest.raises(ValueError, match="at least 30"):
        storage_args(datasets_infrequent_access_days=10)

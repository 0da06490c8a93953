"""Data versions in DVC's formats against a real S3 endpoint (moto): the platform writes what dvc 3.67.1
writes (components/upstream/dvc-3.67.1, made with the real `dvc add` and `dvc push`), reads it back by hash,
and a training run records the exact version as its MLflow dataset input and as tags."""

from __future__ import annotations

import hashlib
import shutil

import boto3
import pytest

from examples.diabetes import write_dataset
from infra.stackfile import REPO_ROOT
from services.training import dvc

UPSTREAM = REPO_ROOT / "components/upstream/dvc-3.67.1"
BUCKET = "artifacts"  # the session's moto bucket (tests/services/conftest.py)


@pytest.fixture
def s3(moto, monkeypatch):
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    return boto3.client("s3", endpoint_url=moto.url)


def remote_objects(s3, prefix: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(f"{o['Key'].removeprefix(prefix)} {o['Size']}" for o in listed)


def test_add_and_push_write_what_dvc_writes(s3, tmp_path):
    data = tmp_path / "data"
    write_dataset(data / "diabetes.csv")
    shutil.copytree(UPSTREAM / "parts", data / "parts")
    remote = dvc.Remote.parse(f"s3://{BUCKET}/add-push/dvc")

    for name in ("diabetes.csv", "parts"):
        dvc_file, out = dvc.add(data / name, tmp_path / "cache")
        assert dvc_file.read_text() == (UPSTREAM / f"{name}.dvc").read_text()
        assert dvc.push(out, tmp_path / "cache", remote, s3) > 0
        assert dvc.push(out, tmp_path / "cache", remote, s3) == 0  # nothing left to upload

    assert (data / ".gitignore").read_text() == (UPSTREAM / "gitignore").read_text()
    assert (REPO_ROOT / "examples/data/diabetes.csv.dvc").read_text() == (UPSTREAM / "diabetes.csv.dvc").read_text()
    expected = sorted(line.removeprefix("dvc/") for line in (UPSTREAM / "remote-keys.txt").read_text().splitlines())
    assert remote_objects(s3, "add-push/dvc/") == expected


def test_pull_fetches_by_hash_and_refuses_a_corrupt_object(s3, tmp_path):
    remote = dvc.Remote.parse(f"s3://{BUCKET}/pull/dvc")
    for name in ("one.csv", "two.csv"):  # laid out as `dvc push` did (remote-keys.txt)
        s3.upload_file(
            str(UPSTREAM / "parts" / name),
            BUCKET,
            remote.key(hashlib.md5((UPSTREAM / "parts" / name).read_bytes()).hexdigest()),
        )
    out = dvc.read_dvc_file((UPSTREAM / "parts.dvc").read_text(), "parts.dvc")
    s3.upload_file(str(UPSTREAM / "parts.dir"), BUCKET, remote.key(out.md5))

    directory = dvc.pull(out, tmp_path / "cache", remote, s3)
    assert sorted(p.name for p in directory.iterdir()) == ["one.csv", "two.csv"]
    assert (directory / "two.csv").read_bytes() == (UPSTREAM / "parts/two.csv").read_bytes()

    s3.put_object(Bucket=BUCKET, Key=remote.key("0" * 32), Body=b"not what the hash says")
    with pytest.raises(ValueError, match="has md5 .* not 0{32}: the remote is corrupt"):
        dvc.fetch("0" * 32, tmp_path / "cache", remote, s3)
    assert not dvc.cache_path(tmp_path / "cache", "0" * 32).exists()


def test_a_run_records_the_dvc_version_it_trained_on(as_admin, s3, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from services.training.runner import run
    from services.training.settings import TrainingSettings

    remote_url = f"s3://{BUCKET}/run/dvc"
    workspace = tmp_path / "checkout/examples/data"
    write_dataset(workspace / "diabetes.csv")
    _, out = dvc.add(workspace / "diabetes.csv", tmp_path / "publisher-cache")
    dvc.push(out, tmp_path / "publisher-cache", dvc.Remote.parse(remote_url), s3)
    (workspace / "diabetes.csv").unlink()  # the training job has the .dvc file only

    outcome = run(
        TrainingSettings(
            pipeline="diabetes",
            model_name="dvc-traced",
            entry_point="examples.diabetes:task",
            data=str(workspace / "diabetes.csv.dvc"),
            dvc_remote=remote_url,
            s3_endpoint_url=as_admin.moto_url,
            cache_dir=str(tmp_path / "job-cache"),
            code_revision="abc123",
            image="registry.example/training:0.1.0",
        )
    )

    object_url = f"{remote_url}/files/md5/{out.md5[:2]}/{out.md5[2:]}"
    assert (outcome.data.md5, outcome.data.source) == (out.md5, object_url)
    (dataset_input,) = mlflow.get_run(outcome.run_id).inputs.dataset_inputs
    assert dataset_input.dataset.digest == out.md5 and object_url in dataset_input.dataset.source
    assert {t.key: t.value for t in dataset_input.tags}["dvc.path"] == str(workspace / "diabetes.csv")
    tags = MlflowClient().get_model_version("dvc-traced", outcome.version).tags
    assert tags["mlops.data.dvc_md5"] == out.md5 and tags["mlops.data.dvc_file"].endswith(
        "examples/data/diabetes.csv.dvc"
    )
    assert tags["mlops.data.source"] == object_url
    assert (tags["mlops.code.revision"], tags["mlops.image"]) == ("abc123", "registry.example/training:0.1.0")


def test_a_dvc_pointer_in_the_bucket_names_the_newest_version(s3, tmp_path):
    """A data team publishes a new version by pushing it and replacing the pointer; code and image stay."""
    from services.training.data import load_data
    from services.training.settings import TrainingSettings

    remote = dvc.Remote.parse(f"s3://{BUCKET}/pointer/dvc")
    for shift in (0.0, 2.0):
        dvc_file, out = dvc.add(
            write_dataset(tmp_path / f"v{shift}" / "diabetes.csv", bmi_shift=shift), tmp_path / "cache"
        )
        dvc.push(out, tmp_path / "cache", remote, s3)
        s3.upload_file(str(dvc_file), BUCKET, "pointer/current/diabetes.csv.dvc")

    settings = TrainingSettings(
        pipeline="diabetes",
        model_name="m",
        entry_point="examples.diabetes:task",
        data=f"s3://{BUCKET}/pointer/current/diabetes.csv.dvc",
        dvc_remote=remote.url,
        s3_endpoint_url=s3.meta.endpoint_url,
        cache_dir=str(tmp_path / "job-cache"),
    )
    frame, version = load_data(settings)
    assert version.md5 == out.md5 and version.path == f"s3://{BUCKET}/pointer/current/diabetes.csv"
    assert frame["bmi"].mean() > 0.05  # the shifted version, not the first one


def test_without_a_remote_a_missing_version_is_named(tmp_path):
    from services.training.data import load_data
    from services.training.settings import TrainingSettings

    (tmp_path / "d.csv.dvc").write_text(
        "outs:\n- md5: 0123456789abcdef0123456789abcdef\n  size: 1\n  hash: md5\n  path: d.csv\n"
    )
    settings = TrainingSettings(
        pipeline="p1",
        model_name="m",
        entry_point="examples.diabetes:task",
        data=str(tmp_path / "d.csv.dvc"),
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(
        FileNotFoundError,
        match="md5 0123456789abcdef0123456789abcdef is neither in the DVC cache .* set TRAINING_DVC_REMOTE",
    ):
        load_data(settings)

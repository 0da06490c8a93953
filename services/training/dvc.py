"""Data versions in DVC's formats: `.dvc` files, DVC's cache, and a DVC remote on S3.

A data set is versioned the DVC way: a small `.dvc` file committed with the code holds the
data's MD5 (`<md5>.dir` for a directory) and its path; the bytes live, content-addressed, in a
DVC remote, here the stack's datasets bucket under `dvc/`. A run reads the data by that hash,
so the `.dvc` file is the exact version, and the runner records it on the run and the version.

DVC itself cannot be installed with the platform's lock: `dvc` 3.67.1 requires `hydra-core`,
whose every release pins `antlr4-python3-runtime` 4.9 (or 4.8) while `moto[server]` brings
4.13.2; and `dvc[s3]` goes through `s3fs` to `aiobotocore`, whose every release caps
`botocore` below 1.43.118 while the lock has `boto3`/`botocore` 1.44.5. So the platform uses
`dvc-data`, DVC's own data layer (what `dvc add` and `dvc push` hash and lay out data with), for
hashing, directory manifests and the local cache, and boto3 for the transfer to and from S3.
The remote's layout is DVC 3's (`<remote>/files/md5/<2 hex>/<30 hex>`), so a data scientist's
own `dvc` (installed on its own: `pipx install 'dvc[s3]'`) pushes to and pulls from the same
remote; tests/services/test_training_dvc.py compares with files made by dvc 3.67.1
(components/upstream/dvc-3.67.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import yaml

HASH_NAME = "md5"
DVC_PREFIX = "dvc"
"""The stack's DVC remote is `s3://<datasets bucket>/dvc` (the stack output `dvcRemote`)."""
CACHE_PREFIX = ("files", "md5")
"""DVC 3 keeps MD5-addressed objects under `files/md5/` in caches and remotes alike."""


@dataclass(frozen=True)
class DvcOut:
    """The one output of a `.dvc` file (what `dvc add` writes)."""

    md5: str
    size: int
    path: str
    """Relative to the `.dvc` file's directory."""
    nfiles: int | None = None

    @property
    def is_dir(self) -> bool:
        return self.md5.endswith(".dir")


@dataclass(frozen=True)
class Remote:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> "Remote":
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"DVC remote: got {url!r}; expected s3://<bucket>/<prefix>, e.g. s3://my-datasets/dvc")
        return cls(parsed.netloc, parsed.path.strip("/"))

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, oid: str) -> str:
        """The object key DVC uses for `oid` in this remote."""
        return str(PurePosixPath(self.prefix, *CACHE_PREFIX, oid[:2], oid[2:]))


def read_dvc_file(text: str, origin: str) -> DvcOut:
    try:
        document = yaml.safe_load(text) or {}
        (out,) = document["outs"]
        if out.get("hash", HASH_NAME) != HASH_NAME:
            raise ValueError(f"hash {out['hash']!r}: only DVC 3's md5 is supported")
        return DvcOut(
            md5=str(out["md5"]), size=int(out.get("size", 0)), path=str(out["path"]), nfiles=out.get("nfiles")
        )
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{origin}: not a .dvc file with one output ({exc})") from None


def dvc_file_text(out: DvcOut) -> str:
    """The `.dvc` file `dvc add` writes for `out` (same keys, same order)."""
    entry: dict[str, Any] = {"md5": out.md5, "size": out.size}
    if out.nfiles is not None:
        entry["nfiles"] = out.nfiles
    entry.update(hash=HASH_NAME, path=out.path)
    return yaml.safe_dump({"outs": [entry]}, sort_keys=False)


def _odb(cache: Path):
    from dvc_data.hashfile.db.local import LocalHashFileDB
    from dvc_objects.fs import LocalFileSystem

    return LocalHashFileDB(LocalFileSystem(), str(cache.joinpath(*CACHE_PREFIX)))


def cache_path(cache: Path, oid: str) -> Path:
    """Where DVC's cache at `cache` keeps object `oid`."""
    return Path(_odb(cache).oid_to_path(oid))


def add(data: Path, cache: Path) -> tuple[Path, DvcOut]:
    """`dvc add <data>`: hash it into the cache, write `<data>.dvc` and ignore the data in Git.
    Returns the `.dvc` file and its output."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.transfer import transfer

    odb = _odb(cache)
    staging, meta, obj = build(odb, str(data), odb.fs, HASH_NAME)
    transfer(staging, odb, {obj.hash_info}, shallow=False, hardlink=False)
    out = DvcOut(
        md5=str(obj.hash_info.value),
        size=int(meta.size or 0),
        path=data.name,
        nfiles=meta.nfiles if meta.isdir else None,
    )
    dvc_file = data.with_name(data.name + ".dvc")
    dvc_file.write_text(dvc_file_text(out))
    ignore = data.parent / ".gitignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    if f"/{data.name}" not in lines:
        ignore.write_text("\n".join([*lines, f"/{data.name}"]) + "\n")
    return dvc_file, out


def object_ids(out: DvcOut, cache: Path) -> list[str]:
    """Every object of `out`: the file, or a directory's manifest and its files (the manifest must be cached)."""
    if not out.is_dir:
        return [out.md5]
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    tree = Tree.load(_odb(cache), HashInfo(HASH_NAME, out.md5))
    return [out.md5, *(info.value for _, _, info in tree)]


def push(out: DvcOut, cache: Path, remote: Remote, s3) -> int:
    """`dvc push`: upload the objects the remote lacks; returns how many were uploaded."""
    odb = _odb(cache)
    uploaded = 0
    for oid in object_ids(out, cache):
        if _exists(s3, remote.bucket, remote.key(oid)):
            continue
        s3.upload_file(odb.oid_to_path(oid), remote.bucket, remote.key(oid))
        uploaded += 1
    return uploaded


def _exists(s3, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def fetch(oid: str, cache: Path, remote: Remote, s3) -> Path:
    """One object into the cache (unless there), its hash verified; returns its cache path."""
    from dvc_data.hashfile.hash import file_md5
    from dvc_objects.fs import LocalFileSystem

    path = cache_path(cache, oid)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    s3.download_file(remote.bucket, remote.key(oid), str(partial))
    found = file_md5(str(partial), LocalFileSystem())
    if found != oid.removesuffix(".dir"):
        partial.unlink()
        raise ValueError(f"DVC object {remote.url}/{remote.key(oid)} has md5 {found}, not {oid}: the remote is corrupt")
    partial.rename(path)
    return path


def pull(out: DvcOut, cache: Path, remote: Remote, s3) -> Path:
    """`dvc pull` of one output into the cache; returns the file, or a checked-out directory."""
    fetch(out.md5, cache, remote, s3)
    if not out.is_dir:
        return cache_path(cache, out.md5)
    for oid in object_ids(out, cache)[1:]:
        fetch(oid, cache, remote, s3)
    return checkout(out, cache)


def checkout(out: DvcOut, cache: Path) -> Path:
    """A directory output materialised from the cache (under `cache/checkouts/<md5>/`)."""
    from dvc_data.hashfile.checkout import checkout as dvc_checkout
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    odb = _odb(cache)
    destination = cache / "checkouts" / out.md5.removesuffix(".dir") / out.path
    if not destination.is_dir():
        dvc_checkout(str(destination), odb.fs, Tree.load(odb, HashInfo(HASH_NAME, out.md5)), odb)
    return destination


def s3_client(endpoint_url: str | None = None):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url)

"""The data set a run trains on, and the exact version of it that the run records.

DVC-tracked data (`TRAINING_DATA` names a `.dvc` file: a path in the image or checkout, or an
`s3://` URL of one the data team updates) is read by the hash in that file: from the local DVC
cache, else from the workspace file next to the `.dvc` file when its hash matches, else from
the DVC remote (`TRAINING_DVC_REMOTE`), verified on download (services/training/dvc.py). A
plain file is read as it is; its version is its MD5 (the hash DVC gives a file).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class DataVersion:
    path: str
    """The data set's path as its pipeline names it (the path inside the repository for DVC data)."""
    md5: str
    """Content hash (DVC's `md5` of the file)."""
    size: int
    source: str
    """Where the bytes came from: the DVC remote object, or the local file."""
    dvc_file: str | None = None
    """The `.dvc` file read, when the data is DVC-tracked."""


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_frame(path: Path, suffix: str | None = None) -> pd.DataFrame:
    """CSV or Parquet, by suffix (a DVC cache object has none: the data path's is given); a directory
    is the concatenation of its files in name order."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if not files:
            raise ValueError(f"data {path}: an empty directory")
        return pd.concat([read_frame(p) for p in files], ignore_index=True)
    suffix = path.suffix if suffix is None else suffix
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".csv", ".txt"):
        return pd.read_csv(path)
    raise ValueError(f"data {path}: unknown format {suffix!r}; allowed: .csv, .parquet (or a .dvc file tracking one)")


def local_version(path: Path) -> DataVersion:
    if not path.is_file():
        raise FileNotFoundError(f"data {path}: no such file")
    return DataVersion(path=str(path), md5=file_md5(path), size=path.stat().st_size, source=str(path.resolve()))


def load_data(settings) -> tuple[pd.DataFrame, DataVersion]:
    """The frame and its version, from the data the pipeline names (`TRAINING_DATA`)."""
    if settings.data.endswith(".dvc"):
        path, version = dvc_version(settings)
        return read_frame(path, None if path.is_dir() else Path(version.path).suffix), version
    path = Path(settings.data)
    return read_frame(path), local_version(path)


def dvc_version(settings) -> tuple[Path, DataVersion]:
    """The local path of the data a `.dvc` file names (fetched if need be) and its version."""
    from services.training import dvc

    reference = settings.data
    s3 = dvc.s3_client(settings.s3_endpoint_url) if reference.startswith("s3://") or settings.dvc_remote else None
    if reference.startswith("s3://"):
        assert s3 is not None
        pointer = dvc.Remote.parse(reference)
        text = s3.get_object(Bucket=pointer.bucket, Key=pointer.prefix)["Body"].read().decode()
        data_path = reference.rsplit("/", 1)[0] + "/"
    else:
        text = Path(reference).read_text()
        data_path = str(Path(reference).parent) + "/"
    out = dvc.read_dvc_file(text, reference)
    data_path += out.path
    found, source = _locate(out, Path(settings.cache_dir), Path(data_path), reference, settings.dvc_remote, s3)
    return found, DataVersion(path=data_path, md5=out.md5, size=out.size, source=source, dvc_file=reference)


def _locate(out, cache: Path, workspace: Path, reference: str, remote_url: str | None, s3) -> tuple[Path, str]:
    """(local path, where the version lives): the DVC cache, a matching workspace file, or the remote.
    With a remote, the version is recorded as the remote's object wherever the bytes were read."""
    from services.training import dvc

    remote = dvc.Remote.parse(remote_url) if remote_url else None
    origin = f"s3://{remote.bucket}/{remote.key(out.md5)}" if remote else None
    if not out.is_dir and dvc.cache_path(cache, out.md5).is_file():
        return dvc.cache_path(cache, out.md5), origin or f"DVC cache {cache}"
    if not out.is_dir and not reference.startswith("s3://") and workspace.is_file() and file_md5(workspace) == out.md5:
        return workspace, origin or str(workspace.resolve())
    if remote is not None:
        return dvc.pull(out, cache, remote, s3), f"s3://{remote.bucket}/{remote.key(out.md5)}"
    if out.is_dir and dvc.cache_path(cache, out.md5).is_file():
        return dvc.checkout(out, cache), f"DVC cache {cache}"
    raise FileNotFoundError(
        f"{reference}: md5 {out.md5} is neither in the DVC cache {cache} nor in the workspace; "
        "set TRAINING_DVC_REMOTE (s3://<datasets bucket>/dvc) to fetch it"
    )

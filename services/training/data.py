"""The data set a run trains on, and the exact version of it that the run records.

A plain file is read as it is; its version is its MD5 (the hash DVC gives a file). DVC-tracked
data is read by its `.dvc` file (see `services/training/dvc.py`).
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

    @property
    def name(self) -> str:
        return Path(self.path).name


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_frame(path: Path) -> pd.DataFrame:
    """CSV or Parquet, by suffix."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".csv", ".txt"):
        return pd.read_csv(path)
    raise ValueError(f"data {path}: unknown format {path.suffix!r}; allowed: .csv, .parquet (or a .dvc file tracking one)")


def local_version(path: Path) -> DataVersion:
    if not path.is_file():
        raise FileNotFoundError(f"data {path}: no such file")
    return DataVersion(path=str(path), md5=file_md5(path), size=path.stat().st_size, source=str(path.resolve()))


def load_data(settings) -> tuple[pd.DataFrame, DataVersion]:
    """The frame and its version, from the path the pipeline names (`TRAINING_DATA`)."""
    path = Path(settings.data)
    return read_frame(path), local_version(path)

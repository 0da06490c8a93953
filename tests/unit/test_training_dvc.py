"""`.dvc` files and DVC remotes: what the platform accepts, and the clear errors for the rest."""

from __future__ import annotations

import pytest

from services.training import dvc


def test_the_remote_key_is_dvc_3s_layout():
    remote = dvc.Remote.parse("s3://datasets-bucket/dvc")
    assert remote.key("22ffb1078d60c79ef301faa4e94e88e7") == "dvc/files/md5/22/ffb1078d60c79ef301faa4e94e88e7"
    assert remote.key("734dcc3a0f45965eff9433ce0cb1e8c3.dir") == "dvc/files/md5/73/4dcc3a0f45965eff9433ce0cb1e8c3.dir"
    assert dvc.Remote.parse("s3://b").key("abcd") == "files/md5/ab/cd"


@pytest.mark.parametrize("url", ["datasets/dvc", "gs://bucket/dvc", "s3:///dvc"])
def test_a_remote_that_is_not_s3_is_refused(url):
    with pytest.raises(ValueError, match="DVC remote: got .*; expected s3://<bucket>/<prefix>"):
        dvc.Remote.parse(url)


def test_a_dvc_file_round_trips():
    out = dvc.DvcOut(md5="734dcc3a0f45965eff9433ce0cb1e8c3.dir", size=16, path="parts", nfiles=2)
    assert dvc.read_dvc_file(dvc.dvc_file_text(out), "parts.dvc") == out and out.is_dir


@pytest.mark.parametrize(
    "text, problem",
    [
        ("outs: []", "not enough values"),
        ("stages: {}", "'outs'"),
        ("outs:\n- md5: abc\n  path: a\n- md5: def\n  path: b\n", "too many values"),
        ("outs:\n- md5: abc\n  hash: md5-dos2unix\n  path: a\n", "only DVC 3's md5"),
        ("outs: [", "while parsing"),
    ],
)
def test_a_bad_dvc_file_is_named(text, problem):
    with pytest.raises(ValueError, match=rf"data.csv.dvc: not a .dvc file with one output \(.*{problem}"):
        dvc.read_dvc_file(text, "data.csv.dvc")

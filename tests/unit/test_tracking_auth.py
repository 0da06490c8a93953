"""The tracking server's authorization function on crafted paths (services/tracking/auth.py, pipeline_scope.py):
the pure parts, without a server. tests/services/test_training_users.py and test_tracking_readers.py try the same
users against a real one."""

from __future__ import annotations

import pytest

from services.tracking.auth import _api_route, is_pipeline_write, is_read_request
from services.tracking.pipeline_scope import UPLOAD_PATH, canonical_artifact_path

CRAFTED = [
    "/gateway/proxy/ep/api/2.0/mlflow/runs/create",
    "/gateway/proxy/ep/ajax-api/2.0/mlflow/runs/create",
    "/x/api/2.0/mlflow/runs/create",
    "/static-files/api/2.0/mlflow/runs/create",
    "//api/2.0/mlflow/runs/create",
    "/api/2.0x/mlflow/runs/create",
    "/api/2/mlflow/runs/create",
    "/apis/2.0/mlflow/runs/create",
    "api/2.0/mlflow/runs/create",
]
"""Paths that contain MLflow's API prefix somewhere other than at their start."""


@pytest.mark.parametrize("path", CRAFTED)
def test_a_path_with_the_api_prefix_inside_it_is_no_pipeline_write(path):
    assert _api_route(path) is None
    assert not is_pipeline_write("POST", path)
    assert not is_read_request("POST", path.replace("runs/create", "runs/search"))  # not a read for `serving-` users


@pytest.mark.parametrize("prefix", ["/api/2.0", "/api/3.0", "/ajax-api/2.0", "/ajax-api/3.0"])
def test_mlflows_own_prefixes_are_recognised(prefix):
    assert _api_route(f"{prefix}/mlflow/runs/create") == "/mlflow/runs/create"
    assert is_pipeline_write("POST", f"{prefix}/mlflow/runs/create")
    assert is_read_request("POST", f"{prefix}/mlflow/runs/search")
    assert not is_pipeline_write("POST", f"{prefix}/mlflow/experiments/create")


def test_mlflows_route_paths_carry_the_prefixes_the_pattern_expects(monkeypatch):
    """handlers._get_paths is where MLflow builds its routes; without a static prefix they start with the API prefix
    itself (the only form _api_route accepts), and the server is started without one."""
    from mlflow.server.handlers import STATIC_PREFIX_ENV_VAR, _get_paths

    from services.tracking.entrypoint import server_command
    from services.tracking.settings import TrackingSettings

    monkeypatch.delenv(STATIC_PREFIX_ENV_VAR, raising=False)
    for version in (2, 3):
        for path in _get_paths("/mlflow/runs/create", version=version):
            assert _api_route(path) == "/mlflow/runs/create", path
    assert not any(arg.startswith("--static-prefix") for arg in server_command(TrackingSettings()))


@pytest.mark.parametrize(
    "path, expected",
    [
        ("1/0123456789abcdef0123456789abcdef/artifacts/model/MLmodel", ("1", None, "0123456789abcdef0123456789abcdef")),
        ("1/models/m-0123/artifacts/model.pkl", ("1", "m-0123", None)),
        ("%31/models/m-0123/artifacts/model.pkl", ("1", "m-0123", None)),  # decoded as the handler decodes it
        ("%2531/models/m-0123/artifacts/model.pkl", ("1", "m-0123", None)),  # ... however many times
    ],
)
def test_an_upload_path_names_its_experiment_and_run_or_logged_model(path, expected):
    match = UPLOAD_PATH.fullmatch(canonical_artifact_path(path) or "")
    assert match is not None and (match["experiment"], match["model_id"], match["run_id"]) == expected


@pytest.mark.parametrize(
    "path",
    [
        "x",
        "1/x",  # an experiment-level artifact: no training run writes one
        "1/run/x",
        "1/traces/tr-1/artifacts/x",
        "workspaces/w/1/run/artifacts/x",
        "1/run/artifacts/",
        "a1/run/artifacts/x",
    ],
)
def test_an_upload_path_outside_a_run_or_logged_model_matches_nothing(path):
    canonical = canonical_artifact_path(path)
    assert canonical is None or UPLOAD_PATH.fullmatch(canonical) is None


@pytest.mark.parametrize(
    "path", ["1/run/artifacts/../../2/run/artifacts/x", "1/run/artifacts/%2e%2e/%2e%2e/2/x", "/1/run/artifacts/x"]
)
def test_an_upload_path_the_handler_refuses_is_refused(path):
    assert canonical_artifact_path(path) is None

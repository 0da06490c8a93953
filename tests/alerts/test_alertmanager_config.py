"""Alertmanager's configuration, checked by Alertmanager's own `amtool check-config` as the chart
merges it (Helm deep-merges our `alertmanager.config` over kube-prometheus-stack 88.2.0's default;
lists are replaced). The chart passes it through verbatim, so its keys are Alertmanager's, not the
chart's, and the values-key contract leaves it to this test."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from components.monitoring import alertmanager_config
from infra.upstream import chart_defaults, helm_merge

AMTOOL = shutil.which("amtool") or "amtool-is-missing: `make setup` installs Debian's prometheus-alertmanager package"


def check(config: dict, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "alertmanager.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([AMTOOL, "check-config", str(path)], capture_output=True, text=True)


def as_deployed(has_slack: bool) -> dict:
    default = chart_defaults("kube-prometheus-stack", "88.2.0")["alertmanager"]["config"]
    return helm_merge(default, alertmanager_config(has_slack, "#ml-alerts"))


@pytest.mark.parametrize("has_slack", [False, True])
def test_the_merged_alertmanager_config_is_valid(has_slack, tmp_path):
    config = as_deployed(has_slack)
    result = check(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f" - {1 + has_slack} receivers" in result.stdout
    assert config["route"]["receiver"] == ("slack" if has_slack else "null")
    assert config["inhibit_rules"]  # the chart's defaults survive the merge


def test_a_route_to_a_missing_receiver_is_caught(tmp_path):
    config = as_deployed(False)
    config["route"]["receiver"] = "slack"
    result = check(config, tmp_path)
    assert result.returncode != 0 and "slack" in result.stdout + result.stderr

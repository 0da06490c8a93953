"""Alert rules: `promtool check rules` and `promtool test rules` on the rules the platform deploys."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from components.alerts import EndpointObjective, rule_groups, rules_file
from infra.program import alert_thresholds

HERE = Path(__file__).resolve().parent
PROMTOOL = shutil.which("promtool") or "promtool-is-missing: `make setup` installs Debian's prometheus package"


@pytest.fixture
def rules_dir(tmp_path):
    (tmp_path / "rules.yaml").write_text(
        rules_file(rule_groups(alert_thresholds(), [EndpointObjective("diabetes", 250)]))
    )
    shutil.copy(HERE / "rules_test.yaml", tmp_path / "rules_test.yaml")
    return tmp_path


def test_rules_pass_promtool_check(rules_dir):
    result = subprocess.run([PROMTOOL, "check", "rules", str(rules_dir / "rules.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_each_alert_fires_when_it_should_and_stays_silent_otherwise(rules_dir):
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(rules_dir / "rules_test.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fixture = yaml.safe_load((HERE / "rules_test.yaml").read_text())
    firing = {t["alertname"] for g in fixture["tests"] for t in g["alert_rule_test"] if t["exp_alerts"]}
    silent = {t["alertname"] for g in fixture["tests"] for t in g["alert_rule_test"] if not t["exp_alerts"]}
    alerts = {
        r["alert"]
        for group in rule_groups(alert_thresholds(), [EndpointObjective("diabetes", 250)])
        for r in group["rules"]
    }
    assert alerts == firing == silent  # every alert is proven both ways


def test_a_broken_rule_is_caught(tmp_path):
    groups = rule_groups(alert_thresholds(), [EndpointObjective("diabetes", 250)])
    groups[0]["rules"][0]["expr"] = "histogram_quantile(0.99, sum by (le) (rate(x[5m]))"  # unbalanced
    (tmp_path / "rules.yaml").write_text(rules_file(groups))
    result = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert result.returncode != 0


def test_thresholds_flow_into_the_expressions():
    groups = rule_groups(
        replace(alert_thresholds(), error_ratio=0.05, drift_psi=0.3, gpu_idle_minutes=45),
        [EndpointObjective("a", 100), EndpointObjective("b", 2000)],
    )
    rules = {r["alert"] + r["labels"].get("endpoint", ""): r for g in groups for r in g["rules"]}
    assert rules["EndpointLatencyHigha"]["expr"].endswith("> 0.1") and rules["EndpointLatencyHighb"]["expr"].endswith(
        "> 2"
    )
    assert rules["EndpointErrorRatioHigh"]["expr"].endswith("> 0.05")
    assert rules["DataDriftHigh"]["expr"].endswith("> 0.3") and rules["GpuNodeIdle"]["for"] == "45m"

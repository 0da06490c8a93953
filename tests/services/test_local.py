"""`local --once`: the README's main job end to end, and nothing left running afterwards."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.stackfile import REPO_ROOT


def test_local_plane_registers_champion_and_stops_cleanly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "local", "--once", "--workdir", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "models:/diabetes@champion -> version 1" in result.stdout
    assert "sample request    POST /invocations (2 rows) -> [" in result.stdout and "from version 1" in result.stdout
    assert (tmp_path / "admin-password").stat().st_mode & 0o077 == 0  # only the owner may read it
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)", result.stdout)
    assert "prometheus        http://127.0.0.1:" in result.stdout
    assert len(urls) >= 4
    for port in urls:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", int(port))) != 0, f"port {port} still open after --once"


def start_local(*arguments: str) -> tuple[subprocess.Popen, str]:
    """`infra.cli local` from the repository, as `make local` runs it; returns once it prints that it runs."""
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "local", *arguments],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = process.stdout.readline()
        output.append(line)
        if "press Ctrl-C" in line or process.poll() is not None:
            break
    return process, "".join(output)


def test_sigterm_stops_the_whole_plane(tmp_path):
    import os
    import signal

    process, output = start_local("--workdir", str(tmp_path))
    ports = re.findall(r"http://127\.0\.0\.1:(\d+)", output)
    assert len(ports) >= 4, output
    os.kill(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    process.stdout.close()
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", int(port))) != 0, f"port {port} still open after SIGTERM"


def api(url: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["data"]


def test_prometheus_resolves_a_relative_rules_path_from_any_directory(tmp_path, monkeypatch):
    """Prometheus reads `rule_files` relative to its config file.

    The written path must not depend on the caller's directory.
    """
    from components.alerts import EndpointObjective, rule_groups, rules_file
    from infra.processes import start_prometheus
    from infra.program import alert_thresholds

    monkeypatch.chdir(tmp_path)
    Path("rules").mkdir()
    Path("rules/rules.yaml").write_text(rules_file(rule_groups(alert_thresholds(), [EndpointObjective("m", 250)])))
    prometheus = start_prometheus(Path("prometheus"), {}, rules_file=Path("rules/rules.yaml"))
    try:
        assert {g["name"] for g in api(prometheus.url + "/api/v1/rules")["groups"]} == {
            "mlops-serving",
            "mlops-platform",
        }
        config = yaml.safe_load((tmp_path / "prometheus" / "prometheus.yml").read_text())
        assert config["rule_files"] == [str(tmp_path / "rules" / "rules.yaml")]
    finally:
        prometheus.stop()


def test_a_prometheus_with_fewer_rule_groups_than_written_is_refused(tmp_path):
    from infra.processes import require_rule_groups, start_prometheus

    prometheus = start_prometheus(tmp_path, {})  # no rules at all
    try:
        with pytest.raises(RuntimeError, match=r"loaded 0 rule group\(s\) of the 2 written"):
            require_rule_groups(prometheus, 2, timeout=1)
    finally:
        prometheus.stop()


def shifted_rows(count: int) -> dict:
    """`count` training rows with bmi shifted by two standard deviations, as a scoring request body."""
    from examples.train import training_data

    x_train, _, _, _ = training_data()
    rows = x_train.sample(count, replace=True, random_state=7)
    rows["bmi"] = rows["bmi"] + 2 * x_train["bmi"].std()
    return {"dataframe_split": {"columns": list(rows.columns), "data": rows.values.tolist()}}


def drift_alert(prometheus_url: str) -> dict | None:
    alerts = api(prometheus_url + "/api/v1/alerts")["alerts"]
    return next(
        (a for a in alerts if a["labels"].get("alertname") == "DataDriftHigh" and a["labels"].get("feature") == "bmi"),
        None,
    )


def test_make_local_raises_the_drift_alert_for_shifted_traffic():
    """As `make local` runs it (relative work directory, from the repository), with test-sized timings:
    the rules are loaded and shifted traffic puts DataDriftHigh on Prometheus's alerts API within its `for`."""
    import json
    import shutil
    import time
    import urllib.request
    import uuid

    workdir = Path("build") / f"test-local-{uuid.uuid4().hex[:8]}"
    drift_for = 8
    process, output = start_local(
        "--workdir", str(workdir), "--scrape-interval", "1s", "--drift-interval", "1", "--drift-for", f"{drift_for}s"
    )
    try:
        assert "press Ctrl-C" in output, output
        assert f"DataDriftHigh after {drift_for}s above the threshold" in output
        prometheus = re.search(r"prometheus +(http://127\.0\.0\.1:\d+)/graph", output).group(1)
        serving = re.search(r"model server +(http://127\.0\.0\.1:\d+)/invocations", output).group(1)
        rules = {r["name"]: r for g in api(prometheus + "/api/v1/rules")["groups"] for r in g["rules"]}
        assert rules["DataDriftHigh"]["duration"] == drift_for

        body = json.dumps(shifted_rows(300)).encode()
        request = urllib.request.Request(
            serving + "/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        sent = time.monotonic()
        alert = None
        while time.monotonic() - sent < 3 * drift_for and (alert is None or alert["state"] != "firing"):
            time.sleep(0.5)
            alert = drift_alert(prometheus)
            if alert is not None and "seen" not in locals():
                seen = time.monotonic() - sent
        assert alert is not None, f"no DataDriftHigh for bmi after {3 * drift_for} s"
        assert seen <= drift_for, (
            f"DataDriftHigh appeared {seen:.1f} s after the traffic, later than its `for` of {drift_for} s"
        )
        assert alert["state"] == "firing", alert
        assert float(alert["value"]) > 0.2
    finally:
        process.terminate()
        process.wait(timeout=60)
        process.stdout.close()
        shutil.rmtree(REPO_ROOT / workdir, ignore_errors=True)

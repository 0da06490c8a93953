"""`make local`'s retraining loop end to end, with test-sized timings: newer data, shifted traffic, the drift
score, DataDriftHigh through a real Prometheus and Alertmanager, the receiver's retrain on the newer data
version, the gate's promotion, and the model server swapping to it."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from infra.stackfile import REPO_ROOT


def test_make_local_retrains_on_drift_and_the_model_server_swaps(tmp_path):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "local",
            "--retrain-demo",
            "--workdir",
            str(tmp_path),
            "--scrape-interval",
            "1s",
            "--drift-interval",
            "1",
            "--drift-for",
            "3s",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.time() + 900  # each step waits up to 5 minutes itself and says which one did not happen
        while time.time() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "retraining loop done" in line or "press Ctrl-C" in line or process.poll() is not None:
                break
        output = "".join(lines)
        assert "[local] retraining loop done" in output, output
        steps = [int(n) for n in re.findall(r"^\[local\] (\d)\. ", output, flags=re.M)]
        assert steps == [1, 2, 3, 4, 5, 6, 7], output
        newer = re.search(r"1\. a newer data version arrives .*: md5 ([0-9a-f]{32})", output).group(1)
        assert "7. the model server now serves version 2 (was 1)" in output

        serving = re.search(r"model server +(http://127\.0\.0\.1:\d+)/invocations", output).group(1)
        from infra.local_training import served_version, shifted_request

        assert served_version(serving, shifted_request(2)) == "2"

        from mlflow import MlflowClient

        from services.tracking.writers import as_user

        tracking = re.search(r"tracking server +(http://127\.0\.0\.1:\d+)", output).group(1)
        with as_user("admin", (tmp_path / "admin-password").read_text().strip()):
            client = MlflowClient(tracking)
            version = client.get_model_version_by_alias("diabetes", "champion")
            tags = version.tags
            first = client.get_model_version("diabetes", "1").tags
        assert version.version == "2"
        assert tags["mlops.gate.decision"] == "promoted" and float(tags["mlops.gate.challenger_score"]) < float(
            tags["mlops.gate.champion_score"]
        )
        assert tags["mlops.gate.champion_version"] == "1"
        assert tags["mlops.trigger"] == "drift" and tags["mlops.trigger.reason"].startswith(
            "DataDriftHigh on endpoint diabetes: feature(s) bmi"
        )
        assert tags["mlops.data.dvc_md5"] == newer != first["mlops.data.dvc_md5"]
        assert tags["mlops.data.source"].startswith("s3://mlops-local-datasets/dvc/files/md5/")
        assert (first["mlops.trigger"], first["mlops.gate.decision"]) == ("manual", "promoted")
        receiver_log = (tmp_path / "receiver.log").read_text()
        assert receiver_log.count("retraining diabetes:") == 1  # once, however often the alert repeats
    finally:
        process.terminate()
        process.wait(timeout=60)
        process.stdout.close()

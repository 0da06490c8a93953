"""The drift receiver's decisions without HTTP: which pipeline an alert starts, the rate limit, the reason
recorded, and the Job it creates on the cluster (valid for every supported Kubernetes version)."""

from __future__ import annotations

import pytest

from services.training.receiver import Busy, KubernetesLauncher, Pipeline, Receiver, WebhookPayload

JOB = {
    "metadata": {"labels": {"mlops.platform/pipeline": "diabetes"}},
    "spec": {
        "backoffLimit": 1,
        "activeDeadlineSeconds": 3600,
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "train",
                        "image": "registry.example/training:0.1.0",
                        "args": ["run"],
                        "env": [
                            {"name": "TRAINING_PIPELINE", "value": "diabetes"},
                            {"name": "TRAINING_TRIGGER", "value": "manual"},
                        ],
                    }
                ],
            }
        },
    },
}
PIPELINES = {
    "diabetes": Pipeline(
        "diabetes", "diabetes", min_interval_seconds=600, job=JOB, env={"TRAINING_PIPELINE": "diabetes"}
    )
}


def payload(*alerts: dict) -> WebhookPayload:
    return WebhookPayload.model_validate(
        {"version": "4", "status": "firing", "receiver": "retrain", "groupKey": "{}:{}", "alerts": list(alerts)}
    )


def drift(endpoint: str = "diabetes", feature: str = "bmi", status: str = "firing") -> dict:
    return {
        "status": status,
        "labels": {"alertname": "DataDriftHigh", "endpoint": endpoint, "feature": feature},
        "annotations": {"summary": f"{feature} of {endpoint} has drifted"},
        "startsAt": "2026-11-29T10:00:00Z",
    }


class Recorder:
    def __init__(self) -> None:
        self.starts: list[tuple[str, str]] = []

    def start(self, pipeline: Pipeline, reason: str, now: float) -> str:
        self.starts.append((pipeline.name, reason))
        return f"run {len(self.starts)}"


@pytest.fixture
def clock():
    class Clock:
        now = 1_000_000.0

        def __call__(self) -> float:
            return self.now

    return Clock()


def test_a_drift_alert_starts_its_endpoints_pipeline_once_per_interval(clock):
    launcher = Recorder()
    receiver = Receiver(PIPELINES, launcher, clock=clock)

    first = receiver.handle(payload(drift(feature="bmi"), drift(feature="age")))
    assert [s["pipeline"] for s in first["started"]] == ["diabetes"] and len(launcher.starts) == 1
    assert launcher.starts[0][1] == (
        "DataDriftHigh on endpoint diabetes: feature(s) age, bmi firing since 2026-11-29T10:00:00Z "
        "(age of diabetes has drifted; bmi of diabetes has drifted)"
    )

    clock.now += 599
    second = receiver.handle(payload(drift()))
    assert (
        second["started"] == []
        and "rate-limited: started 599 s ago; next start allowed in 1 s" in second["skipped"][0]["reason"]
    )

    clock.now += 1
    assert receiver.handle(payload(drift()))["started"] and len(launcher.starts) == 2


def test_alerts_that_start_nothing_say_why(clock):
    receiver = Receiver(PIPELINES, Recorder(), clock=clock)
    result = receiver.handle(
        payload(
            drift(endpoint="reranker"),
            drift(status="resolved"),
            {"status": "firing", "labels": {"alertname": "EndpointDown", "endpoint": "diabetes"}},
        )
    )
    assert result["started"] == []
    reasons = [s["reason"] for s in result["skipped"]]
    assert "no pipeline retrains endpoint reranker" in reasons
    assert reasons.count("not a firing DataDriftHigh with an endpoint label") == 2


def test_a_busy_pipeline_is_not_counted_as_started(clock):
    class Busier(Recorder):
        def start(self, pipeline, reason, now):
            raise Busy("a run of diabetes is still going (pid 42)")

    receiver = Receiver(PIPELINES, Busier(), clock=clock)
    assert receiver.handle(payload(drift()))["skipped"][0]["reason"] == "a run of diabetes is still going (pid 42)"
    assert "diabetes" not in receiver.last_started  # the next alert may start it


def test_on_the_cluster_the_job_is_the_cron_jobs_with_the_reason_and_a_window_name():
    from kubernetes.client.exceptions import ApiException

    from infra.manifests import validate
    from infra.settings import KUBERNETES_VERSIONS

    class Api:
        def __init__(self) -> None:
            self.created: list[tuple[str, dict]] = []

        def create_namespaced_job(self, namespace, body):
            if any(b["metadata"]["name"] == body["metadata"]["name"] for _, b in self.created):
                raise ApiException(status=409, reason="AlreadyExists")
            self.created.append((namespace, body))

    api = Api()
    launcher = KubernetesLauncher("training", api=api)
    assert (
        launcher.start(PIPELINES["diabetes"], "DataDriftHigh on endpoint diabetes", now=6000.0)
        == "job training/diabetes-drift-10"
    )
    namespace, job = api.created[0]
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env == {
        "TRAINING_PIPELINE": "diabetes",
        "TRAINING_TRIGGER": "drift",
        "TRAINING_TRIGGER_REASON": "DataDriftHigh on endpoint diabetes",
    }
    assert job["metadata"]["annotations"]["mlops.platform/trigger-reason"] == "DataDriftHigh on endpoint diabetes"
    assert (
        JOB["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"] == "manual"
    )  # the template is not changed
    for version in KUBERNETES_VERSIONS:
        assert validate(job, version) == []
    with pytest.raises(Busy, match="job diabetes-drift-10 exists: diabetes already started in this interval"):
        launcher.start(
            PIPELINES["diabetes"], "again, after a restart", now=6500.0
        )  # same window: the API server refuses


@pytest.mark.parametrize(
    "document, problem",
    [
        ({"version": "3", "status": "firing", "receiver": "r", "groupKey": "k", "alerts": [drift()]}, "version"),
        ({"version": "4", "status": "firing", "receiver": "r", "groupKey": "k", "alerts": []}, "alerts"),
        (
            {"version": "4", "status": "firing", "receiver": "r", "groupKey": "k", "alerts": [{"labels": {}}]},
            "alerts.0.status",
        ),
    ],
)
def test_payloads_that_are_not_alertmanagers_are_refused(document, problem):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        WebhookPayload.model_validate(document)
    assert problem in [".".join(map(str, e["loc"])) for e in caught.value.errors()]

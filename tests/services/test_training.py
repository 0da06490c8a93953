"""The training runner against a real tracking server (MLflow with basic auth, artifacts in moto S3):
data checks, the evaluation gate, registration with evidence tags, and promotion by alias."""

from __future__ import annotations

import pytest

from examples.diabetes import write_dataset


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Version 1 of the example data and a newer version in which every bmi reads 2 standard deviations higher."""
    root = tmp_path_factory.mktemp("data")
    return {
        "v1": write_dataset(root / "v1" / "diabetes.csv"),
        "shifted": write_dataset(root / "v2" / "diabetes.csv", bmi_shift=2.0),
    }


def train(model: str, data, **settings):
    from services.training.runner import run
    from services.training.settings import TrainingSettings

    return run(
        TrainingSettings(
            pipeline="diabetes",
            model_name=model,
            entry_point="examples.diabetes:task",
            data=str(data),
            code_revision="test",
            **settings,
        )
    )


def version_tags(model: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return MlflowClient().get_model_version(model, version).tags


def alias(model: str, name: str) -> str:
    from mlflow import MlflowClient

    return MlflowClient().get_model_version_by_alias(model, name).version


def test_a_worse_model_is_registered_but_not_promoted(as_admin, datasets):
    first = train("gate-worse", datasets["v1"])
    assert (first.version, first.decision.outcome) == ("1", "promoted")
    assert alias("gate-worse", "champion") == "1"

    worse = train("gate-worse", datasets["v1"], params={"alpha": 1000.0})  # all but a constant: underfits

    assert worse.version == "2" and not worse.decision.promote
    assert alias("gate-worse", "champion") == "1"
    assert alias("gate-worse", "challenger") == "2"
    tags = version_tags("gate-worse", "2")
    assert tags["mlops.gate.decision"] == "rejected"
    assert tags["mlops.gate.champion_version"] == "1"
    assert float(tags["mlops.gate.challenger_score"]) > float(
        tags["mlops.gate.champion_score"]
    )  # rmse: higher is worse
    assert "not the required 1.00% better" in tags["mlops.gate.reason"]
    assert tags["mlops.data.dvc_md5"] == worse.data.md5 and tags["mlops.code.revision"] == "test"
    assert tags["mlops.trigger"] == "manual"


def test_a_better_model_on_newer_data_is_promoted(as_admin, datasets):
    train("gate-better", datasets["v1"])

    newer = train("gate-better", datasets["shifted"], trigger="drift", trigger_reason="DataDriftHigh bmi")

    assert newer.decision.promote and newer.decision.improvement > 0.01
    assert alias("gate-better", "champion") == "2"
    tags = version_tags("gate-better", "2")
    assert tags["mlops.gate.decision"] == "promoted"
    assert float(tags["mlops.gate.challenger_score"]) < float(tags["mlops.gate.champion_score"])
    assert tags["mlops.trigger"] == "drift" and tags["mlops.trigger.reason"] == "DataDriftHigh bmi"
    assert tags["mlops.data.dvc_md5"] != version_tags("gate-better", "1")["mlops.data.dvc_md5"]


def test_with_a_canary_promotion_moves_the_canary_alias_only(as_admin, datasets):
    train("gate-canary", datasets["v1"])

    newer = train("gate-canary", datasets["shifted"], canary_alias="canary")

    assert newer.decision.outcome == "promoted-to-canary"
    assert alias("gate-canary", "canary") == "2" and alias("gate-canary", "champion") == "1"


def test_a_bad_frame_stops_the_run_and_registers_nothing(as_admin, datasets, tmp_path):
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from services.training.checks import DataCheckError

    train("gate-bad-frame", datasets["v1"])  # the champion's signature gives the columns' types
    frame = pd.read_csv(datasets["v1"])
    frame.loc[3, "bmi"] = None
    frame.loc[7, "age"] = 9.0  # far outside the plausible range
    frame["s1"] = frame["s1"].astype(object)
    frame.loc[11, "s1"] = "twelve"
    bad = tmp_path / "bad.csv"
    frame.drop(columns=["s6"]).to_csv(bad, index=False)

    with pytest.raises(DataCheckError) as caught:
        train("gate-bad-frame", bad)

    report = str(caught.value)
    assert "column bmi: not_nullable fails at rows 3" in report
    assert "column age: in_range(-0.5, 0.5) fails at rows 7 (9.0)" in report
    assert "column s6: missing from the data" in report
    assert "column s1: coerce_dtype('float64') fails at rows 11 ('twelve')" in report
    assert [v.version for v in MlflowClient().search_model_versions("name = 'gate-bad-frame'")] == ["1"]
    runs = mlflow.search_runs(
        experiment_names=["pipelines/diabetes"],
        filter_string="tags.`mlops.data.checks` = 'failed'",
        output_format="list",
    )
    assert runs and runs[0].info.status == "FAILED"
    assert "column age" in mlflow.artifacts.load_text(f"runs:/{runs[0].info.run_id}/data-checks.txt")

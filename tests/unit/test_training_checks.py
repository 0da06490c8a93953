"""Data checks of the training runner (pandera): bad frames fail with a report naming columns and rows."""

from __future__ import annotations

import pandas as pd
import pytest

from services.training.checks import DataCheckError, check_frame, frame_schema
from services.training.task import Task, load_task

SIGNATURE = {"age": "double", "visits": "long"}


def frame(**columns) -> pd.DataFrame:
    base = {"age": [0.1, 0.2, 0.3], "visits": [1, 2, 3], "y": [10.0, 20.0, 30.0]}
    return pd.DataFrame({**base, **columns})


def failures(data: pd.DataFrame, ranges=None) -> str:
    with pytest.raises(DataCheckError) as caught:
        check_frame(data, frame_schema(SIGNATURE, "y", ranges or {}))
    return str(caught.value)


def test_a_good_frame_passes_and_gets_the_signature_types():
    checked = check_frame(frame(age=[0, 1, 2]), frame_schema(SIGNATURE, "y", {"age": (0, 2)}))
    assert str(checked["age"].dtype) == "float64"  # integers read from CSV are valid doubles


def test_nulls_are_reported_with_their_rows():
    report = failures(frame(y=[1.0, None, 3.0]))
    assert "column y: not_nullable fails at rows 1" in report


def test_values_out_of_range_are_reported_each_with_row_and_value():
    report = failures(frame(age=[0.1, 7.0, -3.0]), {"age": (0, 1)})
    assert "column age: in_range(0, 1) fails at rows 1 (7.0), 2 (-3.0)" in report


def test_an_open_ended_range():
    report = failures(frame(y=[1.0, -1.0, 2.0]), {"y": (0, None)})
    assert "column y: in_range(0, inf) fails at rows 1 (-1.0)" in report


def test_a_wrong_type_does_not_hide_range_failures_in_other_rows():
    report = failures(frame(age=[0.5, "old", 9.0]), {"age": (0, 1)})
    assert "column age: coerce_dtype('float64') fails at rows 1 ('old')" in report
    assert "column age: in_range(0, 1) fails at rows 2 (9.0)" in report


def test_an_integer_column_with_fractions_is_not_truncated():
    report = failures(frame(visits=[1, 2.5, 3]))
    assert "column visits: dtype('int64') (found float64)" in report


def test_a_missing_column_is_named():
    report = failures(frame().drop(columns=["visits"]))
    assert "column visits: missing from the data" in report


def test_every_problem_is_reported_at_once():
    with pytest.raises(DataCheckError) as caught:
        check_frame(
            frame(age=[None, 9.0, 0.1], y=[1.0, 2.0, None]).drop(columns=["visits"]),
            frame_schema(SIGNATURE, "y", {"age": (0, 1)}),
        )
    assert {f.column for f in caught.value.failures} == {"age", "visits", "y"}
    assert "3 row" in str(caught.value)


def test_an_unknown_signature_type_is_a_clear_error():
    with pytest.raises(ValueError, match="column photo: signature type 'tensor' has no data check"):
        frame_schema({"photo": "tensor"}, "y", {})


def test_a_task_with_an_unknown_metric_or_inverted_range_is_refused():
    with pytest.raises(ValueError, match="metric: got 'auc'; allowed: rmse, mae, r2, accuracy"):
        Task(target="y", fit=lambda *a: None, metric="auc")
    with pytest.raises(ValueError, match=r"ranges\['age'\]: min 2 is above max 1"):
        Task(target="y", fit=lambda *a: None, ranges={"age": (2, 1)})


@pytest.mark.parametrize(
    "entry_point, message",
    [
        ("examples.diabetes", "expected module:attribute"),
        ("examples.nothing_here:task", "No module named"),
        ("examples.diabetes:TARGET", "gave str, expected"),
    ],
)
def test_a_bad_entry_point_is_named(entry_point, message):
    with pytest.raises(ValueError, match=message):
        load_task(entry_point)


def test_the_example_task_loads():
    task = load_task("examples.diabetes:task")
    assert task.target == "target" and "bmi" in task.features and not task.greater_is_better

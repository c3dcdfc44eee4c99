"""The Prefect artifacts of a flow run, built from a summary and the workspace's reports."""

from __future__ import annotations

from aider_edge import flow_artifacts

SELECTED = {
    "scenario": "s2",
    "method": "adaptive",
    "run_id": "abc123",
    "val_g_mean": 0.71234,
    "candidates": [
        {"scenario": "s2", "method": "adaptive", "val_g_mean": 0.71234, "val_accuracy": 0.8},
        {"scenario": "s1", "method": "baseline", "val_g_mean": 0.5, "val_accuracy": 0.7},
    ],
}
ENTRY = {"threads": 4, "p50_ms": 10.123, "p90_ms": 12.0, "budget_ms": 100.0, "passed": True}
VALIDATION = {
    "passed": True,
    "failures": [],
    "latency_by_profile": {
        "host": {"precision": "fp32", **ENTRY},
        "raspberry_pi_5": {"precision": "int8", **ENTRY, "p50_ms": 5.0},
    },
    "deploy": {
        "model": "model.onnx",
        "profiles": {
            "host": {"model": "model.onnx", "precision": "fp32"},
            "raspberry_pi_5": {"model": "model.int8.onnx", "precision": "int8"},
        },
    },
}
SUMMARY = {
    "ran": ["train@s2-adaptive", "select"],
    "skipped": ["ingest"],
    "registration": {"version": "3", "new": True},
    "promotion": {
        "decision": "promoted",
        "reason": "test G-Mean 0.7000 beats 0.6500 by the margin",
        "challenger_version": "3",
        "champion_version": "2",
        "challenger_test_g_mean": 0.7,
        "champion_test_g_mean": 0.65,
    },
    "bundle": {"version": "3", "path": "dist/bundle", "skipped": False},
}


def test_the_summary_says_what_ran_what_was_chosen_and_the_promotion_with_both_g_means():
    text = flow_artifacts.summary_markdown(SUMMARY, SELECTED, VALIDATION)
    assert "**Ran** 2 stage(s): `train@s2-adaptive`, `select`" in text
    assert "(skipped): `ingest`" in text
    assert "`s2-adaptive` (val G-Mean 0.7123, MLflow run `abc123`)" in text
    assert "INT8 on: raspberry_pi_5" in text
    assert "version 3 registered as challenger" in text
    assert "| challenger | 3 | 0.7000 |" in text and "| champion | 2 | 0.6500 |" in text
    assert "v3 written in `dist/bundle`" in text


def test_a_run_with_nothing_to_do_and_no_reports_still_reads():
    text = flow_artifacts.summary_markdown({"ran": [], "skipped": ["ingest"]}, None, None)
    assert "**Ran** 0 stage(s): none" in text and "nothing to register" in text


def test_tables_rank_candidates_and_give_each_profile_its_own_model():
    rows = flow_artifacts.candidate_rows(SELECTED)
    assert [(r["rank"], r["run"], r["selected"]) for r in rows] == [
        (1, "s2-adaptive", True),
        (2, "s1-baseline", False),
    ]
    latency = {r["profile"]: r for r in flow_artifacts.latency_rows(VALIDATION)}
    assert latency["host"]["model"] == "fp32" and latency["host"]["p50_ms"] == 10.12
    assert (
        latency["raspberry_pi_5"]["model"] == "int8" and latency["raspberry_pi_5"]["p50_ms"] == 5.0
    )


def test_the_link_goes_to_the_version_page_without_credentials():
    link = flow_artifacts.registry_link("https://u:secret@mlflow.example.org/", "clf", "3")
    assert link == "https://mlflow.example.org/#/models/clf/versions/3"
    local = flow_artifacts.registry_link("sqlite:////w/mlflow.db", "aider-edge-classifier", "1")
    assert local == "http://127.0.0.1:5000/#/models/aider-edge-classifier/versions/1"

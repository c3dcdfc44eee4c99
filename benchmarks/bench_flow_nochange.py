"""How long the retraining flow takes when nothing changed, next to a first run and `dvc repro`.

Builds a tiny project (this repository's dvc.yaml and code, 32 px synthetic frames, scenario s1,
the baseline, one epoch) in a temporary git + DVC repo and runs, side by side in one go:

1. ``python flows/retrain.py`` (first run: every stage, registration, promotion, bundle),
2. ``python flows/retrain.py`` again with nothing changed (the issue's "well under a minute"),
3. ``dvc repro`` with nothing changed (DVC alone, for scale).

Each flow run is a fresh process that starts Prefect's temporary local server, as ``make run``
does without ``PREFECT_API_URL``. Writes ``benchmarks/results/flow_nochange.json`` and ``.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET_S = 60
PARAMS = {
    "seed": 3,
    "data": {"image_size": 32, "synthetic": {"per_class": 60, "image_size": 48}},
    "split": {"train_size": 60, "val_per_class": 4, "test_per_class": 4},
    "train": {
        "scenarios": ["s1"],
        "methods": ["baseline"],
        "epochs": 1,
        "batch_size": 16,
        "num_threads": 2,
    },
    "export": {"calibration": {"images": 16, "method": "minmax"}},
    "validate": {"profiles": [{"name": "host", "threads": 1, "budget_ms": 1000.0}]},
}


def deep_update(base: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def make_project(repo: Path, env: dict) -> None:
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data" / "source", repo / "data" / "source")
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    params = deep_update(yaml.safe_load((repo / "params.yaml").read_text()), PARAMS)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"], ["git", "add", "-A"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "init"], cwd=repo, env=env, check=True)


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def main() -> None:
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
        env = os.environ | {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1",
            "PREFECT_HOME": str(Path(tmp) / "prefect-home"),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "GIT_AUTHOR_NAME": "bench",
            "GIT_AUTHOR_EMAIL": "bench@example.org",
            "GIT_COMMITTER_NAME": "bench",
            "GIT_COMMITTER_EMAIL": "bench@example.org",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("PREFECT_API_URL", None)
        repo = Path(tmp) / "project"
        make_project(repo, env)
        flow = [sys.executable, str(ROOT / "flows" / "retrain.py"), "--project-dir", str(repo)]
        first_s, first_line = timed(flow, repo, env)
        print(f"first run: {first_s:.1f} s  {first_line}", flush=True)
        again_s, again_line = timed(flow, repo, env)
        print(f"no-change run: {again_s:.1f} s  {again_line}", flush=True)
        dvc_s, _ = timed([str(bin_dir / "dvc"), "repro"], repo, env)
        print(f"dvc repro, nothing to do: {dvc_s:.1f} s", flush=True)

    result = {
        "first_run_s": round(first_s, 1),
        "no_change_run_s": round(again_s, 1),
        "dvc_repro_no_change_s": round(dvc_s, 1),
        "no_change_vs_first": round(again_s / first_s, 3),
        "no_change_vs_dvc_repro": round(again_s / dvc_s, 2),
        "target_s": TARGET_S,
        "passed": again_s < TARGET_S,
        "first_run_summary": first_line,
        "no_change_summary": again_line,
        "note": "each flow run includes starting Prefect's temporary local server; "
        "CPU shared with other work, 2 cores",
        "cpu_count": os.cpu_count(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "flow_nochange.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "flow_nochange.md").write_text(
        "| run (tiny project, 2 cores) | seconds |\n|---|---|\n"
        f"| flow, first run (all stages, register, promote, bundle) | {first_s:.1f} |\n"
        f"| flow, nothing changed | {again_s:.1f} |\n"
        f"| `dvc repro`, nothing changed | {dvc_s:.1f} |\n\n"
        f"No-change flow run / first run: {again_s / first_s:.3f}; "
        f"/ `dvc repro`: {again_s / dvc_s:.1f}x. Target: under {TARGET_S} s "
        f"({'met' if again_s < TARGET_S else 'missed'}).\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

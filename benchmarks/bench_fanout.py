"""The training wave of the demo through the retraining flow at ``flow.workers`` 1 and 2.

Builds the demo project (this repository's dvc.yaml cut to ingest, split and train, the default
params.yaml) in a temporary git + DVC repo, runs ingest and split and decodes the pixel cache once,
then copies it twice and runs the flow's training wave in each copy: once with one worker (every
run after the other, all cores each) and once with two (two runs at a time, the cores divided).
Both runs happen here, side by side, so their ratio is meaningful on a shared machine.

Writes ``benchmarks/results/fanout.json`` and ``benchmarks/results/fanout.md``.
Usage: ``python benchmarks/bench_fanout.py [--scenarios s1 s5] [--methods baseline adaptive]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
TARGET_RATIO = 1.3  # the target: within 1.3x of (one-worker time / N)


def run(cmd: list[str], cwd: Path, env: dict) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def make_project(repo: Path, env: dict, scenarios: list[str], methods: list[str]) -> None:
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data" / "source", repo / "data" / "source")
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    dvc_yaml["stages"] = {k: dvc_yaml["stages"][k] for k in ("ingest", "split", "train")}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["scenarios"], params["train"]["methods"] = scenarios, methods
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"]):
        run(cmd, repo, env)
    run([str(BIN / "dvc"), "repro", "split"], repo, env)
    run([str(BIN / "aider-edge"), "cache"], repo, env)


def set_workers(repo: Path, workers: int) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.setdefault("flow", {})["workers"] = workers
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def train_wave(flow_module, repo: Path) -> dict:
    summary = flow_module.retrain(project_dir=str(repo), publish_bundle=False)
    runs = [r for r in summary["stages"] if r["stage"].startswith("train@") and r["ran"]]
    wall = max(r["ended_at"] for r in runs) - min(r["started_at"] for r in runs)
    return {
        "wall_s": round(wall, 1),
        "runs": {r["stage"]: r["seconds"] for r in runs},
        "threads_per_run": runs[0]["env"].get("OMP_NUM_THREADS", "all cores"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", default=["s1", "s2", "s3", "s4", "s5"])
    parser.add_argument("--methods", nargs="+", default=["baseline", "adaptive"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        env = os.environ | {
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        base = Path(tmp) / "base"
        print("preparing the demo project (ingest, split, pixel cache) ...", flush=True)
        make_project(base, env, args.scenarios, args.methods)
        os.environ["PREFECT_HOME"] = str(Path(tmp) / "prefect-home")
        spec = importlib.util.spec_from_file_location("retrain_bench", ROOT / "flows/retrain.py")
        flow_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(flow_module)

        waves = {}
        for workers in (1, 2):
            repo = Path(tmp) / f"workers{workers}"
            shutil.copytree(base, repo, symlinks=True)
            set_workers(repo, workers)
            started = time.perf_counter()
            waves[workers] = train_wave(flow_module, repo)
            print(
                f"workers {workers}: train wave {waves[workers]['wall_s']:.1f} s "
                f"(flow {time.perf_counter() - started:.1f} s)",
                flush=True,
            )

    one, two = waves[1]["wall_s"], waves[2]["wall_s"]
    ratio = two / (one / 2)
    result = {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "runs": len(args.scenarios) * len(args.methods),
        "scenarios": args.scenarios,
        "methods": args.methods,
        "workers_1": waves[1],
        "workers_2": waves[2],
        "speedup": round(one / two, 2),
        "vs_ideal": round(ratio, 2),
        "target_vs_ideal": TARGET_RATIO,
        "note": "CPU only: the GPU target (one GPU per worker) needs a GPU host",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fanout.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "fanout.md").write_text(
        f"# Fan-out of the demo's training wave ({result['runs']} runs, {result['cpu']}, "
        f"{result['cores']} cores)\n\n"
        "| flow.workers | threads per run | train wave (s) |\n|---|---|---|\n"
        f"| 1 | {waves[1]['threads_per_run']} | {one:.1f} |\n"
        f"| 2 | {waves[2]['threads_per_run']} | {two:.1f} |\n\n"
        f"Speed-up {one / two:.2f}x; two workers take {ratio:.2f}x the ideal (one-worker time / 2), "
        f"target {TARGET_RATIO}x. Both measured side by side in one run.\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Every bad input a user may hand the pipeline: its exit code, its one line, and nothing lost.

Builds one tiny project (a class-per-folder pool of 36 random 16 px images, one 32 px scenario, the
baseline, one epoch, exported to fp32 ONNX and packed into a signed bundle; an empty MLflow
registry) by the CLI, then, for each case, copies it, breaks it the way the case says,
runs the command a user would, and records the exit code, the error line and whether the earlier
outputs (pool, splits, the finished run) are byte-identical afterwards (sha256 before and after).

Writes ``benchmarks/results/faults.json`` and ``faults.md``. Run: ``.venv/bin/python
benchmarks/bench_faults.py`` (about two minutes on 2 cores; every command is a fresh process).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from _machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CLI = str(ROOT / ".venv" / "bin" / "aider-edge")
PARAMS = {
    "seed": 1,
    "data": {"source": "folder", "path": "tree", "classes": ["a", "b", "c"], "image_size": 32},
    "split": {
        "train_size": 18,
        "val_per_class": 2,
        "test_per_class": 2,
        "scenarios": {"even": [1 / 3, 1 / 3, 1 / 3]},
    },
    "train": {
        "scenarios": ["even"],
        "methods": ["baseline"],
        "epochs": 1,
        "batch_size": 6,
        "num_threads": 1,
    },
    "export": {"int8": False},
}
TRAIN = ["train", "--scenario", "even", "--method", "baseline"]
RUN_DIR = Path("models/even-baseline")
BUNDLE = Path("dist/bundle")
KEPT = ("data/raw", "data/splits", RUN_DIR.as_posix(), BUNDLE.as_posix(), "mlflow.db")
"""The earlier outputs that no failed command may change."""
TRUSTED_KEY = "keys/bundle-signing.pub"


def write_tree(root: Path, per_class: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for label, n in per_class.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{label}_{i:03d}.png")


def cli(
    root: Path, args: list[str], env_overrides: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "AIDER_EDGE_DEBUG": ""} | (env_overrides or {})
    return subprocess.run(
        [CLI, *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )


def snapshot(root: Path) -> dict[str, str]:
    files = {}
    for top in KEPT:
        found = [root / top] if (root / top).is_file() else sorted((root / top).rglob("*"))
        for path in found:
            if path.is_file():
                files[path.relative_to(root).as_posix()] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
    return files


def edit_params(root: Path, edit: Callable[[dict], None]) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    edit(raw)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def first_split_image(root: Path, split: str = "val") -> Path:
    return root / (root / f"data/splits/{split}.csv").read_text().splitlines()[1].split(",")[0]


def torch_save(path: Path, value_source: str) -> None:
    code = f"import torch; torch.save({value_source}, {str(path)!r})"
    subprocess.run([str(ROOT / ".venv/bin/python"), "-c", code], check=True)


@dataclass(frozen=True)
class Case:
    name: str
    breaks: Callable[[Path], None]
    command: list[str]
    expect_exit: int = 2
    rewrites: tuple[str, ...] = ()
    """Kept paths that a command succeeding on purpose (exit 0) replaces by design."""
    line_from: Callable[[Path], str] | None = None
    """Where the case's line is when it is not on stderr (a file the command writes)."""
    env: dict[str, str] | None = None
    """Environment variables the command runs with (on top of the template's)."""


def _params_text(text: str) -> Callable[[Path], None]:
    return lambda root: (root / "params.yaml").write_text(text)


def _split_key(**split) -> Callable[[Path], None]:
    return lambda root: edit_params(root, lambda raw: raw["split"].update(split))


def _weights(make: Callable[[Path], None]) -> Callable[[Path], None]:
    def breaks(root: Path) -> None:
        make(root / "weights.pt")
        edit_params(root, lambda raw: raw.setdefault("model", {}).update(weights="weights.pt"))

    return breaks


def _reingest(root: Path) -> None:
    write_tree(root / "tree", {"a": 13, "b": 12, "c": 12}, seed=5)
    assert cli(root, ["ingest"]).returncode == 0


def _failed_split(root: Path) -> None:
    _split_key(scenarios={"even": [0.98, 0.01, 0.01]})(root)
    assert cli(root, ["split"]).returncode == 2


def _edited_image(root: Path) -> None:
    shutil.rmtree(root / "data/cache")
    image = first_split_image(root, "test")
    image.write_bytes(image.read_bytes() + b"\0")


def _corrupt_checkpoint(root: Path) -> None:
    (root / RUN_DIR / "checkpoint.pt").write_bytes(os.urandom(256))


def _rejected_line(root: Path) -> str:
    rejected = (root / "data/raw/rejected.csv").read_text()
    return next(row for row in rejected.splitlines() if "linked.png" in row)


def _escaping_symlink(root: Path) -> None:
    outside = root.parent / f"{root.name}-outside.png"
    shutil.copy(next((root / "tree/a").glob("*.png")), outside)
    (root / "tree/a/linked.png").symlink_to(outside)


def _predict(root_relative_image: str = "tree/a/a_000.png", key: str = TRUSTED_KEY) -> list[str]:
    return ["predict", "--bundle", BUNDLE.as_posix(), "--trusted-key", key, root_relative_image]


def _flip_model_byte(root: Path) -> None:
    model = root / BUNDLE / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))


def _edit_manifest(root: Path) -> None:
    manifest = root / BUNDLE / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["classes"] = list(reversed(raw["classes"]))  # the labels a drone would report
    manifest.write_text(json.dumps(raw, indent=2))


def _other_key(root: Path) -> None:
    assert cli(root, ["keygen", "--out-dir", "other-keys"]).returncode == 0


CASES = [
    Case("params.yaml is not YAML", _params_text("train: [epochs\n"), TRAIN),
    Case("params.yaml is empty", _params_text(""), TRAIN),
    Case(
        "train.lr is a word",
        lambda root: edit_params(root, lambda raw: raw["train"].update(lr="fast")),
        TRAIN,
    ),
    Case(
        "unknown scenario", lambda root: None, ["train", "--scenario", "s9", "--method", "baseline"]
    ),
    Case("split params edited, split not re-run", _split_key(train_size=12), TRAIN),
    Case("a scenario gives a class no image", _split_key(train_size=1), ["split"]),
    Case("split failed (a class gets no image), train run", _failed_split, TRAIN),
    Case("pool re-ingested, split not re-run", _reingest, TRAIN),
    Case(
        "an image of the splits deleted from the pool",
        lambda r: first_split_image(r).unlink(),
        TRAIN,
    ),
    Case("an image edited after ingest (cold cache)", _edited_image, TRAIN),
    Case("model.weights: random bytes", _weights(lambda p: p.write_bytes(os.urandom(512))), TRAIN),
    Case(
        "model.weights: a saved tensor", _weights(lambda p: torch_save(p, "torch.zeros(3)")), TRAIN
    ),
    Case(
        "model.weights: a checkpoint of 1 tensor",
        _weights(lambda p: torch_save(p, "{'features.0.0.weight': torch.zeros(16, 3, 3, 3)}")),
        TRAIN,
    ),
    Case(
        "data.path does not exist",
        lambda root: edit_params(root, lambda raw: raw["data"].update(path="no-such-folder")),
        ["ingest"],
    ),
    Case("select with its run missing", lambda root: shutil.rmtree(root / RUN_DIR), ["select"]),
    Case("export before select", lambda root: shutil.rmtree(root / "selection"), ["export"]),
    Case(
        "corrupt resume checkpoint",
        _corrupt_checkpoint,
        TRAIN,
        expect_exit=0,
        rewrites=(RUN_DIR.as_posix(), "mlflow.db"),  # the run is trained again, and logged
    ),
    Case("bundle: a byte of the model changed", _flip_model_byte, _predict()),
    Case("bundle: manifest edited (classes reordered)", _edit_manifest, _predict()),
    Case(
        "bundle: signature removed",
        lambda root: (root / BUNDLE / "manifest.sig").unlink(),
        _predict(),
    ),
    Case(
        "bundle: signed by another key", _other_key, _predict(key="other-keys/bundle-signing.pub")
    ),
    Case("registry: promote with nothing registered", lambda root: None, ["promote"]),
    Case("registry: rollback without a champion", lambda root: None, ["promote", "--rollback"]),
    Case("registry: serve without a champion", lambda root: None, ["serve-model"]),
    Case(
        "registry: tracking server unreachable",
        lambda root: None,  # the files are fine: the server is gone
        ["promote"],
        env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
    ),
    Case(
        "symlink out of the dataset folder",
        _escaping_symlink,
        ["ingest"],
        expect_exit=0,
        rewrites=("data/raw",),
        line_from=_rejected_line,
    ),
]


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    flagged = [line for line in lines if ": error: " in line or line.startswith("warning:")]
    if flagged:
        return flagged[-1]
    return lines[-1] if lines else ""


def run_case(template: Path, root: Path, case: Case) -> dict:
    shutil.copytree(template, root, symlinks=True)
    case.breaks(root)
    before = snapshot(root)
    start = time.perf_counter()
    proc = cli(root, case.command, case.env)
    seconds = time.perf_counter() - start
    after = snapshot(root)
    changed = sorted(
        p
        for p in before
        if after.get(p) != before[p] and not any(p.startswith(top) for top in case.rewrites)
    )
    line = case.line_from(root) if case.line_from else error_line(proc)
    env = "".join(f"{k}={v} " for k, v in (case.env or {}).items())
    result = {
        "case": case.name,
        "command": env + "aider-edge " + " ".join(case.command),
        "exit": proc.returncode,
        "expected_exit": case.expect_exit,
        "line": line,
        "traceback": "Traceback" in proc.stderr,
        "seconds": round(seconds, 1),
        "changed": changed,
    }
    result["ok"] = (
        proc.returncode == case.expect_exit
        and not result["traceback"]
        and not result["changed"]
        and bool(result["line"])
    )
    return result


def build_template(root: Path) -> None:
    write_tree(root / "tree", {"a": 12, "b": 12, "c": 12}, seed=0)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    steps = (
        ["ingest"],
        ["split"],
        TRAIN,
        ["select"],
        ["export"],
        ["keygen"],
        # validate would measure latency per profile; the bundle cases need only a signed bundle
        ["bundle", "--allow-unvalidated", "--out", BUNDLE.as_posix()],
    )
    for args in steps:
        proc = cli(root, args)
        if proc.returncode != 0:
            sys.exit(f"bench_faults: building the project failed at {args}: {proc.stderr[-500:]}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="aider-faults-") as tmp:
        work = Path(tmp)
        template = work / "template"
        template.mkdir()
        print("building the tiny project ...", file=sys.stderr)
        build_template(template)
        results = []
        for i, case in enumerate(CASES, 1):
            print(f"[{i}/{len(CASES)}] {case.name}", file=sys.stderr)
            results.append(run_case(template, work / f"case-{i:02d}", case))

    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "cases": results,
        "all_ok": all(r["ok"] for r in results),
    }
    (RESULTS / "faults.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# Bad inputs: exit code, the one line, nothing lost",
        "",
        f"Each case on a copy of one tiny finished project, by the CLI as a user runs it, on "
        f"{cpu_name()} ({os.cpu_count()} cores). *Nothing lost*: the sha256 of every file of "
        f"{', '.join(f'`{k}`' for k in KEPT)} is the same before and after the command. "
        "Exit 2: the user can fix it; 0: handled with a warning. No case printed a traceback "
        "unless the table says so.",
        "",
        "| case | command | exit | line | nothing lost | s |",
        "|---|---|---:|---|---|---:|",
    ]
    for r in results:
        lost = "yes" if not r["changed"] else "NO: " + ", ".join(r["changed"][:3])
        line = r["line"].replace("|", "\\|")
        flag = "" if r["ok"] else " **(unexpected)**"
        lines.append(
            f"| {r['case']}{flag} | `{r['command']}` | {r['exit']} | {line} | {lost} | "
            f"{r['seconds']} |"
        )
    lines += ["", f"- every case as expected: {'yes' if summary['all_ok'] else 'no'}"]
    (RESULTS / "faults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

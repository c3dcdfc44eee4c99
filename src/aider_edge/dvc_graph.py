"""DVC's stage graph, as the retraining flow needs it: order, what changed, how to run a stage.

The graph lives only in ``dvc.yaml``; this module asks DVC for it (``Repo.index.graph``) rather
than keeping a list of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def stage_order(root: Path) -> list[str]:
    """Every stage of ``dvc.yaml`` (matrix entries expanded), upstream first.

    Among stages that could run in either order, ``dvc.yaml``'s own order is kept, so the task
    list reads like the file.
    """
    root = Path(root).resolve()
    with in_repo(root) as repo:
        return [_address(stage, root) for stage in _upstream_first(repo)]


def _upstream_first(repo: Any) -> list[Any]:
    import networkx as nx

    position = {id(stage): i for i, stage in enumerate(repo.index.stages)}
    # DVC's graph points from a stage to the stages it depends on: reversed, upstream first.
    return list(
        nx.lexicographical_topological_sort(
            repo.index.graph.reverse(copy=True),
            key=lambda stage: f"{position.get(id(stage), 0):08d}",
        )
    )


def _address(stage: Any, root: Path) -> str:
    """The stage as ``dvc repro`` takes it from ``root``: ``name`` for the root ``dvc.yaml``,
    ``path/dvc.yaml:name`` otherwise (``Stage.addressing`` is relative to the current folder)."""
    dvcfile = Path(stage.path).resolve()
    if dvcfile == root / "dvc.yaml":
        return str(stage.name)
    return f"{dvcfile.relative_to(root).as_posix()}:{stage.name}"


def stage_changes(root: Path, stages: list[str]) -> dict[str, dict[str, Any]]:
    """``dvc status`` of each stage: empty when it is up to date (one DVC repo for all)."""
    with in_repo(Path(root).resolve()) as repo:
        return {stage: dict(repo.status(targets=[stage])) for stage in stages}


@contextlib.contextmanager
def in_repo(root: Path) -> Iterator[Any]:
    """DVC's Python API inside ``root``: DVC resolves dvc.yaml paths against the working folder,
    so it is entered for the call (the flow runs its tasks one after the other in one thread)."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:
        yield repo


def dvc_env() -> dict[str, str]:
    """The environment for ``dvc`` subprocesses: stages run ``aider-edge`` from this interpreter."""
    bin_dir = str(Path(sys.executable).parent)
    return os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def dvc_executable() -> str:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else "dvc"


def error_line(stage: str, output: str, code: int) -> str:
    """The stage's own one-line error (``aider-edge <cmd>: error: ...``), else DVC's; a command
    killed by a signal is named as such."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    own = [line for line in lines if re.match(r"aider-edge [\w-]+: error: ", line)]
    if own:
        return f"stage {stage} failed: {own[-1]}"
    # A progress bar redrawn with carriage returns can run into DVC's line: start at "ERROR".
    dvc_errors = [line[line.index("ERROR: ") :] for line in lines if "ERROR: " in line]
    last = dvc_errors[-1] if dvc_errors else (lines[-1] if lines else "no output")
    killed = re.search(r"exited with -(\d+)", last)
    if killed:
        try:
            name = signal.Signals(int(killed.group(1))).name
        except ValueError:
            name = f"signal {killed.group(1)}"
        return f"stage {stage} was killed by {name} (exit {code}): {last}"
    return f"stage {stage} failed (exit {code}): {last}"


def stage_waves(root: Path) -> list[list[str]]:
    """The stages grouped into waves that can run at once: every stage of a wave depends only on
    stages of earlier waves (all ``train@*`` runs form one). Within a wave, ``dvc.yaml`` order."""
    import networkx as nx

    root = Path(root).resolve()
    with in_repo(root) as repo:
        rank = {id(stage): i for i, stage in enumerate(_upstream_first(repo))}
        waves = [
            [_address(stage, root) for stage in sorted(generation, key=lambda s: rank[id(s)])]
            for generation in nx.topological_generations(repo.index.graph.reverse(copy=True))
        ]
    return [wave for wave in waves if wave]


def wait_for_lock_repro(stage: str) -> list[str]:
    """The command that runs one stage: ``--wait-for-lock`` lets several run in one workspace
    (DVC holds the repository lock while it records a stage, not while the stage's command runs)."""
    return [dvc_executable(), "--wait-for-lock", "repro", "--single-item", stage]


def upstream_stages(root: Path, stages: list[str]) -> dict[str, list[str]]:
    """Per stage, the stages it depends on directly (their outputs are its inputs)."""
    root = Path(root).resolve()
    with in_repo(root) as repo:
        by_address = {_address(s, root): s for s in repo.index.stages}
        return {
            stage: sorted(_address(s, root) for s in repo.index.graph.successors(by_address[stage]))
            for stage in stages
        }


def run_cacheable(root: Path, stages: list[str]) -> list[str]:
    """The stages another workspace can hand back through DVC's run-cache: DVC keeps an entry
    for each and every output's content travels with ``dvc push`` (``cache: false`` outputs,
    metrics included, do not)."""
    from dvc.stage.cache import _can_hash

    root = Path(root).resolve()
    with in_repo(root) as repo:
        by_address = {_address(s, root): s for s in repo.index.stages}
        return [
            stage
            for stage in stages
            if _can_hash(by_address[stage]) and all(o.use_cache for o in by_address[stage].outs)
        ]

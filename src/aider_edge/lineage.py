"""Code and data lineage: which commit and which DVC-versioned data a run or a model came from.

Read side: :func:`lineage_tags` (the tags every training run carries), :func:`data_hash` (what the
exported model names as its training data), :func:`dvc_hashes` (DVC's md5 of a file and of the
output holding it, through DVC's own index). Write side, for the retraining flow: :func:`commit_versions` commits
``dvc.lock`` and params to git, :func:`push_outputs` pushes the outputs to the DVC remote.

Git is asked through its command line and DVC through its Python API, never through MLflow: tracking
(:mod:`aider_edge.tracking`) only copies these tags into runs.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path, PurePosixPath

from aider_edge import dvc_graph, layout
from aider_edge.digest import file_digest
from aider_edge.errors import AiderEdgeError

log = logging.getLogger(__name__)

TAG_GIT_COMMIT = "git_commit"
"""``git rev-parse HEAD`` of the project root; absent outside a git checkout."""
TAG_GIT_DIRTY = "git_dirty"
"""``"true"`` when the checkout has uncommitted changes (the commit alone does not pin the code)."""
TAG_DVC_SPLIT_MD5 = "dvc_split_md5"
"""md5 that ``dvc.lock`` records for the DVC output holding the training split: the ``.dir`` hash
of ``data/splits`` (stage ``split``). Absent before ``dvc.lock`` exists or when it is stale."""
TAG_DVC_TRAIN_SPLIT_MD5 = "dvc_train_split_md5"
"""DVC's md5 of the training split file itself, from the ``.dir`` listing in the DVC cache (when
the cache holds it): pins this scenario's file rather than the whole splits folder."""
TAG_DVC_LOCK_STALE = "dvc_lock_stale"
"""``"true"`` when the split file no longer matches what ``dvc.lock`` recorded (edited or re-split
outside DVC); the DVC tags are then left out rather than pointing at other data."""
TAG_TRAIN_SPLIT_SHA256 = "train_split_sha256"
"""sha256 of the training split CSV's bytes: always present, with or without DVC."""
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"  # shown by the MLflow UI as the run's commit
VERSIONED_FILES = (layout.DVC_LOCK, layout.DVC_YAML, layout.PARAMS_FILE)
"""What :func:`commit_versions` commits: with them, a git commit pins the data of a run."""


def git_commit(root: Path) -> str | None:
    """``git rev-parse HEAD`` in ``root``; ``None`` outside git, without commits or without git."""
    out = _git(root, "rev-parse", "--verify", "--quiet", "HEAD")
    if out is None:
        return None
    sha = out.strip()
    return sha if re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", sha) else None


def git_dirty(root: Path) -> bool | None:
    """Whether tracked or untracked, non-ignored files differ from HEAD; ``None`` outside git."""
    out = _git(root, "status", "--porcelain")
    return None if out is None else bool(out.strip())


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def dvc_hashes(root: Path, path: Path) -> tuple[str | None, str | None]:
    """DVC's md5 of the output holding ``path`` and of ``path`` itself, from DVC's own index.

    For a training split that is the ``.dir`` hash of ``data/splits`` (what ``dvc.lock`` records
    for stage ``split``) and the split file's md5 inside it. DVC reads the directory listing from
    its cache wherever ``cache.dir`` points (a team's shared cache, an experiment's temporary copy).
    ``(None, None)`` outside a DVC project, without ``dvc.lock``, or when no output holds ``path``;
    the file's md5 is ``None`` when the cache lacks the listing.
    """
    root = Path(root).resolve()
    rel = _relative(path, root)
    if rel is None or not (root / ".dvc").is_dir():
        return None, None
    from dvc.repo import Repo  # ~0.3 s, and only where DVC versions the project

    out_md5: str | None = None
    try:
        with Repo(root.as_posix()) as repo:
            for part in [*reversed(rel.parents[:-1]), rel]:  # the output is the outermost one
                info = repo.dvcfs.info(part.as_posix()).get("dvc_info") or {}
                if info.get("isout") and isinstance(info.get("md5"), str):
                    if out_md5 is None:
                        out_md5 = info["md5"]
                    if part == rel:
                        return out_md5, info["md5"]
    # Lineage is best effort: DVC raises its own errors for a damaged lock or a cache that lacks
    # a listing, and a run must not fail for a tag. The sha256 tag is always there.
    except Exception as exc:
        log.debug("DVC lineage of %s unavailable: %s", rel, exc)
    return out_md5, None


def dvc_hash(root: Path, path: Path) -> str | None:
    """The md5 DVC records for the output holding ``path`` (see :func:`dvc_hashes`)."""
    return dvc_hashes(root, path)[0]


def _relative(path: Path, root: Path) -> PurePosixPath | None:
    path = Path(path)
    path = (path if path.is_absolute() else root / path).resolve()
    try:
        return PurePosixPath(path.relative_to(root).as_posix())
    except ValueError:
        return None


def lineage_tags(root: Path, train_split_csv: Path) -> dict[str, str]:
    """Code and data lineage of a run (see the ``TAG_*`` constants for each name)."""
    root = Path(root).resolve()
    tags = {TAG_TRAIN_SPLIT_SHA256: file_digest(train_split_csv, "sha256")}
    commit = git_commit(root)
    if commit is not None:
        tags[TAG_GIT_COMMIT] = tags[MLFLOW_GIT_COMMIT] = commit
        dirty = git_dirty(root)
        if dirty is not None:
            tags[TAG_GIT_DIRTY] = str(dirty).lower()
    dir_md5, file_md5 = dvc_hashes(root, train_split_csv)
    if dir_md5 is not None:
        if file_md5 is not None and file_md5 != file_digest(train_split_csv, "md5"):
            log.warning(
                "%s differs from what %s recorded: the DVC hash tags are left out "
                "(run `dvc repro` to version the split)",
                train_split_csv,
                layout.DVC_LOCK,
            )
            tags[TAG_DVC_LOCK_STALE] = "true"
        else:
            tags[TAG_DVC_SPLIT_MD5] = dir_md5
            if file_md5 is not None:
                tags[TAG_DVC_TRAIN_SPLIT_MD5] = file_md5
    return tags


def data_hash(root: Path, train_csv: Path) -> str:
    """DVC's md5 of the training split file (or of ``data/splits``), else ``sha256:<hex>``."""
    tags = lineage_tags(root, train_csv)
    for key in (TAG_DVC_TRAIN_SPLIT_MD5, TAG_DVC_SPLIT_MD5):
        if key in tags:
            return tags[key]
    return "sha256:" + tags[TAG_TRAIN_SPLIT_SHA256]


# --- versioning the outputs (the retraining flow) --------------------------------------------------


def _git_run(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
    )


def commit_versions(root: Path, ran: list[str]) -> str | None:
    """Commit :data:`VERSIONED_FILES` (and the ``.gitignore`` files DVC staged) after ``ran``.

    Returns the new commit, or ``None`` when nothing changed.
    """
    root = Path(root)
    if _git_run(root, "rev-parse", "--git-dir").returncode != 0:
        raise AiderEdgeError(
            f"dvc.commit_to_git is true but {root} is not a git checkout: "
            "run the flow in a clone or set dvc.commit_to_git: false"
        )
    paths = [p.as_posix() for p in VERSIONED_FILES if (root / p).exists()]
    # DVC (core.autostage) stages the .gitignore files it edits for new outputs.
    staged = _git_run(root, "diff", "--cached", "--name-only").stdout.split()
    paths += [p for p in staged if Path(p).name == ".gitignore"]
    _git_run(root, "add", "--", *paths)
    if _git_run(root, "diff", "--cached", "--quiet", "--", *paths).returncode == 0:
        return None
    message = f"retrain: data and params versions after {', '.join(ran)}"
    done = _git_run(root, "commit", "-q", "-m", message, "--", *paths)
    if done.returncode != 0:
        raise AiderEdgeError(
            f"git commit of {', '.join(paths)} failed: {done.stderr.strip()}; "
            "set user.name/user.email or dvc.commit_to_git: false"
        )
    return git_commit(root)


def push_outputs(root: Path, remote: str | None) -> None:
    """``dvc push`` (to ``remote``, else the default remote); one line when it fails."""
    cmd = [dvc_graph.dvc_executable(), "push", *(["-r", remote] if remote else [])]
    done = subprocess.run(
        cmd, cwd=root, env=dvc_graph.dvc_env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise AiderEdgeError(
            f"dvc push{' -r ' + remote if remote else ''} failed: "
            f"{dvc_graph.error_line('push', done.stdout + done.stderr, done.returncode)}; "
            "check the remote (dvc remote list) and its credentials"
        )

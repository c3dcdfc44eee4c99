"""`make image`: build the Dockerfile's runtime image without a Docker engine, then prove it works.

No Docker daemon runs on the build and CI machines, so the image is built with buildah, daemonless,
with ``--isolation chroot`` (no user namespaces or OCI runtime needed, only root) and the ``vfs``
storage driver (plain directories: no overlayfs or fuse-overlayfs needed inside a container).

1. Installs buildah and debootstrap from Debian's packages when they are missing.
2. Base: pulls the Dockerfile's base (its ``ARG PYTHON_IMAGE`` default, python:3.11-slim-bookworm).
   When that fails (no route to Docker Hub), bootstraps one locally, once, and reuses it:
   ``debootstrap --variant=minbase bookworm`` plus Debian's python3.11, pip and ``python``,
   committed as ``localhost/aider-edge-base:bookworm-py3.11``. Same Debian release and the same
   Python release line as the official image, but not the same build: Debian's python3.11 is
   CPython 3.11.2 with Debian's patches, the official image carries the latest CPython 3.11.x
   compiled from source into /usr/local.
3. Builds the Dockerfile's ``runtime`` target with ``buildah bud`` (``--layers``: a second run
   reuses the ``pip install uv`` and ``uv sync`` layers while their inputs are unchanged; vfs
   still copies each step's parent layers, about 2 s a step here, so a fully cached build takes
   40-60 s on 2 cores: the price of a storage driver that works anywhere).
4. Runs the image's entry point (``aider-edge predict --bundle /bundle /frames``) on a real bundle
   and a few frames, compares it with the host's ``aider-edge predict --logits`` (same classes,
   logits within 1e-4), checks that torch and mlflow are not importable in the image and that it
   runs as uid 10001.
5. Records the image size, the wall times, the base used and the buildah version in
   ``benchmarks/results/image.json`` and ``image.md``.

Everything buildah stores (the base, the layers, the image: a few GB with vfs) lives under the
git-ignored ``.cache/image/``, not in the machine's /var/lib/containers: ``rm -rf .cache/image``
removes all of it, and nothing is shared with other container tools on the machine.

Usage: ``python tools/image/build.py [BUNDLE_DIR] [--frames DIR]`` (root; BUNDLE_DIR defaults to
dist/bundle, which ``make run`` writes).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # _machine: the machine description every result has
from _machine import cpu_name  # noqa: E402
from aider_edge.edge.signing import project_public_key  # noqa: E402

CACHE = ROOT / ".cache" / "image"
STORAGE = CACHE / "storage"  # buildah --root: images and layers
RUNROOT = CACHE / "run"  # buildah --runroot: locks and container state
ROOTFS = CACHE / "debootstrap-bookworm"  # the bootstrapped Debian, kept to rebuild the base cheaply
RESULTS = ROOT / "benchmarks" / "results"
IMAGE_TRUSTED_KEY = "/etc/aider-edge/trusted.pub"  # the Dockerfile's AIDER_EDGE_TRUSTED_KEY

DEBIAN_RELEASE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
LOCAL_BASE = "localhost/aider-edge-base:bookworm-py3.11"
IMAGE = "localhost/aider-edge-runtime:local"
TARGET = "runtime"
LOGIT_TOLERANCE = 1e-4
FORBIDDEN = ("torch", "mlflow")
EXPECTED_USER = "10001:10001"
# Host tools this script needs, and the Debian package that has each.
TOOLS = {"buildah": "buildah", "debootstrap": "debootstrap", "tar": "tar"}

# Runs inside the freshly bootstrapped Debian to make it stand in for python:3.11-slim-bookworm as
# far as the Dockerfile is concerned: the official image's apt sources (release, updates, security)
# and "slim" dpkg filter (no docs, man pages or locales), Debian's python3.11 with pip,
# `python`/`pip` on PATH, ca-certificates, netbase and tzdata (what the official image installs).
BASE_SETUP = r"""
set -eu
rm -f /etc/apt/sources.list
cat > /etc/apt/sources.list.d/debian.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cat > /etc/dpkg/dpkg.cfg.d/docker-slim <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find /usr/share/doc -mindepth 1 -depth -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/groff/* /usr/share/info/* /usr/share/lintian/* \
    /usr/share/linda/* /usr/share/locale/*
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get upgrade -y -q
apt-get install -y -q --no-install-recommends \
    python3 python3-pip python-is-python3 ca-certificates netbase tzdata
# PEP 668: Debian marks its Python "externally managed", so `pip install uv` (the Dockerfile's
# first RUN) would be refused. The official image's Python is not Debian's and has no such marker;
# this image exists only to be a base, so pip may install into it as in the official one.
rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
apt-get clean
rm -rf /var/lib/apt/lists/*
python --version
pip --version
"""

# The environment of the official python image that matters here (its PATH puts /usr/local/bin,
# where `pip install uv` puts uv, first; Debian's default PATH has it too, but not for every user).
BASE_CONFIG = [
    "--env",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "--env",
    "LANG=C.UTF-8",
    "--cmd",
    "python3",
    "--label",
    "org.opencontainers.image.description=debootstrap --variant=minbase bookworm + Debian "
    "python3.11: a local stand-in for python:3.11-slim-bookworm (aider-edge tools/image)",
]


def say(message: str) -> None:
    print(f"[image] {message}", flush=True)


def fail(message: str, code: int = 1) -> NoReturn:
    print(message, file=sys.stderr, flush=True)
    sys.exit(code)


def buildah_cmd(*args: str) -> list[str]:
    return [
        "buildah",
        "--root",
        str(STORAGE),
        "--runroot",
        str(RUNROOT),
        "--storage-driver",
        "vfs",
        *args,
    ]


def buildah(*args: str, check: bool = True, timeout: float | None = None) -> str:
    """Run buildah on this script's storage; return its stdout (stderr passes through)."""
    done = subprocess.run(
        buildah_cmd(*args), stdout=subprocess.PIPE, text=True, check=False, timeout=timeout
    )
    if check and done.returncode != 0:
        fail(f"buildah {' '.join(args[:2])} failed (exit {done.returncode})")
    return done.stdout


def buildah_streamed(*args: str) -> tuple[int, list[str]]:
    """Run buildah showing its output as it comes; return the exit code and the lines."""
    lines: list[str] = []
    with subprocess.Popen(
        buildah_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
    return proc.returncode, lines


def image_exists(name: str) -> bool:
    return (
        subprocess.run(
            buildah_cmd("inspect", "--type", "image", name), capture_output=True, check=False
        ).returncode
        == 0
    )


def remove_container(name: str) -> None:
    subprocess.run(buildah_cmd("rm", name), capture_output=True, check=False)


def ensure_tools() -> list[str]:
    """Install the missing host tools from Debian's packages (the Makefile needs no manual step)."""
    packages = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if packages:
        say(f"installing {' '.join(packages)} from Debian's packages")
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            env=env,
            check=True,
        )
    return packages


def dockerfile_base() -> str:
    """The default of the Dockerfile's ``ARG PYTHON_IMAGE`` (what `docker build` would use)."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    if not match:
        fail("no `ARG PYTHON_IMAGE=...` default in the Dockerfile")
    return match.group(1)


def qualified(name: str) -> str:
    """docker.io/library/NAME for a short Docker Hub name (buildah's short-name lookup may ask)."""
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"


def bootstrap_base() -> None:
    """debootstrap a minimal bookworm (once) and commit it with Python as LOCAL_BASE."""
    done_marker = ROOTFS.with_name(ROOTFS.name + ".done")
    if not done_marker.exists():
        shutil.rmtree(ROOTFS, ignore_errors=True)  # left half-done by an interrupted run
        say(f"debootstrap --variant=minbase {DEBIAN_RELEASE} into {ROOTFS.relative_to(ROOT)}")
        subprocess.run(
            ["debootstrap", "--variant=minbase", DEBIAN_RELEASE, str(ROOTFS), DEBIAN_MIRROR],
            check=True,
        )
        done_marker.touch()
    else:
        say(f"reusing the bootstrapped Debian in {ROOTFS.relative_to(ROOT)}")
    # A tar keeps owners, modes and device nodes; `buildah add` unpacks a local archive as is.
    archive = CACHE / "rootfs.tar"
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(ROOTFS), "-cf", str(archive), "."],
        check=True,
    )
    name = "aider-edge-base-build"
    remove_container(name)
    try:
        buildah("from", "--name", name, "scratch")
        buildah("add", "--quiet", name, str(archive), "/")
        archive.unlink()
        say("installing Debian's python3.11 and pip into the base")
        code = subprocess.run(
            buildah_cmd("run", "--isolation", "chroot", name, "--", "sh", "-c", BASE_SETUP),
            check=False,
        ).returncode
        if code != 0:
            fail(f"setting up the local base failed (exit {code})")
        buildah("config", *BASE_CONFIG, name)
        buildah("commit", "--quiet", "--rm", name, LOCAL_BASE)
    finally:
        archive.unlink(missing_ok=True)
        remove_container(name)


def resolve_base(official: str) -> dict:
    """The base image to build on: the official one if it can be had, else the local stand-in."""
    official_ref = qualified(official)
    if image_exists(official_ref):
        return {"source": "pulled", "image": official_ref, "reused": True}
    say(f"pulling {official_ref}")
    try:
        pulled = subprocess.run(
            buildah_cmd("pull", "--retry", "1", official_ref),
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if pulled.returncode == 0:
            return {"source": "pulled", "image": official_ref, "reused": False}
        error = (pulled.stderr.strip().splitlines() or [f"exit {pulled.returncode}"])[-1]
    except subprocess.TimeoutExpired:
        error = "timed out after 600 s"
    say(f"cannot pull it ({error}); using a local Debian base")
    if image_exists(LOCAL_BASE):
        say(f"reusing {LOCAL_BASE}")
        return {"source": "bootstrapped", "image": LOCAL_BASE, "reused": True, "pull_error": error}
    bootstrap_base()
    return {"source": "bootstrapped", "image": LOCAL_BASE, "reused": False, "pull_error": error}


def trust_mounts() -> tuple[list[str], str | None]:
    """Let the build's RUN steps trust the CAs this host trusts, without baking them in.

    Behind a TLS-intercepting proxy (its CA added to the host's store under
    /usr/local/share/ca-certificates) neither pip nor uv in the base would reach PyPI, and uv
    ignores the system store unless told. Bind-mounted into each RUN step only (``buildah bud
    -v``), onto paths every base already has, so that no empty mount point is left in a layer:
    the host's CA bundle over the image's, and a read-only /root whose pip.conf and uv.toml point
    pip and uv at it (the Dockerfile's RUN steps run as root and write nothing to /root: both use
    no cache). Nothing of it is committed. On an ordinary host nothing is mounted.
    """
    local_cas = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if not local_cas or not bundle.is_file():
        return [], None
    home = CACHE / "trust-root"
    (home / ".config" / "pip").mkdir(parents=True, exist_ok=True)
    (home / ".config" / "uv").mkdir(parents=True, exist_ok=True)
    (home / ".config" / "pip" / "pip.conf").write_text(f"[global]\ncert = {bundle}\n")
    (home / ".config" / "uv" / "uv.toml").write_text("system-certs = true\n")
    home.chmod(0o700)
    mounts = [f"{bundle}:{bundle}:ro", f"{home}:/root:ro"]
    args = [arg for mount in mounts for arg in ("-v", mount)]
    return args, f"host CA bundle mounted into RUN steps ({len(local_cas)} local CA(s) on the host)"


def pick_frames(bundle: Path, frames: Path | None) -> Path:
    """A folder of frames: --frames, else the first test frame of each class in data/splits."""
    if frames is not None:
        return frames
    out = CACHE / "frames"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    classes = json.loads((bundle / "manifest.json").read_text()).get("classes", [])
    picked: dict[str, Path] = {}
    split = ROOT / "data" / "splits" / "test.csv"
    if split.is_file():
        with split.open(newline="") as handle:
            for row in csv.DictReader(handle):
                path = ROOT / row["path"]
                if row["label"] not in picked and path.is_file():
                    picked[row["label"]] = path
    if not picked:  # no splits: any few raw frames
        raw = sorted((ROOT / "data" / "raw").rglob("*.jpg"))[: max(len(classes), 5)]
        picked = {path.name: path for path in raw}
    if not picked:
        fail("no frames found in data/splits/test.csv or data/raw; pass --frames DIR", 2)
    for label, path in sorted(picked.items()):
        target = out / f"{label}-{path.name}"
        shutil.copyfile(path, target)
        target.chmod(0o644)  # readable by the image's unprivileged user
    out.chmod(0o755)
    return out


def predictions(lines: list[str]) -> dict[str, dict]:
    """predict's JSON lines by file name (the image sees /frames/..., the host a host path)."""
    found = {}
    for line in lines:
        if line.strip():
            record = json.loads(line)
            found[Path(record["file"]).name] = record
    return found


def compare(image_out: list[str], host_out: list[str], n_frames: int) -> dict:
    in_image, on_host = predictions(image_out), predictions(host_out)
    problems = [f"{name}: no class" for name, rec in in_image.items() if "class" not in rec]
    if len(in_image) != n_frames:
        problems.append(f"{len(in_image)} lines for {n_frames} frames")
    if set(in_image) != set(on_host):
        problems.append("the image and the host classified different files")
    worst = 0.0
    for name in sorted(set(in_image) & set(on_host)):
        image_rec, host_rec = in_image[name], on_host[name]
        if image_rec.get("class") != host_rec.get("class"):
            problems.append(
                f"{name}: {image_rec.get('class')} in the image, {host_rec.get('class')} on the host"
            )
        diffs = [abs(a - b) for a, b in zip(image_rec["logits"], host_rec["logits"], strict=True)]
        worst = max(worst, *diffs)
    if worst > LOGIT_TOLERANCE:
        problems.append(f"logits differ by up to {worst:.2e} (> {LOGIT_TOLERANCE:g})")
    return {
        "frames": n_frames,
        "lines": len(in_image),
        "classes": {name: rec.get("class") for name, rec in sorted(in_image.items())},
        "max_abs_logit_diff_vs_host": worst,
        "problems": problems,
    }


def check_image(bundle: Path, frames: Path, config: dict) -> dict:
    """Run the entry point on the bundle, then look inside: no torch/mlflow, uid 10001."""
    name = "aider-edge-image-check"
    remove_container(name)
    buildah("from", "--pull=never", "--name", name, IMAGE)
    run = ["run", "--isolation", "chroot"]
    mounts = ["-v", f"{bundle.resolve()}:/bundle:ro", "-v", f"{frames.resolve()}:/frames:ro"]
    # The drone's trusted key, where the image's AIDER_EDGE_TRUSTED_KEY points.
    trusted = project_public_key(ROOT).resolve()
    mounts += ["-v", f"{trusted}:{IMAGE_TRUSTED_KEY}:ro"]
    try:
        # `buildah run` runs the command it is given, so give it the entry point and default
        # argument from the image config, with --logits for the comparison with the host.
        entry = [*config["Entrypoint"], "--logits", *(config.get("Cmd") or [])]
        say(f"in the image: {' '.join(entry)}")
        started = time.perf_counter()
        image_run = subprocess.run(
            buildah_cmd(*run, *mounts, name, "--", *entry),
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        predict_s = time.perf_counter() - started
        host_bin = Path(sys.executable).parent / "aider-edge"
        host_run = subprocess.run(
            [
                *(str(host_bin), "predict", "--bundle", str(bundle)),
                *("--trusted-key", str(trusted), "--logits", str(frames)),
            ],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        n_frames = len([p for p in frames.rglob("*") if p.is_file()])
        result = compare(image_run.stdout.splitlines(), host_run.stdout.splitlines(), n_frames)
        result["predict_exit"] = image_run.returncode
        result["predict_in_image_s"] = round(predict_s, 2)
        if image_run.returncode != 0 or host_run.returncode != 0:
            result["problems"].append(
                f"predict exit {image_run.returncode} in the image, {host_run.returncode} on the host"
            )

        probe = (
            "import importlib.util,sys; sys.exit(any(importlib.util.find_spec(m) for m in {!r}))"
        )
        forbidden = subprocess.run(
            buildah_cmd(*run, name, "--", "python", "-c", probe.format(FORBIDDEN)), check=False
        ).returncode
        result["no_torch_no_mlflow"] = forbidden == 0
        if forbidden != 0:
            result["problems"].append(f"importable in the image: one of {', '.join(FORBIDDEN)}")

        dists = "import importlib.metadata as m; print(*sorted(d.metadata['Name'] for d in m.distributions()))"
        result["distributions"] = buildah(*run, name, "--", "python", "-c", dists).split()
        uid, gid, python, venv = buildah(
            *run, name, "--", "sh", "-c", "id -u; id -g; python --version; du -sb /opt/venv"
        ).splitlines()
        result["uid_config"] = config.get("User")
        result["uid_running"] = f"{uid}:{gid}"
        result["python"] = python.split()[-1]  # "Python 3.11.2"
        result["venv_bytes"] = int(venv.split()[0])
        for label, value in (("config", config.get("User")), ("running", result["uid_running"])):
            if value != EXPECTED_USER:
                result["problems"].append(f"user ({label}) is {value}, not {EXPECTED_USER}")
        result["debian"] = buildah(*run, name, "--", "cat", "/etc/debian_version").strip()
    finally:
        remove_container(name)
    return result


def layer_bytes(image: str) -> list[int]:
    """The uncompressed size of each layer (local storage keeps layers as plain tars)."""
    info = json.loads(buildah("inspect", "--type", "image", image))
    return [layer["size"] for layer in json.loads(info["Manifest"])["layers"]]


def image_sizes(base_image: str) -> dict:
    """Uncompressed layer bytes (what `docker images` shows) and gzip bytes (what a pull moves)."""
    layers = layer_bytes(IMAGE)
    base = sum(layer_bytes(base_image))
    oci_dir = CACHE / "oci"
    shutil.rmtree(oci_dir, ignore_errors=True)
    buildah("push", "--quiet", "--compression-format", "gzip", IMAGE, f"oci:{oci_dir}")
    index = json.loads((oci_dir / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((oci_dir / "blobs" / "sha256" / manifest_digest).read_text())
    compressed = sum(layer["size"] for layer in manifest["layers"])
    shutil.rmtree(oci_dir, ignore_errors=True)
    return {
        "size_bytes": sum(layers),
        "size_mib": round(sum(layers) / 2**20, 1),
        "layers_bytes": layers,
        "base_bytes": base,
        "base_mib": round(base / 2**20, 1),
        "compressed_bytes": compressed,
        "compressed_mib": round(compressed / 2**20, 1),
    }


def write_results(run: dict, checks: dict, sizes: dict, base: dict, official: str) -> dict:
    """image.json keeps the last "cold" run (base made) and the last "cached" one after it."""
    path = RESULTS / "image.json"
    previous = json.loads(path.read_text()).get("runs", {}) if path.is_file() else {}
    # A new base starts a new pair; a run on a reused base goes next to the run that made it.
    runs = {"cold": run} if not base["reused"] else {**previous, "cached": run}
    base_note = (
        "the official base image"
        if base["source"] == "pulled"
        else f"Docker Hub unreachable: {official} replaced by debootstrap --variant=minbase "
        f"bookworm + Debian's python3 (CPython {checks['python']} with Debian's patches; "
        "the official image has the latest CPython 3.11.x built from source: same Debian "
        "release, same Python release line)"
    )
    result = {
        "image": IMAGE,
        "target": TARGET,
        "dockerfile_base": official,
        "base": {"source": base["source"], "image": base["image"], "note": base_note},
        "buildah": run["buildah"],
        "isolation": "chroot",
        "storage_driver": "vfs",
        **sizes,
        "venv_bytes": checks["venv_bytes"],
        "python_in_image": checks["python"],
        "debian_in_image": checks["debian"],
        "checks": {k: v for k, v in checks.items() if k not in ("venv_bytes",)},
        "runs": {k: runs[k] for k in ("cold", "cached") if k in runs},
        "host": {"cpu": cpu_name(), "cores": os.cpu_count()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")

    def col(which: str, key: str, fmt: str) -> str:
        value = result["runs"].get(which, {}).get(key)
        return "" if value is None else fmt.format(value)

    rows = [
        ("base", "base_action", "{}"),
        ("total, s", "total_s", "{:.1f}"),
        ("install buildah/debootstrap, s", "tools_s", "{:.1f}"),
        ("base image, s", "base_s", "{:.1f}"),
        ("`buildah bud --target runtime`, s", "build_s", "{:.1f}"),
        ("build steps from cache", "cache_hits", "{}"),
        ("checks (predict, no torch, uid), s", "checks_s", "{:.1f}"),
    ]
    table = "\n".join(
        f"| {label} | {col('cold', key, fmt)} | {col('cached', key, fmt)} |"
        for label, key, fmt in rows
    )
    passed = "passed" if not checks["problems"] else "FAILED: " + "; ".join(checks["problems"])
    (RESULTS / "image.md").write_text(
        f"# `make image`: the Dockerfile's `{TARGET}` target, built with buildah "
        f"{run['buildah']} (chroot isolation, vfs storage)\n\n"
        f"On {result['host']['cpu']} ({result['host']['cores']} cores, shared with other work). "
        f"Base: {base_note}.\n\n"
        "| | first run (base made) | again (base cached) |\n|---|---|---|\n"
        f"{table}\n\n"
        f"Image `{IMAGE}`: {sizes['size_mib']} MiB ({sizes['size_bytes']} bytes, "
        f"{len(sizes['layers_bytes'])} layers uncompressed), {sizes['compressed_mib']} MiB gzip "
        f"(what a pull moves); of which the base {sizes['base_mib']} MiB and /opt/venv "
        f"{checks['venv_bytes'] / 2**20:.1f} MiB. "
        f"Python {checks['python']}, Debian {checks['debian']}.\n\n"
        f"Checks ({passed}): `aider-edge predict` in the image on {checks['frames']} frames, "
        f"every line with a class, same classes as the host, logits within {LOGIT_TOLERANCE:g} "
        f"(max diff {checks['max_abs_logit_diff_vs_host']:.1e}); torch and mlflow not importable "
        f"(installed: {', '.join(checks['distributions'])}); user {checks['uid_config']} "
        f"in the config, uid:gid {checks['uid_running']} running.\n"
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default="dist/bundle", help="default: dist/bundle")
    parser.add_argument("--frames", type=Path, help="frames folder (default: test frames)")
    args = parser.parse_args()
    bundle = (ROOT / args.bundle) if not Path(args.bundle).is_absolute() else Path(args.bundle)
    if not (bundle / "manifest.json").is_file():
        fail("run `make run` first (it writes dist/bundle)", 2)
    if os.geteuid() != 0:
        fail("make image needs root (buildah chroot builds, debootstrap, apt-get)", 2)

    started = time.perf_counter()
    installed = ensure_tools()
    tools_s = time.perf_counter() - started
    STORAGE.mkdir(parents=True, exist_ok=True)
    RUNROOT.mkdir(parents=True, exist_ok=True)
    os.environ["BUILDAH_ISOLATION"] = "chroot"  # also for any step that takes no --isolation
    version = buildah("version", "--json")
    buildah_version = json.loads(version).get("version", "unknown")

    official = dockerfile_base()
    t0 = time.perf_counter()
    base = resolve_base(official)
    base_s = time.perf_counter() - t0

    trust_args, trust_note = trust_mounts()
    if trust_note:
        say(trust_note)
    say(f"buildah bud --target {TARGET} --build-arg PYTHON_IMAGE={base['image']} -t {IMAGE}")
    t0 = time.perf_counter()
    code, lines = buildah_streamed(
        "bud",
        "--isolation",
        "chroot",
        "--layers",
        "--pull=never",
        "--file",
        str(ROOT / "Dockerfile"),
        "--target",
        TARGET,
        "--build-arg",
        f"PYTHON_IMAGE={base['image']}",
        "--tag",
        IMAGE,
        *trust_args,
        str(ROOT),
    )
    build_s = time.perf_counter() - t0
    if code != 0:
        fail(f"buildah bud failed (exit {code})")
    cache_hits = sum("Using cache" in line for line in lines)

    t0 = time.perf_counter()
    config = json.loads(buildah("inspect", "--type", "image", IMAGE))["OCIv1"]["config"]
    frames = pick_frames(bundle, args.frames)
    checks = check_image(bundle, frames, config)
    checks_s = time.perf_counter() - t0
    sizes = image_sizes(base["image"])
    total_s = time.perf_counter() - started

    reused = "reused" if base["reused"] else "new"
    run = {
        "base_action": f"{base['source']}, {reused}",
        "total_s": round(total_s, 1),
        "tools_s": round(tools_s, 1),
        "tools_installed": installed,
        "base_s": round(base_s, 1),
        "build_s": round(build_s, 1),
        "cache_hits": cache_hits,
        "checks_s": round(checks_s, 1),
        "buildah": buildah_version,
        "trust": trust_note,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    write_results(run, checks, sizes, base, official)
    say(
        f"{IMAGE}: {sizes['size_mib']} MiB ({sizes['compressed_mib']} MiB gzip), "
        f"built in {build_s:.0f} s, {total_s:.0f} s in all; base {base['image']} ({reused})"
    )
    if checks["problems"]:
        for problem in checks["problems"]:
            say(f"check failed: {problem}")
        return 1
    say(
        f"checks passed: {checks['lines']} frames classified as on the host "
        f"(max logit diff {checks['max_abs_logit_diff_vs_host']:.1e}), no torch/mlflow, "
        f"uid {checks['uid_running']}; results in benchmarks/results/image.{{json,md}}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

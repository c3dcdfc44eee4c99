"""An arm64 Python under qemu-user: the drone runtime with aarch64 kernels, on an x86 build host.

The drones are ARM (Raspberry Pi 4/5, Jetson); onnxruntime picks different kernels there (NEON,
dot-product int8 on ARMv8.2), so x86 figures do not prove what the drone computes. This module
builds, once, a cached arm64 environment and runs ``python3.11 -m ...`` in it under
``qemu-aarch64-static -cpu <model>``:

- ``rootfs/``: Debian bookworm arm64 with Debian's python3.11 (``debootstrap --foreign``; its
  packages are only unpacked, since configuring them would need the emulator registered with the
  kernel through binfmt_misc, which containers rarely allow);
- ``site-<lock>/``: the runtime's dependencies as the lock's aarch64 wheels (``uv pip install
  --target --python-platform``), keyed by the lock's digest;
- ``cpu/<model>/``: per emulated CPU, links to the rootfs plus its own ``/proc/cpuinfo``.
  onnxruntime's CPU probe reads that file and crashes on the host's x86 one; qemu's ``-L`` prefix
  makes the emulated process see the prefix's copy, so no mount namespace or root is needed.

The project itself is put on ``PYTHONPATH`` from the checkout's ``src/`` (pure Python), so what
runs is the working tree. Emulated timings say nothing about a device's speed and are never
reported as latency.

Building needs Debian's ``qemu-user-static`` and ``debootstrap`` (installed with apt-get when
missing and running as root), Debian's mirror and PyPI: about a minute the first time here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aider_edge.edge.signing import TRUSTED_KEY_ENV
from aider_edge.errors import AiderEdgeError

DEBIAN_RELEASE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
PYTHON = "python3.11"
"""The Python of the Dockerfile's base (python:3.11-slim-bookworm) and of the lock's wheels."""
WHEEL_PLATFORM = "aarch64-manylinux_2_28"
"""bookworm's glibc 2.36 runs manylinux_2_28 wheels (onnxruntime publishes no older aarch64 tag)."""
DEBIAN_PACKAGES = {"qemu-aarch64-static": "qemu-user-static", "debootstrap": "debootstrap"}
COMPLETE = ".aider-edge-complete"
"""Written last in a finished folder: a folder without it is a killed build, rebuilt."""
CHECKOUT = Path(__file__).resolve().parents[2]
"""The checkout this package runs from (an editable install): its ``uv.lock``, ``.tools/bin/uv``
and ``src/`` build and feed the arm64 environment."""
CACHE_ENV = "AIDER_EDGE_ARM_CACHE"
"""Overrides where the arm64 environment is cached (default ``.cache/arm`` in the checkout)."""


@dataclass(frozen=True)
class ArmCpu:
    """What ``/proc/cpuinfo`` says for one emulated core (from the CPUs' technical manuals)."""

    part: str
    variant: str
    revision: int
    features: str


CPUS = {
    # Raspberry Pi 4 (BCM2711): no crypto extensions.
    "cortex-a72": ArmCpu("0xd08", "0x0", 3, "fp asimd evtstrm crc32 cpuid"),
    # Raspberry Pi 5 (BCM2712): ARMv8.2 with dot product (onnxruntime's int8 UDOT/SDOT kernels).
    "cortex-a76": ArmCpu(
        "0xd0b",
        "0x4",
        1,
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
        "dcpop asimddp",
    ),
    # Jetson Nano.
    "cortex-a57": ArmCpu("0xd07", "0x1", 1, "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
}
"""CPU models qemu 7.2 (bookworm) emulates that the drone profiles name."""


class EmulationError(AiderEdgeError):
    """The arm64 environment could not be built or a command in it failed."""


@dataclass(frozen=True)
class Sysroot:
    """A built arm64 environment (see the module docstring); ``run`` executes Python in it."""

    cache: Path
    site: Path
    project_src: Path

    @property
    def rootfs(self) -> Path:
        return self.cache / "rootfs"

    def prefix(self, cpu: str) -> Path:
        """``cpu/<model>``: the rootfs seen with that CPU's ``/proc/cpuinfo`` (made on first use)."""
        spec = _cpu_spec(cpu)
        prefix = self.cache / "cpu" / cpu
        if (prefix / COMPLETE).exists():
            return prefix
        with _building(prefix) as tmp:
            for entry in sorted(self.rootfs.iterdir()):
                # The emulated process shares the host's devices, /sys, /tmp and /run.
                if entry.name not in {"proc", "sys", "dev", "tmp", "run", COMPLETE}:
                    (tmp / entry.name).symlink_to(Path("..", "..", "rootfs", entry.name))
            (tmp / "proc").mkdir()
            (tmp / "proc" / "cpuinfo").write_text(cpuinfo(spec, _host_cores()))
        return prefix

    def command(self, cpu: str, args: Sequence[str]) -> list[str]:
        """``qemu-aarch64-static -cpu <cpu> -L <prefix> python3.11 <args>``."""
        prefix = self.prefix(cpu)
        return [
            _tool("qemu-aarch64-static"),
            "-cpu",
            cpu,
            "-L",
            str(prefix),
            str(self.rootfs / "usr" / "bin" / PYTHON),
            *args,
        ]

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.pathsep.join([str(self.project_src), str(self.site)]),
            "PYTHONDONTWRITEBYTECODE": "1",
            "LC_ALL": "C.UTF-8",
        } | {k: v for k, v in os.environ.items() if k == TRUSTED_KEY_ENV}

    def run(self, cpu: str, args: Sequence[str], *, timeout_s: float = 1800) -> str:
        """Run ``python3.11 <args>`` on the emulated ``cpu``; its stdout, or one-line error."""
        done = subprocess.run(
            self.command(cpu, args),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode not in (0, 1):  # predict exits 1 when some image failed
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise EmulationError(f"python on emulated {cpu} exited {done.returncode}: {last[:300]}")
        return done.stdout


def cpuinfo(cpu: ArmCpu, cores: int) -> str:
    core = (
        "BogoMIPS\t: 108.00\n"
        f"Features\t: {cpu.features}\n"
        "CPU implementer\t: 0x41\n"
        "CPU architecture: 8\n"
        f"CPU variant\t: {cpu.variant}\n"
        f"CPU part\t: {cpu.part}\n"
        f"CPU revision\t: {cpu.revision}\n\n"
    )
    return "".join(f"processor\t: {i}\n{core}" for i in range(cores))


def default_cache() -> Path:
    """``$AIDER_EDGE_ARM_CACHE``, else ``.cache/arm`` in the checkout (git-ignored)."""
    return Path(os.environ.get(CACHE_ENV) or CHECKOUT / ".cache" / "arm")


def built_sysroot(cache: Path | None = None, project_root: Path = CHECKOUT) -> Sysroot:
    """The arm64 environment as already built (by ``make check-arm``); never builds or installs.

    A pipeline stage uses this: installing system packages is not a stage's business."""
    cache = Path(cache or default_cache())
    hint = "run `make check-arm` once (as root) to build it"
    if shutil.which("qemu-aarch64-static") is None:
        raise EmulationError(f"qemu-aarch64-static is not installed; {hint}")
    if not (cache / "rootfs" / COMPLETE).exists():
        raise EmulationError(f"no arm64 environment in {cache}; {hint}")
    site = cache / f"site-{_lock_digest(project_root)}"
    if not (site / COMPLETE).exists():
        raise EmulationError(f"{cache} holds no aarch64 wheels for this uv.lock; {hint}")
    return Sysroot(cache=cache, site=site, project_src=project_root / "src")


def _lock_digest(project_root: Path) -> str:
    lock = project_root / "uv.lock"
    if not lock.is_file():
        raise EmulationError(f"{lock}: no such file; run from the project checkout")
    return hashlib.sha256(lock.read_bytes()).hexdigest()[:16]


def ensure_sysroot(cache: Path, project_root: Path, uv: Path) -> Sysroot:
    """Build what is missing of the arm64 environment under ``cache``; quick when all is there.

    ``uv`` is the project's pinned uv (``make setup`` installs it in ``.tools/bin``), which reads
    ``uv.lock`` for the runtime's wheels.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    _install_tools()
    _ensure_rootfs(cache / "rootfs")
    site = cache / f"site-{_lock_digest(project_root)}"
    if not (site / COMPLETE).exists():
        _install_wheels(site, project_root, uv)
    for old in cache.glob("site-*"):
        if old != site:
            shutil.rmtree(old, ignore_errors=True)
    return Sysroot(cache=cache, site=site, project_src=project_root / "src")


def _install_tools() -> None:
    missing = [pkg for tool, pkg in DEBIAN_PACKAGES.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise EmulationError(
            f"missing {', '.join(missing)}: run `sudo apt-get install {' '.join(missing)}` "
            "(or this command as root, which installs them)"
        )
    _check_call(["apt-get", "update", "-q"], "apt-get update")
    _check_call(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        f"apt-get install {' '.join(missing)}",
        env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
    )


def _ensure_rootfs(rootfs: Path) -> None:
    if (rootfs / COMPLETE).exists():
        return
    if os.geteuid() != 0:
        raise EmulationError(
            f"building {rootfs} needs root (debootstrap unpacks files owned by root): "
            "run this command as root once"
        )
    with _building(rootfs) as tmp:
        _check_call(
            [
                "debootstrap",
                "--foreign",
                "--arch=arm64",
                "--variant=minbase",
                f"--include={PYTHON}",
                DEBIAN_RELEASE,
                str(tmp),
                DEBIAN_MIRROR,
            ],
            "debootstrap of the arm64 Debian",
        )
        # --foreign unpacks only the essential packages; the rest (Python) waits in the archive.
        for deb in sorted((tmp / "var" / "cache" / "apt" / "archives").glob("*.deb")):
            _check_call(["dpkg-deb", "-x", str(deb), str(tmp)], f"unpacking {deb.name}")
        if not (tmp / "usr" / "bin" / PYTHON).exists():
            raise EmulationError(f"the arm64 Debian has no /usr/bin/{PYTHON} after debootstrap")


def _install_wheels(site: Path, project_root: Path, uv: Path) -> None:
    with _building(site) as tmp:
        requirements = tmp / "requirements.txt"
        exported = _check_call(
            [str(uv), "export", "--frozen", "--no-dev", "--no-emit-project", "--no-header"],
            "uv export of the runtime's dependencies",
            cwd=project_root,
        )
        requirements.write_text(exported)
        _check_call(
            [
                str(uv),
                "pip",
                "install",
                "--quiet",
                "--target",
                str(tmp),
                "--python-platform",
                WHEEL_PLATFORM,
                "--python-version",
                "3.11",
                "--only-binary",
                ":all:",
                "--require-hashes",
                "-r",
                str(requirements),
            ],
            "uv pip install of the aarch64 wheels",
            cwd=project_root,
        )
        requirements.unlink()


class _building:
    """Build a folder beside its target and move it in place, marked complete, on success."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent)
        )
        return self.tmp

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        (self.tmp / COMPLETE).write_text("")
        if self.target.exists():  # a killed build's leftover, never complete
            shutil.rmtree(self.target)
        self.tmp.rename(self.target)


def _cpu_spec(cpu: str) -> ArmCpu:
    if cpu not in CPUS:
        raise EmulationError(
            f"no emulated CPU {cpu!r}: choose one of {', '.join(sorted(CPUS))} "
            "(the `emulate` key of a validate.profiles entry)"
        )
    return CPUS[cpu]


def _host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise EmulationError(f"{name} not found: install Debian's {DEBIAN_PACKAGES[name]}")
    return found


def _check_call(
    cmd: Sequence[str], what: str, *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["?"])[-1]
        raise EmulationError(f"{what} failed (exit {done.returncode}): {last[:300]}")
    return done.stdout

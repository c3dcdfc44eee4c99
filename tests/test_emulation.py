"""The arm64 environment of ``make check-arm``: the drone's runtime on emulated ARM CPUs.

The slow test is the small version of ``make check-arm``: the real sysroot (built once per
checkout under ``.cache/arm``, as the Makefile target does; about a minute the first time), the
tiny fp32 model and its INT8 quantisation scored under ``qemu-aarch64-static`` as a Cortex-A72 and
a Cortex-A76, and the bundle's ``aider-edge predict``, all compared with this host.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from aider_edge import emulation
from aider_edge.bundling import build_bundle
from aider_edge.edge import parity
from aider_edge.emulation import COMPLETE, CPUS, EmulationError, ensure_sysroot
from aider_edge.stages import validate
from conftest import REPO_ROOT, TINY_PROFILES
from edge_helpers import VALIDATION, colour_images, quantized_tiny_model, save_model
from export_project import copy_project, exported_project, project_params

PARTS = {"cortex-a72": "0xd08", "cortex-a76": "0xd0b", "cortex-a57": "0xd07"}


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_fake_cpuinfo_names_the_core_onnxruntime_probes(cpu):
    text = emulation.cpuinfo(CPUS[cpu], cores=3)
    assert text.count("processor\t:") == 3
    assert f"CPU part\t: {PARTS[cpu]}" in text and "CPU implementer\t: 0x41" in text
    # Only the ARMv8.2 core has the dot-product instructions of onnxruntime's int8 kernels.
    assert ("asimddp" in text) == (cpu == "cortex-a76")


def test_an_unknown_cpu_is_one_line_naming_the_choices(tmp_path):
    sysroot = emulation.Sysroot(cache=tmp_path, site=tmp_path, project_src=tmp_path)
    with pytest.raises(EmulationError) as info:
        sysroot.prefix("cortex-x9")
    assert str(info.value).startswith("no emulated CPU 'cortex-x9': choose one of cortex-a57")
    assert "\n" not in str(info.value)


def test_a_failed_build_leaves_nothing_and_a_finished_one_is_marked(tmp_path):
    target = tmp_path / "rootfs"
    with pytest.raises(RuntimeError), emulation._building(target) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    target.mkdir()  # a leftover from a killed process, never marked complete
    with emulation._building(target) as tmp:
        (tmp / "whole").write_text("x")
    assert sorted(p.name for p in target.iterdir()) == [COMPLETE, "whole"]


def test_a_cpu_prefix_is_the_rootfs_with_its_own_cpuinfo(tmp_path):
    rootfs = tmp_path / "rootfs"
    for name in ("usr", "etc", "proc", "dev"):
        (rootfs / name).mkdir(parents=True)
    (rootfs / "usr" / "marker").write_text("arm")
    sysroot = emulation.Sysroot(cache=tmp_path, site=tmp_path, project_src=tmp_path)
    prefix = sysroot.prefix("cortex-a72")
    assert (prefix / "usr" / "marker").read_text() == "arm"
    assert not (prefix / "dev").exists()  # the host's devices are used as they are
    assert "CPU part\t: 0xd08" in (prefix / "proc" / "cpuinfo").read_text()
    assert sysroot.prefix("cortex-a72") == prefix  # made once


def can_build_sysroot() -> bool:
    cache = REPO_ROOT / ".cache" / "arm"
    tools = all(shutil.which(tool) for tool in emulation.DEBIAN_PACKAGES)
    return os.geteuid() == 0 or (tools and (cache / "rootfs" / COMPLETE).exists())


@pytest.mark.slow
@pytest.mark.skipif(
    not can_build_sysroot(), reason="building the arm64 sysroot needs root once (apt, debootstrap)"
)
def test_models_and_predict_agree_on_emulated_arm_cpus(tmp_path):
    sysroot = ensure_sysroot(REPO_ROOT / ".cache" / "arm", REPO_ROOT, REPO_ROOT / ".tools/bin/uv")
    images = colour_images(tmp_path / "frames")
    fp32 = save_model(tmp_path / "model.onnx")
    int8 = quantized_tiny_model(fp32, tmp_path / "model.int8.onnx", images)
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    args = ["-m", "aider_edge.edge.parity", str(fp32), str(int8), "--images", str(listing)]
    assert parity.main([*args[2:], "--out", str(tmp_path / "x86.json")]) == 0
    host = json.loads((tmp_path / "x86.json").read_text())
    bundle = build_bundle(fp32, tmp_path / "bundle", validation=VALIDATION)
    predict = ["-m", "aider_edge.cli", "predict", "--bundle", str(bundle), "--logits"]

    for cpu in ("cortex-a72", "cortex-a76"):
        out = tmp_path / f"{cpu}.json"
        sysroot.run(cpu, [*args, "--out", str(out)])
        arm = json.loads(out.read_text())
        assert arm["machine"]["isa"] == "aarch64" and arm["machine"]["cpu"] == PARTS[cpu]
        for mine, theirs in zip(arm["models"], host["models"], strict=True):
            assert mine["frames_sha256"] == theirs["frames_sha256"]  # decoding is bit-identical
            ours, x86 = np.asarray(mine["logits"]), np.asarray(theirs["logits"])
            assert np.array_equal(ours.argmax(1), x86.argmax(1)), (cpu, mine["model"])
        fp32_diff = np.abs(np.subtract(arm["models"][0]["logits"], host["models"][0]["logits"]))
        assert fp32_diff.max() <= 1e-4, cpu
        assert parity.kernel_summary(arm["models"][1]["kernels"])["integer"] >= 1, cpu

        lines = [
            json.loads(line)
            for line in sysroot.run(cpu, [*predict, *map(str, images)]).splitlines()
        ]
        assert [line["class"] for line in lines] == ["fire", "flooded_areas", "normal"]
        logits = np.asarray([line["logits"] for line in lines])
        np.testing.assert_allclose(logits, host["models"][0]["logits"], rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(
    not can_build_sysroot(), reason="building the arm64 sysroot needs root once (apt, debootstrap)"
)
def test_validate_judges_an_aarch64_profile_on_its_emulated_kernels(
    tmp_path_factory, tmp_path, monkeypatch
):
    """validate scores INT8 under qemu on the Pi's Cortex-A72 and deploys it there on that gate
    (loosened so that the tiny model's INT8 passes it)."""
    cache = REPO_ROOT / ".cache" / "arm"
    ensure_sysroot(cache, REPO_ROOT, REPO_ROOT / ".tools/bin/uv")
    monkeypatch.setenv(emulation.CACHE_ENV, str(cache))
    root = copy_project(exported_project(tmp_path_factory), tmp_path / "p")
    loose = {"int8_min_top1_agreement": 0.0, "int8_max_g_mean_drop": 1.0}
    report = validate.run(project_params(root, validate={"profiles": TINY_PROFILES} | loose), root)

    pi = report["int8"]["profiles"]["raspberry_pi_4"]
    assert pi["kernels"] == "aarch64/cortex-a72" and pi["passed"] is True and pi["kept"] is True
    assert 0.0 <= pi["top1_agreement"] <= 1.0 and pi["max_abs_logit_diff"] > 0
    assert pi["kernel_counts"]["integer"] >= 1  # aarch64's integer kernels ran
    assert report["deploy"]["profiles"]["raspberry_pi_4"] == {
        "model": "model.int8.onnx",
        "precision": "int8",
    }

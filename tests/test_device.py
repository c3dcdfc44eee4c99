"""train.device and train.amp on a host without CUDA: resolution, one-line errors before any MLflow
run, the logged device, cuDNN flags, and the device-side pieces that must not read back to the host.

CUDA itself is stubbed (``torch.cuda.is_available`` patched): these tests run on any CPU.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from aider_edge import cli, device, tracking
from aider_edge.config import parse_params
from aider_edge.data import augment
from aider_edge.errors import ConfigError
from aider_edge.losses import (
    PRIOR_METHODS,
    PriorLoss,
    masked_anchor_mean,
    method_loss,
    prior_tensors,
)
from aider_edge.stages import train as train_stage
from conftest import small_params

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def train_config(**train):
    return parse_params({"train": train}).train


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


# --- resolution -------------------------------------------------------------------------------


def test_auto_takes_cuda_when_torch_sees_a_gpu(fake_cuda):
    assert device.resolve_device(train_config(device="auto")).type == "cuda"
    assert device.resolve_device(train_config(device="cuda")).type == "cuda"
    assert device.resolve_device(train_config(device="cpu")).type == "cpu"


def test_auto_falls_back_to_the_cpu(no_cuda):
    assert device.resolve_device(train_config()).type == "cpu"  # auto is the default


def test_cuda_without_cuda_is_one_line_naming_the_key_and_the_fix(no_cuda):
    with pytest.raises(ConfigError) as caught:
        device.resolve_device(train_config(device="cuda"))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("train.device = 'cuda': ")
    assert "set train.device to auto or cpu" in message


def test_the_cli_stops_with_exit_2_before_any_mlflow_run_or_decoding(
    no_cuda, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"device": "cuda"}}))
    opened = []
    monkeypatch.setattr(tracking, "tracked_run", lambda *a, **k: opened.append(a))
    code = cli.main(["train", "--scenario", "s1", "--method", "baseline"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("aider-edge train: error: train.device = ")
    assert not opened
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no mlflow.db, no cache


def test_the_stage_checks_the_device_first(no_cuda, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(tracking, "tracked_run", lambda *a, **k: calls.append("mlflow"))
    monkeypatch.setattr(train_stage, "workspace_cache", lambda *a, **k: calls.append("decode"))
    params = small_params(train={"device": "cuda"})
    with pytest.raises(ConfigError, match=r"^train\.device = 'cuda'"):
        train_stage.run(params, tmp_path, "s1", "adaptive")
    assert calls == []


# --- mixed precision ---------------------------------------------------------------------------


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_this_torch_autocasts_every_amp_mode_on_the_cpu(amp):
    device.check_amp(train_config(amp=amp), CPU)


def test_an_amp_mode_the_device_cannot_do_is_one_line(monkeypatch):
    def unsupported(device_type, dtype):
        warnings.warn(
            "In CPU autocast, but the target dtype is not supported. Disabling autocast.",
            stacklevel=2,
        )

    monkeypatch.setattr(torch, "autocast", unsupported)
    with pytest.raises(ConfigError) as caught:
        device.check_amp(train_config(amp="fp16"), CPU)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("train.amp = 'fp16': ")
    assert message.endswith("set train.amp to none or bf16")

    def raises(device_type, dtype):
        raise RuntimeError("Current CUDA Device does not support bfloat16. Please switch dtype.")

    monkeypatch.setattr(torch, "autocast", raises)
    with pytest.raises(ConfigError, match=r"does not support bfloat16.*set train.amp to none$"):
        device.check_amp(train_config(amp="bf16"), CUDA)


def test_the_old_bf16_key_is_an_unknown_key_that_names_its_replacement():
    with pytest.raises(ConfigError) as caught:
        parse_params({"train": {"bf16": True}})
    message = str(caught.value)
    assert "\n" not in message
    assert "train.bf16" in message and "unknown key" in message and "train.amp" in message


# --- what is logged ------------------------------------------------------------------------------


def test_device_info_on_the_cpu():
    assert device.device_info(CPU) == {
        "device": "cpu",
        "gpu_name": None,
        "cuda_version": None,
        "cudnn_version": None,
    }


def test_device_info_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "NVIDIA H200")
    monkeypatch.setattr(torch.version, "cuda", "13.2")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    assert device.device_info(CUDA) == {
        "device": "cuda",
        "gpu_name": "NVIDIA H200",
        "cuda_version": "13.2",
        "cudnn_version": 91002,
    }


def test_the_device_goes_into_run_json_and_the_run_tags(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    csv = tmp_path / "data" / "splits" / "train_s1.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text("path,label,sha256\ndata/raw/images/a.png,fire," + "ab" * 32 + "\n")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = small_params(mlflow={"tracking_uri": store, "experiment": "device-tests"})
    info = {"device": "cuda", "gpu_name": "NVIDIA H200", "cuda_version": "13.2", "cudnn_version": 1}
    with tracking.tracked_run(params, tmp_path, "s1", "adaptive", csv) as run:
        run.log_device(info)
        run.write_run_json(tmp_path)
    written = json.loads((tmp_path / "run.json").read_text())
    assert {k: written[k] for k in info} == info
    assert {"run_id", "experiment_id", "tracking_uri"} <= set(written)
    tags = MlflowClient(store).get_run(run.run_id).data.tags
    assert tags["device"] == "cuda" and tags["gpu_name"] == "NVIDIA H200"
    assert tags["cuda_version"] == "13.2" and tags["cudnn_version"] == "1"


# --- cuDNN flags ---------------------------------------------------------------------------------


@pytest.mark.parametrize("deterministic", [False, True])
def test_cudnn_flags_hold_for_the_run_and_are_restored(deterministic, monkeypatch):
    cudnn = torch.backends.cudnn
    monkeypatch.setattr(cudnn, "benchmark", False)
    monkeypatch.setattr(cudnn, "deterministic", False)
    with device.backend_flags(train_config(deterministic=deterministic), CUDA):
        assert (cudnn.benchmark, cudnn.deterministic) == (not deterministic, deterministic)
    assert (cudnn.benchmark, cudnn.deterministic) == (False, False)
    with device.backend_flags(train_config(), CPU):
        assert (cudnn.benchmark, cudnn.deterministic) == (False, False)  # CPU: untouched


# --- device-side pieces, run on the CPU ----------------------------------------------------------


def test_a_host_tensor_stays_itself_on_the_cpu():
    t = torch.arange(3)
    assert device.to_device(t, CPU) is t


def test_augmentation_draws_travel_in_one_copy_and_arrive_intact(monkeypatch):
    copies = []
    monkeypatch.setattr(augment, "to_device", lambda t, d: copies.append(t) or t.clone())
    generator = torch.Generator().manual_seed(0)
    for settings in (augment.AugmentSettings(), augment.AugmentSettings(contrast=0.0)):
        draw = augment.Draw.sample(5, generator, settings)
        moved = draw.to(CUDA)  # packed, "copied" (stubbed), unpacked
        assert torch.equal(moved.theta, draw.theta) and moved.theta.shape == (5, 2, 3)
        for name in ("brightness", "contrast", "saturation"):
            a, b = getattr(moved, name), getattr(draw, name)
            assert (a is None and b is None) or torch.equal(a, b)
    assert len(copies) == 2
    assert augment.Draw.sample(5, generator, augment.AugmentSettings()).to(CPU) is not None


def test_normalisation_constants_are_made_once_per_device_and_usable_in_training():
    with torch.inference_mode():
        augment._mean_std.cache_clear()
        first = augment._mean_std(torch.float32, CPU)
    assert augment._mean_std(torch.float32, CPU) is first
    assert not first[0].is_inference()


def _supcon_inputs(seed: int, n: int = 10):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=generator)
    pos_count = (labels[:, None] == labels[None, :]).sum(dim=1) - 1
    pos_log_prob = -torch.rand(n, generator=generator, dtype=torch.float64) * pos_count
    return pos_log_prob, pos_count


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_gpu_supcon_mean_equals_the_cpu_one(seed):
    pos_log_prob, pos_count = _supcon_inputs(seed)
    has_pos = pos_count > 0
    expected = (-pos_log_prob[has_pos] / pos_count[has_pos]).mean()
    assert torch.allclose(masked_anchor_mean(pos_log_prob, pos_count), expected)


def test_the_gpu_supcon_mean_is_zero_without_positives():
    value = masked_anchor_mean(torch.zeros(3, requires_grad=True), torch.zeros(3, dtype=torch.long))
    assert float(value.detach()) == 0.0 and value.requires_grad


@pytest.mark.parametrize("method", PRIOR_METHODS)
@pytest.mark.parametrize("epoch", [0, 2])
def test_precomputed_prior_tensors_give_the_same_loss(method, epoch):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 3, generator=generator)
    labels = torch.randint(0, 3, (8,), generator=generator)
    prior = PriorLoss(class_counts=(60, 25, 15), drw_epoch=1)
    derived = method_loss(method, logits, None, labels, prior=prior, epoch=epoch).total
    tensors = prior_tensors(method, prior, CPU)
    given = method_loss(
        method, logits, None, labels, prior=prior, prior_tensors=tensors, epoch=epoch
    ).total
    assert torch.equal(given, derived)


def test_prior_tensors_check_the_counts_once():
    with pytest.raises(ValueError, match="positive training count"):
        prior_tensors("cb_focal", PriorLoss(class_counts=(3, 0)), CPU)


def test_repo_params_files_carry_the_new_keys():
    root = Path(__file__).resolve().parents[1]
    for name in ("params.yaml", "params.paper.yaml"):
        train = yaml.safe_load((root / name).read_text())["train"]
        assert {"device", "amp", "deterministic", "compile"} <= set(train) and "bf16" not in train

"""model.weights: a local checkpoint loads only when it is this network's; anything else is one
line from `aider-edge train`, before any MLflow run exists."""

from __future__ import annotations

import random

import pytest
import torch
import yaml
from torchvision.models import mobilenet_v3_large

from aider_edge import cli
from aider_edge.errors import ConfigError
from aider_edge.model import build_model

BACKBONE = "classifier.features."
GIVE = "give a model.pt written by `aider-edge train` or a torchvision MobileNetV3-Large state dict"
NOT_OURS = "it is not a MobileNetV3-Large checkpoint of this project or torchvision"


def _state(num_classes: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(num_classes).state_dict()


def _write(path, kind: str) -> None:
    if kind == "random bytes":
        path.write_bytes(random.Random(0).randbytes(4096))  # fixed: torch fails the same way
    elif kind == "one tensor":
        torch.save(torch.ones(3), path)
    elif kind == "another network":
        torch.save(torch.nn.Linear(2, 3).state_dict(), path)
    elif kind == "a few backbone tensors":
        torch.save({"model": dict(list(_state().items())[:5])}, path)
    elif kind == "other classes":
        torch.save({"model": _state(3), "classes": ["a", "b", "c"]}, path)


BAD = {
    "random bytes": f"not a PyTorch checkpoint that loads as plain tensors (UnpicklingError): {GIVE}",
    "one tensor": f"holds a single tensor of shape (3,), not a state dict of named tensors: {GIVE}",
    "another network": f"262 of 262 backbone tensors missing, 2 unexpected, 0 with another shape: {NOT_OURS}",
    "a few backbone tensors": f"257 of 262 backbone tensors missing, 0 unexpected, 0 with another shape: {NOT_OURS}",
    "other classes": "2 head tensor(s) with another shape (e.g. classifier.head.3.weight (3, 1280), "
    "this model (5, 1280)): it was trained with other data.classes or model.projection_dim; "
    "set those to the checkpoint's",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_train_refuses_a_checkpoint_that_is_not_this_network_in_one_line(
    kind, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _write(tmp_path / "x.pt", kind)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"weights": "x.pt"}}))
    code = cli.main(["train", "--scenario", "s1", "--method", "baseline"])
    assert code == cli.EXIT_USER_ERROR
    assert (
        capsys.readouterr().err == f"aider-edge train: error: model.weights = x.pt: {BAD[kind]}\n"
    )
    # Checked before the MLflow store is even opened: no mlflow.db, no FAILED run, no models/.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "x.pt"]


def test_a_missing_checkpoint_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as caught:
        build_model(5, str(tmp_path / "nowhere.pt"))
    assert str(caught.value) == (
        f"model.weights = {tmp_path / 'nowhere.pt'}: neither 'imagenet', 'none' nor an existing "
        "checkpoint file: fix the path"
    )


def test_a_checkpoint_of_this_project_loads_every_tensor(tmp_path):
    saved = _state()
    torch.save({"model": saved, "classes": list("abcde")}, tmp_path / "model.pt")
    loaded = build_model(5, str(tmp_path / "model.pt")).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_a_backbone_alone_loads_and_the_heads_start_fresh(tmp_path):
    # benchmarks/science/pretrain.py writes such a checkpoint: the features only.
    backbone = {k: v for k, v in _state().items() if k.startswith(BACKBONE)}
    torch.save({"model": backbone}, tmp_path / "features.pt")
    loaded = build_model(5, str(tmp_path / "features.pt")).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in backbone.items())


def test_a_torchvision_state_dict_gives_the_backbone(tmp_path):
    torch.manual_seed(1)
    imagenet_like = mobilenet_v3_large().state_dict()
    torch.save(imagenet_like, tmp_path / "mobilenet_v3_large.pth")
    loaded = build_model(5, str(tmp_path / "mobilenet_v3_large.pth")).state_dict()
    for key, value in imagenet_like.items():
        if key.startswith("features."):
            assert torch.equal(loaded[BACKBONE + key.removeprefix("features.")], value), key
    assert loaded["classifier.head.3.weight"].shape == (5, 1280)  # its ImageNet head is left out

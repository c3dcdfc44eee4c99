"""MobileNetV3-Large with a classification head and a contrastive projection head.

The projection head (an MLP to ``projection_dim``) exists only for the supervised contrastive loss;
:meth:`AiderNet.forward` returns class logits alone and :meth:`AiderNet.classifier_only` gives the
module that is exported to the drone, without the projection head's parameters.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large

from aider_edge.errors import AiderEdgeError, ConfigError

FEATURE_DIM = 960  # channels of MobileNetV3-Large's last feature map
HIDDEN_DIM = 1280  # torchvision's classifier width
BN_MOMENTUM = 0.1


class Classifier(nn.Module):
    """Feature extractor + pooling + classification head: what runs on the drone."""

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class AiderNet(nn.Module):
    def __init__(self, num_classes: int, projection_dim: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        backbone = mobilenet_v3_large(weights=None)
        head = nn.Sequential(
            nn.Linear(FEATURE_DIM, HIDDEN_DIM),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(HIDDEN_DIM, num_classes),
        )
        # torchvision's MobileNetV3 uses BatchNorm momentum 0.01, tuned for ImageNet-length runs;
        # after a few hundred steps from scratch the running statistics are still mostly their
        # initial values and eval-mode predictions collapse to one class. 0.1 (PyTorch's default)
        # tracks the real statistics within a short run and changes nothing for long ones.
        for module in backbone.features.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = BN_MOMENTUM
        self.classifier = Classifier(backbone.features, head)
        # Khosla et al. use a 2-layer MLP on the pooled representation; it is dropped after training.
        self.projection = nn.Sequential(
            nn.Linear(FEATURE_DIM, FEATURE_DIM),
            nn.ReLU(inplace=True),
            nn.Linear(FEATURE_DIM, projection_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and (unnormalised) projections from one pass through the backbone."""
        embedding = self.classifier.embed(x)
        return self.classifier.head(embedding), self.projection(embedding)

    def classifier_only(self) -> Classifier:
        return self.classifier


def build_model(num_classes: int, weights: str = "none", projection_dim: int = 128) -> AiderNet:
    """A fresh model; ``weights`` is ``imagenet``, ``none`` or a path to a local checkpoint."""
    model = AiderNet(num_classes, projection_dim)
    if weights == "none":
        return model
    if weights == "imagenet":
        _load_imagenet_backbone(model)
        return model
    _load_checkpoint(model, weights)
    return model


def check_weights(num_classes: int, weights: str = "none", projection_dim: int = 128) -> None:
    """Stop with one line unless ``model.weights`` loads into this model.

    It loads them exactly as training will, into a model that is thrown away: run before a
    training run opens its MLflow run, a bad checkpoint leaves no FAILED run behind.
    """
    if weights != "none":
        build_model(num_classes, weights, projection_dim)


def _load_imagenet_backbone(model: AiderNet) -> None:
    try:
        state = MobileNet_V3_Large_Weights.IMAGENET1K_V2.get_state_dict(progress=False)
    except Exception as exc:  # urllib raises several types when offline
        raise AiderEdgeError(
            f"model.weights 'imagenet' needs torchvision's download, which failed ({type(exc).__name__}: "
            f"{exc}); go online once (it is cached in ~/.cache/torch), or set model.weights to 'none' "
            "or to a local checkpoint path"
        ) from None
    features = {
        k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")
    }
    model.classifier.features.load_state_dict(features)


_NOT_OURS = "it is not a MobileNetV3-Large checkpoint of this project or torchvision"
_GIVE = (
    "give a model.pt written by `aider-edge train` or a torchvision MobileNetV3-Large state dict"
)
_BACKBONE = "classifier.features."
_TORCHVISION_BACKBONE = "features."


def _load_checkpoint(model: AiderNet, weights: str) -> None:
    state = _project_layout(_read_state_dict(weights))
    _check_fits(model.state_dict(), state, weights)
    model.load_state_dict(state, strict=False)


def _read_state_dict(weights: str) -> dict[str, torch.Tensor]:
    """The named tensors in the file ``weights``, or one line saying why there are none."""
    where = f"model.weights = {weights}"
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(
            f"{where}: neither 'imagenet', 'none' nor an existing checkpoint file: fix the path"
        )
    try:
        # weights_only: a checkpoint is data, never code to execute.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's message runs to several lines; the type says enough
        raise ConfigError(
            f"{where}: not a PyTorch checkpoint that loads as plain tensors "
            f"({type(exc).__name__}): {_GIVE}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # model.pt and checkpoint.pt of a training run
    if not _is_state_dict(state):
        raise ConfigError(
            f"{where}: holds {_kind(state)}, not a state dict of named tensors: {_GIVE}"
        )
    return state


def _is_state_dict(value: object) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _kind(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a single tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return "an empty mapping" if not value else "a mapping whose values are not all tensors"
    return f"a {type(value).__name__}"


def _project_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with this project's key names: torchvision's ``features.*`` are the backbone and
    its ``classifier.*`` (the ImageNet head, 1000 classes) is left out."""
    if not any(k.startswith(_TORCHVISION_BACKBONE) for k in state):
        return state
    return {
        _BACKBONE + k.removeprefix(_TORCHVISION_BACKBONE)
        if k.startswith(_TORCHVISION_BACKBONE)
        else k: v
        for k, v in state.items()
        if not _is_torchvision_head(k)
    }


def _is_torchvision_head(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 3 and parts[0] == "classifier" and parts[1].isdigit()


def _check_fits(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], weights: str) -> None:
    """Every backbone tensor present with its shape and nothing unknown; heads may be absent."""
    # BatchNorm's step counters are not weights (older torchvision files lack them).
    backbone = [k for k in own if k.startswith(_BACKBONE) and not k.endswith("num_batches_tracked")]
    missing = [k for k in backbone if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in state if k in own and state[k].shape != own[k].shape]
    where = f"model.weights = {weights}"
    if missing or unexpected or any(k.startswith(_BACKBONE) for k in reshaped):
        raise ConfigError(
            f"{where}: {len(missing)} of {len(backbone)} backbone tensors missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} with another shape: {_NOT_OURS}"
        )
    if reshaped:
        first = reshaped[0]
        raise ConfigError(
            f"{where}: {len(reshaped)} head tensor(s) with another shape (e.g. {first} "
            f"{tuple(state[first].shape)}, this model {tuple(own[first].shape)}): it was trained "
            "with other data.classes or model.projection_dim; set those to the checkpoint's"
        )

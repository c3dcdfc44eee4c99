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

from aider_edge.errors import AiderEdgeError

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
    _load_checkpoint(model, Path(weights))
    return model


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


def _load_checkpoint(model: AiderNet, path: Path) -> None:
    if not path.is_file():
        raise AiderEdgeError(
            f"model.weights {str(path)!r} is neither 'imagenet', 'none' nor an existing checkpoint file"
        )
    try:
        # weights_only: a checkpoint is data, never code to execute.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AiderEdgeError(f"{path}: not a loadable weights-only checkpoint ({exc})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint of this project
    own = model.state_dict()
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if mismatched:
        raise AiderEdgeError(
            f"{path}: {len(mismatched)} tensor(s) do not fit this model (e.g. {mismatched[0]}); "
            "was it trained with other data.classes or model.projection_dim?"
        )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if unexpected or (missing and len(missing) == len(own)):
        raise AiderEdgeError(
            f"{path}: not an aider-edge checkpoint ({len(unexpected)} unknown and {len(missing)} "
            "missing tensors); give a checkpoint written by `aider-edge train`"
        )
    model.load_state_dict(state, strict=False)

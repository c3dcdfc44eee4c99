"""The exported model's contract: what an ONNX classifier of this project takes, gives and says.

Export writes it, ``validate``, the promotion gate and the drone runtime read it; all of them take
names, layouts and metadata keys from here, and preprocessing from the model's own metadata
(:func:`preprocessing_from_metadata`), so a model exported at another resolution or layout is
scored the way the drone runs it. Standard library only: the drone imports it.

Graph: one input :data:`INPUT_NAME`, one output :data:`OUTPUT_NAME` ``(N, classes)`` of logits.

Layouts (``aider_edge.layout`` metadata):
    * :data:`LAYOUT_FLOAT` ``NCHW_float32_normalized``: float32 NCHW, scaled to 0-1 and
      standardised with ``mean`` / ``std`` (what training fed the network);
    * :data:`LAYOUT_UINT8` ``NHWC_uint8``: the resized camera frame as it is; the graph scales,
      normalises and transposes it itself.

Metadata (``metadata_props``, every key prefixed :data:`META_PREFIX`, non-strings as JSON):
``classes``, ``input_size``, ``mean``, ``std``, ``layout``, ``resize``, ``mlflow_run_id``,
``data_hash``, ``model_version`` (``unregistered`` until the registry stamps it), ``precision``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
LAYOUT_FLOAT = "NCHW_float32_normalized"
LAYOUT_UINT8 = "NHWC_uint8"
LAYOUTS = (LAYOUT_FLOAT, LAYOUT_UINT8)
INPUT_TYPES = {LAYOUT_FLOAT: "tensor(float)", LAYOUT_UINT8: "tensor(uint8)"}
"""onnxruntime's type string of the graph input for each layout."""
RESIZE = "bilinear"  # data/cache.py:decode_resized squashes frames with Pillow's BILINEAR
RESIZE_METHODS = (RESIZE,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

META_PREFIX = "aider_edge."
REQUIRED_METADATA = ("classes", "input_size", "mean", "std", "layout", "resize")
UNREGISTERED = "unregistered"


class ContractError(ValueError):
    """Metadata that does not follow the contract; the message names the key."""


@dataclass(frozen=True)
class Preprocessing:
    """How a frame becomes the model's input; mirrors training's decode (``data/cache.py``)."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str
    resize: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
            "resize": self.resize,
        }


def model_metadata(
    classes: list[str],
    input_size: int,
    *,
    preprocessing_in_graph: bool,
    run_id: str,
    data_hash: str,
    precision: str,
) -> dict[str, object]:
    """The metadata values export writes (unprefixed; :func:`encode_metadata` prefixes them)."""
    return {
        "classes": list(classes),
        "input_size": str(input_size),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "layout": LAYOUT_UINT8 if preprocessing_in_graph else LAYOUT_FLOAT,
        "resize": RESIZE,
        "mlflow_run_id": run_id,
        "data_hash": data_hash,
        "model_version": UNREGISTERED,
        "precision": precision,
    }


def encode_metadata(values: Mapping[str, object]) -> dict[str, str]:
    """``{key: value}`` -> ``{"aider_edge.<key>": string}`` (non-strings as JSON)."""
    return {
        META_PREFIX + key: value if isinstance(value, str) else json.dumps(value)
        for key, value in values.items()
    }


def decode_metadata(props: Mapping[str, str]) -> dict[str, str]:
    """The ``aider_edge.*`` entries of a model's metadata map, prefix stripped."""
    return {k.removeprefix(META_PREFIX): v for k, v in props.items() if k.startswith(META_PREFIX)}


def missing_metadata(meta: Mapping[str, str]) -> list[str]:
    """Required keys (prefixed, for messages) that ``meta`` (decoded) lacks."""
    return [META_PREFIX + k for k in REQUIRED_METADATA if k not in meta]


def classes_from_metadata(meta: Mapping[str, str]) -> list[str]:
    value = _json(meta, "classes")
    if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
        raise ContractError(f"metadata {META_PREFIX}classes must be a JSON list of names")
    return value


def preprocessing_from_metadata(meta: Mapping[str, str]) -> Preprocessing:
    """The model's own preprocessing (decoded metadata); :class:`ContractError` when malformed."""
    missing = missing_metadata(meta)
    if missing:
        raise ContractError(f"metadata {', '.join(missing)} missing")
    try:
        size = int(meta["input_size"])
    except ValueError:
        raise ContractError(
            f"metadata {META_PREFIX}input_size = {meta['input_size']!r} is not an integer"
        ) from None
    return checked_preprocessing(
        {
            "input_size": size,
            "mean": _json(meta, "mean"),
            "std": _json(meta, "std"),
            "layout": meta["layout"],
            "resize": meta["resize"],
        },
        where=f"metadata {META_PREFIX}",
    )


def checked_preprocessing(pre: Mapping[str, Any], where: str) -> Preprocessing:
    """A :class:`Preprocessing` from a plain mapping (metadata or a bundle manifest), checked."""
    size = pre.get("input_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 4096:
        raise ContractError(f"{where}input_size = {size!r} must be an integer in 8..4096")
    layout = pre.get("layout")
    if layout not in LAYOUTS:
        raise ContractError(
            f"{where}layout = {layout!r}; this runtime supports {', '.join(LAYOUTS)}"
        )
    resize = pre.get("resize")
    if resize not in RESIZE_METHODS:
        raise ContractError(
            f"{where}resize = {resize!r}; this runtime supports {', '.join(RESIZE_METHODS)}"
        )
    return Preprocessing(
        input_size=size,
        mean=_triple(pre, "mean", where, positive=False),
        std=_triple(pre, "std", where, positive=True),
        layout=str(layout),
        resize=str(resize),
    )


def _triple(
    pre: Mapping[str, Any], key: str, where: str, *, positive: bool
) -> tuple[float, float, float]:
    values = pre.get(key)
    ok = (
        isinstance(values, list)
        and len(values) == 3
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        )
        and (not positive or all(v > 0 for v in values))
    )
    if not ok:
        rule = "three positive numbers" if positive else "three numbers"
        raise ContractError(f"{where}{key} = {values!r} must be {rule} (RGB, 0-1 scale)")
    assert isinstance(values, list)
    return (float(values[0]), float(values[1]), float(values[2]))


def _json(meta: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key])
    except KeyError:
        raise ContractError(f"metadata {META_PREFIX}{key} missing") from None
    except json.JSONDecodeError:
        raise ContractError(
            f"metadata {META_PREFIX}{key} is not JSON ({meta[key][:40]!r})"
        ) from None

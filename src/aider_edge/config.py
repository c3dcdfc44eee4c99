"""Typed, validated ``params.yaml``.

Every stage loads its knobs through :func:`load_params`. The models forbid unknown keys and use
strict types, so a typo or a quoted number fails at load time with one line that names the key,
the bad value and what is allowed, instead of surfacing as a confusing error mid-training.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from aider_edge import layout
from aider_edge.emulation import CPUS
from aider_edge.errors import ConfigError

AIDER_CLASSES = ("collapsed_building", "fire", "flooded_areas", "traffic_incident", "normal")
PROPORTION_TOLERANCE = 1e-6


class _KeyedError(ValueError):
    """A cross-section check that knows which key it is about (pydantic would report the root)."""

    def __init__(self, loc: tuple[str, ...], value: Any, message: str) -> None:
        super().__init__(message)
        self.loc, self.value, self.message = loc, value, message


PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- data -----------------------------------------------------------------------------------


class SyntheticConfig(_Section):
    """The embedded AIDER-like generator (``data.source: synthetic``)."""

    per_class: PositiveInt = 1000
    """Images generated per class; the default covers the demo scenarios plus val and test."""
    image_size: Annotated[int, Field(ge=32, le=1024)] = 128
    """Native size of the generated frames (resized to ``data.image_size`` for training)."""
    format: Literal["png", "jpg"] = "jpg"


class DataConfig(_Section):
    source: Literal["synthetic", "folder", "archive"] = "synthetic"
    path: str = "data/source"
    """Folder of class folders (``folder``), or a local archive path or http(s) URL (``archive``)."""
    sha256: str | None = None
    """Required for an archive URL; checked for a local archive when given."""
    classes: list[str] = Field(default_factory=lambda: list(AIDER_CLASSES), min_length=2)
    image_size: Annotated[int, Field(ge=32, le=1024)] = 64
    """Training and evaluation resolution (square, pixels)."""
    max_pixels: PositiveInt = 40_000_000
    """Images larger than this are rejected as decompression bombs."""
    max_archive_bytes: PositiveInt = 20 * 1024**3
    """An archive that would expand beyond this many bytes is refused."""
    cache_dir: Annotated[str, Field(min_length=1)] = layout.CACHE_DIR.as_posix()
    """The decoded-pixel cache: relative to the project root (the repository itself for a DVC
    experiment's temporary copy, so every experiment shares it), or absolute (a team's disk).
    No stage depends on it: where pixels are cached never changes a result."""
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("classes")
    @classmethod
    def _unique_names(cls, classes: list[str]) -> list[str]:
        dupes = sorted({c for c in classes if classes.count(c) > 1})
        if dupes:
            raise ValueError(f"class names must be unique, repeated: {', '.join(dupes)}")
        bad = [c for c in classes if not c or "/" in c or c.startswith(".")]
        if bad:
            raise ValueError(f"class names must be plain folder names, got {bad}")
        return classes

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and (
            len(value) != 64 or any(ch not in "0123456789abcdef" for ch in value.lower())
        ):
            raise ValueError("must be a 64-character hex sha256 digest")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _source_needs(self) -> DataConfig:
        if self.source == "synthetic" and not set(self.classes) <= set(AIDER_CLASSES):
            extra = sorted(set(self.classes) - set(AIDER_CLASSES))
            raise _KeyedError(
                ("data", "classes"),
                extra,
                f"not drawn by the synthetic source (it has {', '.join(AIDER_CLASSES)}): "
                "use source 'folder' or 'archive' for other classes",
            )
        if (
            self.source == "archive"
            and self.path.startswith(("http://", "https://"))
            and not self.sha256
        ):
            raise _KeyedError(
                ("data", "sha256"),
                None,
                "is required for an archive URL so the download is verified",
            )
        return self


# --- split ----------------------------------------------------------------------------------


class StepProfile(_Section):
    """Step imbalance (Buda et al. 2018): ``minority`` classes at ``minority_ratio`` of the rest.

    The minority classes are the first ``minority`` classes of ``data.classes`` (AIDER lists the
    emergencies first and ``normal`` last); ``minority`` defaults to all but the last class.
    """

    profile: Literal["step"]
    minority_ratio: Annotated[float, Field(gt=0, le=1)]
    minority: PositiveInt | None = None


class ExponentialProfile(_Section):
    """Long-tailed imbalance (Cui et al. 2019): class sizes decay geometrically.

    The last class of ``data.classes`` is the head and the first the tail; the head holds
    ``imbalance_ratio`` times as many images as the tail.
    """

    profile: Literal["exponential"]
    imbalance_ratio: Annotated[float, Field(ge=1)]


ScenarioSpec = list[float] | StepProfile | ExponentialProfile

PAPER_SCENARIOS: dict[str, list[float]] = {
    "s1": [0.05, 0.05, 0.05, 0.05, 0.80],
    "s2": [0.05, 0.05, 0.10, 0.10, 0.70],
    "s3": [0.05, 0.05, 0.20, 0.20, 0.50],
    "s4": [0.10, 0.10, 0.20, 0.20, 0.40],
    "s5": [0.20, 0.20, 0.20, 0.20, 0.20],
}


def _paper_scenarios() -> dict[str, ScenarioSpec]:
    return {k: list(v) for k, v in PAPER_SCENARIOS.items()}


class SplitConfig(_Section):
    train_size: PositiveInt = 1000
    val_per_class: PositiveInt = 60
    test_per_class: PositiveInt = 60
    scenarios: dict[str, ScenarioSpec] = Field(default_factory=_paper_scenarios, min_length=1)

    @field_validator("scenarios", mode="before")
    @classmethod
    def _parse_scenarios(cls, scenarios: Any) -> Any:
        # Parsed by hand rather than as a pydantic union: a union reports every branch's
        # complaint, and the user wants one sentence about the scenario they got wrong.
        if not isinstance(scenarios, dict):
            return scenarios  # pydantic reports the wrong type
        return {name: _parse_scenario(name, spec) for name, spec in scenarios.items()}


def _parse_scenario(name: Any, spec: Any) -> list[float] | StepProfile | ExponentialProfile:
    loc = ("split", "scenarios", str(name))
    if not isinstance(name, str) or not name or not all(ch.isalnum() or ch == "_" for ch in name):
        # The name becomes a file name and a DVC matrix key (train@<scenario>-<method>).
        raise _KeyedError(loc, name, "is not a valid scenario name: use letters, digits and '_'")
    if isinstance(spec, list):
        if not spec or not all(
            isinstance(p, int | float) and not isinstance(p, bool) and math.isfinite(p) and p >= 0
            for p in spec
        ):
            raise _KeyedError(loc, spec, "must be a list of finite proportions >= 0")
        total = float(sum(spec))
        if abs(total - 1.0) > PROPORTION_TOLERANCE:
            raise _KeyedError(
                loc,
                spec,
                f"sums to {total:.6g}; proportions must sum to 1 (tolerance {PROPORTION_TOLERANCE:g})",
            )
        return [float(p) for p in spec]
    profiles: dict[str, type[StepProfile] | type[ExponentialProfile]] = {
        "step": StepProfile,
        "exponential": ExponentialProfile,
    }
    kind = spec.get("profile") if isinstance(spec, dict) else None
    if kind not in profiles:
        raise _KeyedError(
            loc,
            spec,
            "must be a list of class proportions or a mapping with profile: step "
            "(minority_ratio, minority) or profile: exponential (imbalance_ratio)",
        )
    try:
        return profiles[kind].model_validate(spec)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise _KeyedError(
                (*loc, key), first.get("input"), "is not a key of this profile"
            ) from None
        raise _KeyedError((*loc, key), first.get("input"), first["msg"]) from None


# --- later stages (filled in by the training, export and registry work) ---------------------


class ModelConfig(_Section):
    arch: Literal["mobilenet_v3_large"] = "mobilenet_v3_large"
    weights: str = "none"
    """``imagenet`` (torchvision download), ``none``, or a path to a local checkpoint: a
    ``model.pt`` of this project or a torchvision MobileNetV3-Large state dict, whose backbone
    must match tensor for tensor (checked before a training run starts)."""
    projection_dim: PositiveInt = 128


# The training methods (losses.py implements each); here so that params validate without torch.
Method = Literal[
    "baseline",
    "adaptive",
    "wce",
    "supcon_fixed",
    "logit_adjusted",
    "ldam_drw",
    "cb_focal",
]


def _default_methods() -> list[Method]:
    return ["baseline", "adaptive"]


class TrainConfig(_Section):
    scenarios: list[str] | None = None
    """Scenarios to train (the DVC matrix); ``None`` = every scenario of ``split.scenarios``.

    params.yaml writes ``scenarios: *scenarios``, a YAML alias of the ``split.scenarios`` mapping:
    DVC's matrix iterates a mapping's keys, so the shipped default trains every split scenario and
    a new one needs no second edit. A mapping here is read as its keys."""
    methods: list[Method] = Field(default_factory=_default_methods, min_length=1)
    epochs: PositiveInt = 8
    batch_size: Annotated[int, Field(ge=2)] = 32
    lr: PositiveFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    positives: Literal["none", "two_views", "paired"] = "two_views"
    """How contrastive methods get positives for minority anchors: ``two_views`` (each image
    augmented twice), ``paired`` (each batch pairs every image with another of its class), or
    ``none`` (plain batches). ``two_views`` is the default: of the two remedies it gave the higher
    validation G-Mean under s1 (benchmarks/results/positives.md)."""
    patience: NonNegativeInt = 0
    """Stop after this many epochs without a better validation G-Mean; 0 = run every epoch."""
    num_threads: NonNegativeInt = 0
    """torch intra-op threads; 0 = all cores."""
    channels_last: bool = True
    """NHWC memory format for the convolutions (measured faster on x86 CPUs, see
    benchmarks/results/training.md; cuDNN's fast kernels for half precision want it too)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where training runs: ``auto`` takes CUDA when torch sees a GPU and the CPU otherwise;
    ``cuda`` stops with one line on a host without one."""
    amp: Literal["none", "bf16", "fp16"] = "none"
    """Mixed precision for the training forward passes: bfloat16 or float16 autocast (float16
    with a gradient scaler); ``none`` = float32. The losses stay float32 and evaluation runs in
    float32 either way. On CPUs bf16 measured no faster (benchmarks/results/training.md)."""
    deterministic: bool = False
    """On CUDA: deterministic cuDNN kernels and no cuDNN autotuning (slower). A few CUDA kernels
    (e.g. the backward of average pooling) have no deterministic version, so runs on a GPU can
    still differ in the last bits; CPU runs are reproducible either way."""
    compile: bool = False
    """``torch.compile`` the training forward pass (compiling takes minutes first; for GPUs)."""

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "bf16" in raw:
            raise _KeyedError(
                ("train", "bf16"),
                raw["bf16"],
                "unknown key: it was renamed to train.amp (none | bf16 | fp16); "
                "bf16: true is now amp: bf16",
            )
        return raw

    @field_validator("scenarios", mode="before")
    @classmethod
    def _scenario_names(cls, scenarios: Any) -> Any:
        if isinstance(scenarios, dict):
            return list(scenarios)
        if scenarios == []:
            # DVC's matrix over an empty list defines no train stage at all, and `select` would
            # then fail on a missing models/ folder far from the cause.
            raise _KeyedError(
                ("train", "scenarios"),
                scenarios,
                "is empty, so DVC would train nothing: list the scenarios to train, "
                "or write `scenarios: *scenarios` (every scenario of split.scenarios)",
            )
        return scenarios


class NoLossKnobs(_Section):
    """``baseline`` and ``wce`` read no loss knob (the section exists so that DVC can depend on
    ``loss.<method>`` for every method)."""


class AdaptiveLoss(_Section):
    """``adaptive``, the paper's schedule: tau and lambda follow sigma of the class frequencies,
    ``tau = clip(tau0 (1 - sigma))``, ``lambda = clip(lambda0 (1 + sigma))``."""

    tau0: PositiveFloat = 0.1
    lambda0: PositiveFloat = 0.5
    tau_min: PositiveFloat = 0.01
    tau_max: PositiveFloat = 0.1
    lambda_min: Annotated[float, Field(ge=0)] = 0.1
    lambda_max: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _ordered_bounds(self) -> AdaptiveLoss:
        if self.tau_min > self.tau_max:
            raise _KeyedError(
                ("loss", "adaptive", "tau_min"),
                self.tau_min,
                f"must not exceed tau_max {self.tau_max}",
            )
        if self.lambda_min > self.lambda_max:
            raise _KeyedError(
                ("loss", "adaptive", "lambda_min"),
                self.lambda_min,
                f"must not exceed lambda_max {self.lambda_max}",
            )
        return self


class FixedSupConLoss(_Section):
    """``supcon_fixed``, the paper's ablation: the same losses with tau and lambda fixed."""

    tau: PositiveFloat = 0.1
    lambda_: PositiveFloat = Field(default=0.5, alias="lambda")


class LogitAdjustedLoss(_Section):
    """``logit_adjusted`` (Menon et al. 2021)."""

    tau: Annotated[float, Field(ge=0)] = 1.0
    """Logits + tau * log(prior); 1 = balanced softmax."""


class LdamDrwLoss(_Section):
    """``ldam_drw`` (Cao et al. 2019)."""

    max_margin: PositiveFloat = 0.5
    """The rarest class's margin; others get C / n_c^(1/4)."""
    scale: PositiveFloat = 1.0
    """Logit scale s (the reference code's 30 is for cosine logits; ours are raw)."""
    drw_epoch: NonNegativeInt = 6
    """First (0-based) epoch with re-weighting; Cao et al. switch at 80 % of training."""
    drw_beta: Annotated[float, Field(ge=0, lt=1)] = 0.9999
    """Effective-number beta of the deferred class weights."""


class CbFocalLoss(_Section):
    """``cb_focal`` (Cui et al. 2019)."""

    beta: Annotated[float, Field(ge=0, lt=1)] = 0.9999
    """Effective-number beta; 0 = no re-weighting."""
    gamma: Annotated[float, Field(ge=0)] = 2.0
    """Focusing parameter; 0 = class-balanced sigmoid cross-entropy."""


FLAT_LOSS_KEYS = {
    **{k: f"adaptive.{k}" for k in AdaptiveLoss.model_fields},
    "la_tau": "logit_adjusted.tau",
    "ldam_max_margin": "ldam_drw.max_margin",
    "ldam_scale": "ldam_drw.scale",
    "drw_epoch": "ldam_drw.drw_epoch",
    "drw_beta": "ldam_drw.drw_beta",
    "cb_beta": "cb_focal.beta",
    "focal_gamma": "cb_focal.gamma",
}
"""Where each key of the earlier flat ``loss`` section lives now (for the error that says so)."""


class LossConfig(_Section):
    """One section per method, holding exactly the knobs that method reads: each training run
    depends on its own ``loss.<method>`` only (dvc.yaml), so tuning one method retrains only its
    runs. Defaults are the papers'."""

    baseline: NoLossKnobs = NoLossKnobs()
    wce: NoLossKnobs = NoLossKnobs()
    adaptive: AdaptiveLoss = AdaptiveLoss()
    supcon_fixed: FixedSupConLoss = FixedSupConLoss()
    logit_adjusted: LogitAdjustedLoss = LogitAdjustedLoss()
    ldam_drw: LdamDrwLoss = LdamDrwLoss()
    cb_focal: CbFocalLoss = CbFocalLoss()

    @model_validator(mode="before")
    @classmethod
    def _flat_keys_moved(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            for key, value in raw.items():
                if key in FLAT_LOSS_KEYS:
                    raise _KeyedError(
                        ("loss", key),
                        value,
                        f"moved to loss.{FLAT_LOSS_KEYS[key]} (each method has its own "
                        "section, see params.yaml)",
                    )
        return raw

    def of(self, method: str) -> _Section:
        """The section of ``method`` (what its runs read and DVC tracks for them)."""
        section: _Section = getattr(self, method)
        return section


class SelectConfig(_Section):
    """Which trained runs compete in ``select``; ``None`` = every trained scenario / method."""

    scenarios: list[str] | None = None
    methods: list[str] | None = None
    """Checked against ``train.methods`` (only trained runs can be selected)."""


class CalibrationConfig(_Section):
    """INT8 activation ranges, computed on images of the selected run's training split."""

    method: Literal["minmax", "entropy", "percentile"] = "percentile"
    """``percentile`` (99.99th): on the demo model the closest INT8 of the calibrations measured;
    onnxruntime's ``entropy`` clipped activations so hard that G-Mean fell from 0.46 to 0.20
    (benchmarks/results/int8.md)."""
    images: PositiveInt = 256
    """Training images fed to the calibrator (a seeded sample; all when the split is smaller)."""
    num_bins: Annotated[int, Field(ge=256)] = 2048
    """Histogram bins (entropy, percentile); onnxruntime's entropy default of 128 equals MinMax."""
    num_quantized_bins: Annotated[int, Field(ge=16)] = 128
    percentile: Annotated[float, Field(gt=90, le=100)] = 99.99

    @model_validator(mode="after")
    def _bins_ordered(self) -> CalibrationConfig:
        if self.num_quantized_bins >= self.num_bins:
            raise _KeyedError(
                ("export", "calibration", "num_quantized_bins"),
                self.num_quantized_bins,
                f"must be less than num_bins ({self.num_bins}) or entropy calibration is MinMax",
            )
        return self


class ExportConfig(_Section):
    opset: Annotated[int, Field(ge=18, le=23)] = 18
    int8: bool = True
    """Also write ``export/model.int8.onnx`` (validate decides whether it is kept)."""
    preprocessing_in_graph: bool = False
    """The graph takes uint8 NHWC frames and normalises them itself (layout ``NHWC_uint8``)."""
    rewrite_pools: bool = True
    """Exporter's spatial ``ReduceMean`` -> ``GlobalAveragePool`` (kept only if outputs equal)."""
    int8_activations: Literal["uint8", "int8"] = "uint8"
    """uint8 (U8S8) is onnxruntime's fast path on x86 VNNI; int8 (S8S8) suits ARM kernels."""
    calibration: CalibrationConfig = CalibrationConfig()


class LatencyProfileConfig(_Section):
    """A CPU the model must run on; ``scale`` = device latency / host latency (same threads)."""

    name: Annotated[str, Field(min_length=1)]
    threads: PositiveInt
    budget_ms: PositiveFloat
    """On-device p90 budget, batch 1."""
    scale: PositiveFloat = 1.0
    calibrated: bool = False
    """False while ``scale`` is a guess (results are labelled estimated); true once a device
    report (``aider-edge bench`` on the drone) measured it."""
    isa: Literal["x86_64", "aarch64"] | None = None
    """The drone CPU's instruction set: onnxruntime's kernels (and so INT8 results) differ by ISA.
    Every profile but ``host`` (the machine ``validate`` runs on) names it."""
    emulate: str | None = None
    """The qemu CPU model that stands for this CPU in ``make check-arm`` (aarch64 profiles)."""

    @model_validator(mode="after")
    def _emulated_cpu(self) -> LatencyProfileConfig:
        if self.isa is None and self.name != "host":
            raise ValueError(
                f"profile {self.name!r}: name its CPU's instruction set, "
                "`isa: aarch64` (with `emulate: <qemu CPU>`) or `isa: x86_64`"
            )
        if self.isa == "aarch64" and self.emulate not in CPUS:
            raise ValueError(
                f"profile {self.name!r}: an aarch64 profile names its `emulate` CPU, one of "
                f"{', '.join(sorted(CPUS))} (got {self.emulate!r})"
            )
        if self.isa != "aarch64" and self.emulate is not None:
            raise ValueError(f"profile {self.name!r}: `emulate` is for aarch64 profiles only")
        return self


def _arm(cpu: str) -> dict[str, Any]:
    return {"isa": "aarch64", "emulate": cpu}


def _default_profiles() -> list[LatencyProfileConfig]:
    # Scales are uncalibrated guesses from public MobileNetV3 figures for these CPUs relative to
    # this x86 host (AVX-512); `aider-edge bench` on the device replaces them.
    return [
        LatencyProfileConfig(name="host", threads=1, budget_ms=50.0, scale=1.0, calibrated=True),
        LatencyProfileConfig(
            name="raspberry_pi_4", threads=4, budget_ms=100.0, scale=8.0, **_arm("cortex-a72")
        ),
        LatencyProfileConfig(
            name="raspberry_pi_5", threads=4, budget_ms=50.0, scale=3.0, **_arm("cortex-a76")
        ),
        LatencyProfileConfig(
            name="jetson_nano_cpu", threads=4, budget_ms=120.0, scale=10.0, **_arm("cortex-a57")
        ),
        # Orin's Cortex-A78AE is ARMv8.2 with dot product like the A76; qemu 7.2 has no A78.
        LatencyProfileConfig(
            name="jetson_orin_nano_cpu", threads=6, budget_ms=40.0, scale=2.5, **_arm("cortex-a76")
        ),
    ]


class ValidateConfig(_Section):
    fp32_atol: PositiveFloat = 1e-4
    fp32_rtol: PositiveFloat = 1e-3
    fp32_min_top1_agreement: Annotated[float, Field(ge=0, le=1)] = 1.0
    int8_max_g_mean_drop: Annotated[float, Field(ge=0)] = 0.01
    int8_min_top1_agreement: Annotated[float, Field(ge=0, le=1)] = 0.98
    int8_min_speedup: Annotated[float, Field(ge=1)] = 1.05
    """INT8 counts as faster when fp32 host p50 / INT8 host p50 reaches this."""
    int8_max_size_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
    """INT8 counts as much smaller when its file is at most this fraction of fp32's."""
    batch_size: PositiveInt = 64
    """Parity batches over the test split."""
    latency_runs: Annotated[int, Field(ge=200)] = 200
    latency_warmup: Annotated[int, Field(ge=1)] = 20
    gate_estimated: bool = False
    """Fail the stage on an estimated (uncalibrated-scale) profile over budget; off = report it."""
    emulate_int8: bool = True
    """Evaluate the INT8 gate of aarch64 profiles with aarch64 kernels, on their ``emulate`` CPU
    under qemu, in the arm64 environment that ``make check-arm`` builds
    (:mod:`aider_edge.emulation`). Off, or without that environment, INT8 is not deployed to
    those profiles."""
    profiles: list[LatencyProfileConfig] = Field(default_factory=_default_profiles, min_length=1)

    @field_validator("profiles")
    @classmethod
    def _unique_profiles(cls, profiles: list[LatencyProfileConfig]) -> list[LatencyProfileConfig]:
        names = [p.name for p in profiles]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"profile names must be unique, repeated: {', '.join(dupes)}")
        host = [p for p in profiles if p.name == "host"]
        if host and host[0].scale != 1.0:
            raise ValueError("the 'host' profile measures this machine: its scale must be 1")
        return profiles


class MlflowConfig(_Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    """Overridden by the ``MLFLOW_TRACKING_URI`` environment variable when it is set."""
    experiment: str = "aider-edge"


class RegistryConfig(_Section):
    """The MLflow Model Registry entry and the promotion gate (see :mod:`aider_edge.registry`)."""

    model_name: Annotated[str, Field(min_length=1)] = "aider-edge-classifier"
    challenger_alias: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")] = "challenger"
    """Alias of the newest registered version (every registration moves it)."""
    champion_alias: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")] = "champion"
    """Alias of the version the drones get; it moves only when the promotion gate passes."""
    margin: Annotated[float, Field(ge=-1, le=1)] = 0.0
    """The challenger's test G-Mean must reach the champion's (re-scored on the same test split)
    plus this margin; a positive margin ignores improvements within noise."""
    allow_class_change: bool = False
    """Promote a challenger whose class list differs from the champion's. The two cannot be
    compared on one test split, so the drones would get another set of answers without any gate:
    off, such a challenger stays challenger until someone decides (``aider-edge promote
    --allow-class-change``)."""

    @model_validator(mode="after")
    def _distinct_aliases(self) -> RegistryConfig:
        if self.challenger_alias == self.champion_alias:
            raise _KeyedError(
                ("registry", "challenger_alias"),
                self.challenger_alias,
                "must differ from registry.champion_alias",
            )
        return self


class BundleConfig(_Section):
    """The drone bundle (see :mod:`aider_edge.bundling` and :mod:`aider_edge.edge.signing`)."""

    signing_key: str = str(layout.SIGNING_KEY)
    """Ed25519 private key that signs every bundle's manifest (relative to the project root);
    ``AIDER_EDGE_SIGNING_KEY`` overrides it. ``aider-edge keygen`` makes the pair."""


class DvcConfig(_Section):
    """How the retraining flow versions what the stages produced."""

    remote: str | None = None
    """DVC remote for ``dvc push`` (a name from ``.dvc/config``); ``None`` = the default remote.
    The ``AIDER_EDGE_DVC_REMOTE`` environment variable overrides it."""
    push: bool = False
    """Push the stage outputs to the remote after a run that changed something."""
    commit_to_git: bool = False
    """Commit ``dvc.lock``, ``dvc.yaml`` and ``params.yaml`` to git after a run that changed
    something, so the registered version's ``git_commit`` tag pins the exact data hashes."""


class FlowConfig(_Section):
    """The Prefect retraining flow (``flows/retrain.py``)."""

    cron: str = "0 3 * * *"
    """Schedule of ``python flows/retrain.py --serve`` (cron syntax, server time zone)."""
    stage_retries: NonNegativeInt = 1
    """Retries of a stage that crashed (a stage that stops with a user error is not retried)."""
    retry_delay_s: NonNegativeInt = 10
    lock_timeout_s: NonNegativeInt = 0
    """How long a second flow run on the same workspace waits for the first; 0 = stop at once."""
    stage_timeout_s: dict[str, PositiveInt] = Field(
        default_factory=lambda: {"default": 3600, "ingest": 7200, "train": 43200}
    )
    """Seconds a stage may run before the flow stops it and fails, by stage kind (the name before
    ``@``: ``train`` for every ``train@*``), ``default`` for kinds not listed. A hung stage or
    tracking store then fails the run with one line instead of blocking it forever."""
    registry_retries: NonNegativeInt = 2
    """Retries of register / promote / publish when they crash (they are idempotent)."""
    bundle_dir: Annotated[str, Field(min_length=1)] = "dist/bundle"
    """Where the champion's drone bundle is published (``aider-edge bundle --alias champion``)."""
    workers: PositiveInt = 1
    """Stages of one wave (the training runs) run at once on this many workers of a local Dask
    cluster; 1 runs them one after another. CPU threads are divided among the workers."""
    gpus: list[NonNegativeInt] = Field(default_factory=list)
    """GPU ids to pin, one per worker (worker i gets ``gpus[i % len(gpus)]``); empty: no pinning."""
    dask_address: str | None = None
    """An existing Dask scheduler (``tcp://host:8786``) to run the stages on instead."""

    @field_validator("stage_timeout_s")
    @classmethod
    def _has_default(cls, value: dict[str, int]) -> dict[str, int]:
        if "default" not in value:
            raise ValueError("needs a `default` entry (seconds for stage kinds not listed)")
        return value

    def timeout_s(self, stage: str) -> int:
        """The time limit of ``stage`` (``train@s1-baseline`` is of kind ``train``)."""
        kind = stage.split("@", 1)[0]
        return self.stage_timeout_s.get(kind, self.stage_timeout_s["default"])

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("must be a cron expression with 5 fields, e.g. '0 3 * * *'")
        return value


class Params(_Section):
    seed: NonNegativeInt = 42
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    loss: LossConfig = LossConfig()
    select: SelectConfig = SelectConfig()
    export: ExportConfig = ExportConfig()
    validate_: ValidateConfig = Field(default=ValidateConfig(), alias="validate")
    mlflow: MlflowConfig = MlflowConfig()
    registry: RegistryConfig = RegistryConfig()
    bundle: BundleConfig = BundleConfig()
    dvc: DvcConfig = DvcConfig()
    flow: FlowConfig = FlowConfig()

    @model_validator(mode="after")
    def _selected_runs_trained(self) -> Params:
        # Selection can only choose among runs the train matrix produces.
        scenarios = [s for s in self.select.scenarios or [] if s not in self.trained_scenarios]
        if scenarios:
            raise _KeyedError(
                ("select", "scenarios"),
                scenarios,
                f"not trained (train.scenarios: {', '.join(self.trained_scenarios)})",
            )
        methods = [m for m in self.select.methods or [] if m not in self.train.methods]
        if methods:
            raise _KeyedError(
                ("select", "methods"),
                methods,
                f"not trained (train.methods: {', '.join(self.train.methods)})",
            )
        return self

    @model_validator(mode="after")
    def _trained_scenarios_exist(self) -> Params:
        unknown = [s for s in self.train.scenarios or [] if s not in self.split.scenarios]
        if unknown:
            raise _KeyedError(
                ("train", "scenarios"),
                unknown,
                f"not in split.scenarios ({', '.join(self.split.scenarios)})",
            )
        return self

    @model_validator(mode="after")
    def _drw_starts_in_time(self) -> Params:
        # A re-weighting epoch past the last epoch would silently train plain LDAM.
        drw_epoch = self.loss.ldam_drw.drw_epoch
        if "ldam_drw" in self.train.methods and drw_epoch >= self.train.epochs:
            raise _KeyedError(
                ("loss", "ldam_drw", "drw_epoch"),
                drw_epoch,
                f"must be less than train.epochs ({self.train.epochs}) when ldam_drw is trained, "
                "or the deferred re-weighting never starts (Cao et al. start it at 80 % of epochs)",
            )
        return self

    @property
    def trained_scenarios(self) -> list[str]:
        return list(self.train.scenarios or self.split.scenarios)

    @model_validator(mode="after")
    def _scenarios_fit_classes(self) -> Params:
        n = len(self.data.classes)
        for name, spec in self.split.scenarios.items():
            if isinstance(spec, list) and len(spec) != n:
                raise _KeyedError(
                    ("split", "scenarios", name),
                    spec,
                    f"has {len(spec)} proportions but data.classes has {n} classes "
                    f"({', '.join(self.data.classes)}): give one proportion per class",
                )
            if isinstance(spec, StepProfile) and spec.minority is not None and spec.minority >= n:
                raise _KeyedError(
                    ("split", "scenarios", name, "minority"),
                    spec.minority,
                    f"must be less than the number of classes ({n})",
                )
        return self


# --- loading --------------------------------------------------------------------------------


class _ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float syntax.

    PyYAML implements YAML 1.1, whose floats need a dot (``1e-4`` is the string ``'1e-4'``);
    YAML 1.2, DVC (which reads params.yaml too) and every user read ``1e-4`` as a number. The
    strict models then accept it as a float, without loosening any type.
    """


_FLOAT_TAG = "tag:yaml.org,2002:float"
# The YAML 1.2 core schema's float (https://yaml.org/spec/1.2.2/#1032-tag-resolution); integers
# such as ``10`` also match it, but the int resolver comes first in each list and keeps them ints.
_YAML12_FLOAT = re.compile(
    r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)
_ParamsLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ParamsLoader.add_implicit_resolver(_FLOAT_TAG, _YAML12_FLOAT, list("-+.0123456789"))


def _read_yaml(text: str) -> Any:
    """Parse params YAML as users and DVC read it (YAML 1.2 numbers); raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_ParamsLoader)  # safe: _ParamsLoader is a SafeLoader


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; any problem raises :class:`ConfigError` with one line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such params file; run from the project root or pass --params"
        )
    try:
        raw = _read_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if raw is None:
        # Every key has a default, so an emptied file would quietly train with the code's
        # defaults, which are not the shipped params.yaml's.
        raise ConfigError(
            f"{path}: the file is empty (no sections, only comments or null): restore it "
            f"(git checkout {path}) or write the sections to set"
        )
    train = raw.get("train") if isinstance(raw, dict) else None
    if isinstance(train, dict) and "scenarios" in train and train["scenarios"] is None:
        # dvc.yaml's train matrix reads this key itself, and DVC has no default for it: left
        # empty, `dvc repro` stops in DVC's parser with "'Value' object is not iterable".
        raise ConfigError(
            f"{path}: train.scenarios is empty, and dvc.yaml's train matrix needs it: write "
            "`scenarios: *scenarios` (every scenario of split.scenarios) or a list of them"
        )
    return parse_params(raw, source=str(path))


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate an already-parsed mapping (used by tests and by tools that build params)."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}"
        )
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
    except _KeyedError as exc:  # raised from an after-validator and not wrapped by pydantic
        raise ConfigError(f"{source}: {_keyed(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """Turn pydantic's multi-line report into one line per problem, joined with '; '."""
    parts = []
    for err in exc.errors(include_url=False):
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _KeyedError):
            parts.append(_keyed(ctx_error))
            continue
        loc = _dotted(err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!s} (check the spelling; see params.yaml for the keys)")
            continue
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc or '<root>'} = {_short(err.get('input'))}: {message}")
    return "; ".join(dict.fromkeys(parts))


def _keyed(err: _KeyedError) -> str:
    return f"{_dotted(err.loc)} = {_short(err.value)}: {err.message}"


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

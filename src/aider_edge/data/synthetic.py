"""A seeded generator of AIDER-like aerial scenes: the project's embedded default dataset.

AIDER (Aerial Image Dataset for Emergency Response) has four emergency classes and a large
``normal`` class of everyday aerial views. This module draws look-alikes of all five from nothing
but a seed, so that the pipeline runs end to end without a download and the class-imbalance
experiments have something meaningful to measure.

What a class looks like
-----------------------
Every scene is built from the same parts, on the same terrain, under the same camera, and only the
*emergency cue* tells the classes apart:

1. **Layout** (shared by all classes, with class-dependent odds, as in the real data where fires are
   more often in forests and traffic incidents on highways): ``urban`` (dense rooftop grid with
   streets), ``suburban`` (houses in gardens, trees), ``rural`` (crop parcels, a farm road, a few
   buildings), ``forest`` (canopy with clearings) or ``highway`` (a wide multi-lane road).
   Everything is laid out along one random heading, because an aerial view has no "up".
2. **Cue**, whose strength is drawn per image, so every class has hard examples with a weak cue:

   - ``fire``: bright red/orange/yellow flame blobs over a scorched patch, with a grey smoke plume
     drifting downwind that can hide most of a small fire.
   - ``flooded_areas``: large, smooth, muddy-brown, olive or grey-blue water entering from one side,
     with roofs and tree crowns partly sticking out; weak cases cover a small fraction only.
   - ``collapsed_building``: some buildings replaced by irregular rubble (fine grey/brown/beige
     texture, dark voids, broken roof fragments at random angles, dust); weak cases are a single
     half-collapsed house in an intact neighbourhood.
   - ``traffic_incident``: a few cars clustered on a road at odd angles, debris, skid marks,
     sometimes an emergency vehicle, a queue or a smoking wreck; weak cases are two touching cars
     slightly askew.
   - ``normal``: just the layout: intact roofs in a grid, cars in line along their lanes.
3. **Confusers**, drawn with the same odds in *every* class so that none of them carries label
   information: terracotta roofs and autumn trees (orange, like flames), ploughed brown fields,
   ponds and rivers (smooth water, like floods), gravel yards and building sites (grainy grey
   texture, like rubble), parking lots (many cars close together, like a pile-up), fog and chimney
   smoke (grey haze, like smoke), red and orange cars.
4. **Camera**: altitude (scale), exposure, colour cast, haze, blur and sensor noise.

Why these confusions
--------------------
They are the mistakes a real AIDER classifier makes: orange roofs and sunsets read as fire, brown
fields and rivers as floods, construction sites as collapsed buildings, busy roads and car parks as
traffic incidents. Because the cues vary in strength and the confusers are everywhere, the classes
are learnable but overlap; a model trained on an imbalanced split (few emergency images, many normal
ones) visibly loses minority-class recall on the weak cases, which is what the imbalance-aware
training is meant to win back.

Determinism
-----------
Each image is a pure function of ``(seed, class, index, size)``: its random stream comes from
``numpy.random.SeedSequence([seed, class_id, index])``, with ``class_id`` the class's position in
:data:`AIDER_CLASSES`. Generating 100 or 1,000 images therefore gives the same first 100 files,
a subset of classes gives the same images for those classes, and the written bytes are identical
between runs and between ``workers`` settings.

Drawing is vectorised numpy on coordinate grids (masks of rotated rectangles, irregular blobs and
bands, smooth noise from upsampled random lattices); Pillow only encodes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from aider_edge.atomic import atomic_path
from aider_edge.errors import DataError
from aider_edge.parallel import die_with_parent

AIDER_CLASSES: tuple[str, ...] = (
    "collapsed_building",
    "fire",
    "flooded_areas",
    "traffic_incident",
    "normal",
)
FORMATS = ("png", "jpg")
BASE_SIZE = 128
"""Object sizes are given in pixels of a 128-pixel frame at nominal altitude, scaled from there."""

_F = np.float32
_Color = tuple[float, float, float]
_T = TypeVar("_T")


# --- public API -------------------------------------------------------------------------------


def render_scene(label: str, index: int, seed: int, size: int) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 RGB scene of class ``label``; a pure function of its args."""
    class_id = _class_id(label)
    if index < 0 or seed < 0:
        raise DataError(f"synthetic seed and index must be >= 0, got seed={seed}, index={index}")
    if size < 16:
        raise DataError(f"synthetic image size must be at least 16 pixels, got {size}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, class_id, index]))
    kind = _pick_layout(rng, label)
    scene = _new_scene(rng, size, _ZOOM[kind])
    plan = _plan_layout(scene, kind, need_road=label == "traffic_incident")
    _CUES[label](scene, plan)
    _apply_camera(scene)
    return np.round(np.clip(scene.img, 0.0, 1.0) * 255.0).astype(np.uint8)


def generate_synthetic_pool(
    out_dir: Path,
    per_class: Mapping[str, int],
    seed: int,
    size: int = 128,
    fmt: str = "png",
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write ``out_dir/<class>/<class>_<index:05d>.<fmt>`` for every class and index.

    ``per_class`` maps class names (a subset of :data:`AIDER_CLASSES`) to image counts. Each file
    is written atomically and depends only on ``(seed, class, index, size, fmt)``. ``workers > 1``
    renders in that many processes; the files are the same. ``progress(done, total)`` is called
    as images complete. Returns the written paths, class by class in index order.
    """
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise DataError(f"synthetic image format {fmt!r} is not supported: use png or jpg")
    for label, count in per_class.items():
        _class_id(label)
        if count < 0:
            raise DataError(f"synthetic per_class count for {label!r} must be >= 0, got {count}")
    out_dir = Path(out_dir)
    tasks = [
        (out_dir / label / f"{label}_{index:05d}.{fmt}", label, index, seed, size)
        for label, count in per_class.items()
        for index in range(count)
    ]
    for label in per_class:
        (out_dir / label).mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path in _run_tasks(tasks, workers):
        written.append(path)
        if progress is not None:
            progress(len(written), len(tasks))
    return written


# --- writing ----------------------------------------------------------------------------------

_Task = tuple[Path, str, int, int, int]


def _write_one(task: _Task) -> Path:
    path, label, index, seed, size = task
    image = Image.fromarray(render_scene(label, index, seed, size), mode="RGB")
    with atomic_path(path) as tmp:
        if path.suffix == ".png":
            # Level 1: the noisy frames barely compress further, and it is several times faster.
            image.save(tmp, format="PNG", compress_level=1)
        else:
            image.save(tmp, format="JPEG", quality=92, subsampling=0)
    return path


def _run_tasks(tasks: list[_Task], workers: int) -> Iterator[Path]:
    if workers <= 1 or len(tasks) < 2:
        yield from map(_write_one, tasks)
        return
    # "spawn" rather than fork: the caller may hold threads (torch, MLflow) that fork would copy in
    # an undefined state. An executor rather than multiprocessing.Pool: a worker that dies raises
    # BrokenProcessPool here instead of hanging the pool. Rendering is pure, so the process layout
    # cannot change the output.
    workers = min(workers, len(tasks))
    chunk = max(1, min(32, len(tasks) // (4 * workers)))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        yield from pool.map(_write_one, tasks, chunksize=chunk)


def _class_id(label: str) -> int:
    try:
        return AIDER_CLASSES.index(label)
    except ValueError:
        raise DataError(
            f"unknown synthetic class {label!r}: allowed classes are {', '.join(AIDER_CLASSES)}"
        ) from None


# --- the canvas -------------------------------------------------------------------------------


@dataclass
class _Scene:
    """A canvas being painted; local to one :func:`render_scene` call."""

    rng: np.random.Generator
    size: int
    unit: float
    """Pixels per nominal pixel of a 128-pixel frame; includes the random altitude."""
    heading: float
    """Direction of the street grid, parcels and main road (radians)."""
    sun: tuple[float, float]
    """Shadow offset per unit of object height (pixels)."""
    img: np.ndarray
    x: np.ndarray  # (1, S) pixel-centre x coordinates
    y: np.ndarray  # (S, 1) pixel-centre y coordinates

    @property
    def centre(self) -> float:
        return self.size / 2.0

    def to_pixel(self, along: float, across: float) -> tuple[float, float]:
        """Scene-frame offsets from the centre (along / across the heading) -> pixel x, y."""
        c, s = math.cos(self.heading), math.sin(self.heading)
        return self.centre + along * c - across * s, self.centre + along * s + across * c


def _new_scene(rng: np.random.Generator, size: int, zoom: tuple[float, float]) -> _Scene:
    # Altitude varies log-uniformly within the layout's range: many scales in every class.
    unit = size / BASE_SIZE * math.exp(rng.uniform(math.log(zoom[0]), math.log(zoom[1])))
    sun_angle = rng.uniform(0, 2 * math.pi)
    sun_len = rng.uniform(0.25, 0.7) * unit
    coords = np.arange(size, dtype=_F) + 0.5
    return _Scene(
        rng=rng,
        size=size,
        unit=unit,
        heading=rng.uniform(0, 2 * math.pi),
        sun=(sun_len * math.cos(sun_angle), sun_len * math.sin(sun_angle)),
        img=np.zeros((size, size, 3), dtype=_F),
        x=coords[None, :],
        y=coords[:, None],
    )


def _scene_frame(sc: _Scene, heading: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Full-image coordinates along and across ``heading`` (default: the scene's), from the centre."""
    h = sc.heading if heading is None else heading
    c, s = math.cos(h), math.sin(h)
    dx, dy = sc.x - sc.centre, sc.y - sc.centre
    return dx * c + dy * s, -dx * s + dy * c


def _window(
    sc: _Scene, cx: float, cy: float, radius: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """The clipped square window around a point, and its pixel offsets from that point."""
    cx, cy = float(cx), float(cy)  # numpy float64 scalars would promote the float32 grids
    x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 2, sc.size)
    y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 2, sc.size)
    if x0 >= x1 or y0 >= y1:
        return None
    return (slice(y0, y1), slice(x0, x1)), sc.x[:, x0:x1] - cx, sc.y[y0:y1, :] - cy


def _blend(target: np.ndarray, alpha: np.ndarray, color: np.ndarray | _Color) -> None:
    """In-place ``target = target * (1 - alpha) + color * alpha``."""
    target += (np.asarray(color, dtype=_F) - target) * alpha[..., None]


def _edge(d: np.ndarray | float) -> np.ndarray:
    """Anti-aliased inside-ness from a signed distance in pixels (positive inside)."""
    return np.clip(np.asarray(d, dtype=_F) + 0.5, 0.0, 1.0)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _rotated(dx: np.ndarray, dy: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def _rect_mask(
    dx: np.ndarray, dy: np.ndarray, half_l: float, half_w: float, angle: float
) -> np.ndarray:
    u, v = _rotated(dx, dy, angle)
    return _edge(half_l - np.abs(u)) * _edge(half_w - np.abs(v))


def _jitter(rng: np.random.Generator, color: _Color, amount: float) -> np.ndarray:
    return np.clip(np.asarray(color, dtype=_F) + rng.uniform(-amount, amount, 3).astype(_F), 0, 1)


def _pick(rng: np.random.Generator, options: Mapping[_T, float]) -> _T:
    """A key of ``options`` drawn with probability proportional to its weight."""
    return _weighted(rng, list(options), list(options.values()))


def _weighted(rng: np.random.Generator, items: Sequence[_T], weights: Sequence[float]) -> _T:
    # searchsorted on the cumulative weights: Generator.choice(p=...) is ~10x slower per draw.
    cumulative = np.cumsum(weights)
    return items[int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))]


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _half_turn(rng: np.random.Generator) -> float:
    return math.pi if rng.random() < 0.5 else 0.0


def _quarter_turn(rng: np.random.Generator) -> float:
    return math.pi / 2 if rng.random() < 0.5 else 0.0


# --- noise ------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, feature_px: float) -> np.ndarray:
    """Value noise in [0, 1] with blobs about ``feature_px`` pixels across (smoothstep-bilinear)."""
    feature_px = max(feature_px, 1.0)
    n = int(size / feature_px) + 3
    lattice = rng.random((n, n), dtype=_F)
    offset = rng.random(2)  # a random phase, so lattice lines never line up between fields
    weights = []
    for axis in range(2):
        t = (np.arange(size, dtype=_F) + 0.5) / _F(feature_px) + _F(offset[axis])
        whole = np.floor(t)
        f = t - whole
        weights.append((whole.astype(np.intp), f * f * (3.0 - 2.0 * f)))
    (iy, fy), (ix, fx) = weights
    rows = lattice[iy] * (1 - fy)[:, None] + lattice[iy + 1] * fy[:, None]
    return rows[:, ix] * (1 - fx)[None, :] + rows[:, ix + 1] * fx[None, :]


def _fractal(
    rng: np.random.Generator, size: int, feature_px: float, octaves: int = 3
) -> np.ndarray:
    """Sum of octaves of value noise, standardised to mean 0 and std 1 over the image."""
    total = np.zeros((size, size), dtype=_F)
    amp = 1.0
    for octave in range(octaves):
        total += _F(amp) * _smooth_noise(rng, size, feature_px / 2**octave)
        amp *= 0.5
    return (total - total.mean()) / (total.std() + 1e-6)


def _quantile_threshold(field: np.ndarray, cover: float) -> float:
    """The level above which ``cover`` of the field lies."""
    flat = field.ravel()
    k = int(np.clip((1.0 - cover) * (flat.size - 1), 0, flat.size - 1))
    return float(np.partition(flat, k)[k])


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (the kernel is tiny, so shifts beat an FFT)."""
    radius = math.ceil(2.5 * sigma)
    if sigma < 0.25 or radius < 1:
        return img
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(_F)
    size = img.shape[0]
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(img, pad, mode="edge")
        out = np.zeros_like(img)
        for k, w in enumerate(taps):
            out += w * (padded[k : k + size] if axis == 0 else padded[:, k : k + size])
        img = out
    return img


def _blob(
    sc: _Scene, cx: float, cy: float, radius: float, roughness: float
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """An irregular blob: the window and the normalised radius there (<1 inside, 0 at centre)."""
    rng = sc.rng
    harmonics = rng.uniform(0, roughness, 5) / np.arange(1, 6) ** 0.7
    phases = rng.uniform(0, 2 * math.pi, 5)
    reach = radius * (1 + harmonics.sum()) + 2
    win = _window(sc, cx, cy, reach)
    if win is None:
        return None
    sl, dx, dy = win
    phi = np.arctan2(dy, dx)
    wobble = np.ones_like(phi)
    for k in range(5):
        wobble += _F(harmonics[k]) * np.cos((k + 2) * phi + _F(phases[k]))
    rho = np.sqrt(dx * dx + dy * dy) / (_F(radius) * np.maximum(wobble, 0.3))
    return sl, rho


# --- layouts ----------------------------------------------------------------------------------


@dataclass
class _Building:
    cx: float
    cy: float
    half_l: float
    half_w: float
    angle: float
    color: np.ndarray
    height: float
    gabled: bool


@dataclass
class _Road:
    """An infinite straight road: ``offset`` pixels from the centre, across its direction."""

    angle: float
    offset: float
    width: float
    lanes: int
    marked: bool


@dataclass
class _Plan:
    kind: str
    buildings: list[_Building] = field(default_factory=list)
    roads: list[_Road] = field(default_factory=list)
    tree_cover: float = 0.0
    car_density: float = 0.0
    ground: Mapping[str, float] = field(default_factory=dict)
    parcels: bool = False
    roof_mask: np.ndarray | None = None
    tree_mask: np.ndarray | None = None
    road_mask: np.ndarray | None = None


# Layout odds per class. They overlap widely (every class can appear in every layout) but lean the
# way AIDER does: fires in forests, floods in low-rise and rural land, collapses in towns,
# incidents on highways.
_LAYOUT_ODDS: Mapping[str, Mapping[str, float]] = {
    "normal": {"urban": 0.28, "suburban": 0.28, "rural": 0.2, "forest": 0.09, "highway": 0.15},
    "fire": {"urban": 0.25, "suburban": 0.25, "rural": 0.2, "forest": 0.2, "highway": 0.1},
    "flooded_areas": {"urban": 0.25, "suburban": 0.35, "rural": 0.3, "highway": 0.1},
    "collapsed_building": {"urban": 0.45, "suburban": 0.45, "rural": 0.1},
    "traffic_incident": {"urban": 0.25, "suburban": 0.2, "rural": 0.15, "highway": 0.4},
}

# Zoom (inverse altitude) per layout: roads are filmed from lower down than towns and forests. It
# depends on the layout, not the class, so it says nothing about the label by itself.
_ZOOM: Mapping[str, tuple[float, float]] = {
    "urban": (0.75, 1.3),
    "suburban": (0.75, 1.3),
    "rural": (0.8, 1.4),
    "forest": (0.8, 1.4),
    "highway": (1.2, 2.0),
}
_GROUND: Mapping[str, _Color] = {
    "grass": (0.33, 0.42, 0.21),
    "dry": (0.58, 0.53, 0.38),
    "soil": (0.47, 0.38, 0.27),
    "concrete": (0.56, 0.55, 0.52),
}
_GROUND_MIX: Mapping[str, Mapping[str, float]] = {
    "urban": {"grass": 0.2, "dry": 0.1, "soil": 0.1, "concrete": 0.9},
    "suburban": {"grass": 0.8, "dry": 0.3, "soil": 0.2, "concrete": 0.3},
    "rural": {"grass": 0.6, "dry": 0.5, "soil": 0.4, "concrete": 0.0},
    "forest": {"grass": 0.9, "dry": 0.2, "soil": 0.3, "concrete": 0.0},
    "highway": {"grass": 0.7, "dry": 0.5, "soil": 0.3, "concrete": 0.2},
}
_ROOFS: Mapping[_Color, float] = {
    (0.56, 0.56, 0.55): 0.24,  # concrete
    (0.31, 0.32, 0.34): 0.14,  # dark tiles
    (0.70, 0.34, 0.21): 0.22,  # terracotta: the fire confuser
    (0.46, 0.31, 0.23): 0.12,  # brown shingle
    (0.84, 0.84, 0.81): 0.12,  # white
    (0.40, 0.46, 0.53): 0.08,  # blue-grey metal
    (0.32, 0.42, 0.31): 0.08,  # green roof
}
_CARS: Mapping[_Color, float] = {
    (0.88, 0.88, 0.86): 0.25,
    (0.10, 0.10, 0.11): 0.15,
    (0.55, 0.56, 0.58): 0.22,
    (0.72, 0.10, 0.08): 0.12,  # red cars: a fire confuser
    (0.15, 0.25, 0.55): 0.10,
    (0.85, 0.55, 0.10): 0.06,  # orange vans and taxis
    (0.25, 0.35, 0.22): 0.10,
}


def _pick_layout(rng: np.random.Generator, label: str) -> str:
    return _pick(rng, _LAYOUT_ODDS[label])


def _pick_color(rng: np.random.Generator, palette: Mapping[_Color, float]) -> _Color:
    return _weighted(rng, list(palette), list(palette.values()))


def _plan_layout(sc: _Scene, kind: str, need_road: bool) -> _Plan:
    """Decide the scene's roads, buildings, trees and ground; nothing is painted yet."""
    rng, u = sc.rng, sc.unit
    plan = _Plan(kind=kind, ground=_GROUND_MIX[kind])
    if kind in ("urban", "suburban"):
        dense = kind == "urban"
        pitch_a = u * (rng.uniform(24, 34) if dense else rng.uniform(30, 44))
        pitch_b = u * (rng.uniform(22, 32) if dense else rng.uniform(30, 44))
        street_w = u * rng.uniform(9, 13)
        plan.roads += _street_grid(sc, pitch_a, pitch_b, street_w, every=int(rng.integers(2, 4)))
        plan.buildings = _building_grid(
            sc, pitch_a, pitch_b, street_w, occupancy=0.88 if dense else 0.65, dense=dense
        )
        plan.tree_cover = rng.uniform(0.0, 0.12) if dense else rng.uniform(0.1, 0.3)
        plan.car_density = rng.uniform(0.02, 0.07)
    elif kind == "rural":
        plan.parcels = True
        if need_road or rng.random() < 0.6:
            plan.roads.append(_road(sc, sc.heading, u * rng.uniform(8, 12), lanes=2))
        plan.buildings = _scattered_buildings(sc, int(rng.integers(0, 5)))
        plan.tree_cover = rng.uniform(0.05, 0.25)
        plan.car_density = rng.uniform(0.01, 0.04)
    elif kind == "forest":
        if need_road or rng.random() < 0.4:
            plan.roads.append(_road(sc, sc.heading, u * rng.uniform(7, 11), lanes=2))
        plan.buildings = _scattered_buildings(sc, int(rng.integers(0, 3)))
        plan.tree_cover = rng.uniform(0.55, 0.9)
        plan.car_density = rng.uniform(0.0, 0.03)
    else:  # highway
        lanes = (2, 4, 4, 6)[int(rng.integers(4))]
        plan.roads.append(_road(sc, sc.heading, u * (5.5 * lanes + rng.uniform(3, 8)), lanes))
        if rng.random() < 0.35:
            plan.roads.append(
                _road(sc, sc.heading + math.pi / 2, u * rng.uniform(8, 12), lanes=2, central=False)
            )
        plan.buildings = _scattered_buildings(sc, int(rng.integers(0, 4)))
        plan.tree_cover = rng.uniform(0.05, 0.3)
        plan.car_density = rng.uniform(0.03, 0.09)
    return plan


def _road(sc: _Scene, angle: float, width: float, lanes: int, central: bool = True) -> _Road:
    spread = 0.15 if central else 0.35
    offset = sc.rng.uniform(-spread, spread) * sc.size
    return _Road(angle, offset, width, lanes, marked=sc.rng.random() < 0.85)


def _street_grid(
    sc: _Scene, pitch_a: float, pitch_b: float, width: float, every: int
) -> list[_Road]:
    """Streets on the building grid's cell boundaries, every ``every`` cells in each direction."""
    roads = []
    half = sc.size * 0.75
    for pitch, angle in ((pitch_b, sc.heading), (pitch_a, sc.heading + math.pi / 2)):
        first = sc.rng.integers(0, every)
        for k in range(-int(half / pitch) - every, int(half / pitch) + every + 1):
            if (k - first) % every == 0 and abs(k * pitch) < half:
                roads.append(_Road(angle, k * pitch, width, 2, marked=sc.rng.random() < 0.6))
    return roads


def _building_grid(
    sc: _Scene, pitch_a: float, pitch_b: float, street_w: float, occupancy: float, dense: bool
) -> list[_Building]:
    """Buildings centred in the grid cells, never reaching the streets on the cell boundaries."""
    rng = sc.rng
    buildings = []
    reach = sc.size * 0.75
    room_a, room_b = pitch_a / 2 - street_w / 2 - sc.unit, pitch_b / 2 - street_w / 2 - sc.unit
    for i in range(-int(reach / pitch_a) - 1, int(reach / pitch_a) + 1):
        for j in range(-int(reach / pitch_b) - 1, int(reach / pitch_b) + 1):
            if rng.random() > occupancy:
                continue
            fill = rng.uniform(0.6, 0.95) if dense else rng.uniform(0.4, 0.75)
            half_l, half_w = room_a * fill, room_b * rng.uniform(fill * 0.7, fill)
            along = (i + 0.5) * pitch_a + rng.uniform(-1, 1) * (room_a - half_l)
            across = (j + 0.5) * pitch_b + rng.uniform(-1, 1) * (room_b - half_w)
            cx, cy = sc.to_pixel(along, across)
            if not (-half_l < cx < sc.size + half_l and -half_l < cy < sc.size + half_l):
                continue
            buildings.append(_new_building(sc, cx, cy, half_l, half_w, sc.heading))
    return buildings


def _scattered_buildings(sc: _Scene, count: int) -> list[_Building]:
    rng = sc.rng
    out = []
    for _ in range(count):
        cx, cy = rng.uniform(0, sc.size, 2)
        half_l, half_w = sc.unit * rng.uniform(5, 11), sc.unit * rng.uniform(4, 8)
        angle = sc.heading + _quarter_turn(rng) + rng.normal(0, 0.05)
        out.append(_new_building(sc, cx, cy, half_l, half_w, angle))
    return out


def _new_building(
    sc: _Scene, cx: float, cy: float, half_l: float, half_w: float, angle: float
) -> _Building:
    rng = sc.rng
    return _Building(
        cx=cx,
        cy=cy,
        half_l=half_l,
        half_w=half_w,
        angle=angle + rng.normal(0, 0.03),
        color=_jitter(rng, _pick_color(rng, _ROOFS), 0.05),
        height=rng.uniform(2, 7),
        gabled=rng.random() < 0.55,
    )


# --- painting the layout ----------------------------------------------------------------------


def _paint_ground(sc: _Scene, plan: _Plan) -> None:
    """A soft patchwork of grass, dry grass, soil and concrete, with fine texture."""
    rng, s = sc.rng, sc.size
    names = list(plan.ground)
    detail = _F(0.35) * (_smooth_noise(rng, s, sc.unit * 12) - 0.5)
    scores = np.stack(
        [
            _F(2.5 * plan.ground[n])
            + 3.5 * _smooth_noise(rng, s, sc.unit * rng.uniform(25, 50))
            + detail
            for n in names
        ]
    )
    weights = np.exp(3.0 * (scores - scores.max(axis=0)))
    weights /= weights.sum(axis=0)
    colors = np.stack([_jitter(rng, _GROUND[n], 0.04) for n in names])
    sc.img[:] = (weights.reshape(len(names), -1).T @ colors).reshape(s, s, 3)
    _add_texture(sc, sc.img, amount=rng.uniform(0.04, 0.09))


def _add_texture(sc: _Scene, target: np.ndarray, amount: float) -> None:
    """Multiplicative mid- and fine-scale luminance texture (grass, gravel, tarmac grain)."""
    s = target.shape[0]
    grain = _smooth_noise(sc.rng, s, 3.0 * sc.unit) - 0.5
    grain += 0.5 * sc.rng.standard_normal((s, s), dtype=_F)
    target *= (1.0 + _F(amount) * grain)[..., None]


def _paint_parcels(sc: _Scene) -> None:
    """Crop parcels along the heading: green crops, ripe grain, ploughed brown soil (a flood
    confuser, but striped), fallow land, with furrow stripes and field margins."""
    rng = sc.rng
    along, across = _scene_frame(sc)
    pitch_a, pitch_b = sc.unit * rng.uniform(35, 75, 2)
    ia = np.floor(along / _F(pitch_a) + _F(rng.random())).astype(np.intp)
    ib = np.floor(across / _F(pitch_b) + _F(rng.random())).astype(np.intp)
    ia -= ia.min()
    ib -= ib.min()
    cells = (int(ia.max()) + 1, int(ib.max()) + 1)
    crops = np.array(
        [(0.30, 0.45, 0.18), (0.62, 0.56, 0.30), (0.42, 0.32, 0.22), (0.50, 0.46, 0.32)], dtype=_F
    )
    kind = rng.choice(len(crops), size=cells, p=[0.35, 0.25, 0.25, 0.15])
    tint = crops[kind] + rng.uniform(-0.05, 0.05, (*cells, 3)).astype(_F)
    stripe_dir = rng.random(cells) < 0.5
    period = sc.unit * rng.uniform(2.5, 4.5)
    coord = np.where(stripe_dir[ia, ib], along, across)
    stripes = np.sin(coord * _F(2 * math.pi / period))
    stripe_amp = np.where(kind == 1, 0.04, 0.10).astype(_F)[ia, ib]
    color = tint[ia, ib] * (1.0 + stripe_amp * stripes)[..., None]
    # Field margins: the distance to the nearest parcel edge, along either axis.
    frac_a = np.abs((along / _F(pitch_a)) % 1.0 - 0.5) * _F(pitch_a)
    frac_b = np.abs((across / _F(pitch_b)) % 1.0 - 0.5) * _F(pitch_b)
    margin = np.maximum(
        _edge(frac_a - pitch_a / 2 + sc.unit), _edge(frac_b - pitch_b / 2 + sc.unit)
    )
    alpha = np.full(color.shape[:2], 0.85, dtype=_F) * (1 - 0.6 * margin)
    _blend(sc.img, alpha, np.zeros(3, _F))  # blend towards black, then add the colour back:
    sc.img += color * alpha[..., None]  # one pass instead of a per-pixel colour blend


def _paint_roads(sc: _Scene, plan: _Plan) -> None:
    """Asphalt bands with dashed centre lines, lane lines and solid edge lines."""
    rng = sc.rng
    asphalt = np.zeros((sc.size, sc.size), dtype=_F)
    paint = np.zeros_like(asphalt)
    line_w = 0.45 * sc.unit
    for road in plan.roads:
        along, across = _scene_frame(sc, road.angle)
        d = across - _F(road.offset)
        mask = _edge(road.width / 2 - np.abs(d))
        np.maximum(asphalt, mask, out=asphalt)
        if not road.marked:
            continue
        # Lines as 1D profiles of d (centre, lane and edge lines), dashed along the road.
        lane_w = road.width / road.lanes
        dash = (along / _F(6 * sc.unit)) % 1.0 < 0.5
        for k in range(1, road.lanes):
            line = _edge(line_w - np.abs(d - _F(-road.width / 2 + k * lane_w)))
            solid = road.lanes > 2 and k == road.lanes // 2  # the median of a multi-lane road
            np.maximum(paint, line if solid else line * dash, out=paint)
        edge_line = _edge(line_w - np.abs(np.abs(d) - _F(road.width / 2 - 1.2 * sc.unit)))
        np.maximum(paint, edge_line * mask, out=paint)
    plan.road_mask = asphalt
    _blend(sc.img, asphalt, _jitter(rng, (0.33, 0.33, 0.34), 0.01) * _F(rng.uniform(0.8, 1.2)))
    _blend(sc.img, paint * _F(rng.uniform(0.5, 0.85)), (0.9, 0.9, 0.85))


def _paint_trees(sc: _Scene, plan: _Plan, autumn: bool) -> None:
    """Clumps of round crowns (value-noise bumps) with shadows; not on roads."""
    rng, s = sc.rng, sc.size
    clumps = _fractal(rng, s, sc.unit * rng.uniform(20, 40), 2)
    level = _quantile_threshold(clumps, plan.tree_cover) if plan.tree_cover > 0 else np.inf
    crowns = _smooth_noise(rng, s, sc.unit * rng.uniform(3.0, 4.5))
    mask = _smoothstep(clumps, level - 0.1, level + 0.1) * _smoothstep(crowns, 0.3, 0.5)
    if plan.road_mask is not None:
        mask *= 1.0 - plan.road_mask
    plan.tree_mask = mask
    base = (0.45, 0.30, 0.12) if autumn else (0.16, 0.28, 0.12)
    color = _jitter(rng, base, 0.04)
    _shadow(sc, mask, strength=0.45, height=3.0)
    shade = (0.7 + 0.6 * crowns)[..., None]
    _blend(sc.img, mask, np.zeros(3, _F))
    sc.img += color * shade * mask[..., None]


def _shadow(sc: _Scene, mask: np.ndarray, strength: float, height: float) -> None:
    """Darken the ground under ``mask`` shifted by the sun (whole-pixel shift is plenty)."""
    dx, dy = round(sc.sun[0] * height), round(sc.sun[1] * height)
    shifted = np.zeros_like(mask)
    s = sc.size
    ys, yd = (slice(0, s - dy), slice(dy, s)) if dy >= 0 else (slice(-dy, s), slice(0, s + dy))
    xs, xd = (slice(0, s - dx), slice(dx, s)) if dx >= 0 else (slice(-dx, s), slice(0, s + dx))
    shifted[yd, xd] = mask[ys, xs]
    sc.img *= (1.0 - _F(strength) * shifted * (1.0 - mask))[..., None]


def _paint_building(sc: _Scene, b: _Building, roof_mask: np.ndarray) -> None:
    sx, sy = sc.sun[0] * b.height, sc.sun[1] * b.height
    reach = math.hypot(b.half_l, b.half_w) + math.hypot(sx, sy) + 2
    win = _window(sc, b.cx + sx / 2, b.cy + sy / 2, reach)
    if win is None:
        return
    sl, dx, dy = win
    dx, dy = dx + _F(sx / 2), dy + _F(sy / 2)  # offsets from the building centre
    roof = _rect_mask(dx, dy, b.half_l, b.half_w, b.angle)
    cast = _rect_mask(dx - _F(sx), dy - _F(sy), b.half_l, b.half_w, b.angle)
    target = sc.img[sl]
    target *= (1.0 - 0.5 * cast * (1.0 - roof))[..., None]
    u, v = _rotated(dx, dy, b.angle)
    if b.gabled:  # two roof planes, one in the light: the ridge runs along the long side
        shade = np.where(v > 0, _F(0.78), _F(1.05))
    else:  # flat roof with a parapet
        inner = _edge(b.half_l - 1.2 * sc.unit - np.abs(u)) * _edge(
            b.half_w - 1.2 * sc.unit - np.abs(v)
        )
        shade = 0.88 + 0.12 * inner
    _blend(target, roof, b.color)
    target *= (1.0 - roof + roof * shade)[..., None]
    roof_mask[sl] = np.maximum(roof_mask[sl], roof)


def _paint_car(
    sc: _Scene,
    cx: float,
    cy: float,
    angle: float,
    color: np.ndarray | _Color,
    length: float | None = None,
    emergency: bool = False,
) -> None:
    """A car from above: body, dark windscreen and rear window, shadow."""
    u = sc.unit
    length = length or u * sc.rng.uniform(7.0, 8.5)
    width = length * 0.45
    sx, sy = sc.sun[0] * 1.5, sc.sun[1] * 1.5
    win = _window(sc, cx, cy, length / 2 + abs(sx) + abs(sy) + 2)
    if win is None:
        return
    sl, dx, dy = win
    a, c = _rotated(dx, dy, angle)
    body = _edge(length / 2 - np.abs(a)) * _edge(width / 2 - np.abs(c))
    cast = _rect_mask(dx - _F(sx), dy - _F(sy), length / 2, width / 2, angle)
    target = sc.img[sl]
    target *= (1.0 - 0.5 * cast * (1.0 - body))[..., None]
    _blend(target, body, color)
    glass = _edge(np.minimum(a - 0.1 * length, 0.3 * length - a)) + _edge(
        np.minimum(a + 0.38 * length, -0.28 * length - a)
    )
    glass = glass * _edge(width * 0.38 - np.abs(c)) * body
    _blend(target, np.clip(glass, 0, 1), (0.12, 0.13, 0.15))
    if emergency:  # light bar: red and blue
        bar = _edge(0.05 * length - np.abs(a)) * _edge(width * 0.4 - np.abs(c))
        _blend(target, bar * (c > 0), (0.95, 0.1, 0.1))
        _blend(target, bar * (c <= 0), (0.1, 0.2, 0.95))


def _paint_traffic(sc: _Scene, plan: _Plan) -> None:
    """Everyday traffic: cars in their lanes, in line with the road, spaced apart."""
    rng = sc.rng
    for road in plan.roads:
        lane_w = road.width / road.lanes
        expected = plan.car_density * road.lanes * sc.size * 1.5 / sc.unit / 8
        for lane in range(road.lanes):
            count = rng.poisson(expected / road.lanes)
            spots = np.sort(rng.uniform(-0.75, 0.75, count) * sc.size)
            keep = np.diff(spots, prepend=-np.inf) > 11 * sc.unit  # no touching cars
            across = road.offset - road.width / 2 + (lane + 0.5) * lane_w
            heading = road.angle + (math.pi if lane < road.lanes / 2 else 0.0)
            for along in spots[keep]:
                cx, cy = _road_point(sc, road, along, across)
                _paint_car(sc, cx, cy, heading + rng.normal(0, 0.03), _car_color(rng))


def _road_point(sc: _Scene, road: _Road, along: float, across: float) -> tuple[float, float]:
    c, s = math.cos(road.angle), math.sin(road.angle)
    return sc.centre + along * c - across * s, sc.centre + along * s + across * c


def _car_color(rng: np.random.Generator) -> np.ndarray:
    return _jitter(rng, _pick_color(rng, _CARS), 0.05)


def _paint_layout(sc: _Scene, plan: _Plan, *, cars: bool = True) -> None:
    """Ground, parcels, roads, trees, buildings and traffic, plus the class-agnostic confusers."""
    rng = sc.rng
    _paint_ground(sc, plan)
    if plan.parcels:
        _paint_parcels(sc)
    _confuser_patches(sc)
    _paint_roads(sc, plan)
    _paint_trees(sc, plan, autumn=rng.random() < _CONFUSER_ODDS["autumn"])
    plan.roof_mask = np.zeros((sc.size, sc.size), dtype=_F)
    for b in plan.buildings:
        _paint_building(sc, b, plan.roof_mask)
    if cars:
        _paint_traffic(sc, plan)
    _confuser_objects(sc, plan)


# --- confusers (same odds in every class) ----------------------------------------------------

# Probability that a scene of any class holds each look-alike.
_CONFUSER_ODDS: Mapping[str, float] = {
    "autumn": 0.05,  # orange-brown tree crowns (fire)
    "pond": 0.06,  # smooth water blob (flood)
    "river": 0.05,  # smooth water band (flood)
    "gravel": 0.06,  # grainy yard or building site (collapse)
    "parking": 0.06,  # cars packed together (traffic incident)
    "chimney": 0.04,  # a thin smoke plume (fire)
    "fog": 0.08,  # grey haze patches (fire smoke)
}


def _confuser_patches(sc: _Scene) -> None:
    """Ground-level look-alikes painted under roads and buildings: ponds, rivers, gravel yards."""
    rng = sc.rng
    if rng.random() < _CONFUSER_ODDS["pond"]:
        _pond(sc)
    if rng.random() < _CONFUSER_ODDS["river"]:
        _river(sc)
    if rng.random() < _CONFUSER_ODDS["gravel"]:
        _gravel_yard(sc)


def _confuser_objects(sc: _Scene, plan: _Plan) -> None:
    """Look-alikes on top of the layout: parking lots, fog, chimney smoke."""
    rng = sc.rng
    if rng.random() < _CONFUSER_ODDS["parking"]:
        _parking_lot(sc)
    if rng.random() < _CONFUSER_ODDS["chimney"]:
        cx, cy = rng.uniform(0.1, 0.9, 2) * sc.size
        _smoke(sc, cx, cy, density=rng.uniform(0.2, 0.45), width=sc.unit * rng.uniform(2, 4))
    if rng.random() < _CONFUSER_ODDS["fog"]:
        fog = _smooth_noise(rng, sc.size, sc.unit * rng.uniform(30, 60))
        _blend(sc.img, fog * _F(rng.uniform(0.2, 0.45)), _jitter(rng, (0.75, 0.76, 0.78), 0.04))


def _water_color(rng: np.random.Generator) -> np.ndarray:
    base = _pick(rng, {"muddy": 0.5, "olive": 0.2, "blue": 0.3})
    palette = {"muddy": (0.45, 0.37, 0.25), "olive": (0.36, 0.37, 0.25), "blue": (0.27, 0.35, 0.42)}
    return _jitter(rng, palette[base], 0.04)


def _pond(sc: _Scene) -> None:
    rng = sc.rng
    cx, cy = rng.uniform(0.1, 0.9, 2) * sc.size
    blob = _blob(sc, cx, cy, sc.unit * rng.uniform(5, 13), roughness=0.25)
    if blob is None:
        return
    sl, rho = blob
    _blend(sc.img[sl], _smoothstep(1.0 - rho, 0.0, 0.15), _water_color(rng))


def _river(sc: _Scene) -> None:
    """A meandering band of water (smooth and brown or blue, like a flood, but narrow)."""
    rng = sc.rng
    along, across = _scene_frame(sc, rng.uniform(0, 2 * math.pi))
    wave = _F(sc.unit * rng.uniform(4, 12)) * np.sin(
        along * _F(2 * math.pi / (sc.unit * rng.uniform(50, 120))) + _F(rng.uniform(0, 6.3))
    )
    width = sc.unit * rng.uniform(5, 13)
    d = across - _F(rng.uniform(-0.35, 0.35) * sc.size) - wave
    _blend(sc.img, _edge(width / 2 - np.abs(d)), _water_color(rng))


def _gravel_yard(sc: _Scene) -> None:
    """A quarry, building site or scrap yard: grainy grey-brown texture with a few aligned piles."""
    rng = sc.rng
    cx, cy = rng.uniform(0.15, 0.85, 2) * sc.size
    half_l, half_w = sc.unit * rng.uniform(8, 20, 2)
    win = _window(sc, cx, cy, math.hypot(half_l, half_w) + 2)
    if win is None:
        return
    sl, dx, dy = win
    mask = _rect_mask(dx, dy, half_l, half_w, sc.heading)
    _rubble_fill(sc, sl, mask, contrast=rng.uniform(0.05, 0.15))


def _parking_lot(sc: _Scene) -> None:
    """Rows of parked cars, nose to tail and side by side: close together but all aligned."""
    rng = sc.rng
    cx, cy = rng.uniform(0.2, 0.8, 2) * sc.size
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(3, 7))
    half_l, half_w = cols * 2.6 * sc.unit, rows * 5.5 * sc.unit
    angle = sc.heading + _quarter_turn(rng)
    win = _window(sc, cx, cy, math.hypot(half_l, half_w) + 2)
    if win is None:
        return
    sl, dx, dy = win
    _blend(sc.img[sl], _rect_mask(dx, dy, half_l, half_w, angle), (0.38, 0.38, 0.39))
    c, s = math.cos(angle), math.sin(angle)
    for r in range(rows):
        for k in range(cols):
            if rng.random() < 0.25:
                continue
            a = -half_l + (k + 0.5) * 5.2 * sc.unit
            b = -half_w + (r + 0.5) * 11 * sc.unit
            px, py = cx + a * c - b * s, cy + a * s + b * c
            _paint_car(sc, px, py, angle + math.pi / 2 + rng.normal(0, 0.03), _car_color(rng))


# --- shared effects ---------------------------------------------------------------------------


def _smoke(sc: _Scene, cx: float, cy: float, density: float, width: float) -> None:
    """A plume from (cx, cy) drifting downwind and widening, with turbulent density."""
    rng = sc.rng
    wind = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(wind), math.sin(wind)
    dx, dy = sc.x - _F(cx), sc.y - _F(cy)
    along, across = dx * c + dy * s, -dx * s + dy * c
    length = sc.size * rng.uniform(0.5, 1.3)
    spread = width + np.maximum(along, 0) * _F(rng.uniform(0.25, 0.6))
    plume = np.exp(-((across / spread) ** 2)) * _smoothstep(along, -width, width * 0.5)
    plume *= np.exp(-np.maximum(along, 0) / _F(length))
    turbulence = 0.55 + 0.9 * _smooth_noise(rng, sc.size, sc.unit * rng.uniform(6, 12))
    grey = rng.uniform(0.35, 0.85)
    alpha = np.clip(plume * turbulence * _F(density), 0.0, 0.95)
    _blend(sc.img, alpha, _jitter(rng, (grey, grey, grey * 1.02), 0.03))


def _rubble_fill(sc: _Scene, sl: tuple[slice, slice], mask: np.ndarray, contrast: float) -> None:
    """Grainy grey/brown/beige texture with dark voids inside ``mask`` (rubble, gravel)."""
    rng = sc.rng
    h, w = mask.shape
    grain = rng.standard_normal((h, w), dtype=_F)
    # Chunks of two materials, about two (nominal) pixels across, so the grain survives downscaling.
    block = max(2, round(2 * sc.unit))
    coarse = rng.random((h // block + 2, w // block + 2), dtype=_F)
    coarse = coarse.repeat(block, 0).repeat(block, 1)[:h, :w]
    base = _jitter(rng, _pick_color(rng, {(0.55, 0.53, 0.50): 2, (0.60, 0.52, 0.42): 1}), 0.05)
    second = _jitter(rng, (0.42, 0.36, 0.30), 0.05)
    mix = (coarse > 0.5).astype(_F)
    color = base * (1 - mix[..., None]) + second * mix[..., None]
    color = color * (1.0 + _F(contrast) * grain)[..., None]
    target = sc.img[sl]
    _blend(target, mask, np.zeros(3, _F))
    target += color * mask[..., None]


# --- class cues -------------------------------------------------------------------------------


# Cue strength ~ Beta(a, b) on [0, 1]: mostly clear cues, with a tail of weak, ambiguous ones.
_STRENGTH_BETA = (2.5, 1.0)


def _strength(rng: np.random.Generator) -> float:
    """How visible a cue is: skewed so that a fair share of every class is hard (weak cue)."""
    return float(rng.beta(*_STRENGTH_BETA))


def _cue_normal(sc: _Scene, plan: _Plan) -> None:
    """Normal: the layout alone (intact roofs, cars in line), confusers included."""
    _paint_layout(sc, plan)


def _cue_fire(sc: _Scene, plan: _Plan) -> None:
    """Fire: scorched ground, flame blobs (red rim, orange body, yellow-white core) and smoke.

    Weak cases: a small flame, partly hidden under a thick smoke plume.
    """
    rng = sc.rng
    _paint_layout(sc, plan)
    strength = _strength(rng)
    if plan.buildings and rng.random() < 0.5:
        b = plan.buildings[int(rng.integers(len(plan.buildings)))]
        cx, cy = b.cx, b.cy
    else:
        cx, cy = rng.uniform(0.2, 0.8, 2) * sc.size
    radius = sc.unit * (3.5 + 12.0 * strength) * rng.uniform(0.8, 1.2)
    scorch = _blob(sc, cx, cy, radius * rng.uniform(1.5, 2.6), roughness=0.35)
    if scorch is not None:
        sl, rho = scorch
        _blend(
            sc.img[sl], _smoothstep(1 - rho, 0, 0.3) * _F(rng.uniform(0.5, 0.9)), (0.1, 0.09, 0.08)
        )
    front = plan.kind == "forest" and rng.random() < 0.5
    count = 1 + round(5 * strength * rng.uniform(0.5, 1.0))
    for _ in range(count):
        if front:  # a fire front: flames strung along a line
            t = rng.uniform(-2.5, 2.5) * radius
            ox, oy = t * math.cos(sc.heading), t * math.sin(sc.heading)
        else:
            ox, oy = rng.normal(0, 0.7 * radius, 2)
        _flame(sc, cx + ox, cy + oy, radius * rng.uniform(0.4, 1.0))
    density = rng.uniform(0.4, 1.0)
    _smoke(sc, cx, cy, density=density, width=radius * rng.uniform(0.8, 1.6))


def _flame(sc: _Scene, cx: float, cy: float, radius: float) -> None:
    rng = sc.rng
    blob = _blob(sc, cx, cy, radius, roughness=0.6)
    if blob is None:
        return
    sl, rho = blob
    heat = np.clip(1.0 - rho, 0.0, 1.0) ** 0.6
    heat = heat * (0.7 + 0.6 * rng.random(heat.shape, dtype=_F))
    ramp = np.array(
        [(0.70, 0.10, 0.03), (1.0, 0.42, 0.05), (1.0, 0.78, 0.25), (1.0, 0.96, 0.75)], dtype=_F
    )
    pos = np.clip(heat * 3.0, 0.0, 2.999)
    lo = pos.astype(np.intp)
    frac = (pos - lo)[..., None]
    color = ramp[lo] * (1 - frac) + ramp[lo + 1] * frac
    alpha = _smoothstep(heat, 0.0, 0.25)
    target = sc.img[sl]
    glow = np.clip(1.6 - rho, 0.0, 1.0) * _F(0.25)  # orange light spilling on the ground
    _blend(target, glow, (1.0, 0.55, 0.2))
    _blend(target, alpha, np.zeros(3, _F))
    target += color * alpha[..., None]


def _cue_flooded(sc: _Scene, plan: _Plan) -> None:
    """Flooded areas: smooth water entering from one side, roofs and crowns sticking out.

    Weak cases: a small flooded corner in muddy brown, next to brown fields.
    """
    rng = sc.rng
    _paint_layout(sc, plan, cars=rng.random() < 0.3)
    strength = _strength(rng)
    cover = 0.2 + 0.7 * strength
    along, _ = _scene_frame(sc, rng.uniform(0, 2 * math.pi))
    field = _fractal(rng, sc.size, sc.unit * rng.uniform(35, 70), 3) + along / _F(
        sc.size * rng.uniform(0.25, 0.6)
    )
    level = _quantile_threshold(field, cover)
    water = _smoothstep(field, level, level + 0.12)
    # What sticks out: a patchy subset of roofs and tree crowns (some are fully under water).
    emerge = _smoothstep(_smooth_noise(rng, sc.size, sc.unit * 14), 0.35, 0.55)
    assert plan.roof_mask is not None and plan.tree_mask is not None  # _paint_layout set both
    above = np.maximum(plan.roof_mask, 0.8 * plan.tree_mask) * emerge
    alpha = water * (1.0 - above) * _F(rng.uniform(0.85, 0.97))
    color = _water_color(rng)
    ripples = _smooth_noise(rng, sc.size, sc.unit * rng.uniform(15, 30)) - 0.5
    shore = _smoothstep(field, level - 0.15, level) * (1 - water)  # wet, darker banks
    sc.img *= (1.0 - 0.25 * shore)[..., None]
    _blend(sc.img, alpha, np.zeros(3, _F))
    sc.img += (color * (1.0 + 0.08 * ripples)[..., None]) * alpha[..., None]


def _cue_collapsed(sc: _Scene, plan: _Plan) -> None:
    """Collapsed buildings: rubble heaps with broken roof slabs in place of buildings, and dust.

    Strong cases are a rubble field; weak cases are one building, half collapsed, among intact ones.
    """
    rng = sc.rng
    strength = _strength(rng)
    if not plan.buildings:
        plan.buildings = _scattered_buildings(sc, 2)
    central = sorted(plan.buildings, key=lambda b: math.hypot(b.cx - sc.centre, b.cy - sc.centre))
    share = (0.15 + 0.85 * strength) * rng.uniform(0.7, 1.0)
    victims = central[: max(1, round(share * len(central)))]
    partial = strength < 0.15
    if not partial:
        plan.buildings = [b for b in plan.buildings if b not in victims]
    _paint_layout(sc, plan)
    if strength > 0.4:  # a whole block came down: one large rubble field around the centre
        radius = sc.size * (0.12 + 0.25 * (strength - 0.4) / 0.6)
        cx, cy = sc.centre + rng.normal(0, 0.12, 2) * sc.size
        _rubble_heap(sc, cx, cy, radius, _jitter(rng, _pick_color(rng, _ROOFS), 0.05))
    for b in victims:
        _rubble(sc, b, partial=partial)
    # Dust settles over the whole area of a large collapse: a pale, desaturated veil.
    dust = _smooth_noise(rng, sc.size, sc.unit * rng.uniform(20, 40))
    _blend(sc.img, dust * _F(0.45 * strength * rng.uniform(0.5, 1.0)), (0.72, 0.68, 0.6))


def _rubble(sc: _Scene, b: _Building, partial: bool) -> None:
    rng = sc.rng
    if partial:  # the collapse covers one end of the building
        side = _sign(rng) * b.half_l * 0.5
        cx = b.cx + side * math.cos(b.angle)
        cy = b.cy + side * math.sin(b.angle)
        radius = max(b.half_l, b.half_w) * rng.uniform(0.6, 0.9)
    else:
        cx, cy = b.cx, b.cy
        radius = max(b.half_l, b.half_w) * rng.uniform(1.1, 1.6)
    _rubble_heap(sc, cx, cy, radius, b.color)


def _rubble_heap(sc: _Scene, cx: float, cy: float, radius: float, roof: np.ndarray) -> None:
    """An irregular heap: dust skirt, grainy rubble, dark voids and broken roof slabs."""
    rng = sc.rng
    blob = _blob(sc, cx, cy, radius, roughness=0.5)
    if blob is None:
        return
    sl, rho = blob
    mask = _smoothstep(1.0 - rho, 0.0, 0.25)
    _blend(sc.img[sl], _smoothstep(1.5 - rho, 0, 0.5) * _F(0.35), (0.7, 0.66, 0.6))  # dust
    _rubble_fill(sc, sl, mask, contrast=rng.uniform(0.25, 0.45))
    h, w = mask.shape
    voids = _smooth_noise(rng, max(h, w), 2.0 * sc.unit)[:h, :w] > 0.72
    sc.img[sl] *= (1.0 - 0.65 * voids * mask)[..., None]
    # int() truncates the bound exactly as Generator.integers does with a float, so the draws
    # are unchanged.
    slabs = int(rng.integers(3, int(6 + radius / (2 * sc.unit))))
    for _ in range(slabs):  # broken slabs, any angle
        fx, fy = cx + rng.normal(0, 0.45 * radius), cy + rng.normal(0, 0.45 * radius)
        size = radius * rng.uniform(0.15, 0.4)
        _slab(sc, fx, fy, size, size * rng.uniform(0.3, 0.7), rng.uniform(0, math.pi), roof)


def _slab(
    sc: _Scene, cx: float, cy: float, half_l: float, half_w: float, angle: float, color: np.ndarray
) -> None:
    win = _window(sc, cx, cy, math.hypot(half_l, half_w) + 2)
    if win is None:
        return
    sl, dx, dy = win
    mask = _rect_mask(dx, dy, half_l, half_w, angle)
    _blend(sc.img[sl], mask, color * _F(sc.rng.uniform(0.7, 1.05)))


def _cue_traffic(sc: _Scene, plan: _Plan) -> None:
    """Traffic incident: cars clustered on the road at odd angles, debris, fluids, skid marks.

    Extras: emergency vehicles, a car off the road, a smoking wreck. Weak cases: two touching cars
    slightly askew and a little debris.
    """
    rng = sc.rng
    _paint_layout(sc, plan)
    strength = _strength(rng)
    road = min(plan.roads, key=lambda r: abs(r.offset))
    along = rng.uniform(-0.2, 0.2) * sc.size
    across = road.offset + rng.uniform(-0.3, 0.3) * road.width
    cx, cy = _road_point(sc, road, along, across)
    spread = sc.unit * (5.0 + 10.0 * strength)
    if rng.random() < 0.4 + 0.6 * strength:  # spilled fuel and oil
        blob = _blob(sc, cx, cy, spread * rng.uniform(0.7, 1.3), roughness=0.4)
        if blob is not None:
            sl, rho = blob
            _blend(sc.img[sl], _smoothstep(1 - rho, 0, 0.3) * _F(0.55), (0.1, 0.1, 0.11))
    _skid_marks(sc, road, cx, cy, count=int(rng.integers(0, 4)))
    cars = 2 + round(8 * strength * rng.uniform(0.6, 1.0))
    max_skew = math.radians(20 + 70 * strength)
    for k in range(cars):
        ox, oy = rng.normal(0, spread * 0.5, 2) if k else (0.0, 0.0)
        skew = rng.uniform(math.radians(15), max_skew) * _sign(rng)
        heading = road.angle + skew + _half_turn(rng)
        _paint_car(sc, cx + ox, cy + oy, heading, _car_color(rng))
    _debris(sc, cx, cy, spread * 1.2, count=int(10 + 80 * strength))
    _debris(sc, cx, cy, spread * 1.5, count=int(20 * strength), people=True)
    for _ in range(int(rng.random() < 0.3 + 0.5 * strength) + int(rng.random() < strength)):
        ox, oy = rng.normal(0, spread, 2)
        color, length = _pick(rng, _RESPONDERS)
        _paint_car(
            sc,
            cx + ox,
            cy + oy,
            road.angle + rng.normal(0, 0.3),
            color,
            length=sc.unit * length,
            emergency=True,
        )
    if rng.random() < 0.12:  # a burning wreck: the fire confuser
        _smoke(sc, cx, cy, density=rng.uniform(0.3, 0.7), width=spread * 0.6)


_RESPONDERS: Mapping[tuple[_Color, float], float] = {
    ((0.93, 0.93, 0.9), 10.0): 0.5,  # ambulance / police
    ((0.80, 0.08, 0.06), 14.0): 0.3,  # fire engine
    ((0.95, 0.75, 0.1), 15.0): 0.2,  # tow truck
}


def _skid_marks(sc: _Scene, road: _Road, cx: float, cy: float, count: int) -> None:
    """Dark tyre streaks leading up to the crash along the road."""
    rng = sc.rng
    for _ in range(count):
        length = sc.unit * rng.uniform(10, 25)
        angle = road.angle + rng.normal(0, 0.15) + _half_turn(rng)
        mx, my = cx + 0.5 * length * math.cos(angle), cy + 0.5 * length * math.sin(angle)
        win = _window(sc, mx, my, length / 2 + 2)
        if win is None:
            continue
        sl, dx, dy = win
        mask = _rect_mask(dx, dy, length / 2, 0.5 * sc.unit, angle)
        _blend(sc.img[sl], mask * _F(0.6), (0.1, 0.1, 0.1))


def _debris(
    sc: _Scene, cx: float, cy: float, spread: float, count: int, people: bool = False
) -> None:
    """Single-pixel specks of glass, plastic and metal scattered around the crash (or people,
    in high-visibility orange and yellow or dark clothes)."""
    rng = sc.rng
    if people:
        colors = np.array([(1.0, 0.55, 0.1), (0.95, 0.9, 0.2), (0.15, 0.15, 0.2)], dtype=_F)
        xs = np.clip(np.round(cx + rng.normal(0, spread, count)), 0, sc.size - 1).astype(np.intp)
        ys = np.clip(np.round(cy + rng.normal(0, spread, count)), 0, sc.size - 1).astype(np.intp)
        sc.img[ys, xs] = colors[rng.integers(0, 3, count)]
        return
    xs = np.clip(np.round(cx + rng.normal(0, spread, count)), 0, sc.size - 1).astype(np.intp)
    ys = np.clip(np.round(cy + rng.normal(0, spread, count)), 0, sc.size - 1).astype(np.intp)
    colors = rng.uniform(0.05, 1.0, (count, 3)).astype(_F)
    grey = rng.random(count) < 0.6
    colors[grey] = colors[grey].mean(axis=1, keepdims=True)
    sc.img[ys, xs] = colors


_CUES: Mapping[str, Callable[[_Scene, _Plan], None]] = {
    "collapsed_building": _cue_collapsed,
    "fire": _cue_fire,
    "flooded_areas": _cue_flooded,
    "traffic_incident": _cue_traffic,
    "normal": _cue_normal,
}


# --- camera -----------------------------------------------------------------------------------


def _apply_camera(sc: _Scene) -> None:
    """Exposure, white balance, gamma, haze, lens blur and sensor noise."""
    rng, img = sc.rng, sc.img
    gains = rng.uniform(0.75, 1.2) * (1.0 + np.array([1.0, 0.0, -1.0]) * rng.uniform(-0.06, 0.06))
    img *= gains.astype(_F)
    np.clip(img, 0.0, 1.0, out=img)
    img **= _F(rng.uniform(0.85, 1.15))
    if rng.random() < 0.3:
        _blend(img, np.full(img.shape[:2], rng.uniform(0.05, 0.25), _F), (0.72, 0.74, 0.78))
    img = _gaussian_blur(img, rng.uniform(0.0, 1.1) * sc.size / BASE_SIZE)
    img += _F(rng.uniform(0.003, 0.02)) * rng.standard_normal(img.shape, dtype=_F)
    sc.img = img

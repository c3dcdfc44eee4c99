"""Fashion-MNIST as a class-per-folder PNG tree of five classes that confuse each other.

Source: Debian's ``dataset-fashion-mnist`` (the Zalando IDX files, installed offline with
``apt-get install -y dataset-fashion-mnist``; this script installs it when it is missing and it runs
as root, otherwise it says which command to run).

Why these five classes: the upper-body garments are Fashion-MNIST's well-known hard block. In
Zalando's own benchmark and in published confusion matrices, Shirt is the worst class (it is
mistaken for T-shirt/top, Pullover and Coat), Pullover and Coat swap with each other, and Dress is
confused with Coat and T-shirt/top. Sandals, sneakers, bags and trousers are almost never confused
with anything, so a five-class set of them would be too easy to show any effect of imbalance.

Class order follows the scenarios' convention (the first four are the minorities, the last the
majority, like AIDER's ``normal``): ``shirt, pullover, coat, dress, t_shirt_top``. The hardest
class, Shirt, is a minority in every imbalanced scenario, and the majority class T-shirt/top is
the one it is most often mistaken for, which is exactly the failure the paper is about.

Only the IDX *training* file is used (6,000 images per class); ``per_class`` images of each class
are written (first ones in file order, deterministic), as 28x28 grey PNGs. The pipeline's split
then cuts train/val/test from this pool, disjoint and class-balanced for val and test.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from aider_edge import atomic

PACKAGE = "dataset-fashion-mnist"
# Label indices of Fashion-MNIST and the folder names used here, in scenario order.
CLASSES: dict[str, int] = {
    "shirt": 6,
    "pullover": 2,
    "coat": 4,
    "dress": 3,
    "t_shirt_top": 0,
}
# The other five classes (footwear, bags, trousers): disjoint from the study's classes and images,
# they pre-train the backbone (pretrain.py) the way ImageNet weights do in the paper.
PRETRAIN_CLASSES: dict[str, int] = {
    "trouser": 1,
    "sandal": 5,
    "sneaker": 7,
    "bag": 8,
    "ankle_boot": 9,
}
IMAGES = "train-images-idx3-ubyte"
LABELS = "train-labels-idx1-ubyte"


def find_idx_dir() -> Path | None:
    """The folder holding the IDX training files, from the installed package's file list."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", PACKAGE], capture_output=True, text=True, check=True
        ).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    for line in listing.splitlines():
        name = Path(line).name
        if name.startswith(IMAGES):
            return Path(line).parent
    return None


def ensure_installed() -> Path:
    found = find_idx_dir()
    if found is not None:
        return found
    if os.geteuid() != 0:
        sys.exit(f"{PACKAGE} is not installed: run `sudo apt-get install -y {PACKAGE}` and retry")
    print(f"installing {PACKAGE} with apt-get (about 31 MB)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(["apt-get", "install", "-y", "-q", PACKAGE], env=env)
    if result.returncode != 0:  # a stale package list is the usual cause on a fresh machine
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", PACKAGE], env=env, check=True)
    found = find_idx_dir()
    if found is None:
        sys.exit(f"{PACKAGE} installed but no {IMAGES}* file was found in `dpkg -L {PACKAGE}`")
    return found


def _open_idx(folder: Path, stem: str) -> bytes:
    for suffix, opener in ((".gz", gzip.open), ("", open)):
        path = folder / (stem + suffix)
        if path.is_file():
            with opener(path, "rb") as fh:
                return fh.read()
    sys.exit(f"{folder}: neither {stem} nor {stem}.gz found")


def read_idx(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) from the IDX training files."""
    raw_images, raw_labels = _open_idx(folder, IMAGES), _open_idx(folder, LABELS)
    # IDX: big-endian magic (2051 images / 2049 labels), counts and sizes, then raw uint8.
    magic, n, rows, cols = np.frombuffer(raw_images[:16], dtype=">u4")
    if magic != 2051 or np.frombuffer(raw_labels[:4], dtype=">u4")[0] != 2049:
        sys.exit(f"{folder}: not IDX image/label files (bad magic numbers)")
    images = np.frombuffer(raw_images[16:], dtype=np.uint8).reshape(int(n), int(rows), int(cols))
    labels = np.frombuffer(raw_labels[8:], dtype=np.uint8)
    if len(labels) != len(images):
        sys.exit(f"{folder}: {len(images)} images but {len(labels)} labels")
    return images, labels


def write_tree(out: Path, per_class: int, classes: dict[str, int] = CLASSES) -> Path:
    """Write ``out/<class>/<index>.png``; a finished tree with the same size is kept as is."""
    marker = out / ".complete"
    if marker.is_file() and marker.read_text().strip() == str(per_class):
        return out
    images, labels = read_idx(ensure_installed())
    with atomic.atomic_dir(out) as tmp:
        for name, label in classes.items():
            (tmp / name).mkdir()
            indices = np.flatnonzero(labels == label)[:per_class]
            if len(indices) < per_class:
                sys.exit(f"class {name} has {len(indices)} images, fewer than {per_class}")
            for i in indices:
                Image.fromarray(images[i], mode="L").save(tmp / name / f"{int(i):05d}.png")
        (tmp / ".complete").write_text(f"{per_class}\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/science/work/fashion_mnist5"))
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--force", action="store_true", help="rewrite the tree")
    args = parser.parse_args(argv)
    if args.force:
        shutil.rmtree(args.out, ignore_errors=True)
    out = write_tree(args.out, args.per_class)
    print(f"{out}: {len(CLASSES)} classes x {args.per_class} PNGs ({', '.join(CLASSES)})")


if __name__ == "__main__":
    main()

"""Per-run figures: valid PNGs, written atomically, without touching pyplot's global state."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from aider_edge.plots import confusion_matrix_figure, per_class_f1_figure, save_figure

CLASSES = ["collapsed_building", "fire", "flooded_areas", "traffic_incident", "normal"]
MATRIX = [
    [50, 3, 2, 1, 4],
    [0, 58, 1, 0, 1],
    [2, 0, 55, 0, 3],
    [5, 1, 0, 40, 14],
    [0, 0, 0, 0, 60],
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path, min_bytes=10_000):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > min_bytes  # a real drawing, not an empty canvas
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert width > 400 and height > 300
    return width, height


def test_figures_are_valid_pngs_and_leave_pyplot_alone(tmp_path):
    assert plt.get_fignums() == []
    cm = confusion_matrix_figure(MATRIX, CLASSES, "val: s1-adaptive")
    f1 = per_class_f1_figure(dict(zip(CLASSES, [0.81, 0.97, 0.9, 0.0, 0.55], strict=True)), "F1")
    save_figure(cm, tmp_path / "plots" / "cm.png")
    save_figure(f1, tmp_path / "plots" / "f1.png")

    _check_png(tmp_path / "plots" / "cm.png")
    _check_png(tmp_path / "plots" / "f1.png")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["cm.png", "f1.png"]
    assert plt.get_fignums() == []

    ax = f1.axes[0]
    assert ax.get_ylim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == [c.replace("_", " ") for c in CLASSES]
    texts = {t.get_text() for t in ax.texts}
    assert {"0.81", "0.97", "0.00"} <= texts
    cm_texts = {t.get_text() for t in cm.axes[0].texts}
    assert "60\n100%" in cm_texts and "14\n23%" in cm_texts


def test_confusion_matrix_handles_empty_rows_and_rejects_bad_shapes(tmp_path):
    matrix = [[3, 1, 0], [0, 0, 0], [1, 0, 4]]  # the second class has no samples
    fig = confusion_matrix_figure(matrix, ["a", "b", "c"], "tiny")
    save_figure(fig, tmp_path / "cm.png")
    _check_png(tmp_path / "cm.png", min_bytes=5_000)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix_figure(matrix, ["a", "b"], "wrong")


def test_save_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "f1.png"
    target.write_bytes(b"old")

    class Broken:
        def savefig(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_figure(Broken(), target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f1.png"]

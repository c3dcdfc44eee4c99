"""``export``: a real trained run exported by torch's dynamo exporter, checked with onnxruntime."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from aider_edge import layout
from aider_edge.contract import IMAGENET_MEAN, IMAGENET_STD
from aider_edge.data.cache import workspace_cache
from aider_edge.errors import AiderEdgeError
from aider_edge.export import graph, int8, onnx_export
from aider_edge.export.checkpoint import load_classifier, model_inputs
from aider_edge.model import build_model
from aider_edge.selection import SelectionError
from aider_edge.stages.export import run as run_export
from aider_edge.stages.select import read_selected
from conftest import small_params
from export_project import copy_project, exported_project, project_params

pytestmark = pytest.mark.slow  # a real trained run exported and quantised

K = 5


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return exported_project(tmp_path_factory)


@pytest.fixture(scope="module")
def classifier(project):
    selected = read_selected(project)
    return load_classifier(project_params(project), project / selected["checkpoint"])


@pytest.fixture(scope="module")
def test_images(project) -> np.ndarray:
    params = project_params(project)
    cache = workspace_cache(project, params.data.image_size, params.data)
    split = cache.open_split(project / layout.TEST_SPLIT, params.data.classes)
    return split.images()


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def torch_logits(classifier, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return classifier(torch.from_numpy(model_inputs(images, False))).numpy()


def test_the_same_inputs_give_the_same_bytes(project, tmp_path):
    """DVC sees no change when nothing changed: a second export writes identical files."""
    again = copy_project(project, tmp_path / "again")
    run_export(project_params(again), again)
    for name in ("model.onnx", "model.int8.onnx", "export.json"):
        first = hashlib.sha256((project / "export" / name).read_bytes()).hexdigest()
        second = hashlib.sha256((again / "export" / name).read_bytes()).hexdigest()
        assert first == second, name


def test_the_model_has_the_io_and_metadata_contract(project):
    model = onnx.load(str(project / "export" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 18
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    assert inp.type.tensor_type.elem_type == TensorProto.FLOAT
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert isinstance(in_dims[0], str) and in_dims[1:] == [3, 32, 32]  # symbolic batch
    assert out_dims == [in_dims[0], K]

    meta = onnx_export.metadata(model)
    selected = read_selected(project)
    assert json.loads(meta["classes"]) == list(project_params(project).data.classes)
    assert meta["input_size"] == "32"
    assert json.loads(meta["mean"]) == list(IMAGENET_MEAN)
    assert json.loads(meta["std"]) == list(IMAGENET_STD)
    assert meta["layout"] == "NCHW_float32_normalized" and meta["resize"] == "bilinear"
    assert meta["mlflow_run_id"] == selected["run_id"]
    assert meta["model_version"] == "unregistered"
    # Outside a DVC checkout the training split's sha256 stands in for DVC's md5.
    assert meta["data_hash"].startswith("sha256:") and len(meta["data_hash"]) == 7 + 64


def test_the_projection_head_is_not_in_the_graph(project, classifier):
    model = onnx.load(str(project / "export" / "model.onnx"))
    weights = [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT]
    onnx_params = sum(int(np.prod(init.dims)) for init in weights)
    full = build_model(K, "none", 128)
    full_params = sum(p.numel() for p in full.parameters())
    projection_params = sum(p.numel() for p in full.projection.parameters())
    classifier_params = sum(p.numel() for p in classifier.parameters())
    # The exporter folds each BatchNorm (scale + shift) into its convolution's bias: -C per BN.
    bn_channels = sum(
        m.num_features for m in classifier.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )
    assert onnx_params in (classifier_params, classifier_params - bn_channels)
    assert full_params - onnx_params >= projection_params
    shapes = {tuple(init.dims) for init in model.graph.initializer}
    assert (960, 960) not in shapes and (128, 960) not in shapes and (960, 128) not in shapes

    sess = session(project / "export" / "model.onnx")
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 3, 32, 32)).astype(np.float32)
        assert sess.run(None, {"input": x})[0].shape == (n, K)


def test_onnxruntime_matches_torch_on_real_images_at_any_batch(project, classifier, test_images):
    sess = session(project / "export" / "model.onnx")
    for batch in (test_images[:1], test_images[:3], test_images):
        expected = torch_logits(classifier, batch)
        got = sess.run(None, {"input": model_inputs(batch, False)})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


def test_the_spatial_means_are_global_average_pools_in_the_export(project):
    model = onnx.load(str(project / "export" / "model.onnx"))
    counts = graph.op_counts(model)
    assert counts.get("GlobalAveragePool") == 9 and "ReduceMean" not in counts
    report = json.loads((project / "export" / "export.json").read_text())
    assert report["pool_rewrite"]["applied"] and report["pool_rewrite"]["rewritten"] == 9
    assert report["pool_rewrite"]["max_abs_logit_diff"] <= 1e-5


def test_the_rewrite_touches_only_spatial_means_and_keeps_outputs():
    axes = {
        "hw": numpy_helper.from_array(np.array([-1, -2], dtype=np.int64), "hw"),
        "c": numpy_helper.from_array(np.array([1], dtype=np.int64), "c"),
    }
    nodes = [
        helper.make_node("ReduceMean", ["x", "hw"], ["pooled"], keepdims=1),
        helper.make_node("ReduceMean", ["x", "c"], ["channel_mean"], keepdims=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 6])
    outs = [
        helper.make_tensor_value_info("pooled", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("channel_mean", TensorProto.FLOAT, None),
    ]
    proto = helper.make_model(
        helper.make_graph(nodes, "g", [x], outs, list(axes.values())),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    rewritten, count = graph.rewrite_spatial_means(proto)
    assert count == 1
    assert graph.op_counts(rewritten) == {"GlobalAveragePool": 1, "ReduceMean": 1}
    assert {i.name for i in rewritten.graph.initializer} == {"c"}  # the unused axes are gone
    data = np.random.default_rng(0).standard_normal((2, 4, 5, 6)).astype(np.float32)
    before = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": data})
    after = ort.InferenceSession(rewritten.SerializeToString()).run(None, {"x": data})
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_int8_is_qdq_with_per_channel_weights_and_the_metadata(project, test_images):
    path = project / "export" / "model.int8.onnx"
    model = onnx.load(str(path))
    counts = graph.op_counts(model)
    assert counts["QuantizeLinear"] > 50 and counts["DequantizeLinear"] > 50
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    per_channel = [
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and inits.get(n.input[1], np.zeros(1)).size > 1
    ]
    assert len(per_channel) >= 60  # every convolution's weights (and the head's)
    meta = onnx_export.metadata(model)
    assert meta["precision"] == "int8" and meta["layout"] == "NCHW_float32_normalized"
    assert meta["mlflow_run_id"] == read_selected(project)["run_id"]
    report = json.loads((project / "export" / "export.json").read_text())
    assert report["int8"]["calibration"] == {
        "method": "percentile",
        "images": 32,
        "num_bins": 2048,
        "num_quantized_bins": None,
        "percentile": 99.99,
    }
    assert report["int8"]["bytes"] < 0.4 * report["fp32"]["bytes"]
    logits = session(path).run(None, {"input": model_inputs(test_images, False)})[0]
    assert logits.shape == (len(test_images), K) and np.isfinite(logits).all()


def _train_inputs(project: Path, n: int = 32) -> np.ndarray:
    params = project_params(project)
    cache = workspace_cache(project, params.data.image_size, params.data)
    split = cache.open_split(project / layout.train_split("s1"), params.data.classes)
    return model_inputs(split.images(range(n)), False)


def _ranges(project: Path, **settings) -> dict[str, tuple[float, float]]:
    ranges = int8.calibrate_ranges(
        project / "export" / "model.onnx",
        "input",
        _train_inputs(project),
        int8.CalibrationSettings(**settings),
    )
    return {
        name: (float(np.min(r.range_value[0])), float(np.max(r.range_value[1])))
        for name, r in ranges.items()
    }


def test_entropy_and_percentile_calibration_really_differ_from_minmax(project):
    minmax = _ranges(project, method="minmax")
    entropy = _ranges(project, method="entropy")
    percentile = _ranges(project, method="percentile")
    assert minmax.keys() == entropy.keys() == percentile.keys()

    def differing(ranges):  # tensors whose range moved by more than 1 % of the MinMax width
        return sum(
            1
            for name, (lo, hi) in ranges.items()
            if max(abs(lo - minmax[name][0]), abs(hi - minmax[name][1]))
            > 0.01 * (minmax[name][1] - minmax[name][0])
        )

    # Entropy clips the long tails of many activations; the 99.999th percentile of 32 images
    # is the maximum for most tensors, but not for all.
    assert differing(entropy) > len(minmax) // 4
    assert differing(percentile) >= 3
    # The trap the module docstring describes: 128 bins searched over 128 quantized bins
    # (onnxruntime's entropy default) has one candidate threshold, the full range.
    degenerate = _ranges(project, method="entropy", num_bins=128, num_quantized_bins=128)
    assert differing(degenerate) == 0


def test_entropy_thresholds_of_the_real_model_equal_onnxruntimes(project, tmp_path):
    """Our entropy search against onnxruntime's own, on the exported model's real activations."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    from aider_edge.export.entropy import entropy_threshold

    calibrator = create_calibrator(
        project / "export" / "model.onnx",
        None,
        augmented_model_path=str(tmp_path / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": 2048, "num_quantized_bins": 128},
    )
    calibrator.collect_data(int8.ArrayReader("input", _train_inputs(project), 8))
    collector = calibrator.collector
    histograms = sorted(collector.histogram_dict.items())
    for name, histogram in histograms[:: max(1, len(histograms) // 8)]:  # 8 of ~140 (0.7 s each)
        assert entropy_threshold(histogram, 128) == collector.get_entropy_threshold(
            histogram, 128
        ), name


def test_preprocessing_in_graph_takes_uint8_frames(project, classifier, test_images, tmp_path):
    root = copy_project(project, tmp_path / "nhwc")
    params = project_params(
        root, export={"preprocessing_in_graph": True, "calibration": {"images": 16}}
    )
    report = run_export(params, root)
    assert report["layout"] == "NHWC_uint8" and report["pool_rewrite"]["applied"]
    frames = np.ascontiguousarray(test_images)
    for name in ("model.onnx", "model.int8.onnx"):
        model = onnx.load(str(root / "export" / name))
        (inp,) = model.graph.input
        assert inp.type.tensor_type.elem_type == TensorProto.UINT8
        assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1:] == [32, 32, 3]
        assert onnx_export.metadata(model)["layout"] == "NHWC_uint8"
    got = session(root / "export" / "model.onnx").run(None, {"input": frames})[0]
    np.testing.assert_allclose(got, torch_logits(classifier, frames), atol=1e-4, rtol=1e-3)
    int8_logits = session(root / "export" / "model.int8.onnx").run(None, {"input": frames})[0]
    assert int8_logits.shape == (len(frames), K) and np.isfinite(int8_logits).all()


def test_export_before_select_is_one_line_naming_the_fix(tmp_path):
    with pytest.raises(
        SelectionError, match=r"selection/selected\.json not found: run `dvc repro select`"
    ):
        run_export(small_params(), tmp_path)


def test_a_checkpoint_of_other_classes_is_refused(project):
    params = small_params(data={"classes": ["a", "b"], "source": "folder"})
    with pytest.raises(AiderEdgeError, match=r"trained on classes .* but data\.classes is"):
        load_classifier(params, project / read_selected(project)["checkpoint"])


def test_without_int8_only_fp32_is_written_and_a_stale_int8_model_goes(project, tmp_path):
    root = copy_project(project, tmp_path / "fp32-only")
    assert (root / "export" / "model.int8.onnx").is_file()  # from the int8 export before
    report = run_export(project_params(root, export={"int8": False}), root)
    assert "int8" not in report and report["fp32"]["file"] == "model.onnx"
    assert (root / "export" / "model.onnx").is_file()
    assert not (root / "export" / "model.int8.onnx").exists()
    assert json.loads((root / "export" / "export.json").read_text()) == report

"""TorchScript and ONNX exports of every architecture: one self-contained ONNX file that takes the raw
input (uint8 pixels, or a waveform) and answers like PyTorch, on the samples it was checked on and on
others; a file that does not answer alike is refused with the reason."""

import copy
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ml import ARCHITECTURES, build_audio_model, build_model
from ml import export as export_module
from ml.export import ONNX, TORCHSCRIPT, export_formats, onnx_parity
from tests.audio_fixtures import clip_arrays
from tests.ml.conftest import brightness_images

# torch.jit is deprecated (in favour of torch.export, which has no runtime outside Python); TorchScript
# is still what libtorch loads.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

RATE = 16_000
# Small widths: the exporters' time is mostly fixed cost, but no test needs the full networks.
SMALL = {"seed_cnn": {}, "resnet": {"base_filters": 4}, "seed_lstm": {"hidden": 8},
         "cnn_mel": {"base_filters": 4}, "crnn": {"base_filters": 4, "hidden": 8}}


def test_every_architecture_is_covered():
    assert set(SMALL) == set(ARCHITECTURES)


def labelled_samples(arch: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """What the exported files take: uint8 N×C×H×W images, or float32 N×L waves in [-1, 1]; and labels."""
    if ARCHITECTURES[arch].modality == "image":
        x, y = brightness_images(n, size=(16, 16), seed=seed)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y
    x, y = clip_arrays(n, seed=seed)
    return x.astype(np.float32) / 32768.0, y


def raw_samples(arch: str, n: int, seed: int) -> np.ndarray:
    return labelled_samples(arch, n, seed)[0]


def small_model(arch: str) -> torch.nn.Module:
    """`arch` at a small width, fitted for a few steps (batch-norm statistics included) so that its
    answers depend on the input and the comparison with an export means something."""
    torch.manual_seed(0)
    if ARCHITECTURES[arch].modality == "image":
        model = build_model(arch, num_classes=3, in_channels=3, height=16, width=16, mean=[110.0, 90.0, 50.0],
                            std=[60.0, 50.0, 30.0], **SMALL[arch])
    else:
        rows = 20 if arch == "seed_lstm" else 40
        model = build_audio_model(arch, num_classes=3, sample_rate=RATE, clip_samples=RATE, mean=[-8.0] * rows,
                                  std=[4.0] * rows, **SMALL[arch])
    x, y = (torch.from_numpy(a) for a in labelled_samples(arch, 24, seed=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(15):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def probabilities(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()


@pytest.fixture(scope="module", params=list(SMALL))
def exported(request, tmp_path_factory):
    arch = request.param
    model = small_model(arch)
    directory = tmp_path_factory.mktemp(f"export-{arch}")
    exports = export_formats(model, raw_samples(arch, 8, seed=1), directory)
    return arch, model, directory, exports


def test_both_formats_are_written_and_pass_their_check(exported):
    arch, _, directory, exports = exported

    assert exports["torchscript"]["ok"], exports["torchscript"]
    assert exports["onnx"]["ok"], exports["onnx"]
    for key, name in (("torchscript", TORCHSCRIPT), ("onnx", ONNX)):
        entry = exports[key]
        assert entry["file"] == name and entry["bytes"] == (directory / name).stat().st_size > 0
        assert entry["seconds"] >= 0
        parity = entry["parity"]
        assert (parity["samples"], parity["top1_agree"], parity["passed"]) == (8, 8, True)
        assert 0 <= parity["max_abs_diff"] <= parity["tolerance"] == 1e-4
    modality = ARCHITECTURES[arch].modality
    assert exports["onnx"]["input"] == ("pixels" if modality == "image" else "waveform")
    assert exports["onnx"]["output"] == "probabilities" and exports["onnx"]["opset"] >= 17
    # One file each: the weights are inside the graph, no side .data file a browser could not follow.
    assert sorted(p.name for p in directory.iterdir()) == sorted([ONNX, TORCHSCRIPT])


def test_the_onnx_graph_takes_the_raw_input_with_a_free_batch_size(exported):
    arch, _, directory, _ = exported
    graph = onnx.load(str(directory / ONNX)).graph

    assert not [t.name for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    (inp,), (out,) = graph.input, graph.output
    shape = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    if ARCHITECTURES[arch].modality == "image":
        assert (inp.name, inp.type.tensor_type.elem_type) == ("pixels", onnx.TensorProto.UINT8)
        assert shape[1:] == [3, 16, 16]
    else:
        assert (inp.name, inp.type.tensor_type.elem_type) == ("waveform", onnx.TensorProto.FLOAT)
        assert shape[1:] == [RATE]
    assert isinstance(shape[0], str)  # a named, dynamic batch dimension
    assert out.name == "probabilities" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_answers_like_pytorch_on_inputs_the_check_never_saw(exported, batch):
    arch, model, directory, _ = exported
    x = raw_samples(arch, batch, seed=7)
    session = ort.InferenceSession(str(directory / ONNX), providers=["CPUExecutionProvider"])

    got = session.run(None, {session.get_inputs()[0].name: x})[0]

    expected = probabilities(model, x)
    assert got.shape == (batch, 3)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert (got.argmax(1) == expected.argmax(1)).all()
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)  # probabilities, not logits
    assert np.abs(expected - 1 / 3).max() > 0.05  # a meaningful comparison: far from uniform


def test_torchscript_loads_without_perceptor_and_answers_alike(exported):
    arch, model, directory, _ = exported
    x = raw_samples(arch, 5, seed=9)
    loaded = torch.jit.load(str(directory / TORCHSCRIPT))

    with torch.inference_mode():
        got = loaded(torch.from_numpy(x)).numpy()

    np.testing.assert_allclose(got, probabilities(model, x), atol=1e-5, rtol=0)


def test_exporting_leaves_the_trained_model_untouched():
    # resnet's global max pool is swapped for an exportable one in a copy, not in the model.
    model = small_model("resnet")
    before = copy.deepcopy(model.state_dict())
    export_module.exportable(model)

    assert isinstance(model.body[-4], torch.nn.AdaptiveMaxPool2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_exporting_keeps_the_worker_log_clean(tmp_path, caplog, recwarn):
    caplog.set_level(logging.INFO)  # as the worker's root logger is
    export_formats(small_model("seed_cnn"), raw_samples("seed_cnn", 4, seed=1), tmp_path)

    assert [r.getMessage() for r in caplog.records] == []
    assert [str(w.message) for w in recwarn] == []


def test_a_graph_that_answers_differently_is_not_offered(tmp_path, monkeypatch):
    model = small_model("seed_cnn")
    real_export = export_module.export_onnx

    def export_a_changed_model(model, path, example):
        changed = copy.deepcopy(model)
        with torch.no_grad():
            changed.body[-1].bias += torch.tensor([0.0, 0.0, 5.0])  # class 2 wins everywhere
        return real_export(changed, path, example)

    monkeypatch.setattr(export_module, "export_onnx", export_a_changed_model)
    exports = export_formats(model, raw_samples("seed_cnn", 8, seed=1), tmp_path)

    onnx_entry = exports["onnx"]
    assert onnx_entry["ok"] is False
    assert onnx_entry["parity"]["passed"] is False and onnx_entry["parity"]["max_abs_diff"] > 1e-4
    assert onnx_entry["reason"].startswith("The ONNX file does not answer like the PyTorch model: top-1 agrees on ")
    assert "(the limit is 1e-04)" in onnx_entry["reason"]
    assert not (tmp_path / ONNX).exists()
    assert exports["torchscript"]["ok"] and (tmp_path / TORCHSCRIPT).exists()  # the other format stands


def test_parity_fails_on_any_difference_beyond_the_tolerance(tmp_path):
    model = small_model("seed_cnn")
    x = raw_samples("seed_cnn", 8, seed=1)
    export_formats(model, x, tmp_path)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.body[-1].bias += 1e-3  # the same for every class: softmax ignores it
        changed.body[-1].bias[0] += 1e-3  # this one moves the probabilities by ~1e-4

    strict = onnx_parity(changed, tmp_path / ONNX, x, tolerance=1e-6)
    assert strict["passed"] is False and strict["top1_agree"] == 8 and strict["max_abs_diff"] > 1e-6
    assert onnx_parity(model, tmp_path / ONNX, x, tolerance=1e-6)["passed"] is True


def test_an_export_that_fails_is_recorded_with_the_reason(tmp_path, monkeypatch):
    def no_translation(*args, **kwargs):
        raise RuntimeError("No ONNX function found for aten.something\nlong stack trace")

    monkeypatch.setattr(torch.onnx, "export", no_translation)
    directory = tmp_path / "model"
    directory.mkdir()
    exports = export_formats(small_model("seed_cnn"), raw_samples("seed_cnn", 4, seed=1), directory)

    assert exports["onnx"] == {
        "ok": False, "reason": "The ONNX export failed: RuntimeError: No ONNX function found for aten.something"}
    assert sorted(p.name for p in directory.iterdir()) == [TORCHSCRIPT]  # no half-written graph left


def test_there_must_be_samples_to_check_on(tmp_path):
    with pytest.raises(ValueError, match="no samples"):
        export_formats(small_model("seed_cnn"), np.zeros((0, 3, 16, 16), np.uint8), tmp_path)

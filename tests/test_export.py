"""ONNX export follows the model contract for every kind of model, and checks itself."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from skinscreen.core.card import ModelCard, file_sha256, latest_version, publish, read_card
from skinscreen.trainer.export import ExportError, export_onnx, reexport
from skinscreen.trainer.model import (
    ModelSpec,
    SamePadConv2d,
    ScreeningEnsemble,
    build_model,
    save_checkpoint,
    static_padding,
)
from tests.conftest import REPO


def _ensemble(
    use_clinical: bool, members: int = 2, target: str = "diagnosis", test_time_views: int = 1
) -> ScreeningEnsemble:
    torch.manual_seed(0)
    spec = ModelSpec(
        backbone="simple-cnn",
        image_size=48,
        use_clinical=use_clinical,
        target=target,
        test_time_views=test_time_views,
    )
    return ScreeningEnsemble(
        [build_model(spec, pretrained=False).eval() for _ in range(members)], shared_trunk=False
    ).eval()


def _inputs(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8)
    clinical = np.zeros((n, 22), dtype=np.float32)
    clinical[:, 0] = rng.integers(20, 90, n)
    clinical[np.arange(n), 1 + rng.integers(0, 15, n)] = 1
    return images, clinical


@pytest.mark.parametrize(
    ("use_clinical", "target", "test_time_views", "outputs"),
    [
        (True, "diagnosis", 1, [("cancer_probability", (7,)), ("diagnosis_probabilities", (7, 6))]),
        (True, "diagnosis", 8, [("cancer_probability", (7,)), ("diagnosis_probabilities", (7, 6))]),
        (
            False,
            "diagnosis",
            4,
            [("cancer_probability", (7,)), ("diagnosis_probabilities", (7, 6))],
        ),
        (True, "cancer", 2, [("cancer_probability", (7,))]),
    ],
)
def test_export_keeps_the_contract_and_matches_pytorch(
    tmp_path: Path,
    use_clinical: bool,
    target: str,
    test_time_views: int,
    outputs: list[tuple[str, tuple[int, ...]]],
) -> None:
    model = _ensemble(use_clinical, target=target, test_time_views=test_time_views)
    images, clinical = _inputs(4)
    difference = export_onnx(model, tmp_path / "model.onnx", images, clinical)
    assert difference <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "clinical"]
    assert [o.name for o in session.get_outputs()] == [name for name, _ in outputs]
    # The declared signature: batch dynamic, six diagnoses (also with test-time views).
    assert [o.shape[1:] for o in session.get_outputs()] == [list(shape[1:]) for _, shape in outputs]
    assert all(isinstance(o.shape[0], str) for o in session.get_outputs())
    # A batch size never seen at export time.
    more_images, more_clinical = _inputs(7)
    served = session.run(None, {"image": more_images, "clinical": more_clinical})
    with torch.inference_mode():
        expected = model(torch.from_numpy(more_images), torch.from_numpy(more_clinical))
    assert [value.shape for value in served] == [shape for _, shape in outputs]
    for value, reference in zip(served, expected, strict=True):
        np.testing.assert_allclose(value, reference.numpy(), atol=1e-5)
    if target == "diagnosis":
        cancer, diagnoses = served
        # DIAGNOSES order ACK, BCC, MEL, NEV, SCC, SEK: cancer = BCC + MEL + SCC.
        np.testing.assert_allclose(cancer, diagnoses[:, [1, 2, 4]].sum(axis=1), atol=1e-6)
        np.testing.assert_allclose(diagnoses.sum(axis=1), 1.0, atol=1e-6)


def test_export_refuses_inputs_off_the_contract(tmp_path: Path) -> None:
    images, clinical = _inputs(2)
    with pytest.raises(ExportError, match=r"parity images must be uint8 \[N, 48, 48, 3\]"):
        export_onnx(_ensemble(True), tmp_path / "m.onnx", images.astype(np.float32), clinical)
    with pytest.raises(ExportError, match=r"parity clinical must be \[N, 22\]"):
        export_onnx(_ensemble(True), tmp_path / "m.onnx", images, clinical[:, :21])


def test_same_padding_is_folded_into_the_convolutions(tmp_path: Path) -> None:
    """TF "SAME" padding, fixed to the contract's input size, is each convolution's own
    `pads` (asymmetric where stride 2 meets an even size): no `Pad` node, and no shape
    arithmetic for it, so ONNX Runtime keeps its convolution chain. The model itself is
    left computing its padding from the input, as training needs."""
    torch.manual_seed(0)
    spec = ModelSpec(backbone="efficientnet-lite0", image_size=64, test_time_views=2)
    model = ScreeningEnsemble(
        [build_model(spec, pretrained=False).eval() for _ in range(2)], shared_trunk=True
    ).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    clinical = _inputs(3)[1]
    assert export_onnx(model, tmp_path / "model.onnx", images, clinical) <= 1e-4

    nodes = onnx.load(str(tmp_path / "model.onnx")).graph.node
    ops = Counter(node.op_type for node in nodes)
    assert ops["Pad"] == 0
    assert ops["ConstantOfShape"] <= 1  # was one per convolution
    pads = [
        list(attribute.ints)
        for node in nodes
        if node.op_type == "Conv"
        for attribute in node.attribute
        if attribute.name == "pads"
    ]
    # The stem and the first block of each stride-2 stage: (top, left, bottom, right).
    assert pads.count([0, 0, 1, 1]) + pads.count([1, 1, 2, 2]) == 5
    assert all(
        layer.fixed_input_size is None
        for layer in model.modules()
        if isinstance(layer, SamePadConv2d)
    )
    with torch.inference_mode():  # another size still works after the export
        other = rng.integers(0, 256, (1, 72, 72, 3), dtype=np.uint8)
        model(torch.from_numpy(other), torch.from_numpy(clinical[:1]))


def test_fixed_padding_refuses_another_input_size() -> None:
    layer = SamePadConv2d(3, 4, 3, 2)
    with static_padding(layer, lambda: layer(torch.zeros(1, 3, 8, 8))) as fixed:
        assert fixed == 1
        assert layer.fixed_input_size == (8, 8)
        with pytest.raises(ValueError, match=r"fixed for \[8, 8\]"):
            layer(torch.zeros(1, 3, 10, 10))
    assert layer.fixed_input_size is None


def test_reexport_derives_a_new_version_with_the_same_outputs(tmp_path: Path) -> None:
    """A published version's checkpoint exported again: same outputs, the card the old one's
    with a new version, time and sha256 and `derived_from`; another model's checkpoint is
    refused."""
    torch.manual_seed(0)
    spec = ModelSpec(backbone="efficientnet-lite0", image_size=64)
    model = ScreeningEnsemble([build_model(spec, pretrained=False).eval()], shared_trunk=True)
    save_checkpoint(model, tmp_path / "checkpoint.pt")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    clinical = _inputs(4)[1]
    export_onnx(model, tmp_path / "old.onnx", images, clinical)
    shipped = read_card(latest_version(REPO / "models", "skinscreen-fusion"))
    old_card = ModelCard.model_validate(
        {
            **shipped.model_dump(exclude={"derived_from"}),
            "version": "20260101.000000",
            "input_size": 64,
            "sha256": file_sha256(tmp_path / "old.onnx"),
        }
    )
    published = publish(tmp_path / "store", tmp_path / "old.onnx", old_card)

    created = datetime(2026, 1, 2, tzinfo=UTC)
    new = tmp_path / "new.onnx"
    card = reexport(tmp_path / "checkpoint.pt", published, images, clinical, new, "leaner", created)
    assert card.version == "20260102.000000"
    assert card.created_at == created
    # (the same exporter both times, so here the same bytes)
    assert card.sha256 == file_sha256(new)
    assert card.derived_from is not None
    assert card.derived_from.version == old_card.version
    assert card.derived_from.sha256 == old_card.sha256
    assert card.derived_from.max_difference <= 1e-5
    assert card.derived_from.photos == 4
    assert card.model_dump(exclude={"version", "created_at", "sha256", "derived_from"}) == (
        old_card.model_dump(exclude={"version", "created_at", "sha256", "derived_from"})
    )
    publish(tmp_path / "store", tmp_path / "new.onnx", card)

    torch.manual_seed(1)
    other = ScreeningEnsemble([build_model(spec, pretrained=False).eval()], shared_trunk=True)
    save_checkpoint(other, tmp_path / "other.pt")
    with pytest.raises(ExportError, match=r"differs from 20260101\.000000"):
        reexport(tmp_path / "other.pt", published, images, clinical, tmp_path / "x.onnx", "x")

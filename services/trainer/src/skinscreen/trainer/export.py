"""ONNX export that checks itself before anything is published.

The graph follows the model contract: `image` uint8 [N, S, S, 3] and
`clinical` float32 [N, 22] in, `cancer_probability` float32 [N] out, and for
a model that learns the diagnoses `diagnosis_probabilities` float32 [N, 6]
(the order of DIAGNOSES) as the second output; batch size dynamic. An
image-only model of its own kind (the dermoscopy network) takes `image` alone.
Every export must pass `onnx.checker` and agree with PyTorch on real inputs to
1e-4, or export fails.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import onnx
import onnxruntime as ort
import torch

from skinscreen.core.card import (
    CANCER_OUTPUT,
    DIAGNOSIS_OUTPUT,
    Derivation,
    ModelCard,
    file_sha256,
    verified_model,
)
from skinscreen.core.clinical import N_CLINICAL
from skinscreen.core.pad_ufes import DIAGNOSES
from skinscreen.trainer.model import ScreeningEnsemble, load_checkpoint, static_padding

OPSET: Final = 17
PARITY_TOLERANCE: Final = 1e-4
INPUT_NAMES: Final = ("image", "clinical")


PARITY_ROWS: Final = 8


def parity_rows(n_photos: int) -> np.ndarray:
    """Which photos check an export: up to PARITY_ROWS spread over the data set."""
    return np.linspace(0, n_photos - 1, min(PARITY_ROWS, n_photos)).astype(int)


class ExportError(RuntimeError):
    """The exported graph failed a check; nothing was published."""


def trace_to_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> None:
    """Export with a dynamic batch dimension (the first) on every input and output.

    The TorchScript exporter is used: it handles this graph in one pass without
    extra dependencies. Spatial sizes are fixed by the model contract, so TF "SAME"
    padding is fixed to them for the trace (`static_padding`): it becomes the
    convolutions' own `pads`, with a constant `Pad` left only where "SAME" is
    asymmetric, and no shape arithmetic; constants are folded. The parity check
    below is what proves the graph right.
    """
    dynamic = {name: {0: "batch"} for name in (*input_names, *output_names)}
    with (
        static_padding(module, lambda: module(*example)),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _declare_contract_signature(path: Path) -> None:
    """Make the graph's signature the contract's, in one pass over the file.

    - Keep every contract input, even one the model ignores: the exporter drops inputs no
      node reads, so an image-only model would lose `clinical`, and every client would need
      to know which kind it talks to. An unread graph input is valid ONNX; ONNX Runtime
      accepts and ignores it.
    - Declare `diagnosis_probabilities` as [batch, 6]: averaging over test-time views
      reshapes the batch, and the exporter then names the class axis symbolically; a
      client reading the graph's signature should see the six.
    """
    graph = onnx.load(str(path))
    if "clinical" not in {value.name for value in graph.graph.input}:
        graph.graph.input.append(
            onnx.helper.make_tensor_value_info(
                "clinical", onnx.TensorProto.FLOAT, ["batch", N_CLINICAL]
            )
        )
    for output in graph.graph.output:
        if output.name == DIAGNOSIS_OUTPUT:
            dims = output.type.tensor_type.shape.dim
            dims[0].dim_param = "batch"
            dims[1].Clear()
            dims[1].dim_value = len(DIAGNOSES)
    onnx.save(graph, str(path))


def export_onnx(
    model: ScreeningEnsemble, path: Path, images: np.ndarray, clinical: np.ndarray
) -> float:
    """Write `model` as ONNX to `path`, verify it, and return the max |ONNX - PyTorch|.

    `images` (uint8 [N, S, S, 3]) and `clinical` (float32 [N, 22]) are real
    inputs for the parity check; use a few, with N >= 2, so that a batch
    dimension frozen to 1 by mistake shows.
    """
    _check_parity_images(images, model.spec.image_size)
    if clinical.shape != (len(images), N_CLINICAL):
        raise ExportError(f"parity clinical must be [N, {N_CLINICAL}], got {list(clinical.shape)}")
    model = model.eval().cpu()
    example = (torch.from_numpy(images[:2]), torch.from_numpy(clinical[:2]))
    trace_to_onnx(model, example, path, INPUT_NAMES, model.output_names)
    _declare_contract_signature(path)
    with torch.inference_mode():
        outputs = model(torch.from_numpy(images), torch.from_numpy(clinical))
    references: dict[str, np.ndarray] = {
        name: value.numpy() for name, value in zip(model.output_names, outputs, strict=True)
    }
    return _verify(path, {"image": images, "clinical": clinical}, references)


def export_image_only_onnx(
    model: torch.nn.Module, path: Path, images: np.ndarray, image_size: int
) -> float:
    """Export a model that reads the photo alone: input `image` only, no `clinical`.

    `model(image)` must give the cancer probability [N]; the graph, the
    checks and the returned parity are those of `export_onnx`. A model card
    declares such a model with `inputs=("image",)`.
    """
    _check_parity_images(images, image_size)
    model = model.eval().cpu()
    trace_to_onnx(model, (torch.from_numpy(images[:2]),), path, ["image"], [CANCER_OUTPUT])
    with torch.inference_mode():
        reference = model(torch.from_numpy(images)).numpy()
    return _verify(path, {"image": images}, {CANCER_OUTPUT: reference})


def _check_parity_images(images: np.ndarray, size: int) -> None:
    if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
        raise ExportError(
            f"parity images must be uint8 [N, {size}, {size}, 3], got "
            f"{images.dtype} {list(images.shape)}"
        )


def _verify(path: Path, feeds: dict[str, np.ndarray], references: dict[str, np.ndarray]) -> float:
    """`onnx.checker`, then ONNX Runtime against PyTorch's `references` on the same `feeds`.

    The graph's outputs must be exactly the referenced ones, in the contract's order
    (cancer_probability first), with the contract's shapes.
    """
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    if names != list(references):
        raise ExportError(f"ONNX outputs are {names}, expected {list(references)}")
    rows = len(feeds["image"])
    expected_shapes = {CANCER_OUTPUT: (rows,), DIAGNOSIS_OUTPUT: (rows, len(DIAGNOSES))}
    difference = 0.0
    for name, served in zip(names, session.run(names, feeds), strict=True):
        if served.shape != expected_shapes[name]:
            raise ExportError(
                f"ONNX output {name} has shape {list(served.shape)}, expected "
                f"{list(expected_shapes[name])}"
            )
        difference = max(difference, float(np.abs(served - references[name]).max()))
    if difference > PARITY_TOLERANCE:
        raise ExportError(
            f"ONNX Runtime and PyTorch differ by {difference:.2e} "
            f"(allowed {PARITY_TOLERANCE:.0e}); the export is not faithful"
        )
    return difference


REEXPORT_PHOTOS: Final = 64
REEXPORT_TOLERANCE: Final = 1e-5


def reexport(
    checkpoint: Path,
    published: Path,
    images: np.ndarray,
    clinical: np.ndarray,
    output: Path,
    reason: str,
    created: datetime | None = None,
) -> ModelCard:
    """Export a published version's checkpoint again, as a new version of the same name.

    Nothing is retrained: the weights are the checkpoint's, the card the published one's
    but for version, created_at, sha256 and `derived_from`. Beside the export's own parity
    check against PyTorch, the new graph must give the published graph's outputs to
    REEXPORT_TOLERANCE on `images` and `clinical` (real photos, preprocessed as served),
    or nothing is written but `output`. Returns the new card; `publish` it with `output`.
    """
    old_path, old_card = verified_model(published)
    model, _ = load_checkpoint(checkpoint)
    if model.spec.image_size != old_card.input_size or model.output_names != old_card.outputs:
        raise ExportError(
            f"{checkpoint} is not the checkpoint of {old_card.name} {old_card.version}: "
            f"input size {model.spec.image_size}, outputs {list(model.output_names)}"
        )
    rows = parity_rows(len(images))
    export_onnx(model, output, images[rows], clinical[rows])
    feeds = {"image": images, "clinical": clinical}
    old = ort.InferenceSession(str(old_path), providers=["CPUExecutionProvider"])
    new = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    difference = max(
        float(np.abs(a - b).max())
        for a, b in zip(old.run(None, feeds), new.run(None, feeds), strict=True)
    )
    if difference > REEXPORT_TOLERANCE:
        raise ExportError(
            f"the re-export differs from {old_card.version} by {difference:.2e} "
            f"(allowed {REEXPORT_TOLERANCE:.0e}); not published"
        )
    created = created or datetime.now(UTC)
    return ModelCard.model_validate(
        {
            **old_card.model_dump(),
            "version": created.strftime("%Y%m%d.%H%M%S"),
            "created_at": created,
            "sha256": file_sha256(output),
            "derived_from": Derivation(
                version=old_card.version,
                sha256=old_card.sha256,
                reason=reason,
                max_difference=difference,
                photos=len(images),
            ),
        }
    )

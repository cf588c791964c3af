"""The dermoscopy paper's image-only network, whole: the network, its training, its checkpoint.

Reads top to bottom: `NetworkSpec` and `DermoscopyNetwork` (uint8 150x150x3
photo in; blocks of 3x3 convolution + ReLU + 2x2 max pooling, 32 filters
first; flatten; a 64-unit dense layer; one sigmoid output), then its training
(Adam with a cosine decay, rotation/shift/zoom augmentation, class-balanced
epochs), prediction, and a checkpoint that describes itself. Unlike `model.SimpleCNN`, which pools
globally to serve as a fusion backbone at any size, this is the paper's
network as published: its dense layer sees the flattened maps.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm

from skinscreen.trainer.augment import AugmentSpec, augment

log = logging.getLogger(__name__)

# Filters of the blocks, in order; a network of k blocks has the first k.
PAPER_FILTERS: Final = (32, 32, 64)
DENSE_UNITS: Final = 64
# The paper's augmentation: rotation, shift and zoom (`augment` adds flips, which a
# dermoscopy image has no reason to mind); no colour jitter.
PAPER_AUGMENTATION: Final = AugmentSpec(
    max_rotation_degrees=180.0,
    scale_range=(0.9, 1.1),
    max_shift=0.1,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
)
PREDICT_BATCH: Final = 128


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild the network; stored with the weights."""

    blocks: int = 3
    image_size: int = 150

    def __post_init__(self) -> None:
        if not 1 <= self.blocks <= len(PAPER_FILTERS):
            raise ValueError(f"blocks must be 1 to {len(PAPER_FILTERS)}, got {self.blocks}")
        if self.map_side < 1:
            raise ValueError(
                f"image_size {self.image_size} is too small for {self.blocks} blocks "
                "(nothing is left to flatten)"
            )

    @property
    def filters(self) -> tuple[int, ...]:
        return PAPER_FILTERS[: self.blocks]

    @property
    def map_side(self) -> int:
        """Side of the last feature map: each block's unpadded 3x3 convolution, then halving."""
        side = self.image_size
        for _ in range(self.blocks):
            side = (side - 2) // 2
        return side

    @property
    def flat_features(self) -> int:
        """What the dense layer sees: the last block's maps, flattened."""
        return self.filters[-1] * self.map_side**2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DermoscopyNetwork(nn.Module):
    """The served graph: uint8 [N, S, S, 3] photo -> probability of malignancy [N].

    The pixels are standardised inside, with per-channel statistics fitted on
    the training photos (buffers: they travel with the weights into ONNX).
    Without batch norm, the network learns much faster on centred inputs than
    on the [0, 1] pixels of the paper's Keras recipe.
    """

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels in spec.filters:
            layers += [nn.Conv2d(in_channels, out_channels, 3), nn.ReLU(), nn.MaxPool2d(2)]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(spec.flat_features, DENSE_UNITS),
            nn.ReLU(),
            nn.Linear(DENSE_UNITS, 1),
        )
        self.pixel_mean: torch.Tensor
        self.pixel_std: torch.Tensor
        self.register_buffer("pixel_mean", torch.zeros(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.ones(1, 3, 1, 1))

    def set_pixel_statistics(self, images: torch.Tensor) -> None:
        """Fit the per-channel standardisation on training photos, uint8 [N, S, S, 3]."""
        total = torch.zeros(3, dtype=torch.float64)
        squares = torch.zeros(3, dtype=torch.float64)
        for start in range(0, len(images), PREDICT_BATCH):
            chunk = images[start : start + PREDICT_BATCH].to(torch.float64).reshape(-1, 3)
            total += chunk.sum(dim=0)
            squares += (chunk**2).sum(dim=0)
        count = len(images) * images.shape[1] * images.shape[2]
        mean = total / count
        std = (squares / count - mean**2).clamp_min(1.0).sqrt()
        self.pixel_mean.copy_(mean.view(1, 3, 1, 1))
        self.pixel_std.copy_(std.view(1, 3, 1, 1))

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        # NHWC -> NCHW by a permute: the result is laid out channels-last, the faster
        # layout for convolutions on CPU.
        x = (image.permute(0, 3, 1, 2).to(torch.float32) - self.pixel_mean) / self.pixel_std
        return self.classifier(self.features(x)).squeeze(1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(image))


# --------------------------------------------------------------------------- #
# Training.
# --------------------------------------------------------------------------- #


def balanced_epoch(labels: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One epoch's rows: every malignant row and as many benign ones, drawn afresh, shuffled.

    HAM10000 is four-fifths benign. Drawing the benign half anew each epoch
    balances the classes without a weighted loss, and costs 40 % of an epoch
    over every photo: on CPU, the epochs are the budget.
    """
    malignant = rows[labels[rows] == 1]
    benign = rows[labels[rows] == 0]
    drawn = rng.choice(benign, size=min(len(malignant), len(benign)), replace=False)
    epoch = np.concatenate([malignant, drawn])
    rng.shuffle(epoch)
    return epoch


@dataclass
class FitResult:
    model: DermoscopyNetwork
    # The epoch kept (1-based): the best on the validation rows, else the last.
    epoch: int
    validation_auc: list[float] = field(default_factory=list)


def fit_network(
    spec: NetworkSpec,
    images: torch.Tensor,
    labels: np.ndarray,
    train: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    device: torch.device,
    desc: str,
    validation: np.ndarray | None = None,
    on_epoch: Callable[[str, int, int], None] | None = None,
) -> FitResult:
    """Train a fresh network on the rows `train` of `images` (uint8 [N, S, S, 3]).

    With `validation` rows, the weights of the epoch with the best validation
    ROC AUC are kept (the paper's use of its 20 % validation split);
    without, those of the last epoch. `on_epoch(desc, epoch, epochs)` is called after
    each epoch (the trainer worker's progress and cancellation).
    """
    torch.manual_seed(seed)
    model = DermoscopyNetwork(spec)
    model.set_pixel_statistics(images[torch.from_numpy(train)])
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    # The paper's Adam, decayed to zero over the run: with the few epochs a CPU
    # affords, the last low-rate epochs are where the network settles.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    targets = torch.from_numpy(labels).to(torch.float32)
    result = FitResult(model, epochs)
    best_state: dict[str, torch.Tensor] | None = None
    for epoch in tqdm(range(1, epochs + 1), desc=desc, unit="epoch", leave=False):
        model.train()
        rows = torch.from_numpy(balanced_epoch(labels, train, rng))
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            pixels = augment(images[batch], generator, PAPER_AUGMENTATION).to(device)
            loss = F.binary_cross_entropy_with_logits(
                model.logits(pixels), targets[batch].to(device)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        if on_epoch is not None:
            on_epoch(desc, epoch, epochs)
        if validation is None:
            continue
        auc = float(roc_auc_score(labels[validation], predict(model, images, validation, device)))
        result.validation_auc.append(auc)
        log.info("%s epoch %d/%d: validation ROC AUC %.3f", desc, epoch, epochs, auc)
        if auc >= max(result.validation_auc):
            result.epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval().cpu()
    return result


def predict(
    model: DermoscopyNetwork, images: torch.Tensor, rows: np.ndarray, device: torch.device
) -> np.ndarray:
    """Probability of malignancy of the rows `rows`, on the photos as they are."""
    index = torch.from_numpy(rows)
    outputs = []
    model.to(device).eval()
    with torch.inference_mode():
        for start in range(0, len(index), PREDICT_BATCH):
            pixels = images[index[start : start + PREDICT_BATCH]].to(device)
            outputs.append(model(pixels).cpu())
    return torch.cat(outputs).numpy().astype(np.float64)


def save_checkpoint(model: DermoscopyNetwork, path: Path, extra: dict[str, Any]) -> None:
    """A checkpoint that describes itself: the spec travels with the weights."""
    torch.save({"spec": model.spec.to_dict(), "state": model.state_dict(), "extra": extra}, path)


def load_checkpoint(path: Path) -> tuple[DermoscopyNetwork, dict[str, Any]]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = DermoscopyNetwork(NetworkSpec(**payload["spec"]))
    model.load_state_dict(payload["state"])
    return model.eval(), payload["extra"]

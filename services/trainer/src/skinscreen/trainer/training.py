"""Training and patient-grouped cross-validation of the fusion model.

Three modes share one loop:
- `features` (CPU, the default): the whole ImageNet backbone is frozen and run
  once, through ONNX Runtime, on several augmented views of every photo; its
  pooled features are kept and each epoch draws one view per photo to train
  the fusion head alone. A fit takes seconds, so thresholds can be chosen by
  nested cross-validation within a `make train`.
- `cached` (CPU): as `features`, but the cached trunk maps also train the
  last 1x1 convolution; about ten times slower per fit.
- `full` (GPU): the whole network is fine-tuned on freshly augmented photos.
"""

from __future__ import annotations

import copy
import functools
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm import tqdm

from skinscreen.core.imaging import load_and_preprocess
from skinscreen.trainer.augment import augment
from skinscreen.trainer.balancing import apply_de_mutation, class_weights, plan_de_mutation
from skinscreen.trainer.config import TrainConfig
from skinscreen.trainer.export import trace_to_onnx
from skinscreen.trainer.ink import is_inked, paint_out
from skinscreen.trainer.model import (
    FusionHead,
    ScreeningEnsemble,
    ScreeningModel,
    build_model,
    symmetry_view,
)

log = logging.getLogger(__name__)

TRUNK_BATCH = 64
# Member k of an ensemble trains with seed + k * stride: far from the next fold's seed.
MEMBER_SEED_STRIDE = 1000


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA GPU")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class _Photo(Protocol):
    @property
    def image_path(self) -> Path: ...


class PhotoSet(Protocol):
    """A data set whose samples name their image files (PAD-UFES-20, HAM10000)."""

    @property
    def samples(self) -> Sequence[_Photo]: ...


class TrainingRows(Protocol):
    """What `Trainer` reads of a data set: PAD-UFES-20's `Dataset`, or an image-only one."""

    @property
    def labels(self) -> np.ndarray: ...

    @property
    def diagnosis_indices(self) -> np.ndarray: ...

    @property
    def clinical(self) -> np.ndarray: ...


def load_images(dataset: PhotoSet, size: int) -> torch.Tensor:
    """Every photo preprocessed as the served model sees it: uint8 [N, S, S, 3]."""
    arrays = [
        load_and_preprocess(sample.image_path, size)
        for sample in tqdm(dataset.samples, desc="photos", unit="img", leave=False)
    ]
    return torch.from_numpy(np.stack(arrays))


def paper_schedule(epoch: int) -> float:
    """The learning-rate factor of the paper: x1/2 then x1/5 alternately every 20 epochs."""
    factor = 1.0
    for step in range(epoch // 20):
        factor *= 0.5 if step % 2 == 0 else 0.2
    return factor


# --------------------------------------------------------------------------- #
# Where the inputs of a training step come from.
# --------------------------------------------------------------------------- #


class TrunkRunner:
    """Runs the frozen trunk (pixels -> last feature map before the top) in inference mode.

    On CPU it goes through ONNX Runtime, about twice as fast as eager PyTorch
    on two cores; on a GPU through PyTorch.
    """

    def __init__(self, model: ScreeningModel, device: torch.device) -> None:
        self.device = device
        self.trunk = _Trunk(model).eval()
        self.session: ort.InferenceSession | None = None
        if device.type == "cpu":
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "trunk.onnx"
                example = torch.zeros(
                    2, model.spec.image_size, model.spec.image_size, 3, dtype=torch.uint8
                )
                trace_to_onnx(self.trunk, (example,), path, ["image"], ["trunk"])
                options = ort.SessionOptions()
                options.intra_op_num_threads = torch.get_num_threads()
                self.session = ort.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
        else:
            self.trunk.to(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.session is not None:
            return torch.from_numpy(self.session.run(None, {"image": images.numpy()})[0])
        with torch.inference_mode():
            return self.trunk(images.to(self.device)).cpu()


class _Trunk(nn.Module):
    def __init__(self, model: ScreeningModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.backbone.trunk(self.model.pixels_to_input(image))


def cache_trunk(
    runner: TrunkRunner,
    images: torch.Tensor,
    views: int,
    generator: torch.Generator | None,
    desc: str,
) -> torch.Tensor:
    """Trunk maps of `views` augmented views (or one clean view when generator is None).

    Stored as float16 [views, N, C, h, w]: half the memory, and the trainable
    top sees no difference worth a float32 copy.
    """
    out: torch.Tensor | None = None
    batches = range(0, len(images), TRUNK_BATCH)
    with tqdm(total=views * len(batches), desc=desc, unit="batch", leave=False) as bar:
        for view in range(views):
            for start in batches:
                chunk = images[start : start + TRUNK_BATCH]
                if generator is not None:
                    chunk = augment(chunk, generator)
                maps = runner(chunk).to(torch.float16)
                if out is None:
                    out = torch.empty((views, len(images), *maps.shape[1:]), dtype=torch.float16)
                out[view, start : start + len(chunk)] = maps
                bar.update()
    assert out is not None
    return out


@dataclass
class FoldInputs:
    """The training rows of one fit: cached pooled features (features mode), cached trunk
    maps (cached mode) or photos (full mode)."""

    clinical: torch.Tensor
    targets: torch.Tensor  # class index per row: diagnosis or cancer/not, per the model's target
    trunk_views: torch.Tensor | None = None
    feature_views: torch.Tensor | None = None
    images: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.targets)


# The settings that the photos and cached trunk maps depend on; the others may change between fits.
CACHE_SETTINGS: Final = (
    "data",
    "max_samples",
    "backbone",
    "resnet_weights",
    "image_size",
    "mode",
    "views",
    "test_time_views",
    "seed",
    "device",
)


class Trainer:
    """Fits fresh models on subsets of one data set, sharing the expensive work between fits."""

    def __init__(
        self,
        config: TrainConfig,
        dataset: TrainingRows,
        images: torch.Tensor,
        progress: Callable[[str], None] = log.info,
        on_epoch: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.config = config
        self.dataset = dataset
        self.images = images
        self.clinical = torch.from_numpy(dataset.clinical)
        self.targets = self._targets(config)
        self.device = resolve_device(config.device)
        self.progress = progress
        # Called as (what is being fitted, epoch, epochs) after every epoch; the trainer
        # worker reports progress through it, and stops a cancelled run by raising.
        self.on_epoch = on_epoch
        self.template = build_model(
            config.model_spec(), pretrained=True, weights_path=config.resnet_weights
        )
        self.trunk_views: torch.Tensor | None = None
        self.clean_trunk: torch.Tensor | None = None
        self.feature_views: torch.Tensor | None = None
        self.clean_features: torch.Tensor | None = None
        self.runner: TrunkRunner | None = None
        if config.mode != "full":
            self._cache_views()

    def _targets(self, config: TrainConfig) -> torch.Tensor:
        return torch.from_numpy(
            self.dataset.diagnosis_indices if config.target == "diagnosis" else self.dataset.labels
        )

    def for_config(self, config: TrainConfig) -> Trainer:
        """A trainer for `config` that reuses this one's photos and cached trunk maps.

        Head settings (clinical share, clinical input, balancing, target, epochs, ...)
        may differ; the settings in CACHE_SETTINGS may not, since the cache depends on them.
        """
        changed = [
            name for name in CACHE_SETTINGS if getattr(config, name) != getattr(self.config, name)
        ]
        if changed:
            raise ValueError(
                f"cannot reuse the cached trunk maps: {', '.join(changed)} differ "
                f"(only settings outside {', '.join(CACHE_SETTINGS)} may change)"
            )
        other = copy.copy(self)
        other.config = config
        other.targets = self._targets(config)
        other.template = build_model(
            config.model_spec(), pretrained=True, weights_path=config.resnet_weights
        )
        return other

    def _cache_views(self) -> None:
        started = time.perf_counter()
        self.runner = TrunkRunner(self.template, self.device)
        generator = torch.Generator().manual_seed(self.config.seed)
        self.trunk_views = cache_trunk(
            self.runner, self.images, self.config.views, generator, "caching augmented views"
        )
        self.clean_trunk = self._test_time_trunk(self.images)
        if self.config.mode == "features":
            # The frozen top turns the maps into what the head reads; the maps are not needed.
            self.feature_views = self._pool(self.trunk_views)
            self.clean_features = self._pool(self.clean_trunk)
            self.trunk_views = self.clean_trunk = None
        self.progress(
            f"cached {self.config.views} augmented views of {len(self.images)} photos "
            f"in {time.perf_counter() - started:.0f} s"
        )

    @functools.cached_property
    def inked(self) -> np.ndarray:
        """bool [N]: the photos with surgical-pen ink on them."""
        return np.array([is_inked(photo) for photo in self.images.numpy()], dtype=bool)

    @functools.cached_property
    def ink_painted_out(self) -> torch.Tensor:
        """The photos with their pen ink painted out (the others as they are)."""
        painted = self.images.clone()
        for row in np.flatnonzero(self.inked):
            painted[row] = torch.from_numpy(paint_out(self.images[row].numpy()))
        return painted

    def _test_time_trunk(self, images: torch.Tensor) -> torch.Tensor:
        """What predictions see: each photo's test-time views, [views, N, C, h, w]."""
        assert self.runner is not None
        return torch.stack(
            [
                cache_trunk(
                    self.runner,
                    symmetry_view(images, index, 1, 2).contiguous(),
                    1,
                    None,
                    f"caching test-time view {index + 1}/{self.config.test_time_views}",
                )[0]
                for index in range(self.config.test_time_views)
            ]
        )

    def use_ink_painted_out(self) -> Trainer:
        """A trainer that predicts on the photos with their pen ink painted out (fitting is
        unchanged): how much a model's answers lean on the ink."""
        other = copy.copy(self)
        other.images = self.ink_painted_out
        if self.clean_trunk is not None or self.clean_features is not None:
            maps = self._test_time_trunk(self.ink_painted_out)
            if self.config.mode == "features":
                other.clean_features = self._pool(maps)
            else:
                other.clean_trunk = maps
        return other

    def _pool(self, maps: torch.Tensor) -> torch.Tensor:
        """The frozen ImageNet top on cached trunk maps [V, N, C, h, w] -> features [V, N, F]."""
        top = self.template.backbone.eval()
        pooled = torch.empty((maps.shape[0], maps.shape[1], top.feature_dim), dtype=torch.float32)
        with torch.inference_mode():
            for view in range(maps.shape[0]):
                for start in range(0, maps.shape[1], TRUNK_BATCH):
                    chunk = maps[view, start : start + TRUNK_BATCH].to(torch.float32)
                    pooled[view, start : start + len(chunk)] = top.top(chunk)
        return pooled

    def inputs(self, indices: np.ndarray, seed: int) -> FoldInputs:
        """The training rows `indices`, with DE mutants added when that balancing is chosen."""
        index = torch.from_numpy(indices)
        inputs = FoldInputs(clinical=self.clinical[index], targets=self.targets[index])
        if self.config.mode == "cached":
            assert self.trunk_views is not None
            inputs.trunk_views = self.trunk_views[:, index]
        elif self.config.mode == "features":
            assert self.feature_views is not None
            inputs.feature_views = self.feature_views[:, index]
        else:
            inputs.images = self.images[index]
        if self.config.balancing == "de-mutation":
            self._add_mutants(inputs, indices, seed)
        return inputs

    def _add_mutants(self, inputs: FoldInputs, indices: np.ndarray, seed: int) -> None:
        mutants = plan_de_mutation(inputs.targets.numpy(), np.random.default_rng(seed))
        images, clinical, targets = apply_de_mutation(
            self.images[torch.from_numpy(indices)], inputs.clinical, mutants
        )
        inputs.clinical = torch.cat([inputs.clinical, clinical])
        inputs.targets = torch.cat([inputs.targets, targets])
        if inputs.images is not None:
            inputs.images = torch.cat([inputs.images, images])
        if inputs.trunk_views is not None or inputs.feature_views is not None:
            # Mutants are new photos: their trunk maps must be computed, per fold,
            # from training photos only.
            assert self.runner is not None
            generator = torch.Generator().manual_seed(seed)
            mutant_views = cache_trunk(
                self.runner, images, self.config.views, generator, "caching DE mutants"
            )
            if inputs.trunk_views is not None:
                inputs.trunk_views = torch.cat([inputs.trunk_views, mutant_views], dim=1)
            if inputs.feature_views is not None:
                mutant_features = self._pool(mutant_views)
                inputs.feature_views = torch.cat([inputs.feature_views, mutant_features], dim=1)

    def fit(self, indices: np.ndarray, seed: int, desc: str) -> ScreeningEnsemble:
        """A fresh ensemble of `config.ensemble` members trained on the rows `indices`."""
        inputs = self.inputs(indices, seed)
        members = [
            self._fit_member(
                inputs,
                seed + MEMBER_SEED_STRIDE * member,
                f"{desc} member {member + 1}/{self.config.ensemble}",
            )
            for member in range(self.config.ensemble)
        ]
        return ScreeningEnsemble(members, shared_trunk=self.config.mode != "full")

    def _fit_member(self, inputs: FoldInputs, seed: int, desc: str) -> ScreeningModel:
        torch.manual_seed(seed)
        model = copy.deepcopy(self.template)
        # A fresh head drawn from this member's seed: the template's head was drawn
        # before any seed was set, and would make runs irreproducible.
        model.head = FusionHead(model.spec)
        model.head.set_clinical_statistics(inputs.clinical)
        trainable = self._trainable(model)
        optimizer = self._optimizer(trainable)
        scheduler = self._scheduler(optimizer)
        if self.config.balancing == "weighted":
            weights = class_weights(inputs.targets.numpy(), len(model.spec.classes)).to(self.device)
        else:
            weights = None
        loss_fn = nn.CrossEntropyLoss(weight=weights)
        model.to(self.device)
        generator = torch.Generator().manual_seed(seed)
        for epoch in tqdm(range(self.config.epochs), desc=desc, unit="epoch", leave=False):
            self._train_mode(model)
            for features, clinical, targets in self._batches(model, inputs, generator):
                loss = loss_fn(
                    model.head(features, clinical.to(self.device)), targets.to(self.device)
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            scheduler.step()
            if self.on_epoch is not None:
                self.on_epoch(desc, epoch + 1, self.config.epochs)
        model.eval().cpu()
        return model

    def _trainable(self, model: ScreeningModel) -> list[nn.Parameter]:
        for parameter in model.backbone.parameters():
            parameter.requires_grad_(self.config.mode == "full")
        if self.config.mode == "cached":
            for module in model.backbone.top_modules():
                module.requires_grad_(True)
        return [parameter for parameter in model.parameters() if parameter.requires_grad]

    def _train_mode(self, model: ScreeningModel) -> None:
        model.train()
        if self.config.mode != "full":
            # The frozen trunk keeps its ImageNet batch-norm statistics.
            model.backbone.eval()
        if self.config.mode == "cached":
            for module in model.backbone.top_modules():
                module.train()

    def _optimizer(self, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(
                parameters,
                lr=self.config.learning_rate,
                momentum=0.9,
                weight_decay=self.config.weight_decay,
            )
        return torch.optim.Adam(
            parameters, lr=self.config.learning_rate, weight_decay=self.config.weight_decay
        )

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        if self.config.schedule == "paper":
            return torch.optim.lr_scheduler.LambdaLR(optimizer, paper_schedule)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.config.epochs)

    def _batches(
        self, model: ScreeningModel, inputs: FoldInputs, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(inputs), generator=generator)
        size = self.config.batch_size
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            if len(batch) < 2:  # batch norm needs two rows
                continue
            if inputs.feature_views is not None:
                view = torch.randint(
                    0, inputs.feature_views.shape[0], (len(batch),), generator=generator
                )
                features = inputs.feature_views[view, batch].to(self.device)
            elif inputs.trunk_views is not None:
                view = torch.randint(
                    0, inputs.trunk_views.shape[0], (len(batch),), generator=generator
                )
                maps = inputs.trunk_views[view, batch].to(self.device, torch.float32)
                features = model.backbone.top(maps)
            else:
                assert inputs.images is not None
                pixels = augment(inputs.images[batch], generator).to(self.device)
                features = model.backbone(model.pixels_to_input(pixels))
            yield features, inputs.clinical[batch], inputs.targets[batch]

    def predict(self, ensemble: ScreeningEnsemble, indices: np.ndarray) -> np.ndarray:
        """Mean cancer probability of the members on the rows `indices`, on the clean photos."""
        cancer_classes = np.array(ensemble.spec.cancer_classes)
        return self.predict_classes(ensemble, indices)[:, cancer_classes].sum(axis=1)

    def predict_classes(self, ensemble: ScreeningEnsemble, indices: np.ndarray) -> np.ndarray:
        """Mean class probabilities of the members on the rows `indices`: [N, classes],
        what the served graph's diagnosis_probabilities output gives."""
        members = [member for member in ensemble.members if isinstance(member, ScreeningModel)]
        return np.mean(
            [self._map_rows(member, indices, _class_probabilities(member)) for member in members],
            axis=0,
        )

    def fused_features(self, model: ScreeningModel, indices: np.ndarray) -> np.ndarray:
        """What the classifier of `model` sees for the rows `indices` (clean photos): [N, F]."""
        return self._map_rows(model, indices, model.head.fuse)

    def _map_rows(
        self,
        model: ScreeningModel,
        indices: np.ndarray,
        head: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> np.ndarray:
        """`head(image features, clinical)` on the rows `indices`, batch by batch, averaged
        over the test-time views as the served graph averages them."""
        index = torch.from_numpy(indices)
        outputs = []
        model.to(self.device).eval()
        with torch.inference_mode():
            for start in range(0, len(index), TRUNK_BATCH):
                rows = index[start : start + TRUNK_BATCH]
                clinical = self.clinical[rows].to(self.device)
                per_view = []
                for view in range(self.config.test_time_views):
                    if self.clean_features is not None:
                        features = self.clean_features[view, rows].to(self.device)
                    elif self.clean_trunk is not None:
                        features = model.backbone.top(
                            self.clean_trunk[view, rows].to(self.device, torch.float32)
                        )
                    else:
                        pixels = symmetry_view(self.images[rows], view, 1, 2).to(self.device)
                        features = model.backbone(model.pixels_to_input(pixels))
                    per_view.append(head(features, clinical))
                outputs.append(torch.stack(per_view).mean(dim=0).cpu())
        model.cpu()
        return torch.cat(outputs).numpy()


def _class_probabilities(
    model: ScreeningModel,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def head(features: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model.head(features, clinical), dim=1)

    return head

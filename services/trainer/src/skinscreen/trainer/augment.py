"""Training-time augmentation on batches of uint8 NHWC photos, in plain torch (no torchvision).

Flips, free rotation, scale and shift in one affine resampling, then colour
jitter. A lesion has no natural up, so any angle is fair; reflection padding
avoids black corners that a model could learn as a cue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSpec:
    max_rotation_degrees: float = 180.0
    scale_range: tuple[float, float] = (0.85, 1.2)
    max_shift: float = 0.08
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def augment(
    images: torch.Tensor, generator: torch.Generator, spec: AugmentSpec = AugmentSpec()
) -> torch.Tensor:
    """Randomly transform uint8 [N, S, S, 3] photos; returns uint8 of the same shape."""
    n = images.shape[0]
    x = images.permute(0, 3, 1, 2).to(torch.float32)

    angle = _uniform(n, -spec.max_rotation_degrees, spec.max_rotation_degrees, generator)
    angle = angle * math.pi / 180.0
    scale = _uniform(n, *spec.scale_range, generator)
    flip_x = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    shift = _uniform(2 * n, -spec.max_shift, spec.max_shift, generator).view(n, 2) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip_x, -sin * flip_y, shift[:, 0]], dim=1),
            torch.stack([sin * flip_x, cos * flip_y, shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def factor(strength: float) -> torch.Tensor:
        return _uniform(n, 1 - strength, 1 + strength, generator).view(n, 1, 1, 1)

    gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = gray + (x - gray) * factor(spec.saturation)
    x = x * factor(spec.brightness)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * factor(spec.contrast)
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()

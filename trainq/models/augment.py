"""Augmentation of image batches on the training device, one random draw per sample.

kornia does the geometric and noise transforms in batch; what it does not have in this form is here by hand:
inversion of standardized images (x -> -x) and AlexNet's PCA colour noise. Test-time augmentation averages the
predicted probabilities over the image, its horizontal flip and shifted crops.
"""

from __future__ import annotations

import torch
from torch import nn

from trainq.models.registry import Registry
from trainq.models.spec import JobSpec, TtaSpec

AUGMENTATIONS = Registry("augmentation")


class RandomNegate(nn.Module):
    """Inversion for standardized data: x -> -x for a random subset of the batch."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.p
        return torch.where(flip, -x, x)


class PcaColorNoise(nn.Module):
    """Add sum_i alpha_i sqrt(lambda_i) v_i to every pixel, alpha_i ~ N(0, std^2) per sample, where (lambda_i, v_i)
    are the eigenpairs of the channel covariance of the training images (Krizhevsky et al., 2012)."""

    def __init__(self, std: float, covariance: torch.Tensor):
        super().__init__()
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        self.std = std
        self.register_buffer("basis", eigenvectors * eigenvalues.clamp_min(0).sqrt())  # columns: sqrt(l_i) v_i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(x.shape[0], x.shape[1], device=x.device, dtype=x.dtype) * self.std
        shift = alpha @ self.basis.T.to(x.dtype)  # per sample, one colour offset
        return x + shift[:, :, None, None]


def channel_covariance(split, chunk: int = 4096) -> torch.Tensor:
    """The C x C covariance of pixel values across channels over every pixel of the split's images, in float64,
    summed a chunk of images at a time (the split may be stored as uint8 and larger than its float copy)."""
    channels = split.x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64, device=split.x.device)
    outer = torch.zeros(channels, channels, dtype=torch.float64, device=split.x.device)
    count = 0
    for start in range(0, len(split), chunk):
        pixels = split.take(slice(start, start + chunk)).transpose(0, 1).reshape(channels, -1).double()
        total += pixels.sum(1)
        outer += pixels @ pixels.T
        count += pixels.shape[1]
    mean = total / count
    return ((outer - count * torch.outer(mean, mean)) / max(count - 1, 1)).float()


@AUGMENTATIONS.register("affine")
def affine(spec, data) -> nn.Module:
    import kornia.augmentation as K

    return K.RandomAffine(degrees=spec.degrees, translate=(spec.translate, spec.translate) if spec.translate else None,
                          scale=spec.scale if spec.scale != (1.0, 1.0) else None, shear=spec.shear or None, p=spec.p)


@AUGMENTATIONS.register("hflip")
def hflip(spec, data) -> nn.Module:
    import kornia.augmentation as K

    return K.RandomHorizontalFlip(p=spec.p)


@AUGMENTATIONS.register("vflip")
def vflip(spec, data) -> nn.Module:
    import kornia.augmentation as K

    return K.RandomVerticalFlip(p=spec.p)


@AUGMENTATIONS.register("invert")
def invert(spec, data) -> nn.Module:
    return RandomNegate(spec.p)


@AUGMENTATIONS.register("crop")
def crop(spec, data) -> nn.Module:
    import kornia.augmentation as K

    return K.RandomCrop(tuple(data.train.x.shape[2:]), padding=spec.padding, p=spec.p)


@AUGMENTATIONS.register("gaussian_noise")
def gaussian_noise(spec, data) -> nn.Module:
    import kornia.augmentation as K

    return K.RandomGaussianNoise(std=spec.std, p=spec.p)


@AUGMENTATIONS.register("pca_color")
def pca_color(spec, data) -> nn.Module:
    return PcaColorNoise(spec.std, channel_covariance(data.train))


def build_augmentation(spec: JobSpec, data, device=None) -> nn.Module | None:
    """The spec's augmentations in order, as one module applied to training batches; None if there are none."""
    if not spec.augmentation:
        return None
    return nn.Sequential(*(AUGMENTATIONS[a.type](a, data) for a in spec.augmentation)).to(
        device if device is not None else data.train.x.device)


def tta_views(x: torch.Tensor, tta: TtaSpec) -> list[torch.Tensor]:
    """The image batch, its horizontal flip, and crops shifted by `crops` pixels in four directions."""
    views = [x]
    if tta.flips:
        views.append(x.flip(3))
    if tta.crops:
        c = tta.crops
        padded = nn.functional.pad(x, (c, c, c, c))
        h, w = x.shape[2:]
        for dy, dx in ((0, c), (2 * c, c), (c, 0), (c, 2 * c)):
            views.append(padded[:, :, dy:dy + h, dx:dx + w])
    return views

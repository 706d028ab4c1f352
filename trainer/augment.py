"""Batch augmentation as tensor operations, on whatever device the batch lives on.

Every random draw comes from a generator seeded by (run seed, iteration, rank), never from a global
RNG, so a resumed run draws exactly what the uninterrupted run drew, and the GPU path needs no
host round trip for its random numbers.
"""

from __future__ import annotations

import hashlib

import torch

# AlexNet-style PCA lighting noise (Krizhevsky et al. 2012, the paper's "standard colour augmentation"),
# with the ImageNet RGB eigen-decomposition for pixels in [0, 1] used by fb.resnet.torch.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (stable across processes and Python versions)."""
    data = b"".join(int(p).to_bytes(8, "little", signed=True) for p in parts)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def seeded(generator: torch.Generator, *parts: int) -> torch.Generator:
    generator.manual_seed(mix_seed(*parts))
    return generator


def normalize(images_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) → float, scaled to [0, 1], per-channel mean/std normalized."""
    return images_u8.float().div_(255).sub_(mean).div_(std)


def random_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each side by `padding`, take a random crop of the original size, flip half of them.

    Padding happens after normalization, so the padded border is the mean pixel (as in
    fb.resnet.torch, the authors' reference port). One gather for the whole batch.
    """
    batch, channels, height, width = x.shape
    device = x.device
    if padding > 0:
        x = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (2, batch), device=device, generator=generator)
        rows = offsets[0, :, None] + torch.arange(height, device=device)  # (B, H)
        cols = offsets[1, :, None] + torch.arange(width, device=device)  # (B, W)
        b = torch.arange(batch, device=device)[:, None, None, None]
        c = torch.arange(channels, device=device)[None, :, None, None]
        x = x[b, c, rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.rand(batch, device=device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def pca_lighting(x01: torch.Tensor, alpha_std: float, generator: torch.Generator) -> torch.Tensor:
    """Add eigvec · (alpha · eigval) to every pixel of each image (pixels in [0, 1], before normalizing)."""
    batch = x01.shape[0]
    eigval = torch.tensor(IMAGENET_EIGVAL, device=x01.device)
    eigvec = torch.tensor(IMAGENET_EIGVEC, device=x01.device)
    alpha = torch.randn(batch, 3, device=x01.device, generator=generator) * alpha_std
    rgb = (alpha * eigval) @ eigvec.T  # (B, 3)
    return x01 + rgb[:, :, None, None]

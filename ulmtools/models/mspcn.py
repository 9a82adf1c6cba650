"""mSPCN-ULM (Liu et al. 2020), the paper's frame-by-frame baseline.

A modified sub-pixel convolutional network: a few 2D convolutions at the input
resolution, the last one with ``8 * 8`` channels, rearranged by PixelShuffle into
one map on the x8 grid.  Each frame is processed alone: input (N, 2, Z, X) real
and imaginary correlation (plus its magnitude as a third channel by default,
as the Mask CNN does), output (N, 8Z, 8X), a map whose peaks are the bubbles.

Training (:mod:`ulmtools.train.baselines`): L1 between the prediction and the
target, both convolved with a Gaussian kernel of ``sigma`` fine pixels (the
original loss); the target is the frame's truth positions as single fine pixels.
The kernel has peak 1, so the blurred target is 1 at each bubble: the network's
calibrated map is its blurred output (:meth:`MSPCN.maps`), which the loss fits
to the blurred target.  Measured here, blurring only the target made the plain
L1 collapse to an all-zero output.  Inference (:mod:`ulmtools.infer.dense`):
the 3x3 local maxima of a frame's map above a threshold are its localizations,
and a movie's map is the union over its frames of those localizations on the
x8 grid (thin, like a track map).

2D only: PixelShuffle has no 3D form in PyTorch (the paper extrapolated 3D).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ulmtools.models.store import register_architecture

ARCHITECTURE = "mspcn"
FACTOR = 8


@register_architecture(ARCHITECTURE)
class MSPCN(nn.Module):
    """Sub-pixel CNN: (N, 2, Z, X) frames -> (N, 8Z, 8X) maps.

    Args:
        channels: width of the hidden convolutions (64 in mSPCN).
        layers: hidden 3x3 convolutions after the 5x5 input one.
        magnitude: add abs(corr) as a third input channel.
        sigma: the Gaussian of the loss and of :meth:`maps`, fine pixels.
    """

    architecture_name = ARCHITECTURE
    input_kind = "image"

    def __init__(
        self, channels: int = 64, layers: int = 3, magnitude: bool = True, sigma: float = 3.0
    ) -> None:
        super().__init__()
        if channels < 1 or layers < 0 or not sigma > 0:
            raise ValueError("channels must be >= 1, layers >= 0 and sigma > 0")
        self.architecture_kwargs: dict[str, Any] = {
            "channels": channels,
            "layers": layers,
            "magnitude": magnitude,
            "sigma": float(sigma),
        }
        self.sigma = float(sigma)
        self.spatial_dims = 2
        self.magnitude = magnitude
        cin = 3 if magnitude else 2
        convs = [nn.Conv2d(cin, channels, 5, padding=2)]
        convs += [nn.Conv2d(channels, channels, 3, padding=1) for _ in range(layers)]
        self.body = nn.ModuleList(convs)
        self.tail = nn.Conv2d(channels, FACTOR * FACTOR, 3, padding=1)
        self.shuffle = nn.PixelShuffle(FACTOR)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 2:
            raise ValueError(f"expected frames (N, 2, Z, X), got {tuple(x.shape)}")
        if self.magnitude:
            x = torch.cat([x, torch.sqrt(x[:, :1] ** 2 + x[:, 1:2] ** 2)], dim=1)
        for conv in self.body:
            x = F.relu(conv(x))
        return self.shuffle(self.tail(x))[:, 0]

    def maps(self, x: Tensor) -> Tensor:
        """The calibrated per-frame maps: the output blurred as in the loss (~1 at a bubble)."""
        return blur(self(x), self.sigma)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def gaussian_kernel(sigma: float) -> Tensor:
    """A 1D Gaussian (peak 1, radius 3 sigma) as a (1, 1, 1, K) tensor."""
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    return torch.exp(-(x**2) / (2 * sigma**2)).view(1, 1, 1, -1)


def blur(maps: Tensor, sigma: float) -> Tensor:
    """(N, H, W) maps convolved with a separable Gaussian of ``sigma`` pixels (peak 1)."""
    k = gaussian_kernel(sigma).to(maps)
    r = k.shape[-1] // 2
    x = maps[:, None]
    x = F.conv2d(x, k, padding=(0, r))
    x = F.conv2d(x, k.transpose(-1, -2), padding=(r, 0))
    return x[:, 0]


def blurred_l1(pred: Tensor, target: Tensor, sigma: float) -> Tensor:
    """The mSPCN loss: mean L1 between the Gaussian-blurred prediction and target."""
    return (blur(pred, sigma) - blur(target, sigma)).abs().mean()


def local_maxima(maps: Tensor, threshold: float) -> Tensor:
    """Indices (k, 3) = (frame, row, column) of 3x3 local maxima above ``threshold``."""
    peak = F.max_pool2d(maps[:, None], 3, stride=1, padding=1)[:, 0]
    return torch.nonzero((maps >= peak) & (maps > threshold))


def refine(maps: Tensor, peaks: Tensor) -> Tensor:
    """Sub-pixel (row, column) of ``peaks``: the centroid of the 3x3 neighbourhood (>= 0)."""
    if peaks.shape[0] == 0:
        return peaks[:, 1:].to(torch.float64)
    padded = F.pad(maps, (1, 1, 1, 1)).clamp_min(0)
    off = torch.arange(-1, 2, device=maps.device)
    dz, dx = torch.meshgrid(off, off, indexing="ij")
    f, z, x = peaks[:, 0], peaks[:, 1] + 1, peaks[:, 2] + 1
    w = padded[f[:, None, None], z[:, None, None] + dz, x[:, None, None] + dx].double()
    total = w.sum(dim=(1, 2)).clamp_min(1e-12)
    rz = peaks[:, 1].double() + (w * dz).sum(dim=(1, 2)) / total
    rx = peaks[:, 2].double() + (w * dx).sum(dim=(1, 2)) / total
    return torch.stack([rz, rx], dim=1)


__all__ = ["ARCHITECTURE", "FACTOR", "MSPCN", "blur", "blurred_l1", "local_maxima", "refine"]

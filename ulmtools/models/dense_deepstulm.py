"""Dense Deep-stULM (the paper's 2D baseline): dense 3D convolutions over (t, z, x).

The topology of :class:`ulmtools.models.deepstulm.SparseDeepStulm` written with
dense layers, as in the original Deep-stULM: input (B, 2, T, Z, X) real and
imaginary correlation, output logits (B, 8Z, 8X) on the x8 grid, the
up-samplings nearest-neighbour (repeat each pixel, then convolve) instead of
transposed convolutions::

    input      conv k5 2->16, BN, + input repeated to 16 channels, ELU
    down 1/2   1x1 conv, BN, ELU, max-pool (4 | 2), 3 conv-BN-ELU + residual
    up 1/2     nearest x2 in space, conv k3, BN, ELU; the skip max-pooled in time
               (by 4, then 16); concat; 3 convs + residual
    trans 1    1x1 32->16, max-pool time by 8, 2 convs + residual
    hr 1..3    nearest x2 in space, conv k3, BN, ELU, 3 convs + residual
    trans 2    max-pool time by 8, then the maximum over the time left; 2 convs
    output     conv k3 16->8, BN, ELU, 2 convs, 1x1 8->1 (a logit)

Output pixel ``(i, j)`` is fine-grid pixel ``(i, j)`` of the input grid refined
by 8, the sparse network's output convention.  Time pooling pads with the last
frame (which leaves a maximum unchanged), so any number of frames gives one map;
spatial sizes that are not multiples of 4 are zero-padded and the output cropped.

2D only: a dense 3D+t network needs 4D convolutions, which PyTorch lacks, and
hundreds of GB (the paper's estimate: ~694 GB); :func:`activation_elements`
gives the intermediate map sizes ``bench/bench_baselines.py`` scales by.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ulmtools.models.store import register_architecture

ARCHITECTURE = "deepstulm"
FACTOR = 8
PRIOR_LOGIT = -3.0


class _ConvBnElu(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm3d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(self.bn(self.conv(x)))


class _Residual(nn.Module):
    def __init__(self, channels: int, n: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[_ConvBnElu(channels, channels, 3) for _ in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x) + x


def pool_time(x: Tensor, k: int) -> Tensor:
    """Max-pool (B, C, T, Z, X) by ``k`` in time; a ragged end is padded with the last frame."""
    if k <= 1:
        return x
    t = x.shape[2]
    if t % k:
        x = F.pad(x, (0, 0, 0, 0, 0, k - t % k), mode="replicate")
    return F.max_pool3d(x, (k, 1, 1))


def _up(x: Tensor) -> Tensor:
    """Nearest-neighbour x2 in space."""
    return F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")


class _InputBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm3d(cout)
        self.repeat = cout // cin

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(self.bn(self.conv(x)) + x.repeat(1, self.repeat, 1, 1, 1))


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int, time_pool: int) -> None:
        super().__init__()
        self.inp = _ConvBnElu(cin, cout, 1)
        self.time_pool = time_pool
        self.res = _Residual(cout, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        x = F.max_pool3d(pool_time(x, self.time_pool), (1, 2, 2))
        return self.res(x)


class _UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, skip_time_pool: int) -> None:
        super().__init__()
        self.conv = _ConvBnElu(cin, cout // 2, 3)
        self.skip_time_pool = skip_time_pool
        self.res = _Residual(cout, 3)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        y = self.conv(_up(x))
        return self.res(torch.cat([y, pool_time(skip, self.skip_time_pool)], dim=1))


class _HighRes(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _ConvBnElu(channels, channels, 3)
        self.res = _Residual(channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.res(self.conv(_up(x)))


@register_architecture(ARCHITECTURE)
class DenseDeepStulm(nn.Module):
    """Dense Deep-stULM, 2D+t: ``forward`` maps (B, 2, T, Z, X) to logits (B, 8Z, 8X).

    Args:
        in_channels: input channels (2: real and imaginary correlation).
        channels: width of the first level (16 in the paper; 32 and 64 follow).
        input_kernel: kernel size of the input convolution (5).
        time_pool: time pooling of down 1, down 2, transition 1, transition 2.
    """

    architecture_name = ARCHITECTURE
    #: what ``ulm infer`` reads for this network
    input_kind = "image"

    def __init__(
        self,
        in_channels: int = 2,
        channels: int = 16,
        input_kernel: int = 5,
        time_pool: Sequence[int] = (4, 4, 8, 8),
    ) -> None:
        super().__init__()
        time_pool = tuple(int(p) for p in time_pool)
        if len(time_pool) != 4 or any(p < 1 for p in time_pool):
            raise ValueError(f"time_pool needs 4 positive factors, got {time_pool}")
        if channels < in_channels or channels % in_channels or channels % 2:
            raise ValueError(f"channels must be an even multiple of {in_channels}, got {channels}")
        self.architecture_kwargs: dict[str, Any] = {
            "in_channels": in_channels,
            "channels": channels,
            "input_kernel": input_kernel,
            "time_pool": list(time_pool),
        }
        c = channels
        self.spatial_dims = 2
        self.time_pool = time_pool
        self.inp = _InputBlock(in_channels, c, input_kernel)
        self.down1 = _Down(c, 2 * c, time_pool[0])
        self.down2 = _Down(2 * c, 4 * c, time_pool[1])
        self.up1 = _UpBlock(4 * c, 4 * c, time_pool[0])
        self.up2 = _UpBlock(4 * c, 2 * c, time_pool[0] * time_pool[1])
        self.trans1_in = _ConvBnElu(2 * c, c, 1)
        self.trans1 = _Residual(c, 2)
        self.hr = nn.ModuleList([_HighRes(c) for _ in range(3)])
        self.trans2 = _Residual(c, 2)
        half = max(c // 2, 1)
        self.out1 = _ConvBnElu(c, half, 3)
        self.out2 = nn.Sequential(_ConvBnElu(half, half, 3), _ConvBnElu(half, half, 3))
        self.head = nn.Conv3d(half, 1, 1)
        nn.init.constant_(self.head.bias, PRIOR_LOGIT)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5 or x.shape[1] != self.architecture_kwargs["in_channels"]:
            raise ValueError(f"expected (B, 2, T, Z, X), got {tuple(x.shape)}")
        z, w = x.shape[3], x.shape[4]
        pz, pw = (-z) % 4, (-w) % 4
        if pz or pw:
            x = F.pad(x, (0, pw, 0, pz))
        s0 = self.inp(x)
        s1 = self.down1(s0)
        y = self.down2(s1)
        y = self.up1(y, s1)
        y = self.up2(y, s0)
        y = self.trans1(pool_time(self.trans1_in(y), self.time_pool[2]))
        for block in self.hr:
            y = block(y)
        y = pool_time(y, self.time_pool[3]).amax(dim=2, keepdim=True)
        y = self.trans2(y)
        y = self.head(self.out2(self.out1(y)))[:, 0, 0]
        return y[:, : FACTOR * z, : FACTOR * w]

    def probabilities(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def activation_elements(
    frames: int, space: Sequence[int], channels: int = 16, time_pool: Sequence[int] = (4, 4, 8, 8)
) -> int:
    """Elements of every intermediate map of dense Deep-stULM for one movie.

    The sum, over the layers, of channels x frames x pixels of each map the
    network keeps for backward (each conv's output, its batch norm and ELU
    counted as one map each, as autograd keeps them), for any number of
    spatial axes: ``space=(32, 32)`` is the 2D+t network, ``(32, 32, 32)``
    the 3D+t one the paper could not build.  Only ratios of this are used.
    """
    import math

    def ceil(a: int, b: int) -> int:
        return -(-a // b)

    c = channels
    tp = list(time_pool)
    n = list(space)
    total = 0

    def maps(ch: int, t: int, s: Sequence[int], layers: int) -> int:
        return 3 * layers * ch * t * math.prod(s)  # conv, batch norm, ELU outputs

    t0 = frames
    total += maps(c, t0, n, 1)  # input block
    t1, n1 = ceil(t0, tp[0]), [k // 2 for k in n]
    total += maps(2 * c, t0, n, 1) + maps(2 * c, t1, n1, 3)  # down 1
    t2, n2 = ceil(t1, tp[1]), [k // 2 for k in n1]
    total += maps(4 * c, t1, n1, 1) + maps(4 * c, t2, n2, 3)  # down 2
    total += maps(2 * c, t2, n1, 1) + maps(4 * c, t2, n1, 3)  # up 1
    total += maps(c, t2, n, 1) + maps(2 * c, t2, n, 3)  # up 2
    t3 = ceil(t2, tp[2])
    total += maps(c, t2, n, 1) + maps(c, t3, n, 2)  # transition 1
    s = n
    for _ in range(3):  # high-resolution blocks
        s = [2 * k for k in s]
        total += maps(c, t3, s, 4)
    total += maps(c, 1, s, 2)  # transition 2
    total += maps(max(c // 2, 1), 1, s, 3)  # output
    return int(total)


__all__ = ["ARCHITECTURE", "FACTOR", "DenseDeepStulm", "activation_elements", "pool_time"]

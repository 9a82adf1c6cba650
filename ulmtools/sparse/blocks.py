"""Reusable network blocks, and a Sparse Deep-stULM-shaped network for benchmarks.

The blocks are the repeating units of V-Net-like sparse networks (conv-BN-ELU,
residual stacks).  :class:`DeepStULMSketch` wires them like the paper's Sparse
Deep-stULM (DESIGN.md section 3) so the engine can be tested and benchmarked on
the real workload; the model used for training lives in ``ulmtools.models``.
Axes are (space..., time): ``dimension=3`` for 2D+t, ``4`` for 3D+t.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ulmtools.sparse import functional as F
from ulmtools.sparse.nn import ELU, BatchNorm, Conv, ConvTranspose, MaxPool
from ulmtools.sparse.tensor import SparseTensor

__all__ = ["ConvBnElu", "DeepStULMSketch", "ResidualConvs", "SketchOutput"]


def _space_time(d: int, space: int, time: int) -> tuple[int, ...]:
    return (space,) * (d - 1) + (time,)


class ConvBnElu(nn.Module):
    """Conv -> batch norm -> ELU (the activation can be skipped for a residual sum)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int | tuple[int, ...] = 3,
        *,
        dimension: int,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = Conv(cin, cout, kernel_size, dimension=dimension)
        self.bn = BatchNorm(cout)
        # in place: the batch norm's output is used by nothing else
        self.act = ELU(inplace=True) if act else None

    def forward(self, x: SparseTensor) -> SparseTensor:
        x = self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x


class ResidualConvs(nn.Module):
    """``n`` conv-BN-ELU layers whose result is added to the input (then ELU)."""

    def __init__(self, cin: int, channels: int, n: int, *, dimension: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ConvBnElu(cin if i == 0 else channels, channels, 3, dimension=dimension, act=i < n - 1)
            for i in range(n)
        )

    def forward(self, x: SparseTensor, residual: SparseTensor | None = None) -> SparseTensor:
        h = x
        for layer in self.layers:
            h = layer(h)
        return F.elu(h + (x if residual is None else residual), inplace=True)


@dataclass
class SketchOutput:
    """Prediction on the finest grid, plus the deep-supervision maps per level."""

    prediction: SparseTensor
    level_maps: list[SparseTensor] = field(default_factory=list)


class DeepStULMSketch(nn.Module):
    """Sparse Deep-stULM's shape: 2 down, 2 up, 3 generative x2 levels, time pooled away.

    Input: a sparse tensor with tensor stride 8 in space and 1 in time (pixel
    coordinates scaled by the x8 output factor), 2 channels (real, imaginary of
    the PSF correlation).  ``prune=True`` drops, before each up-sampling, the sites
    whose level classifier says <= 0.5 (keeping the best one if none pass).
    """

    def __init__(self, dimension: int = 3, in_channels: int = 2, *, prune: bool = False) -> None:
        super().__init__()
        d = dimension
        self.dimension = d
        self.prune = prune
        self.inp = Conv(in_channels, 16, 5, dimension=d)
        self.inp_bn = BatchNorm(16)
        self.in_channels = in_channels
        # down path: 1x1 conv, BN, ELU, pool (2 in space, 4 in time), 3 convs + residual
        self.down = nn.ModuleList()
        for cin, cout in ((16, 32), (32, 64)):
            self.down.append(
                nn.ModuleDict(
                    {
                        "proj": ConvBnElu(cin, cout, 1, dimension=d),
                        "pool": MaxPool(_space_time(d, 2, 4), dimension=d),
                        "convs": ResidualConvs(cout, cout, 3, dimension=d),
                    }
                )
            )
        # up path: transposed conv x2 in space onto the skip's sites, conv, concat,
        # 3 convs + residual
        self.up = nn.ModuleList()
        for cin, cout, cskip, tpool in ((64, 64, 32, 4), (64, 32, 16, 16)):
            self.up.append(
                nn.ModuleDict(
                    {
                        "upconv": ConvTranspose(
                            cin, cout, _space_time(d, 2, 1), _space_time(d, 2, 1), dimension=d
                        ),
                        "conv": ConvBnElu(cout, cout, 3, dimension=d),
                        "skip_pool": MaxPool(_space_time(d, 1, tpool), dimension=d),
                        "convs": ResidualConvs(cout + cskip, cout, 3, dimension=d),
                    }
                )
            )
        self.t1_proj = ConvBnElu(32, 16, 1, dimension=d)
        self.t1_pool = MaxPool(_space_time(d, 1, 8), dimension=d)
        self.t1_convs = ResidualConvs(16, 16, 2, dimension=d)
        self.hires = nn.ModuleList()
        for _ in range(3):
            self.hires.append(
                nn.ModuleDict(
                    {
                        "gen": ConvTranspose(
                            16,
                            16,
                            _space_time(d, 2, 1),
                            _space_time(d, 2, 1),
                            generative=True,
                            dimension=d,
                        ),
                        "bn": BatchNorm(16),
                        "convs": ResidualConvs(16, 16, 3, dimension=d),
                        "cls": Conv(16, 1, 3, bias=True, dimension=d),
                    }
                )
            )
        self.t2_pool = MaxPool(_space_time(d, 1, 8), dimension=d)
        self.t2_convs = ResidualConvs(16, 16, 2, dimension=d)
        self.out_convs = nn.Sequential(
            ConvBnElu(16, 8, 3, dimension=d),
            ConvBnElu(8, 8, 3, dimension=d),
            ConvBnElu(8, 8, 3, dimension=d),
        )
        self.out = Conv(8, 1, 1, bias=True, dimension=d)

    # The network is split in two so benchmarks can time the high-resolution levels alone.
    def low_res(self, x: SparseTensor) -> SparseTensor:
        """Input block, down and up paths and transition 1: stride (8.., 128) features."""
        h = self.inp_bn(self.inp(x))
        reps = 16 // self.in_channels + 1
        h0 = F.elu(h + x.replace_feats(x.feats.repeat(1, reps)[:, :16]), inplace=True)
        skips = [h0]
        h = h0
        for blk in self.down:
            p = blk["pool"](blk["proj"](h))
            h = blk["convs"](p)
            skips.append(h)
        for blk, skip in zip(self.up, (skips[1], skips[0])):
            target = blk["skip_pool"](skip)
            u = blk["conv"](blk["upconv"](h, coordinates=target))
            h = blk["convs"](F.cat(u, target), residual=u)
        t = self.t1_pool(self.t1_proj(h))
        return self.t1_convs(t)

    def high_res(self, h: SparseTensor) -> SketchOutput:
        """Three generative x2 levels, transition 2 and the output head."""
        maps: list[SparseTensor] = []
        for blk in self.hires:
            g = F.elu(blk["bn"](blk["gen"](h)), inplace=True)
            h = blk["convs"](g)
            cls = F.sigmoid(blk["cls"](h))
            maps.append(cls)
            if self.prune and blk is not self.hires[-1]:
                keep = cls.feats[:, 0] > 0.5
                if not bool(keep.any()) and cls.num_sites:
                    keep[cls.feats[:, 0].argmax()] = True
                h = F.prune(h, keep)
        h = self.t2_convs(self.t2_pool(h))
        h = self.out_convs(h)
        return SketchOutput(F.sigmoid(self.out(h)), maps)

    def forward(self, x: SparseTensor) -> SketchOutput:
        return self.high_res(self.low_res(x))


def soft_dice_loss(pred: Tensor, target: Tensor, smooth: float = 1e-3) -> Tensor:
    """1 - soft Dice between predicted probabilities and a binary target (same sites)."""
    inter = (pred * target).sum()
    return 1.0 - (2.0 * inter + smooth) / (pred.sum() + target.sum() + smooth)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ += ["count_parameters", "soft_dice_loss"]

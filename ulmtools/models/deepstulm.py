"""Sparse Deep-stULM: super-resolved track maps from sparse correlation movies.

One definition serves 2D+t (``dimension=3``, 3D convolutions) and 3D+t
(``dimension=4``, 4D convolutions): every layer takes the dimension, and every
kernel is written for ``(t, *space)``.  Only the public layers of
:mod:`ulmtools.sparse` are used, so the network runs on either engine backend.

Coordinates are ``(batch, t, z, x[, y])``.  Input pixels are scaled by the
output factor 8 (tensor stride ``(1, 8, 8[, 8])``), so the three generative
x2 up-samplings of the high-resolution blocks land on the x8 output grid and
an output coordinate *is* the fine-grid index.

Layout (channels for the default ``channels=16``, the paper's configuration)::

    input      conv k5 2->16, BN, + input repeated to 16 channels, ELU    stride (1, 8)
    down 1     1x1 16->32, BN, ELU, max-pool (4 | 2), 3 convs + residual  (4, 16)
    down 2     1x1 32->64, BN, ELU, max-pool (4 | 2), 3 convs + residual  (16, 32)
    up 1       tconv x2 64->32 onto the skip of down 1 pooled in time by 4,
               concat -> 64, 3 convs + residual                           (16, 16)
    up 2       tconv x2 64->16 onto the skip of the input pooled by 16,
               concat -> 32, 3 convs + residual                           (16, 8)
    trans 1    1x1 32->16, max-pool time by 8, 2 convs + residual         (128, 8)
    [classifier 0 (k3 -> 1), pruning]
    hr 1..3    generative tconv x2 in space, BN, ELU, 3 convs + residual  (128, 4|2|1)
               [classifier 1, 2 after hr 1, hr 2 (k3 -> 1), pruning]
    trans 2    max-pool time by 8, 2 convs + residual                     (1024, 1)
    output     conv k3 16->8, BN, ELU, 2 convs, 1x1 8->1 (a logit; sigmoid outside)

Time is pooled 4 * 4 * 8 * 8 = 1024 frames, so a movie of up to 1024 frames
ends with one time index.  Longer movies (or a custom ``time_pool`` with a
smaller product) would leave several: the network then takes a *global*
maximum over the remaining time sites of each spatial site after transition 2,
so the output is always one map per movie (the temporal projection of the
tracks).  The same per-site maximum over time projects the intermediate
classifiers (still time-resolved at stride 128) for their losses.

Options (the paper's Table II):

``deep_supervision``
    a classifier per resolution level before each generative up-sampling
    (input grid, x2, x4); the training loss adds their Dice losses.
``pruning``
    before each generative up-sampling, sites whose classifier probability
    is <= ``prune_threshold`` are removed (a movie with no site above it keeps
    its best one).  Implies the classifiers.  While training, the caller may
    pass a ``guide`` that keeps the sites over the truth too, so the later
    levels see the positives they must learn.

``forward`` returns a :class:`DeepStulmOutput` of logits (sparse tensors); the
output coordinates are ``(batch, 0, z, x[, y])`` on the x8 grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ulmtools import sparse as sp
from ulmtools.models.store import register_architecture

ARCHITECTURE = "sparse-deepstulm"
FACTOR = 8
HR_LEVELS = 3  # generative x2 up-samplings: 2**3 == FACTOR
PRIOR_LOGIT = -3.0  # initial classifier bias: sigmoid(-3) ~ 0.05

#: Maps (coords (N, 1+D) of a tensor at spatial ``stride``, stride) to a bool (N,)
#: "truth present in this cell": the training-time pruning guide.
Guide = Callable[[Tensor, int], Tensor]


@dataclass
class DeepStulmOutput:
    """What one forward pass produced (all logits, one channel)."""

    final: sp.SparseTensor | None
    #: intermediate classifier logits, coarse to fine (spatial stride 8, 4, 2)
    levels: list[sp.SparseTensor] = field(default_factory=list)
    #: active sites entering each generative up-sampling, after pruning
    sites: list[int] = field(default_factory=list)


def _k(dimension: int, time: int, space: int) -> tuple[int, ...]:
    return (time, *([space] * (dimension - 1)))


class _ConvBnElu(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, ...], dimension: int) -> None:
        super().__init__()
        self.conv = sp.Conv(cin, cout, kernel_size=kernel, dimension=dimension)
        self.bn = sp.BatchNorm(cout)
        self.act = sp.ELU(inplace=True)

    def forward(self, x: sp.SparseTensor) -> sp.SparseTensor:
        return self.act(self.bn(self.conv(x)))


class _Residual(nn.Module):
    """``n`` conv(k3)-BN-ELU layers on unchanged sites, plus the input."""

    def __init__(self, channels: int, n: int, dimension: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[_ConvBnElu(channels, channels, 3, dimension) for _ in range(n)]
        )

    def forward(self, x: sp.SparseTensor) -> sp.SparseTensor:
        return self.layers(x) + x


class _InputBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, dimension: int) -> None:
        super().__init__()
        if cout % cin:
            raise ValueError(f"channels ({cout}) must be a multiple of the inputs ({cin})")
        self.conv = sp.Conv(cin, cout, kernel_size=kernel, dimension=dimension)
        self.bn = sp.BatchNorm(cout)
        self.act = sp.ELU(inplace=True)
        self.repeat = cout // cin

    def forward(self, x: sp.SparseTensor) -> sp.SparseTensor:
        y = self.bn(self.conv(x))
        return self.act(y + x.feats.repeat(1, self.repeat))


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int, time_pool: int, dimension: int) -> None:
        super().__init__()
        self.inp = _ConvBnElu(cin, cout, 1, dimension)
        self.pool = sp.MaxPool(_k(dimension, time_pool, 2), dimension=dimension)
        self.res = _Residual(cout, 3, dimension)

    def forward(self, x: sp.SparseTensor) -> sp.SparseTensor:
        return self.res(self.pool(self.inp(x)))


class _Up(nn.Module):
    """Transposed conv x2 in space onto the skip's sites, concat, 3 convs + residual."""

    def __init__(self, cin: int, cout: int, skip_time_pool: int, dimension: int) -> None:
        super().__init__()
        half = cout // 2
        self.skip_pool = sp.MaxPool(_k(dimension, skip_time_pool, 1), dimension=dimension)
        self.up = sp.ConvTranspose(
            cin,
            half,
            kernel_size=_k(dimension, 1, 2),
            stride=_k(dimension, 1, 2),
            dimension=dimension,
        )
        self.bn = sp.BatchNorm(half)
        self.act = sp.ELU(inplace=True)
        self.res = _Residual(cout, 3, dimension)

    def forward(self, x: sp.SparseTensor, skip: sp.SparseTensor) -> sp.SparseTensor:
        skip = self.skip_pool(skip)
        y = self.act(self.bn(self.up(x, coordinates=skip)))
        return self.res(sp.cat(y, skip))


class _HighRes(nn.Module):
    """Generative transposed conv x2 in space (new sites appear), 3 convs + residual."""

    def __init__(self, channels: int, dimension: int) -> None:
        super().__init__()
        self.up = sp.ConvTranspose(
            channels,
            channels,
            kernel_size=_k(dimension, 1, 2),
            stride=_k(dimension, 1, 2),
            generative=True,
            dimension=dimension,
        )
        self.bn = sp.BatchNorm(channels)
        self.act = sp.ELU(inplace=True)
        self.res = _Residual(channels, 3, dimension)

    def forward(self, x: sp.SparseTensor) -> sp.SparseTensor:
        return self.res(self.act(self.bn(self.up(x))))


def project_time(
    coords: Tensor, values: Tensor, *, sort: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Maximum over time of per-site values, per spatial site.

    ``coords`` (N, 1 + D) are ``(batch, t, *space)``, ``values`` (N,) or (N, C).
    Returns the unique ``(batch, *space)`` rows (M, D) sorted, their maxima
    (M,) or (M, C) (differentiable: the gradient goes to the arg-max), and the
    inverse index (N,) from sites to rows.  ``sort=False`` leaves the rows in site
    order when every site has the same time index (a loss needs no order; sorting
    the final output's million sites cost a training step ~0.2 GB).
    """
    spatial = torch.cat([coords[:, :1], coords[:, 2:]], dim=1).long()
    if spatial.shape[0] == 0:
        empty = torch.zeros((0,), dtype=torch.int64, device=coords.device)
        return spatial, values[:0], empty
    if bool((coords[:, 1] == coords[0, 1]).all()):
        # One time index (the final output): sites are already unique in space.
        if not sort:
            return spatial, values, torch.arange(spatial.shape[0], device=spatial.device)
        key = _linear_key(spatial)
        order = torch.argsort(key)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return spatial[order], values[order], inverse
    keys, inverse = torch.unique(_linear_key(spatial), sorted=True, return_inverse=True)
    first = torch.full((keys.numel(),), spatial.shape[0], dtype=torch.int64, device=keys.device)
    first = first.scatter_reduce(
        0, inverse, torch.arange(spatial.shape[0], device=keys.device), reduce="amin"
    )
    rows = spatial[first]
    shape = (rows.shape[0], *values.shape[1:])
    index = inverse.view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    out = values.new_full(shape, float("-inf")).scatter_reduce(
        0, index, values, reduce="amax", include_self=True
    )
    return rows, out, inverse


def _linear_key(rows: Tensor) -> Tensor:
    """One int64 per row of non-negative integer ``rows`` (N, K), ordered like the rows."""
    ext = rows.max(0).values + 1
    key = rows[:, 0].clone()
    for i in range(1, rows.shape[1]):
        key = key * ext[i] + rows[:, i]
    return key


def _one_time_index(x: sp.SparseTensor) -> bool:
    """Every site at t = 0 (a movie no longer than the time pooled so far)."""
    return not bool((x.coords[:, 1] != 0).any())


def _collapse_time(x: sp.SparseTensor) -> sp.SparseTensor:
    """One time index per spatial site (t = 0): the global maximum over time."""
    coords = x.coords
    if _one_time_index(x):
        return x
    rows, feats, _ = project_time(coords, x.feats)
    out = torch.zeros((rows.shape[0], coords.shape[1]), dtype=torch.int32, device=coords.device)
    out[:, 0] = rows[:, 0].int()
    out[:, 2:] = rows[:, 1:].int()
    return sp.sparse_tensor(
        out, feats, x.tensor_stride, backend=x.backend, manager=x.manager, check=False
    )


def _keep_mask(x: sp.SparseTensor, prob: Tensor, threshold: float, guide: Tensor | None) -> Tensor:
    """Sites to keep: above ``threshold`` or guided; each movie keeps at least its best site."""
    keep = prob > threshold
    if guide is not None:
        keep = keep | guide
    batch = x.coords[:, 0].long()
    n_batch = int(batch.max()) + 1 if batch.numel() else 0
    kept = torch.zeros(n_batch, dtype=torch.int64, device=prob.device).index_add_(
        0, batch, keep.long()
    )
    if bool((kept == 0).any()):
        best = prob.new_full((n_batch,), float("-inf")).scatter_reduce(
            0, batch, prob, reduce="amax", include_self=True
        )
        starving = (kept == 0)[batch]
        keep = keep | (starving & (prob >= best[batch]))
    return keep


@register_architecture(ARCHITECTURE)
class SparseDeepStulm(nn.Module):
    """Sparse Deep-stULM for 2D+t (``dimension=3``) or 3D+t (``dimension=4``).

    Args:
        dimension: coordinate axes after the batch index: 3 (t, z, x) or 4 (t, z, x, y).
        in_channels: input features per site (2: real and imaginary correlation).
        channels: width of the first level (16 in the paper; 32 and 64 follow);
            smaller values make tiny CPU models.
        input_kernel: kernel size of the input convolution (5 in the paper).
        time_pool: time pooling of down 1, down 2, transition 1, transition 2.
        deep_supervision: add a classifier per resolution level.
        pruning: remove sites the classifiers reject before each up-sampling.
        prune_threshold: probability at or below which a site is pruned.
    """

    architecture_name = ARCHITECTURE

    def __init__(
        self,
        dimension: int = 3,
        in_channels: int = 2,
        channels: int = 16,
        input_kernel: int = 5,
        time_pool: Sequence[int] = (4, 4, 8, 8),
        deep_supervision: bool = False,
        pruning: bool = False,
        prune_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if dimension not in (3, 4):
            raise ValueError(f"dimension must be 3 (2D+t) or 4 (3D+t), got {dimension}")
        time_pool = tuple(int(p) for p in time_pool)
        if len(time_pool) != 4 or any(p < 1 for p in time_pool):
            raise ValueError(f"time_pool needs 4 positive factors, got {time_pool}")
        if channels < in_channels or channels % in_channels or channels % 2:
            raise ValueError(f"channels must be an even multiple of {in_channels}, got {channels}")
        self.architecture_kwargs = {
            "dimension": dimension,
            "in_channels": in_channels,
            "channels": channels,
            "input_kernel": input_kernel,
            "time_pool": list(time_pool),
            "deep_supervision": bool(deep_supervision),
            "pruning": bool(pruning),
            "prune_threshold": float(prune_threshold),
        }
        d, c = dimension, channels
        self.dimension = d
        self.time_pool = time_pool
        self.pruning = bool(pruning)
        self.classifiers_on = bool(deep_supervision or pruning)
        self.prune_threshold = float(prune_threshold)

        self.inp = _InputBlock(in_channels, c, input_kernel, d)
        self.down1 = _Down(c, 2 * c, time_pool[0], d)
        self.down2 = _Down(2 * c, 4 * c, time_pool[1], d)
        self.up1 = _Up(4 * c, 4 * c, time_pool[0], d)
        self.up2 = _Up(4 * c, 2 * c, time_pool[0] * time_pool[1], d)
        self.trans1_in = _ConvBnElu(2 * c, c, 1, d)
        self.trans1_pool = sp.MaxPool(_k(d, time_pool[2], 1), dimension=d)
        self.trans1 = _Residual(c, 2, d)
        self.hr = nn.ModuleList([_HighRes(c, d) for _ in range(HR_LEVELS)])
        self.classifiers = (
            nn.ModuleList(
                [sp.Conv(c, 1, kernel_size=3, bias=True, dimension=d) for _ in range(HR_LEVELS)]
            )
            if self.classifiers_on
            else None
        )
        self.trans2_pool = sp.MaxPool(_k(d, time_pool[3], 1), dimension=d)
        self.trans2 = _Residual(c, 2, d)
        half = max(c // 2, 1)
        self.out1 = _ConvBnElu(c, half, 3, d)
        self.out2 = nn.Sequential(_ConvBnElu(half, half, 3, d), _ConvBnElu(half, half, 3, d))
        self.head = sp.Conv(half, 1, kernel_size=1, bias=True, dimension=d)
        # Tracks cover a few percent of the output sites at most: start every
        # classifier at a low probability (the usual prior for rare positives),
        # or the first epochs are spent un-learning p = 0.5 everywhere.
        for layer in [self.head, *(self.classifiers or [])]:
            nn.init.constant_(layer.bias, PRIOR_LOGIT)

    @property
    def input_stride(self) -> tuple[int, ...]:
        return (1, *([FACTOR] * (self.dimension - 1)))

    def make_input(
        self,
        coords: Sequence[Tensor],
        feats: Sequence[Tensor],
        *,
        device: torch.device | str = "cpu",
        backend: str | None = None,
    ) -> sp.SparseTensor:
        """A batch from per-movie pixel coordinates ``(n, 1 + S)`` = (t, *space) and feats."""
        rows, values = [], []
        scale = torch.tensor(self.input_stride, dtype=torch.int32)
        for b, (c, f) in enumerate(zip(coords, feats)):
            c = torch.as_tensor(c, dtype=torch.int32)
            batch = torch.full((c.shape[0], 1), b, dtype=torch.int32)
            rows.append(torch.cat([batch, c * scale], dim=1))
            values.append(torch.as_tensor(f, dtype=torch.float32))
        cat_c = torch.cat(rows) if rows else torch.zeros((0, 1 + self.dimension), dtype=torch.int32)
        cat_f = torch.cat(values) if values else torch.zeros((0, 2))
        return sp.sparse_tensor(
            cat_c.to(device), cat_f.to(device), self.input_stride, backend=backend, check=False
        )

    def forward(
        self,
        x: sp.SparseTensor,
        *,
        levels: int | None = None,
        guide: Guide | None = None,
    ) -> DeepStulmOutput:
        """Run the network.

        ``levels`` (0..3) stops after that many intermediate classifiers
        (cascaded learning trains the coarse levels first); ``None`` runs to the
        final output.  ``guide`` (training only) keeps truth sites when pruning.
        """
        if x.dimension != self.dimension:
            raise ValueError(f"network of dimension {self.dimension} got a {x.dimension}-D tensor")
        out = DeepStulmOutput(final=None)
        s0 = self.inp(x)
        s1 = self.down1(s0)
        y = self.down2(s1)
        y = self.up1(y, s1)
        y = self.up2(y, s0)
        y = self.trans1(self.trans1_pool(self.trans1_in(y)))
        stop = HR_LEVELS if levels is None else int(levels)
        for i, block in enumerate(self.hr):
            if self.classifiers is not None:
                logit = self.classifiers[i](y)
                out.levels.append(logit)
                if len(out.levels) >= stop and levels is not None:
                    out.sites.append(y.num_sites)
                    return out
                if self.pruning and y.num_sites:
                    stride = y.tensor_stride[1]
                    g = guide(y.coords, stride) if (guide is not None and self.training) else None
                    keep = _keep_mask(
                        y, torch.sigmoid(logit.feats[:, 0]).detach(), self.prune_threshold, g
                    )
                    if not bool(keep.all()):
                        y = sp.prune(y, keep)
            out.sites.append(y.num_sites)
            y = block(y)
        pooled_stride = None
        if _one_time_index(y):
            # Pooling time would change only the tensor stride: skipping it gives the
            # same output and keeps hr 3's kernel maps (rebuilt at this, the finest
            # level, they were a tenth of a large training step's memory); the output
            # gets the stride pooling would have given.
            pooled_stride = (y.tensor_stride[0] * self.trans2_pool.stride[0], *y.tensor_stride[1:])
        else:
            y = _collapse_time(self.trans2_pool(y))
        y = self.trans2(y)
        y = self.head(self.out2(self.out1(y)))
        if pooled_stride is not None:
            y = sp.sparse_tensor(
                y.coords, y.feats, pooled_stride, backend=y.backend, manager=y.manager, check=False
            )
        out.final = y
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = ["ARCHITECTURE", "FACTOR", "DeepStulmOutput", "SparseDeepStulm", "project_time"]

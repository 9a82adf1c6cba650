"""Soft Dice loss between sparse predictions and dense fine-grid targets."""

from __future__ import annotations

import torch
import torch.nn.functional as tf
from torch import Tensor

from ulmtools import sparse as sp
from ulmtools.models.deepstulm import project_time


def pooled_targets(target: Tensor, strides: list[int]) -> dict[int, Tensor]:
    """``target`` (B, *fine) bool max-pooled to each spatial ``stride`` (a cell is
    positive when any fine pixel in it is)."""
    out = {1: target}
    x = target.unsqueeze(1).float()
    pool = {2: tf.max_pool2d, 3: tf.max_pool3d}[target.dim() - 1]
    for s in strides:
        if s not in out:
            out[s] = pool(x, kernel_size=s, stride=s).squeeze(1) > 0
    return out


def lookup(target: Tensor, coords: Tensor, stride: int) -> Tensor:
    """Target values at sites ``(batch, t, *space)`` of a tensor at spatial ``stride``."""
    idx = coords[:, 2:].long() // stride
    return target[(coords[:, 0].long(), *idx.unbind(1))]


def dice_sums(logits: sp.SparseTensor, target: Tensor) -> Tensor:
    """The soft Dice's three sums ``(sum p*y, sum p, sum y)`` of ``sigmoid(logits)``
    projected over time against ``target`` (see :func:`sparse_dice_loss`).

    Sums add over movies, so several processes each holding part of a batch add
    theirs and get the Dice of the whole batch (:mod:`ulmtools.train.distributed`).
    """
    stride = logits.tensor_stride[1]
    rows, best, _ = project_time(logits.coords, logits.feats[:, 0], sort=False)
    p = torch.sigmoid(best)
    if rows.shape[0]:
        y = target[(rows[:, 0], *(rows[:, 1:] // stride).unbind(1))].to(p.dtype)
        inter = (p * y).sum()
    else:
        inter = p.sum()
    return torch.stack([inter, p.sum(), target.sum().to(p.dtype)])


def dice_from_sums(sums: Tensor, smooth: float = 1e-3) -> Tensor:
    """``1 - (2 * sum p*y + smooth) / (sum p + sum y + smooth)``."""
    return 1.0 - (2.0 * sums[0] + smooth) / (sums[1] + sums[2] + smooth)


def sparse_dice_loss(logits: sp.SparseTensor, target: Tensor, smooth: float = 1e-3) -> Tensor:
    """1 - soft Dice of ``sigmoid(logits)`` projected over time against ``target``.

    ``target`` (B, *space) bool is on the grid of ``logits``' spatial stride;
    sites absent from ``logits`` count as probability 0, so missed positives
    still lower the Dice.  One Dice over the whole batch.
    """
    return dice_from_sums(dice_sums(logits, target), smooth)

"""PAMR re-typed from the NACLIP repository's pamr.py (github.com/sinahmr/NACLIP/blob/main/pamr.py,
itself from github.com/visinf/1-stage-wseg, Apache-2.0; SCLIP's pamr.py is the same code) as the
independent reference for ovs's C PAMR. Only the module structure is kept; the computation is
theirs line for line: shift kernels as dilated 3 x 3 convolutions on a replicate-padded input,
unbiased std over the concatenated 3 x 3 grids, softmax over all neighbours of all dilations,
and `num_iter` propagation steps. (The shift kernels are built from one list of the 3 x 3 positions
instead of their nine explicit assignments per kernel: the same tensors.)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


# The 3 x 3 grid positions in the original kernels' order: the 8 neighbours (row-major, centre
# skipped), and all 9 for the standard deviation.
NEIGHBOURS = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
GRID = [(r, c) for r in range(3) for c in range(3)]


def _shift_kernels(positions, value=1.0, centre=0.0):
    """(len(positions), 1, 3, 3): kernel i is `centre` at (1, 1) and `value` at positions[i]."""
    weight = torch.zeros(len(positions), 1, 3, 3)
    for i, (r, c) in enumerate(positions):
        weight[i, 0, 1, 1] = centre
        weight[i, 0, r, c] = value
    return weight


class LocalAffinity(nn.Module):
    def __init__(self, dilations=(1,)):
        super().__init__()
        self.dilations = list(dilations)
        self.register_buffer("kernel", self._init_aff())

    def _init_aff(self):
        return _shift_kernels(NEIGHBOURS, value=-1.0, centre=1.0)

    def forward(self, x):
        B, K, H, W = x.size()
        x = x.view(B * K, 1, H, W)
        x_aff = torch.empty((K * B, len(self.dilations) * self.kernel.size(0), H, W),
                            device=x.device, dtype=x.dtype)
        for i, d in enumerate(self.dilations):
            x_pad = F.pad(x, [d] * 4, mode="replicate")
            x_aff[:, self.kernel.size(0) * i:(i + 1) * self.kernel.size(0), :, :] = F.conv2d(
                x_pad, self.kernel.to(x.dtype), dilation=d)
        return x_aff.view(B, K, -1, H, W)


class LocalAffinityCopy(LocalAffinity):
    def _init_aff(self):
        return _shift_kernels(NEIGHBOURS)


class LocalStDev(LocalAffinity):
    def _init_aff(self):
        return _shift_kernels(GRID)

    def forward(self, x):
        x = super().forward(x)
        return x.std(2, keepdim=True)


class LocalAffinityAbs(LocalAffinity):
    def forward(self, x):
        x = super().forward(x)
        return torch.abs(x)


class PAMR(nn.Module):
    def __init__(self, num_iter=1, dilations=(1,)):
        super().__init__()
        self.num_iter = num_iter
        self.aff_x = LocalAffinityAbs(dilations)
        self.aff_m = LocalAffinityCopy(dilations)
        self.aff_std = LocalStDev(dilations)

    def forward(self, x, mask):
        mask = F.interpolate(mask, size=x.size()[-2:], mode="bilinear", align_corners=True)
        x_std = self.aff_std(x)
        x = -self.aff_x(x) / (1e-8 + 0.1 * x_std)
        x = x.mean(1, keepdim=True)
        x = F.softmax(x, 2)
        for _ in range(self.num_iter):
            m = self.aff_m(mask)  # [BxCxPxHxW]
            mask = (m * x).sum(2)
        return mask


@torch.no_grad()
def pamr(mask, image, steps=10, dilations=(8, 16), dtype=torch.float32):
    """numpy (C, H, W) mask and (K, H, W) image -> refined (C, H, W) as a numpy array."""
    import numpy as np

    m = torch.from_numpy(np.asarray(mask)).to(dtype)[None]
    x = torch.from_numpy(np.asarray(image)).to(dtype)[None]
    return PAMR(steps, dilations)(x, m)[0].numpy()

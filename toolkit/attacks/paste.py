"""Differentiable patch pasting in torch, with the same geometry as :mod:`qadtr.asr`.

Locations are ``(top, left)`` rows, usually drawn by :func:`qadtr.asr.random_locations`
so the PyTorch and ONNX Runtime paths paste at identical pixels.
"""
from __future__ import annotations

import numpy as np
import torch


def paste_patch(images: torch.Tensor, patch: torch.Tensor, locations, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``images`` with ``patch`` pasted at each image's ``(top, left)``.

    ``images``: [N,3,H,W] in [0,1]. ``patch``: [3,h,w] (one universal patch) or
    [N,3,h,w] (one per image), in [0,1]. ``mask``: optional [h,w] (or [N,h,w]) in
    {0,1}; pixels outside it keep the image. Gradients flow to both images and patch.
    """
    n, _, ih, iw = images.shape
    ph, pw = patch.shape[-2:]
    if ph > ih or pw > iw:
        raise ValueError(f"a {ph}x{pw} patch does not fit a {ih}x{iw} image")
    loc = torch.as_tensor(np.asarray(locations) if not torch.is_tensor(locations) else locations,
                          dtype=torch.long, device=images.device)
    if loc.shape != (n, 2):
        raise ValueError(f"need one (top, left) per image: {n} images, locations shape {tuple(loc.shape)}")
    rows = loc[:, 0, None, None] + torch.arange(ph, device=images.device)[None, :, None]
    cols = loc[:, 1, None, None] + torch.arange(pw, device=images.device)[None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None]
    nhwc = images.permute(0, 2, 3, 1)
    under = nhwc[batch, rows, cols]                       # [N,h,w,3]
    top = (patch if patch.dim() == 4 else patch.expand(n, -1, -1, -1)).permute(0, 2, 3, 1)
    if mask is not None:
        m = (mask if mask.dim() == 3 else mask.expand(n, -1, -1))[..., None].to(images.dtype)
        top = under * (1 - m) + top * m
    out = nhwc.clone()
    out[batch, rows, cols] = top.to(images.dtype)
    return out.permute(0, 3, 1, 2).contiguous()

"""Seeded batches as float tensors in [0, 1], with CIFAR augmentation done on whole batches."""
from __future__ import annotations

import numpy as np
import torch

from .arrays import ArrayDataset


def to_tensor(x_uint8: np.ndarray, uint8_op=None) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1]; ``uint8_op`` first maps the uint8 NCHW tensor (integer-pixel ops)."""
    x = torch.from_numpy(x_uint8).permute(0, 3, 1, 2)
    if uint8_op is not None:
        x = uint8_op(x)
    return x.float().div_(255.0)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` (0: none), and random horizontal flip (He et al. 2016)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, c, h, w)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, c, h, w)
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def cutout(x: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square per image, centred anywhere (it may hang over the border), in place.

    DeVries & Taylor 2017, https://arxiv.org/abs/1708.04552 (16 px on CIFAR-10).
    """
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=generator)
    cx = torch.randint(0, w, (n,), generator=generator)
    rows, cols = torch.arange(h)[None, :], torch.arange(w)[None, :]
    inside_y = (rows >= (cy - size // 2)[:, None]) & (rows < (cy - size // 2 + size)[:, None])
    inside_x = (cols >= (cx - size // 2)[:, None]) & (cols < (cx - size // 2 + size)[:, None])
    mask = inside_y[:, :, None] & inside_x[:, None, :]
    return x.masked_fill_(mask[:, None], 0.0)


def trivial_augment(x_uint8: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """TrivialAugment Wide on uint8 NCHW: one op at one strength, both drawn uniformly, per image.

    Müller & Hutter 2021, "TrivialAugment: Tuning-free Yet State-of-the-Art Data Augmentation",
    https://arxiv.org/abs/2103.10158 (torchvision's ``TrivialAugmentWide``; geometric ops fill with black).
    torchvision draws from the global RNG, so the ops run under a forked RNG seeded from ``generator``:
    the batch depends only on ``generator``, and the caller's global RNG stream is left as it was.
    """
    from torchvision.transforms import v2  # the train extra; imported here so the loader needs it only on use

    seed = int(torch.randint(2**62, (1,), generator=generator))
    op = v2.TrivialAugmentWide()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([op(image) for image in x_uint8])  # per image: a batched call shares one op


class BatchLoader:
    """Iterate ``(images, labels)`` batches; the order depends only on ``seed`` and the epoch.

    That makes a resumed run see exactly the batches it would have seen.
    """

    def __init__(self, data: ArrayDataset, batch_size: int = 128, shuffle: bool = False,
                 augment: bool = False, seed: int = 0, drop_last: bool = False, cutout: int = 0, crop_pad: int = 4,
                 trivial_augment: bool = False):
        self.data, self.batch_size = data, batch_size
        self.shuffle, self.augment, self.seed, self.drop_last = shuffle, augment, seed, drop_last
        self.cutout = cutout  # side of the cutout square with augment (0: none)
        self.crop_pad = crop_pad  # zero padding of the random crop with augment (0: flips only)
        self.trivial_augment = trivial_augment  # with augment: TrivialAugment Wide before crop and flip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        n = len(self.data)
        order = torch.randperm(n, generator=g).numpy() if self.shuffle else np.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            # TrivialAugment runs on uint8: posterize, solarize and equalize are defined on integer pixels.
            strong = (lambda images: trivial_augment(images, g)) if self.augment and self.trivial_augment else None
            x = to_tensor(self.data.x[idx], strong)
            if self.augment:
                x = augment(x, g, self.crop_pad)
                if self.cutout:
                    x = cutout(x, g, self.cutout)
            yield x, torch.from_numpy(self.data.y[idx])

"""Universal adversarial patches: :class:`PatchAttack` and the quantization-aware, adaptive A-QAPA.

Both optimise one patch (pixel space, [0, 1]) over batches of training images, pasting it at a
fresh random location on every image of every step (expectation over location), optionally
rotated and rescaled. The hot path is batched: one forward/backward per step, no per-image loop.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..asr import disc_mask, patch_area_percent
from ..errors import QadtrError
from ..switchable import get_bits, set_bits
from .paste import paste_patch

SHAPES = ("square", "circle")
OPTIMIZERS = ("adam", "sign")
SAMPLING_RULES = ("proportional", "softmax", "uniform")
INIT_STREAM = 0x9A7D  # the patch's initial values: a stream apart from placements and controls


def patch_loss(logits: torch.Tensor, labels: torch.Tensor, target: int | None = None) -> torch.Tensor:
    """Per-image attacker loss, >= 0, and 0 exactly when the patch has fully won.

    Untargeted: ``-log(1 - p_label)``, computed stably as ``logsumexp(z) - logsumexp(z without the
    label)``. Unlike maximising cross-entropy it is bounded below, so images already fooled stop
    pulling the patch and the loss can be compared across bit-widths (A-QAPA samples by it).
    Targeted: cross-entropy to ``target``.
    """
    if target is not None:
        return F.cross_entropy(logits, torch.full_like(labels, int(target)), reduction="none")
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(others, dim=1)).clamp_min(0.0)


def sampling_probabilities(losses, rule: str = "proportional", temperature: float = 0.5,
                           floor: float = 0.1) -> np.ndarray:
    """A-QAPA's rule: the probability of crafting the next step at each bit-width.

    ``q_b = L_b / sum(L)`` (proportional) or ``softmax(L_b / temperature)`` (softmax) or uniform,
    then ``p_b = (1 - floor) * q_b + floor / K`` so no bit-width is ever starved.
    """
    losses = np.maximum(np.asarray(losses, dtype=np.float64), 0.0)
    k = len(losses)
    if rule not in SAMPLING_RULES:
        raise QadtrError(f"unknown sampling rule {rule!r}: choose from {', '.join(SAMPLING_RULES)}")
    if rule == "uniform" or not np.isfinite(losses).all() or losses.sum() <= 0:
        q = np.full(k, 1.0 / k)
    elif rule == "proportional":
        q = losses / losses.sum()
    else:
        z = losses / max(float(temperature), 1e-8)
        q = np.exp(z - z.max())
        q /= q.sum()
    return (1.0 - floor) * q + floor / k


def _batches(data, labels, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless seeded batches from an ArrayDataset, an array/tensor with labels, or a loader of (x, y)."""
    if hasattr(data, "x") and hasattr(data, "y"):            # ArrayDataset: convert one batch at a time
        from ..data.loader import to_tensor

        xs, ys = data.x, torch.as_tensor(data.y)
        convert = lambda idx: to_tensor(xs[idx.numpy()])       # noqa: E731
    elif isinstance(data, (torch.Tensor, np.ndarray)):
        if labels is None:
            raise QadtrError("images given without labels")
        xs = torch.as_tensor(np.asarray(data, np.float32) if isinstance(data, np.ndarray) else data).float()
        ys = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long()
        if len(xs) != len(ys):
            raise QadtrError(f"{len(xs)} images but {len(ys)} labels")
        convert = lambda idx: xs[idx]                          # noqa: E731
    else:                                                    # a loader: cycle through it
        loader: Iterable = data
        while True:
            empty = True
            for x, y in loader:
                empty = False
                yield torch.as_tensor(x).float(), torch.as_tensor(y).long()
            if empty:
                raise QadtrError("the data loader yielded no batches")
    n = len(ys)
    if n == 0:
        raise QadtrError("no images to craft the patch on")
    while True:                                              # seeded epochs without replacement
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield convert(idx), ys[idx]


class PatchAttack:
    """Universal adversarial patch (Brown et al. 2017, https://arxiv.org/abs/1712.09665; LaVAN,
    Karmon et al. 2018, https://arxiv.org/abs/1801.02608), crafted on ``model`` at one bit-width.

    Arguments (all have defaults):
        model: a qadtr model (float RGB NCHW in [0,1] -> logits); may also be given to :meth:`generate`.
        bits: the bit-width to craft at (32 = float path).
        size: side of the patch's square box, in pixels.
        shape: ``"square"`` or ``"circle"`` (a disc inscribed in the box; the patch then has a mask channel).
        steps: optimisation steps; each is one forward/backward on ``batch_size`` images.
        lr: Adam learning rate, or the signed-gradient step size.
        optimizer: ``"adam"`` or ``"sign"`` (signed gradient descent, as in LaVAN / PGD).
        batch_size: images per step.
        target: ``None`` for untargeted, else the class the patch should force.
        rotation: max absolute rotation jitter in degrees (0 = none).
        scale: ``(low, high)`` scale jitter of the patch inside its box (``(1, 1)`` = none).
        seed: the initial patch, batch order, placements and jitter all follow it.
        progress: show a tqdm bar.

    ``attack(images, labels)`` (or ``generate(model, data, labels)``) returns the patch as float32
    numpy ``[3,h,w]`` (square) or ``[4,h,w]`` (channel 3 = {0,1} mask), in [0,1]: the convention of
    :mod:`qadtr.asr`, so it can be pasted and scored by any predictor. After a run, ``losses`` holds
    ``(bits, mean loss)`` per step and ``elapsed_s`` the crafting time.
    """

    def __init__(self, model=None, bits: int = 32, size: int = 6, shape: str = "square", steps: int = 500,
                 lr: float = 0.05, optimizer: str = "adam", batch_size: int = 128, target: int | None = None,
                 rotation: float = 0.0, scale: tuple[float, float] = (1.0, 1.0), seed: int = 0,
                 progress: bool = False):
        if int(size) < 1:
            raise QadtrError(f"patch size must be at least 1 pixel, got {size}")
        if shape not in SHAPES:
            raise QadtrError(f"unknown patch shape {shape!r}: choose from {', '.join(SHAPES)}")
        if optimizer not in OPTIMIZERS:
            raise QadtrError(f"unknown optimizer {optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
        if int(steps) < 0 or int(batch_size) < 1:
            raise QadtrError("steps must be >= 0 and batch size >= 1")
        lo, hi = (float(s) for s in scale)
        if not 0 < lo <= hi:
            raise QadtrError(f"scale jitter must satisfy 0 < low <= high, got {scale}")
        self.model, self.size, self.shape, self.steps = model, int(size), shape, int(steps)
        self.lr, self.optimizer, self.batch_size, self.target = float(lr), optimizer, int(batch_size), target
        self.rotation, self.scale, self.seed, self.progress = float(rotation), (lo, hi), int(seed), progress
        self.bits = self._crafting_bits(bits)
        self.losses: list[tuple[int, float]] = []
        self.elapsed_s = 0.0

    # --- what subclasses change -------------------------------------------------------------
    def _crafting_bits(self, bits) -> tuple[int, ...]:
        return (int(bits),)

    def _start(self, model, rgb, mask, batch, generator) -> None:
        """Called once before the first step."""

    def _choose_bits(self, step: int, generator: torch.Generator) -> int:
        return self.bits[0]

    def _observe(self, model, bits: int, loss: float, hits, step: int, rgb, mask, batch, generator) -> None:
        """Called after each step with the loss and per-image attack hits measured at ``bits`` before the update."""

    def _hits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per image: did the patched prediction do what the attacker wants (leave the label / hit the target)?"""
        pred = logits.argmax(1)
        return pred == self.target if self.target is not None else pred != labels

    # --- public API ---------------------------------------------------------------------------
    @property
    def mask(self) -> np.ndarray:
        return disc_mask(self.size, self.size) if self.shape == "circle" else np.ones((self.size,) * 2, np.float32)

    def area_percent(self, image_hw=(32, 32)) -> float:
        mask = self.mask if self.shape == "circle" else None
        return patch_area_percent((self.size, self.size), tuple(image_hw), mask)

    def __call__(self, images, labels=None) -> np.ndarray:
        return self.forward(images, labels)

    def forward(self, images, labels=None) -> np.ndarray:
        if self.model is None:
            raise QadtrError("no model: pass one to the constructor or call generate(model, ...)")
        return self.generate(self.model, images, labels)

    def generate(self, model, data, labels=None) -> np.ndarray:
        """Craft the patch on ``data``: an ArrayDataset, images ``[N,3,H,W]`` in [0,1] with ``labels``, or a
        loader of ``(images, labels)`` batches. Returns the patch (see the class docstring)."""
        missing = [b for b in self.bits if b not in tuple(model.bit_choices)]
        if missing:
            raise QadtrError(f"bit-width {missing[0]} is not in this model's set {sorted(model.bit_choices)}")
        generator = torch.Generator().manual_seed(self.seed)
        batches = _batches(data, labels, self.batch_size, generator)
        init = np.random.default_rng([INIT_STREAM, self.seed]).random((3, self.size, self.size), dtype=np.float32)
        # Random draws stay on a CPU generator (the same stream on any device); tensors follow the model.
        device = next(iter(model.parameters()), torch.empty(0)).device
        rgb = torch.tensor(init, device=device, requires_grad=True)
        mask = torch.from_numpy(self.mask).to(device)
        opt = torch.optim.Adam([rgb], lr=self.lr) if self.optimizer == "adam" else None

        was_training, previous_bits = model.training, get_bits(model)
        grad_flags = [(p, p.requires_grad) for p in model.parameters()]
        model.eval()
        for p, _ in grad_flags:      # only the patch needs gradients: skips every weight-gradient kernel
            p.requires_grad_(False)
        self.losses = []
        started = time.perf_counter()
        try:
            first = next(batches)
            self._check_fits(first[0])
            first = (first[0].to(device), first[1].to(device))
            self._start(model, rgb, mask, first, generator)
            steps = range(self.steps)
            if self.progress:
                from tqdm import tqdm

                steps = tqdm(steps, desc="crafting patch", unit="step", leave=False)
            batch = first
            for step in steps:
                if step:
                    batch = next(batches)
                batch = (batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True))
                b = self._choose_bits(step, generator)
                set_bits(model, b)
                logits = self._patched_logits(model, rgb, mask, batch, generator)
                loss = patch_loss(logits, batch[1], self.target).mean()
                (grad,) = torch.autograd.grad(loss, rgb)
                with torch.no_grad():
                    if opt is None:
                        rgb -= self.lr * grad.sign()
                    else:
                        rgb.grad = grad
                        opt.step()
                    rgb.clamp_(0.0, 1.0)
                value = float(loss.detach())
                self.losses.append((b, value))
                self._observe(model, b, value, self._hits(logits.detach(), batch[1]), step, rgb, mask, batch,
                              generator)
        finally:
            for p, flag in grad_flags:
                p.requires_grad_(flag)
            set_bits(model, *previous_bits)
            model.train(was_training)
        self.elapsed_s = time.perf_counter() - started
        out = rgb.detach().cpu().numpy().astype(np.float32)
        return np.concatenate([out, self.mask[None]], axis=0) if self.shape == "circle" else out

    # --- internals -----------------------------------------------------------------------------
    def _check_fits(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise QadtrError(f"images must be [N,3,H,W], got {list(images.shape)}")
        ih, iw = images.shape[-2:]
        if self.size > ih or self.size > iw:
            raise QadtrError(f"a {self.size}x{self.size} patch does not fit a {ih}x{iw} image")

    def _patched_logits(self, model, rgb, mask, batch, generator) -> torch.Tensor:
        """Logits of ``batch`` with the patch pasted at fresh random locations (with jitter), one per image."""
        x, _ = batch
        n, _, ih, iw = x.shape
        top = torch.randint(0, ih - self.size + 1, (n,), generator=generator)
        left = torch.randint(0, iw - self.size + 1, (n,), generator=generator)
        patch, m = self._jitter(rgb, mask, n, generator)
        soft_or_disc = m if self.shape == "circle" or m.dim() == 3 else None   # a plain square needs no mask
        adv = paste_patch(x, patch, torch.stack([top, left], 1).to(x.device), soft_or_disc)
        return model(adv)

    def _jitter(self, rgb, mask, n, generator):
        """Per-image rotation/scale of the patch inside its box (bilinear; the mask becomes soft at the edges)."""
        lo, hi = self.scale
        if self.rotation == 0 and lo == hi == 1.0:
            return rgb, mask
        angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(self.rotation)
        s = lo + torch.rand(n, generator=generator) * (hi - lo)
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        zero = torch.zeros(n)
        # affine_grid maps output to input coordinates, hence the inverse rotation and 1/scale.
        theta = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1).to(rgb.device)
        stacked = torch.cat([rgb, mask[None]], 0).expand(n, -1, -1, -1)
        grid = F.affine_grid(theta, list(stacked.shape), align_corners=False)
        warped = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return warped[:, :3], warped[:, 3]


class QuantAwarePatchAttack(PatchAttack):
    """A-QAPA: an adaptive quantization-aware patch, crafted inside the quantized model across ``bits``
    (QADT-R, https://arxiv.org/abs/2503.07058; patch objective of Brown et al. 2017,
    https://arxiv.org/abs/1712.09665).

    Every step runs at one bit-width ``b``, drawn with :func:`sampling_probabilities` from a running
    estimate ``W_b`` of how weak the patch currently is at ``b``, so steps go where it is weakest:

    * ``signal="survival"`` (default): ``W_b`` = the share of images the classifier gets right at ``b`` that
      it still gets right with the patch (1 - ASR; targeted: 1 - target hit rate). It is in the units of
      the metric, so it compares across bit-widths whose logits differ in scale.
    * ``signal="loss"``: ``W_b`` = the attacker loss (:func:`patch_loss`) at ``b``.

    ``W_b`` starts from a no-grad probe of every bit-width on the first batch (clean and patched forwards,
    which also start the running clean accuracy per bit-width), is updated after each step at ``b`` as
    ``W_b <- momentum * W_b + (1 - momentum) * w`` with ``w`` measured on that step's batch before the
    update, and every ``refresh_every`` steps all bit-widths are probed again. One step costs what a
    :class:`PatchAttack` step costs; each probe adds ``2 * len(bits)`` no-grad forwards (``probe_forwards``).

    Extra arguments: ``bits`` (the set, default (32, 8, 4, 2)), ``signal``, ``sampling`` (``"softmax"``,
    ``"proportional"`` or ``"uniform"``), ``temperature`` (softmax), ``floor`` (uniform share of the
    probability), ``momentum``, ``refresh_every`` (0 = never re-probe). After a run: ``bit_counts``,
    ``weakness`` (``W``), ``eligible_share`` (running share of images the attack can win on: the clean
    accuracy when untargeted), ``probabilities`` (the last used) and ``probe_forwards``.
    """

    SIGNALS = ("survival", "loss")

    def __init__(self, model=None, bits=(32, 8, 4, 2), signal: str = "survival", sampling: str = "softmax",
                 temperature: float = 0.1, floor: float = 0.1, momentum: float = 0.5, refresh_every: int = 25,
                 **kwargs):
        if sampling not in SAMPLING_RULES:
            raise QadtrError(f"unknown sampling rule {sampling!r}: choose from {', '.join(SAMPLING_RULES)}")
        if signal not in self.SIGNALS:
            raise QadtrError(f"unknown weakness signal {signal!r}: choose from {', '.join(self.SIGNALS)}")
        if not 0 <= floor <= 1 or not 0 <= momentum < 1:
            raise QadtrError("floor must lie in [0,1] and momentum in [0,1)")
        self.signal, self.sampling, self.temperature, self.floor = signal, sampling, float(temperature), float(floor)
        self.momentum, self.refresh_every = float(momentum), int(refresh_every)
        super().__init__(model, bits=bits, **kwargs)

    def _crafting_bits(self, bits) -> tuple[int, ...]:
        bits = tuple(dict.fromkeys(int(b) for b in (bits if isinstance(bits, Iterable) else [bits])))
        if not bits:
            raise QadtrError("A-QAPA needs at least one bit-width")
        return bits

    @property
    def eligible_share(self) -> np.ndarray:
        return self._clean_right / np.maximum(self._clean_seen, 1)

    def _eligible(self, clean_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images the attack can still win on: right when clean (untargeted), or not the target class."""
        if self.target is not None:
            return labels != self.target
        return clean_logits.argmax(1) == labels

    def _probe(self, model, rgb, mask, batch, generator) -> None:
        x, y = batch
        with torch.no_grad():
            for i, b in enumerate(self.bits):
                set_bits(model, b)
                eligible = self._eligible(model(x), y)
                logits = self._patched_logits(model, rgb, mask, batch, generator)
                self._clean_right[i] += int(eligible.sum())
                self._clean_seen[i] += len(y)
                if self.signal == "loss":
                    self.weakness[i] = float(patch_loss(logits, y, self.target).mean())
                elif eligible.any():
                    self.weakness[i] = 1.0 - float(self._hits(logits, y)[eligible].float().mean())
        self.probe_forwards += 2 * len(self.bits)

    def _start(self, model, rgb, mask, batch, generator) -> None:
        k = len(self.bits)
        self.bit_counts = {b: 0 for b in self.bits}
        self.weakness, self._clean_right, self._clean_seen = np.zeros(k), np.zeros(k), np.zeros(k)
        self.probe_forwards = 0
        self._probe(model, rgb, mask, batch, generator)

    def _choose_bits(self, step: int, generator: torch.Generator) -> int:
        self.probabilities = sampling_probabilities(self.weakness, self.sampling, self.temperature, self.floor)
        i = int(torch.multinomial(torch.as_tensor(self.probabilities), 1, generator=generator))
        self.bit_counts[self.bits[i]] += 1
        return self.bits[i]

    def _observe(self, model, bits, loss, hits, step, rgb, mask, batch, generator) -> None:
        i = self.bits.index(bits)
        if self.signal == "loss":
            w = loss
        else:
            # No clean forward in the hot path: the misses on the whole batch over the expected number of
            # eligible images (running clean accuracy from the probes) estimates the survival rate.
            eligible = self.eligible_share[i] * len(hits)
            misses = float((~hits).sum())
            w = min(misses / eligible, 1.0) if eligible > 0 else 0.0
        self.weakness[i] = self.momentum * self.weakness[i] + (1 - self.momentum) * w
        if self.refresh_every and (step + 1) % self.refresh_every == 0 and step + 1 < self.steps:
            self._probe(model, rgb, mask, batch, generator)

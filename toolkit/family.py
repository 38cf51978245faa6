"""A precision family: separately trained networks, one per bit-width, behind the ``set_bits`` API.

The paper's transfer setting quantizes *the same network* to several precisions by training each one
(plain QAT at 8, 4 and 2 bits, plus the float model). Wrapping those checkpoints in one module whose
``bit_choices`` are their bit-widths lets every attack, analysis and score written for a switchable
model (``set_bits``, ``bits``, A-QAPA's bit sampling) run on the family unchanged.
"""
from __future__ import annotations

from torch import nn

from .errors import QadtrError
from .quant import FLOAT_BITS


class PrecisionFamily(nn.Module):
    """``members[b]`` serves bit-width ``b`` (weights and activations both ``b``; 32 is float)."""

    def __init__(self, members: dict[int, nn.Module]):
        super().__init__()
        if not members:
            raise QadtrError("a precision family needs at least one member")
        for b, m in members.items():
            if int(b) not in tuple(m.bit_choices):
                raise QadtrError(f"family member for {b} bits was not built for {b} bits "
                                 f"(its set is {sorted(m.bit_choices)})")
        self.members = nn.ModuleDict({str(int(b)): m for b, m in members.items()})
        self.bit_choices = tuple(sorted((int(b) for b in members), reverse=True))
        self.switch(max(self.bit_choices))

    def switch(self, w: int, a: int | None = None) -> PrecisionFamily:
        from .switchable import set_bits

        a = w if a is None else a
        if w != a:
            raise ValueError(f"a precision family serves WbAb pairs only, not W{w}A{a}")
        if w not in self.bit_choices:
            raise ValueError(f"bit-width {w} is not in this model's set {sorted(self.bit_choices)}")
        set_bits(self.members[str(w)], w, a)
        self.active_bits = (w, a)
        return self

    def forward(self, x):
        return self.members[str(self.active_bits[0])](x)


def parse_family_spec(text: str) -> dict[int, str]:
    """``"32=float.pt,8=qat8.pt"`` -> ``{32: "float.pt", 8: "qat8.pt"}`` (one line of error otherwise)."""
    out: dict[int, str] = {}
    for item in (s.strip() for s in text.split(",") if s.strip()):
        bits, sep, path = item.partition("=")
        if not sep or not path or not bits.strip().isdigit():
            raise QadtrError(f"bad family member {item!r}: expected BITS=CHECKPOINT, e.g. 8=runs/qat8.pt")
        b = int(bits)
        if b != FLOAT_BITS and not 2 <= b <= 8:
            raise QadtrError(f"family bit-width {b} is outside 2..8 and 32")
        if b in out:
            raise QadtrError(f"family bit-width {b} given twice")
        out[b] = path
    if not out:
        raise QadtrError("empty family spec: expected BITS=CHECKPOINT[,BITS=CHECKPOINT...]")
    return out


def family_from_checkpoints(paths: dict[int, str]) -> tuple[PrecisionFamily, dict[int, dict]]:
    """Load each checkpoint and wrap them; all must share one architecture. Returns (family, payloads)."""
    from .checkpoint import load_checkpoint, model_from_checkpoint

    payloads = {b: load_checkpoint(p) for b, p in paths.items()}
    archs = {pl["config"]["arch"] for pl in payloads.values()}
    if len(archs) > 1:
        raise QadtrError(f"family members have different architectures: {sorted(archs)}")
    family = PrecisionFamily({b: model_from_checkpoint(pl) for b, pl in payloads.items()})
    return family, payloads


def load_model_or_family(spec: str):
    """``(payload, model, sha256)`` for a checkpoint path or a ``BITS=CKPT,...`` family spec.

    For a family, ``payload`` is the first member's with a ``family`` entry added, and ``sha256`` lists
    every member's hash as ``BITS=SHA,...``.
    """
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .io import sha256_file

    if "=" in str(spec):
        paths = parse_family_spec(str(spec))
        model, payloads = family_from_checkpoints(paths)
        payload = {**next(iter(payloads.values())), "family": {str(b): str(p) for b, p in paths.items()}}
        return payload, model, ",".join(f"{b}={sha256_file(p)}" for b, p in paths.items())
    payload = load_checkpoint(spec)
    return payload, model_from_checkpoint(payload), sha256_file(spec)

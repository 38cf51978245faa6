import numpy as np
import pytest
import torch
from qadtr.asr import apply_patch, disc_mask, random_locations
from qadtr.attacks.paste import paste_patch


@pytest.mark.parametrize("masked", [False, True])
def test_torch_paste_matches_numpy_paste_exactly(masked):
    x = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    p = np.random.default_rng(1).random((3, 7, 5), dtype=np.float32)
    loc = random_locations(16, (32, 32), (7, 5), seed=2)
    m = disc_mask(7, 5)
    ref = apply_patch(x, np.concatenate([p, m[None]]) if masked else p, loc)
    got = paste_patch(torch.tensor(x), torch.tensor(p), loc, torch.tensor(m) if masked else None)
    assert np.array_equal(ref, got.numpy())


def test_gradient_reaches_every_patch_pixel_once_per_image():
    x = torch.rand(5, 3, 16, 16)
    p = torch.rand(3, 4, 4, requires_grad=True)
    paste_patch(x, p, random_locations(5, (16, 16), (4, 4), seed=0)).sum().backward()
    assert torch.all(p.grad == 5)

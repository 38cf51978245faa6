import pickle

import numpy as np
import pytest
import torch
from qadtr.data.arrays import load_dataset, synthetic
from qadtr.data.loader import BatchLoader, augment, cutout, trivial_augment
from qadtr.errors import DataError


def _arrays(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def test_npz_cifar_layout(tmp_path):
    x, y = _arrays()
    np.savez(tmp_path / "cifar10_test.npz", x=x, y=y)
    d = load_dataset("cifar10", "test", tmp_path)
    assert np.array_equal(d.x, x) and np.array_equal(d.y, y) and d.classes[0] == "airplane"


def test_torchvision_batches_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x, y = _arrays(10)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(10, -1), b"labels": list(y)}, f)
    d = load_dataset("cifar10", "test", tmp_path)
    assert np.array_equal(d.x, x) and list(d.y) == list(y)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_batches_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f)
    with pytest.raises(DataError, match="refusing"):
        load_dataset("cifar10", "test", tmp_path)
    assert "pwned" not in capsys.readouterr().out


def test_image_folder(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(tmp_path / "train" / cls / f"{i}.png")
    d = load_dataset("imagefolder", "train", tmp_path)
    assert d.x.shape == (6, 8, 8, 3) and d.classes == ("cat", "dog") and list(d.y) == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("case", ["missing", "empty", "unset", "no-cifar"])
def test_bad_data_folder_is_one_clear_error(tmp_path, monkeypatch, case):
    monkeypatch.delenv("QADTR_DATA_DIR", raising=False)
    path = {"missing": tmp_path / "nope", "empty": tmp_path, "unset": None}.get(case)
    if case == "no-cifar":
        (tmp_path / "readme.txt").write_text("x")
        path = tmp_path
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "train", path)
    assert "\n" not in str(e.value)


def test_loader_is_seeded_and_covers_each_image_once():
    d = synthetic(100, seed=1)
    a = [y for _, y in BatchLoader(d, 32, shuffle=True, seed=3)]
    b = [y for _, y in BatchLoader(d, 32, shuffle=True, seed=3)]
    c = [y for _, y in BatchLoader(d, 32, shuffle=True, seed=4)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    assert sorted(torch.cat(a).tolist()) == sorted(d.y.tolist())


def test_augment_crops_and_flips_within_padding():
    x = torch.rand(64, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    # Every output is a shifted (possibly flipped) window of its zero-padded input.
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(8):
        ok = any(torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32]) or
                 torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32].flip(2))
                 for dy in range(9) for dx in range(9))
        assert ok
    assert not torch.equal(out, x)


def test_loader_with_crop_pad_zero_only_flips():
    data = synthetic(64, seed=0)
    x = next(iter(BatchLoader(data, 64)))[0]
    out = next(iter(BatchLoader(data, 64, augment=True, seed=1, crop_pad=0)))[0]
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    assert (same | flipped).all()  # no shift: JPEG's 8x8 grid stays where it was
    assert same.any() and flipped.any()


def test_cutout_zeroes_one_square_per_image_clipped_at_the_border():
    x = torch.rand(200, 3, 32, 32) + 0.01  # no zeros before cutout
    out = cutout(x.clone(), torch.Generator().manual_seed(0), 16)
    zero = out[:, 0] == 0
    assert torch.equal(zero, (out == 0).all(1))  # the same pixels in every channel
    assert torch.equal(out[~(out == 0)], x[~(out == 0)])  # nothing else changed
    for mask in zero:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        # One solid rectangle, 16 on a side unless it hangs over the border.
        assert mask.sum() == len(rows) * len(cols) and 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16
    sides = [int(m.any(1).sum()) for m in zero]
    assert 16 in sides and min(sides) < 16  # inside squares and clipped ones both occur


def test_loader_applies_cutout_only_when_asked():
    data = synthetic(64, seed=0)
    plain = next(iter(BatchLoader(data, 64, augment=True, seed=1)))[0]
    cut = next(iter(BatchLoader(data, 64, augment=True, seed=1, cutout=8)))[0]
    assert torch.equal(plain[cut != 0], cut[cut != 0]) and (cut == 0).sum() > (plain == 0).sum()


def test_trivial_augment_is_seeded_per_image_and_leaves_the_global_rng_alone():
    x = torch.from_numpy(synthetic(64, seed=0).x).permute(0, 3, 1, 2).contiguous()
    state = torch.get_rng_state()
    out = trivial_augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, trivial_augment(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(out, trivial_augment(x, torch.Generator().manual_seed(6)))
    changed = (out != x).flatten(1).float().mean(1)
    # One op per image, drawn per image: some images stay (identity, or a zero strength), the rest change by
    # different amounts, unlike one op for the whole batch.
    assert (changed == 0).any() and (changed > 0).sum() >= 32
    assert len(set(changed.tolist())) >= 16


def test_loader_trivial_augment_only_with_augment_and_reproducible():
    data = synthetic(64, seed=0)
    plain = next(iter(BatchLoader(data, 64, augment=True, seed=1)))[0]
    strong = next(iter(BatchLoader(data, 64, augment=True, seed=1, trivial_augment=True)))[0]
    again = next(iter(BatchLoader(data, 64, augment=True, seed=1, trivial_augment=True)))[0]
    assert torch.equal(strong, again) and not torch.equal(strong, plain)
    assert strong.dtype == torch.float32 and strong.min() >= 0 and strong.max() <= 1
    # Evaluation loaders never augment, whatever the flag says.
    assert torch.equal(next(iter(BatchLoader(data, 64, trivial_augment=True)))[0],
                      next(iter(BatchLoader(data, 64)))[0])

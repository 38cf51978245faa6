import numpy as np
import pytest
from qadtr.asr import (
    PatchFormatError,
    apply_patch,
    attack_metrics,
    disc_mask,
    grid_locations,
    random_locations,
    random_noise_patch,
    split_patch,
)


def test_locations_are_seeded_and_inside_the_image():
    a = random_locations(500, (32, 32), (6, 6), seed=3)
    assert np.array_equal(a, random_locations(500, (32, 32), (6, 6), seed=3))
    assert not np.array_equal(a, random_locations(500, (32, 32), (6, 6), seed=4))
    assert a.min() >= 0 and a.max() <= 26


def test_apply_patch_changes_only_the_box():
    rng = np.random.default_rng(0)
    x = rng.random((4, 3, 32, 32), dtype=np.float32)
    patch = np.zeros((3, 5, 7), np.float32)
    loc = np.array([[0, 0], [27, 25], [10, 3], [4, 20]])
    y = apply_patch(x, patch, loc)
    for i, (t, left) in enumerate(loc):
        assert np.all(y[i, :, t:t + 5, left:left + 7] == 0)
        keep = np.ones((32, 32), bool)
        keep[t:t + 5, left:left + 7] = False
        assert np.array_equal(y[i][:, keep], x[i][:, keep])
    assert np.array_equal(x, x.copy())  # input untouched


def test_masked_patch_keeps_pixels_outside_the_disc():
    x = np.full((1, 3, 8, 8), 0.5, np.float32)
    patch = np.concatenate([np.ones((3, 8, 8), np.float32), disc_mask(8, 8)[None]])
    y = apply_patch(x, patch, np.array([[0, 0]]))
    assert y[0, :, 0, 0].tolist() == [0.5] * 3 and y[0, :, 4, 4].tolist() == [1.0] * 3


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 3), np.float32), np.zeros((3, 3), np.float32),
                                 np.full((3, 2, 2), 1.5, np.float32), np.zeros((3, 2, 2), np.uint8)])
def test_bad_patches_are_refused(bad):
    with pytest.raises(PatchFormatError):
        split_patch(bad)


def test_patch_larger_than_image_is_refused():
    with pytest.raises(PatchFormatError):
        random_locations(3, (8, 8), (9, 2), seed=0)


def test_noise_control_keeps_shape_and_mask():
    patch = np.concatenate([np.zeros((3, 6, 6), np.float32), disc_mask(6, 6)[None]])
    noise = random_noise_patch(patch, seed=1)
    assert noise.shape == patch.shape and np.array_equal(noise[3], patch[3])
    assert 0 <= noise.min() and noise.max() <= 1 and noise[:3].std() > 0.2


def test_grid_covers_corners():
    g = grid_locations((32, 32), (6, 6), 2)
    assert [0, 0] in g.tolist() and [26, 26] in g.tolist()


def test_metrics_denominators():
    labels = np.array([0, 1, 2, 3, 4])
    clean = np.array([0, 1, 2, 0, 0])      # 3 correct
    patched = np.array([9, 1, 9, 9, 4])    # breaks 2 of the 3, fixes image 4
    m = attack_metrics(labels, clean, patched, target=9)
    assert m["clean_correct"] == 3 and m["asr"] == pytest.approx(2 / 3)
    assert m["asr_all"] == pytest.approx(3 / 5) and m["robust_acc"] == pytest.approx(2 / 5)
    assert m["flip_rate"] == pytest.approx(4 / 5) and m["target_hit_rate"] == pytest.approx(3 / 5)

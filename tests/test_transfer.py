import numpy as np
from qadtr.transfer import matrix_markdown, to_float_nchw, transfer_matrix


def _red_detector(images):
    """Predicts class 1 when the image holds a pure-red 4x4 block, else class 0."""
    red = (images[:, 0] > 0.99) & (images[:, 1] < 0.01) & (images[:, 2] < 0.01)
    logits = np.zeros((len(images), 2), np.float32)
    logits[:, 1] = red.reshape(len(images), -1).sum(1) >= 16
    return logits


def test_matrix_scores_a_working_patch_above_its_control():
    images = np.full((50, 3, 16, 16), 0.5, np.float32)
    labels = np.zeros(50, np.int64)
    red = np.zeros((3, 4, 4), np.float32)
    red[0] = 1.0
    gray = np.full((3, 4, 4), 0.5, np.float32)
    res = transfer_matrix({"m": _red_detector, "m2": _red_detector}, {"red": red, "gray": gray}, images, labels,
                          seed=1, batch_size=7)
    cells = {(c["patch"], c["target"]): c for c in res["cells"]}
    assert res["clean_acc"] == {"m": 1.0, "m2": 1.0}
    assert cells["red", "m"]["patch_metrics"]["asr"] == 1.0
    assert cells["red", "m"]["control_metrics"]["asr"] == 0.0
    assert cells["gray", "m2"]["patch_metrics"]["asr"] == 0.0
    md = matrix_markdown(res)
    assert "| red | 100.0% (0.0%) | 100.0% (0.0%) |" in md


def test_uint8_nhwc_becomes_unit_float_nchw():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    y = to_float_nchw(x)
    assert y.shape == (2, 3, 4, 4) and y.dtype == np.float32 and y[0, 1, 0, 0] == np.float32(1 / 255)

"""benchmarks/jpeg_quality.py: reads a JPEG encoder's quality and chroma subsampling back from decoded pixels."""
import io

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("jpeg_quality")


def _textured_images(n: int = 300, seed: int = 0) -> np.ndarray:
    """Smooth colour fields plus fine noise: enough energy at every frequency for the steps to be read."""
    rng = np.random.default_rng(seed)
    # random plane waves: no edges aligned with the 8x8 grid or the 2x2 chroma pairs
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    freq = rng.uniform(0.05, 1.2, size=(n, 6, 3, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 6, 3))
    amp = rng.uniform(5, 30, size=(n, 6, 3))
    waves = amp[..., None, None] * np.sin(freq[..., 0, None, None] * yy + freq[..., 1, None, None] * xx
                                          + phase[..., None, None])
    img = 128 + waves.sum(axis=1).transpose(0, 2, 3, 1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _encode(x: np.ndarray, quality: int, subsampling: int) -> np.ndarray:
    out = np.empty_like(x)
    for k, img in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
        out[k] = np.asarray(Image.open(buf).convert("RGB"))
    return out


@pytest.mark.parametrize("quality", [35, 60, 85])
def test_recovers_quality(quality, bench):
    found = bench.analyse(_encode(_textured_images(), quality, subsampling=2))
    assert found["quality"] == quality
    assert found["agreement"] >= 0.8


def test_ijg_table_matches_pillow_at_75(bench):
    # Pillow writes libjpeg's scaled tables; read its luma table back from an encoded file
    buf = io.BytesIO()
    Image.fromarray(_textured_images(1)[0]).save(buf, format="JPEG", quality=75)
    written = np.array(Image.open(buf).quantization[0]).reshape(8, 8)
    zigzag_free = np.sort(written.ravel())  # Pillow may report the table in zig-zag order
    assert (np.sort(bench.ijg_luma_table(75).ravel()) == zigzag_free).all()


@pytest.mark.parametrize("quality", [35, 85])
def test_tells_subsampled_chroma_from_full(quality, bench):
    x = _textured_images()
    assert bench.analyse(_encode(x, quality, subsampling=2))["chroma_readable_steps"] == 0
    assert bench.analyse(_encode(x, quality, subsampling=0))["chroma_readable_steps"] >= 8


def test_recompress_keeps_shape_and_dtype(bench):
    x = _textured_images(4)
    y = bench.recompress(x, 50, subsampling=0)
    assert y.shape == x.shape and y.dtype == np.uint8
    assert not np.array_equal(x, y)

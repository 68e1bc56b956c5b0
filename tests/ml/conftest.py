"""Tiny synthetic image data for ml/ tests: CPU, seconds, no files unless a test writes them."""

import numpy as np
import pytest

from ml import ImageData


def brightness_images(n: int, *, size=(16, 16), channels=3, num_classes=3, seed=0):
    """Noise images whose class is the brightness of channel 0: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes  # balanced
    rng.shuffle(y)
    x = rng.integers(0, 100, (n, *size, channels))
    x[..., 0] += (y * (155 // max(num_classes - 1, 1)))[:, None, None]
    return x.astype(np.uint8), y.astype(np.int64)


def brightness_data(n_train=240, n_val=60, *, size=(16, 16), channels=3, num_classes=3, seed=0) -> ImageData:
    x, y = brightness_images(n_train + n_val, size=size, channels=channels, num_classes=num_classes, seed=seed)
    return ImageData(x[:n_train], y[:n_train], x[n_train:], y[n_train:], [f"class{i}" for i in range(num_classes)])


def noise_data(n=16, *, size=(8, 8), channels=3, num_classes=4, seed=0) -> ImageData:
    """Random pixels with random labels: nothing to learn, everything to memorise."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *size, channels), dtype=np.uint8)
    y = rng.integers(0, num_classes, n).astype(np.int64)
    empty = np.zeros((0, *size, channels), dtype=np.uint8)
    return ImageData(x, y, empty, np.zeros(0, dtype=np.int64), [f"c{i}" for i in range(num_classes)])


@pytest.fixture(scope="session")
def make_brightness_data():
    return brightness_data


@pytest.fixture(scope="session")
def make_noise_data():
    return noise_data

"""Small networks shared by several test modules."""

from refmem import AvgPool2d, Conv2d, Dense, Flatten, Network, ReLU


def deep_cnn(rng, width=2):
    """A narrow 3-conv ReLU network: the Gaussian closure is visibly biased at σ ≈ 0.15."""
    return Network([
        Conv2d(rng.normal(size=(width, 1, 3, 3)) / 2, rng.normal(size=width) * 0.1, 1, 1), ReLU(),
        Conv2d(rng.normal(size=(width, width, 3, 3)) / 3, rng.normal(size=width) * 0.1, 1, 1),
        ReLU(), AvgPool2d(2),
        Conv2d(rng.normal(size=(width, width, 3, 3)) / 3, rng.normal(size=width) * 0.1, 1, 1),
        ReLU(), Flatten(),
        Dense(rng.normal(size=(3, width * 9)) / 3, rng.normal(size=3) * 0.1)], (1, 6, 6))

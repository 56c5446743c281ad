"""Constructors of the seed papers' networks (trainable :class:`Sequential` objects).

- :func:`mlp` — MohammadiRad & Sojodishijani's fully connected MNIST classifiers 784-N-10 and
  784-N-N-10 (ReLU, cross-entropy; seed 000, Sec. II), and Kern et al.'s regression net
  (inputs-50-outputs, ReLU, MSE; seed 002, Sec. VI-A).
- :func:`cnn13` — Kern et al.'s classification CNN (seed 002, Fig. 3 and Sec. VI-A): 13 3×3
  convolutions (stride 1, padding 1) in five blocks of 16,16 | 32,32 | 64,64,64 |
  128,128,128 | 256,256,256 filters, each conv followed by batchnorm and ReLU, each block by
  2×2 average pooling and dropout; classifier dense 256→256, ReLU, dropout, dense 256→10.
  ``width_div`` divides every width (``cnn13(width_div=8)`` is small enough for tests).

Initialisation is PyTorch's default (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and
biases; batchnorm γ=1, β=0) drawn from ``numpy.random.default_rng(seed)``.

Notes
-----
Kern et al. do not state the dropout probabilities; ``p_block=0.2`` and
``p_classifier=0.5`` are this implementation's choice (both are arguments). Convolutions
followed by batchnorm have no bias by default (the batchnorm shift makes it redundant; fusion
at mapping time creates the crossbar bias row, theory §7).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .backprop import TAvgPool2d, TBatchNorm, TConv2d, TDense, TDropout, TFlatten, TReLU
from .model import Sequential

CNN13_BLOCKS = ((16, 16), (32, 32), (64, 64, 64), (128, 128, 128), (256, 256, 256))


def mlp(n_in, hidden, n_out, *, seed=0, dtype=np.float64, dropout=0.0) -> Sequential:
    """Fully connected ReLU network ``n_in - hidden[0] - … - n_out``.

    Parameters
    ----------
    n_in, n_out : int
    hidden : int or sequence of int
        Hidden widths (seed 000: ``N`` or ``(N, N)``; seed 002 regression: ``50``).
    seed : int
        Initialisation seed.
    dtype : float64 (default) or float32
    dropout : float, default 0
        Dropout probability after every hidden ReLU (0: no dropout layers).

    Returns
    -------
    Sequential with input shape ``(n_in,)``; output logits (no softmax) or regression values.
    """
    hidden = [hidden] if np.isscalar(hidden) else list(hidden)
    widths = [int(n_in)] + [int(h) for h in hidden] + [int(n_out)]
    if any(w < 1 for w in widths):
        raise ConfigError(f"layer widths must be positive, got {widths}")
    rng = np.random.default_rng(seed)
    layers = []
    for k in range(len(widths) - 1):
        layers.append(TDense.init(widths[k], widths[k + 1], rng, dtype=dtype))
        if k < len(widths) - 2:
            layers.append(TReLU())
            if dropout:
                layers.append(TDropout(dropout))
    return Sequential(layers, (widths[0],), dtype)


def cnn13(width_div=1, *, n_classes=10, in_channels=1, input_size=32, p_block=0.2,
          p_classifier=0.5, conv_bias=False, seed=0, dtype=np.float64) -> Sequential:
    """Kern et al.'s 13-convolution classification network (see the module docstring).

    Parameters
    ----------
    width_div : int, default 1
        Divide every conv width and the classifier width by this (at least 1 channel).
    n_classes : int, default 10
    in_channels : int, default 1
        1 for padded Fashion-MNIST / MNIST, 3 for CIFAR-10.
    input_size : int, default 32
        Side of the square input; must be divisible by 32 (five 2×2 poolings).
    p_block, p_classifier : float
        Dropout after every block's pooling and in the classifier.
    conv_bias : bool, default False
        Give the convolutions a bias (redundant before batchnorm).
    seed : int
    dtype : float64 (default) or float32

    Returns
    -------
    Sequential with input shape ``(in_channels, input_size, input_size)``.
    """
    width_div = int(width_div)
    if width_div < 1:
        raise ConfigError(f"width_div must be a positive integer, got {width_div}")
    if input_size % 32:
        raise ConfigError(f"input_size must be a multiple of 32 (five 2x2 poolings), "
                          f"got {input_size}")
    rng = np.random.default_rng(seed)
    layers = []
    c = int(in_channels)
    for block in CNN13_BLOCKS:
        for w in block:
            w = max(1, w // width_div)
            layers += [TConv2d.init(c, w, 3, rng, stride=1, padding=1, bias=conv_bias,
                                    dtype=dtype),
                       TBatchNorm.init(w, dtype=dtype), TReLU()]
            c = w
        layers += [TAvgPool2d(2), TDropout(p_block)]
    side = input_size // 32
    n_flat = c * side * side
    n_hidden = max(1, 256 // width_div)
    layers += [TFlatten(), TDense.init(n_flat, n_hidden, rng, dtype=dtype), TReLU(),
               TDropout(p_classifier), TDense.init(n_hidden, n_classes, rng, dtype=dtype)]
    return Sequential(layers, (int(in_channels), input_size, input_size), dtype)

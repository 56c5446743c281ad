"""Framework-free training (explicit backprop, SGD/Adam) of the seed papers' networks.

Everything is plain NumPy: explicit forward/backward per layer
(:mod:`~refmem.training.backprop`), losses (:mod:`~refmem.training.losses`), optimizers and
the step schedule (:mod:`~refmem.training.optim`), noise-aware training
(:mod:`~refmem.training.noise`), the loop with exact checkpoint/resume
(:mod:`~refmem.training.trainer`) and the seed papers' architectures
(:mod:`~refmem.training.models`). A trained :class:`Sequential` becomes a
:class:`refmem.Network` with :meth:`Sequential.to_network` and is written with
:func:`refmem.save_model`.

Example
-------
>>> import numpy as np
>>> from refmem.training import Adam, Trainer, mlp
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(64, 4)); y = (x[:, 0] > 0).astype(np.int64)
>>> model = mlp(4, 8, 2, seed=0)
>>> tr = Trainer(model, "cross_entropy", Adam(1e-2), batch_size=16, seed=0, progress=False)
>>> hist = tr.fit(x, y, epochs=2)
>>> net = model.to_network(input_preprocessing="none", attrs=tr.metadata())
"""

from .backprop import (TAvgPool2d, TBatchNorm, TConv2d, TDense, TDropout, TFlatten,  # noqa: F401
                       TLayer, TReLU)
from .losses import MSE, CrossEntropy  # noqa: F401
from .model import Sequential  # noqa: F401
from .models import cnn13, mlp  # noqa: F401
from .noise import DeviceNoise, MultiplicativeNoise  # noqa: F401
from .optim import SGD, Adam, StepLR  # noqa: F401
from .trainer import Trainer  # noqa: F401

__all__ = ["Sequential", "Trainer", "SGD", "Adam", "StepLR", "CrossEntropy", "MSE",
           "MultiplicativeNoise", "DeviceNoise", "mlp", "cnn13", "TDense", "TConv2d",
           "TAvgPool2d", "TReLU", "TFlatten", "TBatchNorm", "TDropout", "TLayer"]

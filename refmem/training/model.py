"""A trainable sequential network that converts to and from :class:`refmem.Network`.

:class:`Sequential` chains the trainable layers of :mod:`refmem.training.backprop`. Parameters
are addressed by names ``"<position>.<name>"`` (``"03.weight"``, ``"04.running_var"``) where
``position`` is the layer's index in the network, i.e. the HDF5 group ``/layers/03`` of the
model file (``docs/model_format.md``), so checkpoints and saved models use one naming.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError
from ..network import Network
from .backprop import TConv2d, TDense, TLayer, from_layer


class Sequential:
    """Ordered trainable layers with the per-sample input shape.

    Parameters
    ----------
    layers : list of TLayer
    input_shape : tuple of int
        One input without the batch axis, ``(n,)`` or ``(C, H, W)``.
    dtype : numpy dtype, default float64
        Parameter and activation dtype (float32 allowed for large networks).
    """

    def __init__(self, layers, input_shape, dtype=np.float64):
        self.layers = list(layers)
        for i, l in enumerate(self.layers):
            if not isinstance(l, TLayer):
                raise ConfigError(f"layer {i:02d} is not a trainable layer ({type(l).__name__})")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ConfigError(f"dtype must be float32 or float64, got {self.dtype}")
        for l in self.layers:
            l.astype(self.dtype)
        self.to_network().validate()            # shape flow checked once, with layer names

    # ------------------------------------------------------------------ parameters
    def named_params(self) -> dict:
        """``{"03.weight": array, …}`` — the live arrays (optimizers update them in place)."""
        return {f"{i:02d}.{k}": v for i, l in enumerate(self.layers) for k, v in l.params.items()}

    def named_grads(self) -> dict:
        return {f"{i:02d}.{k}": l.grads[k] for i, l in enumerate(self.layers) for k in l.params}

    def named_buffers(self) -> dict:
        return {f"{i:02d}.{k}": v for i, l in enumerate(self.layers) for k, v in l.buffers.items()}

    def state_arrays(self) -> dict:
        """Parameters and buffers (everything a checkpoint must restore)."""
        return {**self.named_params(), **self.named_buffers()}

    def load_state_arrays(self, arrays: dict, where="state"):
        """Copy arrays into the live parameters/buffers; names and shapes must match exactly."""
        own = self.state_arrays()
        if set(own) != set(arrays):
            missing = sorted(set(own) - set(arrays))
            extra = sorted(set(arrays) - set(own))
            raise DataError(f"{where} does not match the model: missing {missing[:3]}, "
                            f"unexpected {extra[:3]}")
        for k, v in own.items():
            a = np.asarray(arrays[k])
            if a.shape != v.shape:
                raise DataError(f"{where}: {k} has shape {a.shape}, the model has {v.shape}")
            v[...] = a

    def crossbar_layers(self) -> list:
        """Positions of the dense / conv2d layers (crossbar order of theory §3)."""
        return [i for i, l in enumerate(self.layers) if isinstance(l, (TDense, TConv2d))]

    @property
    def n_params(self) -> int:
        return int(sum(v.size for v in self.named_params().values()))

    # ------------------------------------------------------------------ forward/backward
    def check_input(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise DataError(f"input must be numeric, got dtype {x.dtype}")
        if tuple(x.shape[1:]) != self.input_shape:
            raise DataError(f"input has shape {tuple(x.shape)} but the network expects "
                            f"(B, {', '.join(map(str, self.input_shape))})")
        return np.ascontiguousarray(x, dtype=self.dtype)

    def forward(self, x, train=False, rng=None) -> np.ndarray:
        """Forward of a batch ``(B, *input_shape)``; returns ``(B, n_out)``.

        ``train=True`` uses batch statistics in batchnorm (and updates the running ones) and
        applies dropout with draws from ``rng``; it caches what :meth:`backward` needs.
        """
        x = self.check_input(x)
        for layer in self.layers:
            x = layer.forward(x, train, rng)
        return x.reshape(x.shape[0], -1)

    def backward(self, dout) -> np.ndarray:
        """Back-propagate ``∂L/∂out`` ``(B, n_out)``; fills every layer's ``grads``."""
        d = np.asarray(dout, dtype=self.dtype)
        for layer in reversed(self.layers):
            d = layer.backward(d)
        return d.reshape((d.shape[0],) + self.input_shape)

    # ------------------------------------------------------------------ conversion
    def to_network(self, input_preprocessing=None, attrs=None) -> Network:
        """The :class:`refmem.Network` (float64 copies) for :func:`refmem.save_model`."""
        return Network([l.to_layer() for l in self.layers], self.input_shape,
                       input_preprocessing, dict(attrs or {}))

    @classmethod
    def from_network(cls, net: Network, dtype=np.float64) -> "Sequential":
        """Trainable copy of a :class:`refmem.Network` (e.g. for fine-tuning a loaded model)."""
        net.validate()
        return cls([from_layer(l, dtype) for l in net.layers], net.input_shape, dtype)

    def describe(self) -> str:
        shapes = self.to_network().shapes
        rows = [f"{i:02d} {l.type:<9} {str(shapes[i]):>16} -> {str(shapes[i + 1]):<16} "
                f"{sum(v.size for v in l.params.values()):>9d}" for i, l in enumerate(self.layers)]
        return "\n".join(rows + [f"parameters: {self.n_params}"])

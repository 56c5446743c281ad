"""A network as an ordered list of explicit-matrix layers, and its crossbar (fused) form.

:class:`Network` holds the layers as stored in a model file (batchnorm and dropout included)
and computes the noiseless reference forward. :meth:`Network.fused` returns the network that
is mapped to crossbars: every batchnorm fused into the dense / conv layer directly before it
(theory §7; a batchnorm anywhere else is an error), dropouts removed (identity at inference).
Crossbar layers (dense and conv2d) of the fused network are numbered 0, 1, … in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import DataError, ModelFileError
from .layers import BatchNorm, Conv2d, Dense, Dropout, Layer, LAYER_TYPES


def _name(i, layer):
    return f"layer {i:02d} ({layer.type})"


@dataclass
class Network:
    """Ordered layers with the per-sample input shape.

    Parameters
    ----------
    layers : list of Layer
    input_shape : tuple of int
        Shape of one input without the batch axis, e.g. ``(784,)`` or ``(1, 28, 28)``.
    input_preprocessing : str or None
        Name of the preprocessing the network expects (recorded in the model file).
    attrs : dict
        Extra root attributes (training metadata), kept on round trips.
    """

    layers: list
    input_shape: tuple
    input_preprocessing: str | None = None
    attrs: dict = field(default_factory=dict)

    def __post_init__(self):
        self.input_shape = tuple(int(s) for s in self.input_shape)
        self.layers = list(self.layers)
        self._shapes = None

    # ------------------------------------------------------------------ validation
    def validate(self):
        """Check types, parameter shapes, finiteness and shape flow; return the shapes.

        Raises :class:`~refmem.errors.ModelFileError` naming the layer and the problem.
        """
        if not self.input_shape or any(s < 1 for s in self.input_shape):
            raise ModelFileError(f"input_shape {self.input_shape} is not a valid shape")
        if len(self.input_shape) not in (1, 3):
            raise ModelFileError(f"input_shape must be (n,) or (C, H, W), got {self.input_shape}")
        shapes = [self.input_shape]
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer) or layer.type not in LAYER_TYPES:
                raise ModelFileError(f"layer {i:02d}: unknown or unsupported layer type "
                                     f"{getattr(layer, 'type', type(layer).__name__)!r}")
            _check_params(i, layer)
            try:
                shape = tuple(int(s) for s in layer.output_shape(shape))
            except ModelFileError as e:
                raise ModelFileError(f"{_name(i, layer)}: {e}") from None
            shapes.append(shape)
        self._shapes = shapes
        return shapes

    @property
    def shapes(self):
        """``shapes[i]`` is the input shape of layer i; ``shapes[-1]`` the output shape."""
        if self._shapes is None:
            self.validate()
        return self._shapes

    @property
    def output_shape(self):
        return self.shapes[-1]

    @property
    def n_out(self):
        return int(np.prod(self.output_shape))

    # ------------------------------------------------------------------ forward
    def check_input(self, x) -> np.ndarray:
        """Validate a batch ``x`` of shape ``(B, *input_shape)`` and return it as float64."""
        x = np.asarray(x)
        if x.dtype.kind not in "iuf":
            raise DataError(f"input must be a float or integer array, got dtype {x.dtype}")
        x = x.astype(np.float64, copy=False)
        if x.ndim == len(self.input_shape):
            x = x[None]
        if tuple(x.shape[1:]) != self.input_shape:
            raise DataError(f"input has shape {tuple(x.shape)} but the network expects "
                            f"(B, {', '.join(map(str, self.input_shape))})")
        if x.shape[0] == 0:
            raise DataError("input batch is empty (0 samples)")
        if not np.all(np.isfinite(x)):
            raise DataError("input contains NaN or infinite values")
        return x

    def forward(self, x, *, upto=None) -> np.ndarray:
        """Noiseless reference forward of a batch; returns ``(B, n_out)`` (flattened output)."""
        x = self.check_input(x)
        shapes = self.shapes
        n = len(self.layers) if upto is None else upto
        for i in range(n):
            x = self.layers[i].forward(x, shapes[i])
        return x.reshape(x.shape[0], -1)

    # ------------------------------------------------------------------ fusion
    def fused(self) -> "Network":
        """The crossbar form: batchnorm fused into the preceding dense/conv, dropout removed.

        Theory §7: ``K' = K γ/sqrt(var+ε)`` per output channel and
        ``b' = (b - mean) γ/sqrt(var+ε) + β``. A fused layer always has a bias.
        """
        self.validate()
        out = []
        prev_src = None
        for i, layer in enumerate(self.layers):
            if isinstance(layer, BatchNorm):
                if not out or prev_src is None or not isinstance(out[-1], (Dense, Conv2d)):
                    raise ModelFileError(
                        f"{_name(i, layer)} does not directly follow a dense or conv2d layer; "
                        "refmem can only fuse batchnorm into the crossbar layer before it")
                prev = out[-1]
                scale, shift = layer.scale_shift()
                shp = (-1,) + (1,) * (prev.weight.ndim - 1)
                w = prev.weight * scale.reshape(shp)
                b0 = prev.bias if prev.bias is not None else np.zeros(prev.weight.shape[0])
                b = b0 * scale + shift
                if isinstance(prev, Dense):
                    out[-1] = Dense(w, b, attrs=dict(prev.attrs, fused_batchnorm=i))
                else:
                    out[-1] = Conv2d(w, b, prev.stride, prev.padding,
                                     attrs=dict(prev.attrs, fused_batchnorm=i))
                prev_src = None
                continue
            if isinstance(layer, Dropout):
                prev_src = None
                continue
            out.append(layer)
            prev_src = i
        net = Network(out, self.input_shape, self.input_preprocessing, dict(self.attrs))
        net.validate()
        return net

    def crossbar_positions(self) -> list:
        """Positions (in ``self.layers``) of the dense / conv2d layers, in crossbar order."""
        return [i for i, l in enumerate(self.layers) if isinstance(l, (Dense, Conv2d))]

    def describe(self) -> list:
        """One dict per layer: type, input/output shape, crossbar sizes (UR and UL)."""
        shapes = self.shapes
        rows = []
        for i, layer in enumerate(self.layers):
            d = {"index": i, "type": layer.type, "in_shape": list(shapes[i]),
                 "out_shape": list(shapes[i + 1])}
            for k, v in layer.params().items():
                d[f"{k}_shape"] = list(v.shape)
            # a batchnorm right after the layer is fused into it and creates a bias row
            fused_bn = i + 1 < len(self.layers) and isinstance(self.layers[i + 1], BatchNorm)
            bias_row = 1 if (getattr(layer, "bias", None) is not None or fused_bn) else 0
            if isinstance(layer, Conv2d):
                d.update(stride=layer.stride, padding=layer.padding, kernel=layer.k)
                n_pos = shapes[i + 1][1] * shapes[i + 1][2]
                d["crossbar_UR"] = [layer.c_in * layer.k ** 2 + bias_row, layer.c_out]
                d["crossbar_UR_mvms"] = n_pos
                d["crossbar_UL"] = [int(np.prod(shapes[i])) + bias_row, layer.c_out * n_pos]
            elif isinstance(layer, Dense):
                d["crossbar"] = [layer.n_in + bias_row, layer.n_out]
            elif isinstance(layer, BatchNorm):
                d["eps"] = layer.eps
            rows.append(d)
        return rows


def _check_params(i, layer):
    for name, arr in layer.params().items():
        if not np.all(np.isfinite(arr)):
            raise ModelFileError(f"{_name(i, layer)}: {name} contains NaN or infinite values")
    if isinstance(layer, Dense):
        if layer.weight.ndim != 2:
            raise ModelFileError(f"{_name(i, layer)}: weight must be 2-D (out, in), "
                                 f"got shape {layer.weight.shape}")
        if layer.bias is not None and layer.bias.shape != (layer.n_out,):
            raise ModelFileError(f"{_name(i, layer)}: bias has shape {layer.bias.shape}, "
                                 f"expected ({layer.n_out},)")
    elif isinstance(layer, Conv2d):
        w = layer.weight
        if w.ndim != 4 or w.shape[2] != w.shape[3]:
            raise ModelFileError(f"{_name(i, layer)}: weight must be (C_out, C_in, k, k) with a "
                                 f"square kernel, got shape {w.shape}")
        if layer.bias is not None and layer.bias.shape != (w.shape[0],):
            raise ModelFileError(f"{_name(i, layer)}: bias has shape {layer.bias.shape}, "
                                 f"expected ({w.shape[0]},)")
        if layer.stride < 1 or layer.padding < 0:
            raise ModelFileError(f"{_name(i, layer)}: stride must be >= 1 and padding >= 0")
    elif layer.type == "avgpool2d":
        if layer.kernel_size < 1:
            raise ModelFileError(f"{_name(i, layer)}: kernel_size must be >= 1")
    elif isinstance(layer, BatchNorm):
        n = layer.gamma.shape
        for name in ("beta", "running_mean", "running_var"):
            if getattr(layer, name).shape != n or len(n) != 1:
                raise ModelFileError(f"{_name(i, layer)}: gamma, beta, running_mean and "
                                     "running_var must be 1-D of equal length")
        if np.any(layer.running_var + layer.eps <= 0):
            raise ModelFileError(f"{_name(i, layer)}: running_var + eps must be positive")
    elif isinstance(layer, Dropout):
        if layer.p is not None and not 0 <= layer.p < 1:
            raise ModelFileError(f"{_name(i, layer)}: dropout p must be in [0, 1)")


# ---------------------------------------------------------------------- input covariance
COV_TOL = 1e-10
"""The one relative tolerance of input-covariance checks (symmetry, diagonal, PSD)."""


def check_input_cov(cov, B: int, L: int, *, eigh: bool = False):
    """Validate the covariance of a random input: ``(L, L)`` (shared) or ``(B, L, L)``.

    The one validator of input covariances (the analytic pass, the Monte-Carlo simulator and
    the CLI call it): numeric, finite, symmetric to ``COV_TOL × max|C|``, no diagonal entry
    below ``−COV_TOL × max|C|``, and positive semi-definite (smallest eigenvalue not below
    ``−COV_TOL × max(max|C|, max|λ|)``). Returns the float64 stack ``(n, L, L)`` (``n`` = 1 or
    ``B``), and with ``eigh=True`` also the eigen-decomposition ``(w, V)`` of the symmetrised
    matrices. Raises :class:`~refmem.errors.DataError`.
    """
    C = np.asarray(cov)
    if C.dtype.kind not in "biuf":
        raise DataError(f"input covariance must be numeric, got dtype {C.dtype}")
    C = C.astype(np.float64, copy=False)
    if C.shape not in ((L, L), (B, L, L)):
        raise DataError(f"input covariance has shape {C.shape}, expected ({L}, {L}) or "
                        f"({B}, {L}, {L})")
    if not np.all(np.isfinite(C)):
        raise DataError("input covariance contains NaN or infinite values")
    C3 = C[None] if C.ndim == 2 else C
    scale = np.abs(C3).max(axis=(1, 2)) if C3.size else np.zeros(C3.shape[0])
    tol = COV_TOL * scale
    if np.any(np.abs(C3 - np.swapaxes(C3, 1, 2)).max(axis=(1, 2), initial=0.0) > tol):
        raise DataError("input covariance is not symmetric")
    if np.any(np.diagonal(C3, axis1=1, axis2=2) < -tol[:, None]):
        raise DataError("input covariance is not positive semi-definite (a negative variance "
                        "on its diagonal)")
    S = 0.5 * (C3 + np.swapaxes(C3, 1, 2))
    if eigh:
        w, V = np.linalg.eigh(S)
    else:
        w, V = np.linalg.eigvalsh(S), None
    if w.size and np.any(w.min(axis=1) < -COV_TOL * np.maximum(scale, np.abs(w).max(axis=1))):
        raise DataError("input covariance is not positive semi-definite")
    return (C3, w, V) if eigh else C3


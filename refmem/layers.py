"""Layers as explicit matrices, each with its noiseless forward.

Shapes are per sample, without the batch axis: a flat vector ``(n,)`` or an NCHW map
``(C, H, W)``. Flattening is NCHW (theory §1): element ``(c, h, w)`` has flat index
``c H W + h W + w``; convolution outputs are flattened as ``(c_out, o_h, o_w)``.

Parameters are stored in PyTorch layouts (``Dense.weight`` is ``(out, in)``; ``Conv2d.weight``
is ``(C_out, C_in, k, k)``). The spec's crossbar matrices are their transposes: ``W`` has one
row per input and one column per output (theory §1).

Explicit matrices (theory §5–§7):

- :func:`im2col_index` — the index map ι(p, a) of theory §5 (``-1`` for padding);
- :meth:`Conv2d.ur_matrix` — the UR crossbar ``(C_in k², C_out)``;
- :func:`toeplitz_columns` / :meth:`Conv2d.toeplitz` — the UL crossbar ``W_UL`` ``(C_in H W, C_out E F)``, structural
  zeros included, padding contributing no rows (theory §6);
- :meth:`AvgPool2d.matrix` — the pooling matrix ``A`` of theory §7 (Prop. 3, corrected D13).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import ModelFileError

LAYER_TYPES = ("dense", "conv2d", "avgpool2d", "relu", "flatten", "batchnorm", "dropout")


def _f64(a):
    return None if a is None else np.ascontiguousarray(a, dtype=np.float64)


def conv_output_size(n: int, k: int, stride: int, padding: int) -> int:
    """Output side ``floor((n + 2 pad - k) / stride) + 1`` (theory §5)."""
    return (n + 2 * padding - k) // stride + 1


def im2col_index(in_shape, k: int, stride: int, padding: int) -> np.ndarray:
    """Index map ι(p, a) of theory §5 as an integer array of shape ``(n_pos, C_in k²)``.

    Entry ``[p, a]`` is the flat (NCHW) index of the input element read by tap
    ``a = c k² + u k + v`` at output position ``p = o_h F + o_w``, i.e. element
    ``(c, stride o_h + u - pad, stride o_w + v - pad)``, or ``-1`` where that falls in the zero
    padding.
    """
    C, H, W = in_shape
    E = conv_output_size(H, k, stride, padding)
    F = conv_output_size(W, k, stride, padding)
    oh = np.arange(E)[:, None, None, None, None]
    ow = np.arange(F)[None, :, None, None, None]
    c = np.arange(C)[None, None, :, None, None]
    u = np.arange(k)[None, None, None, :, None]
    v = np.arange(k)[None, None, None, None, :]
    h = stride * oh + u - padding
    w = stride * ow + v - padding
    valid = (h >= 0) & (h < H) & (w >= 0) & (w < W)
    flat = c * (H * W) + h * W + w
    idx = np.where(valid, flat, -1)
    return np.ascontiguousarray(np.broadcast_to(idx, (E, F, C, k, k)).reshape(E * F, C * k * k))


def gather_patches(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """im2col: ``x`` (B, L) flat inputs -> patches (B, n_pos, n_taps), zeros at padded taps."""
    B = x.shape[0]
    ext = np.concatenate([x, np.zeros((B, 1), dtype=x.dtype)], axis=1)
    return np.take(ext, np.where(idx < 0, x.shape[1], idx), axis=1)


def toeplitz_columns(Wur, idx, L, cols, n_pos):
    """Columns ``cols`` of the UL crossbar ``W_UL`` (theory §6) and the mask of programmed taps.

    Column ``c_o n_pos + p`` holds ``Wur[a, c_o]`` at row ι(p, a) for every tap inside the
    input; padding contributes no rows. Returns ``(W (L, m), tap (L, m) bool)``. Every (row,
    column) pair is hit at most once (taps of one position read distinct inputs), so plain
    assignment equals the sum of theory §6.
    """
    cols = np.asarray(cols)
    co, p = np.divmod(cols, n_pos)
    rows = idx[p]                                   # (m, taps)
    vals = Wur.T[co]                                # (m, taps)
    jj = np.broadcast_to(np.arange(cols.size)[:, None], rows.shape)
    ok = rows >= 0
    out = np.zeros((L, cols.size))
    out[rows[ok], jj[ok]] = vals[ok]
    tap = np.zeros((L, cols.size), dtype=bool)
    tap[rows[ok], jj[ok]] = True
    return out, tap


class Layer:
    """Base class. Subclasses define ``type``, ``output_shape`` and ``forward``."""

    type = "layer"
    has_params = False

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def forward(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} has no forward")

    def params(self) -> dict:
        return {}


@dataclass
class Dense(Layer):
    """Fully-connected layer ``y = x W + b`` with ``W = weight.T`` (theory §4)."""

    weight: np.ndarray
    bias: Optional[np.ndarray] = None
    attrs: dict = field(default_factory=dict)
    type = "dense"
    has_params = True

    def __post_init__(self):
        self.weight = _f64(self.weight)
        self.bias = _f64(self.bias)

    @property
    def n_in(self):
        return self.weight.shape[1]

    @property
    def n_out(self):
        return self.weight.shape[0]

    def output_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ModelFileError(f"dense layer expects a flat input but receives shape "
                                 f"{tuple(in_shape)}; insert a flatten layer")
        if in_shape[0] != self.n_in:
            raise ModelFileError(f"dense weight expects {self.n_in} inputs but receives {in_shape[0]}")
        return (self.n_out,)

    def matrix(self) -> np.ndarray:
        """The crossbar matrix ``W`` (inputs × outputs), theory §1."""
        return self.weight.T

    def forward(self, x, in_shape=None):
        y = x.reshape(x.shape[0], -1) @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return y

    def params(self):
        p = {"weight": self.weight}
        if self.bias is not None:
            p["bias"] = self.bias
        return p


@dataclass
class Conv2d(Layer):
    """2-D convolution (cross-correlation, PyTorch ``conv2d``), square kernel."""

    weight: np.ndarray
    bias: Optional[np.ndarray] = None
    stride: int = 1
    padding: int = 0
    attrs: dict = field(default_factory=dict)
    type = "conv2d"
    has_params = True

    def __post_init__(self):
        self.weight = _f64(self.weight)
        self.bias = _f64(self.bias)
        self.stride = int(self.stride)
        self.padding = int(self.padding)

    @property
    def c_out(self):
        return self.weight.shape[0]

    @property
    def c_in(self):
        return self.weight.shape[1]

    @property
    def k(self):
        return self.weight.shape[2]

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ModelFileError(f"conv2d expects a (C, H, W) input but receives shape {tuple(in_shape)}")
        C, H, W = in_shape
        if C != self.c_in:
            raise ModelFileError(f"conv2d weight expects {self.c_in} input channels but receives {C}")
        E = conv_output_size(H, self.k, self.stride, self.padding)
        F = conv_output_size(W, self.k, self.stride, self.padding)
        if E < 1 or F < 1:
            raise ModelFileError(f"conv2d kernel {self.k} with padding {self.padding} does not fit "
                                 f"a {H}x{W} input")
        return (self.c_out, E, F)

    def ur_matrix(self) -> np.ndarray:
        """UR crossbar without the bias row: ``(C_in k², C_out)``, column c_o = ``K[c_o].ravel()``."""
        return self.weight.reshape(self.c_out, -1).T

    def index(self, in_shape) -> np.ndarray:
        """ι(p, a) for this layer (see :func:`im2col_index`)."""
        return im2col_index(in_shape, self.k, self.stride, self.padding)

    def toeplitz(self, in_shape, columns=None) -> np.ndarray:
        """UL crossbar ``W_UL`` of theory §6, shape ``(C_in H W, C_out n_pos)`` (no bias row).

        Column ``c_o n_pos + p``; padding contributes no rows. ``columns`` (an index array)
        builds only those columns, for streaming a large layer block by block.
        """
        idx = self.index(in_shape)
        n_pos = idx.shape[0]
        cols = np.arange(self.c_out * n_pos) if columns is None else np.asarray(columns)
        return toeplitz_columns(self.ur_matrix(), idx, int(np.prod(in_shape)), cols, n_pos)[0]

    def forward(self, x, in_shape=None):
        B = x.shape[0]
        if in_shape is None:
            in_shape = x.shape[1:]
        xf = x.reshape(B, -1)
        idx = self.index(in_shape)
        patches = gather_patches(xf, idx)              # (B, n_pos, taps)
        n_pos, taps = idx.shape
        # one 2-D product (a stacked 3-D matmul is far slower in BLAS)
        y = (patches.reshape(B * n_pos, taps) @ self.ur_matrix()).reshape(B, n_pos, -1)
        if self.bias is not None:
            y = y + self.bias
        out_shape = self.output_shape(in_shape)
        return np.ascontiguousarray(y.transpose(0, 2, 1)).reshape((B,) + out_shape)

    def params(self):
        p = {"weight": self.weight}
        if self.bias is not None:
            p["bias"] = self.bias
        return p


@dataclass
class AvgPool2d(Layer):
    """Average pooling, kernel = stride = κ, no padding (theory §7, Prop. 3 corrected D13)."""

    kernel_size: int
    attrs: dict = field(default_factory=dict)
    type = "avgpool2d"

    def __post_init__(self):
        self.kernel_size = int(self.kernel_size)

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ModelFileError(f"avgpool2d expects a (C, H, W) input but receives {tuple(in_shape)}")
        C, H, W = in_shape
        s = self.kernel_size
        if H < s or W < s:
            raise ModelFileError(f"avgpool2d kernel {s} does not fit a {H}x{W} input")
        return (C, H // s, W // s)

    def matrix(self, in_shape) -> np.ndarray:
        """Pooling matrix ``A`` ``(C E F, C H W)``: ``A[(c,i,j),(c,k,l)] = 1/κ²`` for
        ``k ∈ [κi, κi+κ-1]``, ``l ∈ [κj, κj+κ-1]`` (theory §7)."""
        C, H, W = in_shape
        s = self.kernel_size
        _, E, F = self.output_shape(in_shape)
        A = np.zeros((C * E * F, C * H * W))
        c, i, j, u, v = np.ix_(np.arange(C), np.arange(E), np.arange(F), np.arange(s), np.arange(s))
        rows = np.broadcast_to(c * E * F + i * F + j, (C, E, F, s, s))
        cols = np.broadcast_to(c * H * W + (s * i + u) * W + (s * j + v), (C, E, F, s, s))
        A[rows.ravel(), cols.ravel()] = 1.0 / (s * s)
        return A

    def forward(self, x, in_shape=None):
        B = x.shape[0]
        if in_shape is None:
            in_shape = x.shape[1:]
        C, H, W = in_shape
        s = self.kernel_size
        _, E, F = self.output_shape(in_shape)
        xr = x.reshape(B, C, H, W)[:, :, :E * s, :F * s].reshape(B, C, E, s, F, s)
        return xr.mean(axis=(3, 5))


@dataclass
class ReLU(Layer):
    """Rectifier (digital, noiseless; theory §8)."""

    attrs: dict = field(default_factory=dict)
    type = "relu"

    def forward(self, x, in_shape=None):
        return np.maximum(x, 0.0)


@dataclass
class Flatten(Layer):
    """NCHW flatten (identity on the flat representation)."""

    attrs: dict = field(default_factory=dict)
    type = "flatten"

    def output_shape(self, in_shape):
        return (int(np.prod(in_shape)),)

    def forward(self, x, in_shape=None):
        return x.reshape(x.shape[0], -1)


@dataclass
class BatchNorm(Layer):
    """Batch normalisation in inference form, per channel (conv) or per feature (dense).

    ``y = gamma (x - running_mean) / sqrt(running_var + eps) + beta``. When a network is
    mapped to crossbars it is fused into the dense/conv layer directly before it (theory §7).
    """

    gamma: np.ndarray
    beta: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    eps: float = 1e-5
    attrs: dict = field(default_factory=dict)
    type = "batchnorm"
    has_params = True

    def __post_init__(self):
        self.gamma = _f64(self.gamma)
        self.beta = _f64(self.beta)
        self.running_mean = _f64(self.running_mean)
        self.running_var = _f64(self.running_var)
        self.eps = float(self.eps)

    @property
    def n(self):
        return self.gamma.shape[0]

    def output_shape(self, in_shape):
        n_ch = in_shape[0]
        if n_ch != self.n:
            raise ModelFileError(f"batchnorm has {self.n} channels but receives {n_ch}")
        return tuple(in_shape)

    def scale_shift(self):
        """Per-channel ``(scale, shift)`` with ``y = scale x + shift``."""
        scale = self.gamma / np.sqrt(self.running_var + self.eps)
        return scale, self.beta - self.running_mean * scale

    def forward(self, x, in_shape=None):
        scale, shift = self.scale_shift()
        shp = (1, -1) + (1,) * (x.ndim - 2)
        return x * scale.reshape(shp) + shift.reshape(shp)

    def params(self):
        return {"gamma": self.gamma, "beta": self.beta, "running_mean": self.running_mean,
                "running_var": self.running_var}


@dataclass
class Dropout(Layer):
    """Dropout: the identity at inference."""

    p: Optional[float] = None
    attrs: dict = field(default_factory=dict)
    type = "dropout"

    def forward(self, x, in_shape=None):
        return x


LAYER_CLASSES = {"dense": Dense, "conv2d": Conv2d, "avgpool2d": AvgPool2d, "relu": ReLU,
                 "flatten": Flatten, "batchnorm": BatchNorm, "dropout": Dropout}

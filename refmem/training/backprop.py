"""Explicit forward and backward passes of every refmem layer type.

Two levels, in the style of a teaching library:

1. **Pure functions** ``<layer>_forward`` / ``<layer>_backward`` on arrays. A forward
   returns the output and a ``cache`` (whatever the backward needs); a backward takes the
   upstream gradient ``dy = ∂L/∂y`` and the cache and returns ``∂L/∂x`` and the parameter
   gradients. They hold no state and are what the gradient checks of
   ``tests/test_training.py`` differentiate numerically.
2. **Trainable layers** (:class:`TDense`, :class:`TConv2d`, …) that keep parameters,
   gradients and buffers in plain dicts under the **PyTorch names and layouts of the
   refmem layer dataclasses** (``weight`` ``(out, in)`` / ``(C_out, C_in, k, k)``, ``bias``,
   ``gamma``, ``beta``, ``running_mean``, ``running_var``), so :meth:`to_layer` returns the
   matching :mod:`refmem.layers` object without any re-layout.

Shapes carry the batch axis first: flat ``(B, n)`` or NCHW ``(B, C, H, W)`` (theory §1).

Notation: ``dy`` is the upstream gradient, ``dx`` the gradient with respect to the layer
input, ``dW`` / ``db`` with respect to weight / bias. All arithmetic stays in the dtype of the
arrays passed in (float64 by default, float32 allowed).

References
----------
.. [1] D. E. Rumelhart, G. E. Hinton and R. J. Williams, "Learning representations by
   back-propagating errors", Nature 323, 533–536 (1986).
.. [2] S. Ioffe and C. Szegedy, "Batch normalization: accelerating deep network training by
   reducing internal covariate shift", ICML 2015 (Algorithm 1; running statistics as in
   PyTorch ``BatchNorm``: momentum 0.1, unbiased running variance).
.. [3] N. Srivastava, G. Hinton, A. Krizhevsky, I. Sutskever and R. Salakhutdinov,
   "Dropout: a simple way to prevent neural networks from overfitting", JMLR 15 (2014);
   "inverted" scaling by 1/(1-p) at training time so inference is the identity.
.. [4] K. He, X. Zhang, S. Ren and J. Sun, "Delving deep into rectifiers", ICCV 2015 (fan-in
   scaled initialisation; PyTorch's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` is used).
"""

from __future__ import annotations

import abc

import numpy as np

from ..errors import ConfigError, DataError
from ..layers import (AvgPool2d, BatchNorm, Conv2d, Dense, Dropout, Flatten, ReLU,
                      conv_output_size, im2col_index)

# ======================================================================== dense
def dense_forward(x, weight, bias=None):
    r"""Fully-connected forward :math:`y = x W^\top + b` (``weight`` is ``(out, in)``).

    Parameters
    ----------
    x : ndarray of shape (B, n_in)
    weight : ndarray of shape (n_out, n_in)
    bias : ndarray of shape (n_out,) or None

    Returns
    -------
    y : ndarray of shape (B, n_out)
    """
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y


def dense_backward(dy, x, weight, has_bias=True):
    r"""Gradients of the dense layer.

    :math:`\partial L/\partial x = dy\,W`, :math:`\partial L/\partial W = dy^\top x`,
    :math:`\partial L/\partial b = \sum_{\text{batch}} dy`.

    Returns
    -------
    dx : ndarray (B, n_in)
    dW : ndarray (n_out, n_in)
    db : ndarray (n_out,) or None
    """
    dx = dy @ weight
    dW = dy.T @ x
    db = dy.sum(axis=0) if has_bias else None
    return dx, dW, db


# ======================================================================== conv2d
def conv2d_forward(x, weight, bias=None, stride=1, padding=0, idx=None):
    """2-D cross-correlation by im2col (theory §5) with :func:`refmem.layers.im2col_index`.

    Parameters
    ----------
    x : ndarray of shape (B, C_in, H, W)
    weight : ndarray of shape (C_out, C_in, k, k)
    bias : ndarray of shape (C_out,) or None
    stride, padding : int
    idx : ndarray of shape (n_pos, C_in k²), optional
        The index map ι(p, a) of :func:`refmem.layers.im2col_index` (computed if omitted).

    Returns
    -------
    y : ndarray of shape (B, C_out, E, F)
    cache : tuple
        ``(patches, idx, in_shape, stride, padding)`` with patches ``(B, n_pos, C_in k²)``.
    """
    B = x.shape[0]
    in_shape = tuple(x.shape[1:])
    C_out, _, k, _ = weight.shape
    if idx is None:
        idx = im2col_index(in_shape, k, stride, padding)
    E = conv_output_size(in_shape[1], k, stride, padding)
    F = conv_output_size(in_shape[2], k, stride, padding)
    patches = im2col(x.reshape(B, -1), idx)                        # (B, n_pos, taps)
    n_pos, taps = idx.shape
    W_ur = weight.reshape(C_out, -1).T                            # (taps, C_out), theory §5
    # one 2-D GEMM over all (sample, position) rows: numpy's stacked 3-D matmul does not
    # reach BLAS for these shapes and is 10-300x slower
    y = patches.reshape(B * n_pos, taps) @ W_ur                   # (B n_pos, C_out)
    if bias is not None:
        y = y + bias
    y = np.ascontiguousarray(y.reshape(B, n_pos, C_out).transpose(0, 2, 1)).reshape(B, C_out, E, F)
    return y, (patches, idx, in_shape, stride, padding)


def im2col(x, idx):
    """im2col gather, identical to :func:`refmem.layers.gather_patches` but C-contiguous.

    ``x`` (B, L) flat inputs and ``idx`` the ι(p, a) map of :func:`refmem.layers.im2col_index`
    (``-1`` = padding) give patches ``(B, n_pos, n_taps)`` with zeros at padded taps. It uses
    ``numpy.take`` along axis 1, whose result is C-contiguous, so the GEMM that follows needs no
    copy (fancy indexing ``ext[:, idx]`` returns a batch-innermost layout whose reshape costs a
    full transposed copy; equality with ``gather_patches`` is asserted in the tests).
    """
    B, L = x.shape
    ext = np.concatenate([x, np.zeros((B, 1), dtype=x.dtype)], axis=1)
    return np.take(ext, np.where(idx < 0, L, idx), axis=1)


def col2im(dpatches, in_shape, k, stride, padding):
    r"""Adjoint of im2col: scatter-add patch gradients back onto the input map.

    ``dpatches[b, p, a]`` with ``p = o_h F + o_w`` and ``a = c k² + u k + v`` is added to input
    element ``(c, stride o_h + u - pad, stride o_w + v - pad)``; taps in the zero padding are
    dropped.

    Parameters
    ----------
    dpatches : ndarray of shape (B, n_pos, C k²)
    in_shape : tuple (C, H, W)

    Returns
    -------
    dx : ndarray of shape (B, C, H, W)
    """
    B, n_pos, taps = dpatches.shape
    return col2im_cols(dpatches.reshape(B * n_pos, taps).T, B, in_shape, k, stride, padding)


def col2im_cols(dcols, B, in_shape, k, stride, padding):
    """:func:`col2im` for tap-major columns ``dcols`` of shape ``(C k², B n_pos)``.

    Row ``a = (c, u, v)``, column ``(b, p)``. One strided add per kernel offset ``(u, v)`` of a
    ``(C, B, E, F)`` block onto the zero-padded input (laid out ``(C, B, H+2pad, W+2pad)``).
    """
    C, H, W = in_shape
    E = conv_output_size(H, k, stride, padding)
    F = conv_output_size(W, k, stride, padding)
    d = dcols.reshape(C, k, k, B, E, F)
    dxp = np.zeros((C, B, H + 2 * padding, W + 2 * padding), dtype=dcols.dtype)
    for u in range(k):
        for v in range(k):
            dxp[:, :, u:u + stride * (E - 1) + 1:stride, v:v + stride * (F - 1) + 1:stride] += \
                d[:, u, v]
    return np.ascontiguousarray(
        dxp[:, :, padding:padding + H, padding:padding + W].transpose(1, 0, 2, 3))


def conv2d_backward(dy, cache, weight, has_bias=True):
    r"""Gradients of :func:`conv2d_forward`.

    With patches :math:`P` (B, n_pos, taps) and :math:`W_{UR}` (taps, C_out):
    :math:`\partial L/\partial W_{UR} = \sum_{b,p} P^\top dY`,
    :math:`\partial L/\partial P = dY\,W_{UR}^\top` folded back by :func:`col2im` (computed
    tap-major, :func:`col2im_cols`),
    :math:`\partial L/\partial b_{c} = \sum_{b,p} dY_{b,c,p}`.

    Returns
    -------
    dx : ndarray (B, C_in, H, W)
    dW : ndarray (C_out, C_in, k, k)
    db : ndarray (C_out,) or None
    """
    patches, idx, in_shape, stride, padding = cache
    B = dy.shape[0]
    C_out, _, k, _ = weight.shape
    n_pos, taps = idx.shape
    dyr = np.ascontiguousarray(dy.reshape(B, C_out, n_pos).transpose(0, 2, 1)).reshape(
        B * n_pos, C_out)                                               # rows (b, p)
    dW_ur = patches.reshape(B * n_pos, taps).T @ dyr                    # (taps, C_out)
    dW = np.ascontiguousarray(dW_ur.T).reshape(weight.shape)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    dcols = weight.reshape(C_out, -1).T @ dyr.T                          # (taps, B n_pos)
    dx = col2im_cols(dcols, B, in_shape, k, stride, padding)
    return dx, dW, db


# ======================================================================== avgpool2d
def avgpool2d_forward(x, kernel_size):
    """Average pooling, kernel = stride = κ, no padding (theory §7); trailing rows/cols dropped.

    Returns ``y`` of shape ``(B, C, H // κ, W // κ)``.
    """
    B, C, H, W = x.shape
    s = kernel_size
    E, F = H // s, W // s
    return x[:, :, :E * s, :F * s].reshape(B, C, E, s, F, s).mean(axis=(3, 5))


def avgpool2d_backward(dy, in_shape, kernel_size):
    r"""Each input of a pooling window receives :math:`dy/κ^2`; dropped border rows get 0."""
    B = dy.shape[0]
    C, H, W = in_shape
    s = kernel_size
    E, F = dy.shape[2], dy.shape[3]
    dx = np.zeros((B, C, H, W), dtype=dy.dtype)
    g = dy / (s * s)
    dx[:, :, :E * s, :F * s] = np.broadcast_to(
        g[:, :, :, None, :, None], (B, C, E, s, F, s)).reshape(B, C, E * s, F * s)
    return dx


# ======================================================================== relu
def relu_forward(x):
    """:math:`\\max(x, 0)`."""
    return np.maximum(x, 0)


def relu_backward(dy, x):
    """Gradient passes where ``x > 0`` (subgradient 0 at 0, as PyTorch)."""
    return dy * (x > 0)


# ======================================================================== batchnorm
def _bn_axes(x):
    if x.ndim == 2:
        return (0,), (1, -1)
    if x.ndim == 4:
        return (0, 2, 3), (1, -1, 1, 1)
    raise DataError(f"batchnorm expects (B, n) or (B, C, H, W) inputs, got shape {x.shape}")


def batchnorm_forward_train(x, gamma, beta, eps=1e-5):
    r"""Batch normalisation with batch statistics (training mode), Ioffe & Szegedy Alg. 1.

    Per channel (axis 1; statistics over batch and, for maps, space):
    :math:`\mu = \operatorname{mean} x`, :math:`s^2 = \operatorname{mean}(x-\mu)^2` (biased),
    :math:`\hat x = (x-\mu)/\sqrt{s^2+\varepsilon}`, :math:`y = \gamma\hat x + \beta`.

    Returns
    -------
    y : ndarray like x
    cache : tuple ``(xhat, inv_std, mean, var, n)`` with ``var`` the biased batch variance and
        ``n`` the number of values per channel.
    """
    axes, shp = _bn_axes(x)
    n = x.size // x.shape[1]
    mean = x.mean(axis=axes)
    xc = x - mean.reshape(shp)
    var = (xc * xc).mean(axis=axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = xc * inv_std.reshape(shp)
    y = xhat * gamma.reshape(shp) + beta.reshape(shp)
    return y, (xhat, inv_std, mean, var, n)


def batchnorm_backward(dy, cache, gamma):
    r"""Gradients of :func:`batchnorm_forward_train` (batch statistics depend on x).

    With :math:`g = dy\,\gamma` and N values per channel,
    :math:`\partial L/\partial x = \frac{1}{\sqrt{s^2+\varepsilon}}\big(g - \bar g -
    \hat x\,\overline{g\hat x}\big)` (bars are per-channel means),
    :math:`\partial L/\partial\gamma = \sum dy\,\hat x`, :math:`\partial L/\partial\beta = \sum dy`.
    """
    xhat, inv_std, _, _, n = cache
    axes, shp = _bn_axes(dy)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    g = dy * gamma.reshape(shp)
    gbar = (g.sum(axis=axes) / n).reshape(shp)
    gxbar = ((g * xhat).sum(axis=axes) / n).reshape(shp)
    dx = (g - gbar - xhat * gxbar) * inv_std.reshape(shp)
    return dx, dgamma, dbeta


def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """Inference form ``y = x scale + shift`` with the running statistics.

    Same operation order as :meth:`refmem.layers.BatchNorm.forward`, so a saved model reproduces
    the trainer's evaluation forward bit for bit in float64.
    """
    _, shp = _bn_axes(x)
    scale = gamma / np.sqrt(running_var + eps)
    shift = beta - running_mean * scale
    return x * scale.reshape(shp) + shift.reshape(shp)


def batchnorm_eval_backward(dy, gamma, running_var, eps=1e-5):
    """Input gradient of the inference form (constant affine map per channel)."""
    _, shp = _bn_axes(dy)
    return dy * (gamma / np.sqrt(running_var + eps)).reshape(shp)


def batchnorm_update_running(running_mean, running_var, mean, var, n, momentum=0.1):
    r"""In-place running-statistics update as PyTorch ``BatchNorm``.

    :math:`\bar\mu \leftarrow (1-m)\bar\mu + m\mu`,
    :math:`\bar v \leftarrow (1-m)\bar v + m\,s^2\,\frac{N}{N-1}` (unbiased batch variance).
    """
    unbiased = var * (n / max(n - 1, 1))
    running_mean *= (1 - momentum)
    running_mean += momentum * mean
    running_var *= (1 - momentum)
    running_var += momentum * unbiased


# ======================================================================== dropout
def dropout_forward(x, p, rng):
    """Inverted dropout: keep each value with probability ``1-p`` and scale it by ``1/(1-p)``.

    Parameters
    ----------
    x : ndarray
    p : float in [0, 1)
    rng : numpy.random.Generator
        The only source of randomness (one uniform draw per element, ``rng.random(x.shape)``).

    Returns
    -------
    y : ndarray like x
    mask : ndarray like x (0 or ``1/(1-p)``)
    """
    keep = rng.random(x.shape) >= p
    mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy * mask


# ======================================================================== trainable layers
def _cp(a):
    return None if a is None else np.array(a, copy=True)


def _uniform_init(rng, shape, fan_in, dtype):
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class TLayer(abc.ABC):
    """Trainable layer base: ``params``, ``grads`` and ``buffers`` are dicts of arrays.

    ``forward(x, train, rng)`` caches what ``backward(dy)`` needs; ``backward`` stores the
    parameter gradients in ``grads`` (overwriting) and returns the input gradient.
    """

    type = "layer"

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self._cache = None

    def output_shape(self, in_shape):
        return self.to_layer().output_shape(in_shape)

    @abc.abstractmethod
    def forward(self, x, train=False, rng=None):
        """Implemented by every concrete subclass."""

    @abc.abstractmethod
    def backward(self, dy):
        """Implemented by every concrete subclass."""

    @abc.abstractmethod
    def to_layer(self):
        """Implemented by every concrete subclass."""

    def astype(self, dtype):
        for d in (self.params, self.buffers):
            for k in d:
                d[k] = np.ascontiguousarray(d[k], dtype=dtype)
        return self


class TDense(TLayer):
    """Trainable :class:`refmem.layers.Dense` (``weight`` ``(out, in)``, ``bias`` ``(out,)``)."""

    type = "dense"

    def __init__(self, weight, bias=None):
        super().__init__()
        self.params["weight"] = np.ascontiguousarray(weight)
        if bias is not None:
            self.params["bias"] = np.ascontiguousarray(bias)

    @classmethod
    def init(cls, n_in, n_out, rng, *, bias=True, dtype=np.float64):
        """PyTorch ``nn.Linear`` default: weight and bias ~ U(-1/sqrt(n_in), 1/sqrt(n_in))."""
        w = _uniform_init(rng, (n_out, n_in), n_in, dtype)
        b = _uniform_init(rng, (n_out,), n_in, dtype) if bias else None
        return cls(w, b)

    def forward(self, x, train=False, rng=None):
        x = x.reshape(x.shape[0], -1)
        self._cache = x
        return dense_forward(x, self.params["weight"], self.params.get("bias"))

    def backward(self, dy):
        dx, dW, db = dense_backward(dy, self._cache, self.params["weight"], "bias" in self.params)
        self.grads["weight"] = dW
        if db is not None:
            self.grads["bias"] = db
        return dx

    def to_layer(self):
        return Dense(_cp(self.params["weight"]), _cp(self.params.get("bias")))


class TConv2d(TLayer):
    """Trainable :class:`refmem.layers.Conv2d` (``weight`` ``(C_out, C_in, k, k)``)."""

    type = "conv2d"

    def __init__(self, weight, bias=None, stride=1, padding=0):
        super().__init__()
        self.params["weight"] = np.ascontiguousarray(weight)
        if bias is not None:
            self.params["bias"] = np.ascontiguousarray(bias)
        self.stride = int(stride)
        self.padding = int(padding)
        self._idx = {}

    @classmethod
    def init(cls, c_in, c_out, k, rng, *, stride=1, padding=0, bias=True, dtype=np.float64):
        """PyTorch ``nn.Conv2d`` default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C_in k²."""
        fan_in = c_in * k * k
        w = _uniform_init(rng, (c_out, c_in, k, k), fan_in, dtype)
        b = _uniform_init(rng, (c_out,), fan_in, dtype) if bias else None
        return cls(w, b, stride, padding)

    def index(self, in_shape):
        in_shape = tuple(in_shape)
        if in_shape not in self._idx:
            self._idx[in_shape] = im2col_index(in_shape, self.params["weight"].shape[2],
                                               self.stride, self.padding)
        return self._idx[in_shape]

    def forward(self, x, train=False, rng=None):
        y, cache = conv2d_forward(x, self.params["weight"], self.params.get("bias"), self.stride,
                                  self.padding, self.index(x.shape[1:]))
        self._cache = cache
        return y

    def backward(self, dy):
        dx, dW, db = conv2d_backward(dy, self._cache, self.params["weight"], "bias" in self.params)
        self._cache = None
        self.grads["weight"] = dW
        if db is not None:
            self.grads["bias"] = db
        return dx

    def to_layer(self):
        return Conv2d(_cp(self.params["weight"]), _cp(self.params.get("bias")), self.stride,
                      self.padding)


class TAvgPool2d(TLayer):
    type = "avgpool2d"

    def __init__(self, kernel_size):
        super().__init__()
        self.kernel_size = int(kernel_size)

    def forward(self, x, train=False, rng=None):
        self._cache = x.shape[1:]
        return avgpool2d_forward(x, self.kernel_size)

    def backward(self, dy):
        return avgpool2d_backward(dy, self._cache, self.kernel_size)

    def to_layer(self):
        return AvgPool2d(self.kernel_size)


class TReLU(TLayer):
    type = "relu"

    def forward(self, x, train=False, rng=None):
        self._cache = x
        return relu_forward(x)

    def backward(self, dy):
        return relu_backward(dy, self._cache)

    def to_layer(self):
        return ReLU()

    def output_shape(self, in_shape):
        return tuple(in_shape)


class TFlatten(TLayer):
    type = "flatten"

    def forward(self, x, train=False, rng=None):
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._cache)

    def to_layer(self):
        return Flatten()


class TBatchNorm(TLayer):
    """Trainable :class:`refmem.layers.BatchNorm` (kept as its own layer; fused at mapping time).

    Training mode normalises with batch statistics and updates ``running_mean`` /
    ``running_var`` with ``momentum`` (PyTorch convention, 0.1; unbiased running variance).
    Evaluation mode uses the running statistics.
    """

    type = "batchnorm"

    def __init__(self, gamma, beta, running_mean, running_var, eps=1e-5, momentum=0.1):
        super().__init__()
        self.params["gamma"] = np.ascontiguousarray(gamma)
        self.params["beta"] = np.ascontiguousarray(beta)
        self.buffers["running_mean"] = np.array(running_mean, copy=True)
        self.buffers["running_var"] = np.array(running_var, copy=True)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self._train = False

    @classmethod
    def init(cls, n, *, eps=1e-5, momentum=0.1, dtype=np.float64):
        """γ = 1, β = 0, running mean 0 and variance 1 (PyTorch defaults)."""
        return cls(np.ones(n, dtype), np.zeros(n, dtype), np.zeros(n, dtype), np.ones(n, dtype),
                   eps, momentum)

    def forward(self, x, train=False, rng=None):
        p, b = self.params, self.buffers
        self._train = train
        if not train:
            self._cache = None
            return batchnorm_forward_eval(x, p["gamma"], p["beta"], b["running_mean"],
                                          b["running_var"], self.eps)
        if x.size // x.shape[1] < 2:
            raise DataError("batchnorm in training mode needs more than one value per channel; "
                            "use a batch size of at least 2")
        y, cache = batchnorm_forward_train(x, p["gamma"], p["beta"], self.eps)
        _, _, mean, var, n = cache
        batchnorm_update_running(b["running_mean"], b["running_var"], mean, var, n, self.momentum)
        self._cache = cache
        return y

    def backward(self, dy):
        p = self.params
        if not self._train:
            raise DataError("batchnorm backward after an evaluation-mode forward is not supported")
        dx, dgamma, dbeta = batchnorm_backward(dy, self._cache, p["gamma"])
        self._cache = None
        self.grads["gamma"] = dgamma
        self.grads["beta"] = dbeta
        return dx

    def to_layer(self):
        p, b = self.params, self.buffers
        return BatchNorm(_cp(p["gamma"]), _cp(p["beta"]), _cp(b["running_mean"]),
                         _cp(b["running_var"]), self.eps)

    def output_shape(self, in_shape):
        return tuple(in_shape)


class TDropout(TLayer):
    """Inverted dropout with probability ``p``; the identity at evaluation (and for p = 0)."""

    type = "dropout"

    def __init__(self, p=0.5):
        super().__init__()
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropout p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x, train=False, rng=None):
        if not train or self.p == 0.0:
            self._cache = None
            return x
        if rng is None:
            raise ConfigError("dropout in training mode needs a numpy.random.Generator")
        y, self._cache = dropout_forward(x, self.p, rng)
        return y

    def backward(self, dy):
        return dy if self._cache is None else dropout_backward(dy, self._cache)

    def to_layer(self):
        return Dropout(self.p)

    def output_shape(self, in_shape):
        return tuple(in_shape)


def from_layer(layer, dtype=np.float64):
    """The trainable twin of a :mod:`refmem.layers` object (parameters copied to ``dtype``)."""
    c = lambda a: None if a is None else np.array(a, dtype=dtype, copy=True)  # noqa: E731
    t = layer.type
    if t == "dense":
        return TDense(c(layer.weight), c(layer.bias))
    if t == "conv2d":
        return TConv2d(c(layer.weight), c(layer.bias), layer.stride, layer.padding)
    if t == "avgpool2d":
        return TAvgPool2d(layer.kernel_size)
    if t == "relu":
        return TReLU()
    if t == "flatten":
        return TFlatten()
    if t == "batchnorm":
        return TBatchNorm(c(layer.gamma), c(layer.beta), c(layer.running_mean),
                          c(layer.running_var), layer.eps)
    if t == "dropout":
        return TDropout(0.0 if layer.p is None else layer.p)
    raise ConfigError(f"layer type {t!r} cannot be trained")

"""Losses with their gradients: softmax cross-entropy and mean squared error.

A loss object is called as ``loss(pred, target) -> (value, dpred)`` where ``dpred`` is
``∂value/∂pred`` (same shape and dtype as ``pred``). ``metric(pred, target)`` is the
per-batch quantity shown during training: the number of correct top-1 predictions for
classification, ``None`` for regression.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError


def log_softmax(z):
    r"""Numerically stable :math:`\log\operatorname{softmax}(z)` along the last axis.

    :math:`\log p_k = z_k - m - \log\sum_j e^{z_j - m}` with :math:`m = \max_j z_j`, so no
    exponential overflows (log-sum-exp trick).
    """
    m = z.max(axis=-1, keepdims=True)
    s = z - m
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


class CrossEntropy:
    r"""Softmax cross-entropy on raw logits (the logits are **not** rectified).

    :math:`L = \frac1B\sum_b\big(\operatorname{lse}(z_b) - z_{b,y_b}\big)`,
    :math:`\partial L/\partial z_b = (\operatorname{softmax}(z_b) - e_{y_b})/B`.

    Targets are integer class labels of shape ``(B,)``.
    """

    name = "cross_entropy"
    classification = True

    def _check(self, z, y):
        y = np.asarray(y)
        if z.ndim != 2:
            raise DataError(f"cross-entropy expects logits of shape (B, K), got {z.shape}")
        if y.shape != (z.shape[0],) or y.dtype.kind not in "iu":
            raise DataError(f"cross-entropy expects integer labels of shape ({z.shape[0]},), "
                            f"got {y.dtype} {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
            raise DataError(f"labels must lie in [0, {z.shape[1] - 1}]")
        return y

    def __call__(self, z, y):
        y = self._check(z, y)
        B = z.shape[0]
        logp = log_softmax(z)
        rows = np.arange(B)
        loss = -logp[rows, y].sum() / B
        dz = np.exp(logp)
        dz[rows, y] -= 1
        dz /= B
        return float(loss), dz

    def metric(self, z, y):
        """Number of correct top-1 predictions."""
        return int(np.sum(np.argmax(z, axis=1) == np.asarray(y)))


class MSE:
    r"""Mean squared error over all elements: :math:`L = \frac{1}{BK}\sum_{b,k}(p_{bk}-t_{bk})^2`.

    :math:`\partial L/\partial p = 2(p - t)/(BK)` (PyTorch ``MSELoss(reduction="mean")``).
    Targets may be ``(B,)`` for a single output.
    """

    name = "mse"
    classification = False

    def __call__(self, p, t):
        t = np.asarray(t, dtype=p.dtype)
        if t.ndim == 1 and p.ndim == 2 and p.shape[1] == 1:
            t = t[:, None]
        if t.shape != p.shape:
            raise DataError(f"MSE target has shape {t.shape} but the prediction has {p.shape}")
        r = p - t
        loss = float(np.mean(r * r))
        return loss, r * (2.0 / r.size)

    def metric(self, p, t):
        return None


LOSSES = {"cross_entropy": CrossEntropy, "mse": MSE}

"""Noise-aware training: weight noise injected during training (straight-through).

MohammadiRad & Sojodishijani conclude that "a larger network will have better tolerance to
noisy weights only if the noisy weights are taken into account during the training phase"
(seed 000, Sec. VI). The two noise models of refmem are offered:

:class:`MultiplicativeNoise` (seed 000, theory §13)
    ``w -> (1 + α ξ) w`` with ``ξ ~ N(0, 1)`` independently for every weight and bias.
:class:`DeviceNoise` (Kern et al., theory §3–§4)
    every weight (and bias row) is a differential pair of devices with noise std σ each, so in
    weight units it receives additive ``N(0, 2σ²/λ²)`` with ``λ = (g_u − g_min)/w^u`` and
    ``w^u`` the max-abs weight (bias included) over the ``scalar`` / ``layer`` / ``column``
    scope (theory §3.1; column = one output neuron or one output channel, the UR mapping),
    computed by the mapping's code: an all-zero column takes its layer's ``w^u``.

Procedure (one step of :class:`~refmem.training.trainer.Trainer` with ``noise=...``):

1. λ is computed from the **clean** weights and held fixed for the step;
2. one noise realisation is drawn for the mini-batch (from the trainer's Generator);
3. forward and backward run at the noisy weights;
4. the clean weights are restored and the optimizer applies the gradient taken at the noisy
   weights to them ("straight-through": ``∂w_noisy/∂w`` is treated as the identity).

Noise acts on the dense/conv layers **as stored** (before batchnorm fusion). For a network
with batchnorm the programmed crossbar holds the fused weights, so this is an approximation
there; for the MLPs of both seeds (no batchnorm) it is the crossbar model itself.
"""

from __future__ import annotations

import abc

import numpy as np

from ..errors import ConfigError


def _layer_selection(model, layers):
    xb = model.crossbar_layers()
    if layers is None or layers == "all":
        return xb
    out = []
    for s in ([layers] if isinstance(layers, (int, str)) else layers):
        if s == "first":
            s = 0
        elif s == "last":
            s = -1
        try:
            out.append(xb[int(s)])
        except (ValueError, IndexError):
            raise ConfigError(f"noisy layer {s!r} is not a crossbar layer index "
                              f"(the model has {len(xb)})") from None
    return sorted(set(out))


class WeightNoise(abc.ABC):
    """Base class: :meth:`draw` returns ``{param name: noisy array}`` for one mini-batch."""

    def __init__(self, layers=None):
        self.layers = layers

    @abc.abstractmethod
    def draw(self, model, rng) -> dict:
        """Implemented by every concrete subclass."""

    @abc.abstractmethod
    def to_dict(self) -> dict:
        """JSON-able description (stored in the model file); every subclass implements it."""

    def _targets(self, model):
        """``[(position, layer), …]`` of the noisy crossbar layers."""
        return [(i, model.layers[i]) for i in _layer_selection(model, self.layers)]


class MultiplicativeNoise(WeightNoise):
    r"""Seed 000's imprecise weights :math:`w \to (1 + \alpha\,\xi)\,w`, :math:`\xi\sim N(0,1)`.

    Parameters
    ----------
    alpha : float >= 0
        Relative standard deviation of every weight and bias.
    layers : None, "all", int, "first", "last" or a sequence of those
        Crossbar layers (0-based in crossbar order) that receive noise; default all.
    """

    def __init__(self, alpha, layers=None):
        super().__init__(layers)
        self.alpha = float(alpha)
        if not np.isfinite(self.alpha) or self.alpha < 0:
            raise ConfigError(f"alpha must be a finite number >= 0, got {alpha}")

    def draw(self, model, rng):
        out = {}
        for i, layer in self._targets(model):
            for k, w in layer.params.items():
                xi = rng.standard_normal(w.shape).astype(w.dtype)
                out[f"{i:02d}.{k}"] = w * (1 + self.alpha * xi)
        return out

    def to_dict(self):
        return {"kind": "multiplicative", "alpha": self.alpha, "layers": _jsonable(self.layers)}


class DeviceNoise(WeightNoise):
    r"""Crossbar device noise in weight units, :math:`N(0, 2\sigma^2/\lambda^2)` per weight pair.

    Parameters
    ----------
    sigma : float >= 0
        Standard deviation of one device (constant model, theory §2 A1); a pair has 2σ².
    g_u : float or sequence of float
        Upper conductance, one value or one per crossbar layer (``design="layer"`` or
        ``"column"``; with ``"scalar"`` a single value).
    g_min : float, default 0
    design : {"scalar", "layer", "column"}
        Scope of ``w^u`` (theory §3.1): all crossbar layers together, each layer, or each output
        neuron / output channel; the bias is always inside the scope.
    layers : see :class:`MultiplicativeNoise`
    """

    def __init__(self, sigma, g_u=1.0, g_min=0.0, design="scalar", layers=None):
        super().__init__(layers)
        self.sigma = float(sigma)
        if not np.isfinite(self.sigma) or self.sigma < 0:
            raise ConfigError(f"sigma must be a finite number >= 0, got {sigma}")
        self.g_min = float(g_min)
        self.g_u = np.atleast_1d(np.asarray(g_u, dtype=np.float64))
        if self.g_u.ndim != 1 or not np.all(self.g_u > self.g_min):
            raise ConfigError(f"g_u must be > g_min = {self.g_min}, got {g_u}")
        if design not in ("scalar", "layer", "column"):
            raise ConfigError(f"design must be 'scalar', 'layer' or 'column', got {design!r}")
        if design == "scalar" and self.g_u.size != 1:
            raise ConfigError("the scalar design takes a single g_u")
        self.design = design

    def _gu(self, k, n):
        if self.g_u.size == 1:
            return self.g_u[0]
        if self.g_u.size != n:
            raise ConfigError(f"g_u has {self.g_u.size} values but the model has {n} "
                              "crossbar layers")
        return self.g_u[k]

    def scales(self, model) -> dict:
        r"""λ per crossbar position: ``{position: array (C_out,)}`` (constant per column).

        :math:`\lambda = (g_u - g_{\min})/w^u` with ``w^u`` from the mapping's own code
        (:func:`refmem.mapping.column_wu`, :func:`refmem.mapping.design_wu`; theory §3.1), so
        training and the crossbar agree: an all-zero column takes the ``w^u`` of its layer
        (and is noisy), an all-zero layer is a :class:`~refmem.errors.ConfigError`.
        """
        from ..mapping import column_wu, design_wu

        xb = model.crossbar_layers()
        cols = []
        for i in xb:
            p = model.layers[i].params
            w = np.asarray(p["weight"], dtype=np.float64)
            b = np.asarray(p["bias"], dtype=np.float64) if "bias" in p else None
            cols.append(column_wu(w.reshape(w.shape[0], -1).T, b, "FC", None, True))
        wu = design_wu(cols, self.design)
        return {i: (self._gu(k, len(xb)) - self.g_min) / wu[k] for k, i in enumerate(xb)}

    def draw(self, model, rng):
        lam = self.scales(model)
        out = {}
        for i, layer in self._targets(model):
            std = np.sqrt(2.0) * self.sigma / lam[i]          # weight-unit std of a pair
            for k, w in layer.params.items():
                s = std.reshape((-1,) + (1,) * (w.ndim - 1)).astype(w.dtype)
                out[f"{i:02d}.{k}"] = w + s * rng.standard_normal(w.shape).astype(w.dtype)
        return out

    def to_dict(self):
        return {"kind": "device", "sigma": self.sigma, "g_u": self.g_u.tolist(),
                "g_min": self.g_min, "design": self.design, "layers": _jsonable(self.layers)}


def _jsonable(layers):
    if layers is None or isinstance(layers, (int, str)):
        return layers
    return list(layers)

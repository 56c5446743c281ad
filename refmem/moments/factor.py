"""A closure beyond the Gaussian one: the common-mode factor carried as a quadrature mixture.

The Gaussian closure (theory §20) replaces the law of every ReLU's input by the Gaussian with
the propagated ``(μ, Γ)``. On deep UR networks it is low (theory §20: −13 … −15 % of the output
MSE at σ = 0.05 on the width/8 13-conv CNN) because the noise that all units of a layer share
— the common mode — becomes skewed after a ReLU, and replacing it by a Gaussian at the next
ReLU loses the heavy right tail of the layer's summed output.

The *factor closure* (theory §20, "A closure beyond the Gaussian one") carries that common
mode through the remaining nonlinearities by quadrature instead of closing it. At a chosen
ReLU the Gaussian input ``X ~ N(μ, Γ)`` is written exactly as

    X = μ + b Z + E,   b = sqrt(λ₁) u₁,   Z ~ N(0, 1),   E ~ N(0, Γ − b bᵀ) independent,

with ``(λ₁, u₁)`` the largest eigenpair of Γ (the principal, i.e. common, mode; ``Γ − bbᵀ`` is
PSD). The integral over Z is replaced by K-point Gauss–Hermite quadrature: K Gaussian
*components* ``N(μ + z_k b, Γ − bbᵀ)`` with weights ``w_k`` (Eq. F1). The mixture has exactly
the mean and covariance of X (and its odd moments along b vanish, the fourth is exact for
K ≥ 3). Every later layer is applied to every component separately — exact for the linear
layers (the device errors of a later layer are independent of the component), the Gaussian
closure (theory §8) for the ReLUs of the *conditional* law — and the output moments are the
mixture's (law of total mean and covariance, Eq. F2)::

    m = Σ_k w_k μ_k,   C = Σ_k w_k (Γ_k + (μ_k − m)(μ_k − m)ᵀ).

Several split points multiply the number of components (K per split, each component split
along its own conditional principal mode). Power is linear in the input's first and second
moments (theory §11), so a layer's power is the weighted sum over components, exactly.

Limits: with one split at the last ReLU only (linear layers after it) the result tends to the
Gaussian closure's as K grows (nothing is closed differently); with a rank-one noise source
(``Γ = bbᵀ``) the pass is K-point Gauss–Hermite quadrature of the exact expectation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy.linalg import eigh

from ..errors import ConfigError
from .layout import as_dense

__all__ = ["FactorClosure", "factor_split", "mixture_moments", "mixture_mean_var",
           "MAX_COMPONENTS"]

MAX_COMPONENTS = 4096
"""Largest number of mixture components a pass may create (nodes ** number of splits)."""


@dataclass(frozen=True)
class FactorClosure:
    """Where and how finely the common-mode factor is split (theory §20, factor closure).

    Parameters
    ----------
    layers : sequence of int
        Crossbar layers (0..n−1, negative counts from the end) whose following ReLU splits
        every component along its principal mode.
    nodes : int
        Gauss–Hermite nodes K per split (2 … 40).
    """

    layers: tuple = ()
    nodes: int = 3

    def __post_init__(self):
        try:
            layers = tuple(int(i) for i in self.layers)
        except (TypeError, ValueError):
            raise ConfigError(f"factor layers must be crossbar layer indices, got "
                              f"{self.layers!r}") from None
        object.__setattr__(self, "layers", layers)
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, (int, np.integer)):
            raise ConfigError(f"factor nodes must be an integer, got {self.nodes!r}")
        if not 2 <= int(self.nodes) <= 40:
            raise ConfigError(f"factor nodes must be between 2 and 40, got {self.nodes}")
        object.__setattr__(self, "nodes", int(self.nodes))

    def relu_positions(self, mapped):
        """Fused positions of the ReLUs that split (the first ReLU after each named layer)."""
        from ..layers import ReLU
        n = mapped.n_crossbar
        layers = mapped.fused.layers
        xb = sorted(ml.position for ml in mapped.layers)
        out = set()
        for i in self.layers:
            if not -n <= i < n:
                raise ConfigError(f"factor layer {i} is not a crossbar layer (0..{n - 1})")
            k = i % n
            end = xb[k + 1] if k + 1 < n else len(layers)
            relu = [p for p in range(xb[k] + 1, end) if isinstance(layers[p], ReLU)]
            if not relu:
                raise ConfigError(f"factor layer {k} is not followed by a ReLU before the next "
                                  "crossbar layer")
            out.add(relu[0])
        if self.nodes ** len(out) > MAX_COMPONENTS:
            raise ConfigError(f"factor closure: {self.nodes}^{len(out)} components exceed "
                              f"{MAX_COMPONENTS}; use fewer split layers or nodes")
        return out


def _nodes(K):
    z, w = hermegauss(K)
    return z, w / w.sum()


def factor_split(weight, mu, gamma, nodes):
    r"""Split one Gaussian component along its principal mode (Eq. F1, theory §20).

    ``N(μ, Γ)`` with weight ``weight`` becomes the K = ``nodes`` components
    ``(weight·w_k, μ + z_k b, Γ − bbᵀ)``, ``b = sqrt(λ₁) u₁`` the largest eigenpair of Γ and
    ``(z_k, w_k)`` the probabilists' Gauss–Hermite rule (weights summing to 1). The mixture
    has exactly the mean ``μ`` and covariance ``Γ`` for K ≥ 2. A deterministic component
    (``gamma`` None) or one with ``λ₁ <= 0`` is returned unsplit.

    Returns
    -------
    list of ``(weight, mean (d,), cov (d, d))``; the covariances are separate arrays.
    """
    if gamma is None:
        return [(weight, mu, None)]
    G = np.array(as_dense(gamma), dtype=np.float64)
    d = G.shape[0]
    lam, U = eigh(G, lower=False, subset_by_index=[d - 1, d - 1], driver="evx")  # top pair
    if not lam[0] > 0:
        return [(weight, mu, G)]
    b = U[:, 0] * np.sqrt(lam[0])
    G -= np.outer(b, b)
    dg = np.einsum("ii->i", G)
    np.maximum(dg, 0.0, out=dg)          # rounding residue of the removed mode (λ₁ is the top)
    z, w = _nodes(nodes)
    return [(weight * w[k], mu + z[k] * b, G if k == nodes - 1 else G.copy())
            for k in range(nodes)]


def mixture_mean_var(weights, means, variances):
    """Mean and variance of a mixture (Eq. F2, diagonal only): per-unit law of total variance."""
    W = np.asarray(weights, dtype=np.float64)
    M = np.asarray(means, dtype=np.float64)
    m = W @ M
    D = M - m
    return m, W @ np.asarray(variances, dtype=np.float64) + W @ (D * D)


def mixture_moments(weights, means, covs):
    r"""Mean and covariance of a mixture of components (Eq. F2, theory §20).

    ``m = Σ w_k μ_k``, ``C = Σ w_k (Γ_k + (μ_k − m)(μ_k − m)ᵀ)`` (law of total covariance);
    a ``None`` covariance is a deterministic component.
    """
    W = np.asarray(weights, dtype=np.float64)
    M = np.asarray(means, dtype=np.float64)
    m = W @ M
    D = M - m
    C = (D.T * W) @ D
    for w, G in zip(W, covs):
        if G is not None:
            C += w * as_dense(G)
    return m, C

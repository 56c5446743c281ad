"""Analytic moment propagation through a network on noisy crossbars (Kern et al., MemSE).

Implements the corrected specification (``theory §n`` = ``docs/theory.md``, numbered like
the specification), not the paper's printed equations. For every input sample the mean vector ``μ`` and the full
covariance ``Γ`` are carried through the batchnorm-fused network, layer by layer
(Algorithm 1 as corrected in theory §15: every layer's power **and** moments are computed from
its **input** moments, D16; ``Γ`` is re-symmetrised after every linear layer).

Layers
------
- **FC** (:func:`dense_moments`, theory §4, Proposition 1 corrected — Eq. (9)–(11), D6/D7):
  ``E Z = Wᵀμ + b``, ``Cov Z = WᵀΓW + diag(vᵀq + v^b)`` with ``q = μ² + diag Γ`` and the
  weight-unit pair variances ``v = (σ²(g⁺) + σ²(g⁻))/λ² + α²w² + Δ²/12`` taken from
  :meth:`refmem.mapping.MappedLayer.block` (device noise, theory §13 α, theory §14 dither);
- **UR conv** (:func:`ur_moments`, theory §5, Proposition 2 corrected — Eqs. (12)–(16), D8/D9):
  the signal term is the double convolution ``W_ULᵀ Γ W_UL``; the noise term is shared by all
  positions of an output channel and uses the **same** tap at both positions,
  ``Σ_a v[a, c_o] Q_ι(p,a),ι(p',a) + v^b[c_o]`` with ``Q = Γ + μμᵀ``
  (:func:`ur_shared_noise_kernel`, Numba);
- **UL conv** (:func:`ul_moments`, theory §6): FC with the Toeplitz matrix; every entry is a
  noisy pair (structural zeros at ``g_min``), so the noise is diagonal and sums over **all**
  inputs (D12); the signal term is the same double convolution as UR;
- **average pooling** (:func:`pool_moments`, theory §7, Proposition 3 corrected, D13) and
  **flatten** (identity on the flat NCHW vector);
- **ReLU** (:mod:`refmem.relu`, theory §8): Proposition 4 mean/variance in a stable form, and
  the exact bivariate covariance (default, theory §8.2) or the paper's Eq. (28) (``taylor``).

The TIA gain ``r`` is undone digitally by ``1/(rλ)`` (theory §3.3), so it does **not** enter the
moments; it enters power only (:mod:`refmem.power`, theory §11, with the physical ``r``).
The output MSE per output is ``Γ_jj + (μ_j − z_j)²`` against the reference ``z`` (the
unquantized, noiseless network; theory §9, Eq. (7)).

A deterministic input keeps the covariance *lazy* (``None``) until the first crossbar layer,
whose covariance is built directly from its noise term (FC/UL: diagonal; UR: the shared-device
term from ``μμᵀ`` restricted to patches); no zero L×L matrix is ever allocated; in the network pass it stays block-diagonal across
channels (:class:`~refmem.moments.layout.BlockDiag`) until a layer mixes the channels.

Package layout (one module per mathematical object): :mod:`~refmem.moments.dense` (FC),
:mod:`~refmem.moments.conv` (UR/UL and the streamed double convolution),
:mod:`~refmem.moments.pool` (average pooling, fused ReLU → pooling),
:mod:`~refmem.moments.activation` (ReLU in the pass: layouts, Taylor's negative variances),
:mod:`~refmem.moments.layout` (dense / block-diagonal covariances). The network driver is
:func:`refmem.propagate.propagate` (also importable from here).
"""

from ..relu import relu_moments
from .activation import TaylorNotPSDWarning, relu_layer_moments
from .conv import (conv_cols, conv_mean, conv_rows, conv_signal_cov, ul_moments, ul_noise,
                   ul_noise_taps,
                   ur_moments, ur_noise, ur_shared_noise_kernel)
from .dense import dense_moments, raw_second_moments, symmetrize
from .layout import BlockDiag, as_dense
from .pool import pool_moments, relu_pool_moments
from .workspace import Workspace

__all__ = ["propagate", "MomentsResult", "dense_moments", "conv_mean", "conv_cols", "conv_rows",
           "conv_signal_cov", "ur_moments", "ul_moments", "ul_noise", "ul_noise_taps", "ur_noise",
           "pool_moments", "relu_pool_moments", "relu_moments", "relu_layer_moments",
           "layer_power", "ur_shared_noise_kernel", "symmetrize", "raw_second_moments",
           "BlockDiag", "as_dense", "TaylorNotPSDWarning", "Workspace"]


def __getattr__(name):
    # the driver sits one floor up (refmem.propagate imports this package)
    if name in ("propagate", "MomentsResult"):
        from .. import propagate as _p
        return getattr(_p, name)
    if name == "layer_power":            # refmem.power imports refmem.moments.layout
        from ..power import layer_power
        return layer_power
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

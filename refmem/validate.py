"""Validation of the analytic MSE by a control-variate Monte-Carlo (theory §23).

The analytic pass (:func:`refmem.moments.propagate`) closes every ReLU with a Gaussian
(theory §20); on deep narrow networks that closure is biased. :func:`validate` measures the
bias with an **unbiased** Monte-Carlo estimate of the MSE whose variance is cut by a control
variate built from the analytic machinery:

- **Tangent response.** Write one device draw as a weight-unit perturbation ``ΔW_l`` of every
  crossbar layer ``l`` (``ΔW = ((G⁺ − g⁺) − (G⁻ − g⁻))/λ`` plus the α noise and the dither
  error, theory §2, §13, §14). Linearising the network at the noiseless programmed point gives
  the first-order output error ``e = Σ_l J_{L←l} ΔW_l h⁰_l`` where ``h⁰_l`` is layer ``l``'s
  noiseless input and ``J_{L←l}`` the product of the later layers' weights, average-pooling
  matrices and ReLU derivative masks ``D_k = diag(1[z⁰_k > 0])`` (theory §23). Per draw it
  costs one extra linear pass: ``δ_{l+1} = W_l D δ_l + ΔW_l h⁰_l``.
- **Closed form.** ``e`` is linear in the zero-mean draws, so ``E e = 0`` and
  ``Cov e = Σ_lin`` follows from the recursion
  ``Σ_{l+1} = W_lᵀ D Σ_l D W_l + N_l(h⁰_l)``, where ``N_l(μ)`` is the layer's noise covariance
  for a *deterministic* input ``μ`` — the analytic noise terms of theory §4–§6 with Γ = 0
  (:func:`tangent_moments`). With ``y⁰`` the noiseless programmed output and ``z`` the
  reference (theory §9), the control variate per input is ``C = mean_j (y⁰_j + e_j − z_j)²`` with
  the exact expectation ``E C = mean_j ((y⁰_j − z_j)² + (Σ_lin)_jj)``.
- **Estimator.** With ``Y = mean_j (y_j − z_j)²`` from the same draw,
  ``Ŷ_cv = mean_main [Y − β (C − E C)]``. ``β = Cov(Y, C)/Var C`` is fitted on **separate pilot
  draws** (their own seed streams), so it is independent of the main draws and ``Ŷ_cv`` is
  unbiased for any β; its standard error is the sample standard deviation of the per-draw
  values over √n. The variance reduction against plain Monte-Carlo on the same draws is
  ``Var Y / Var(Y − β(C − E C))`` ≈ ``1/(1 − ρ²)``.

The main draws are exactly those of :func:`refmem.montecarlo.monte_carlo` with the same seed
and block (same streams ``SeedSequence(seed, spawn_key=(k, s))``), so the plain estimate
reported next to the control-variate one equals ``refmem mc``'s ``mse_overall``; the pilot uses
the streams ``SeedSequence(seed, spawn_key=(PILOT_KEY, k, s))``.

``layer_stats=True`` also records, after every layer, the Monte-Carlo moments of the
deviation ``d = h − h⁰`` from the noiseless programmed activations (per unit: mean, second,
third and fourth central moments — skewness and excess kurtosis of the pre-activations — and
per draw the summed squared deviation), which :func:`layer_closure_table` compares with the
analytic per-layer moments (theory §20).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, DataError
from .layers import AvgPool2d, Conv2d, Flatten, ReLU, gather_patches
from .moments import (conv_signal_cov, dense_moments, pool_moments, propagate, symmetrize,
                      ul_moments, ul_noise, ur_moments)
from .montecarlo import BLOCK, _LayerSampler

__all__ = ["validate", "tangent_moments", "ValidationResult", "PILOT_KEY", "DEFAULT_PILOT",
           "layer_closure_table", "tangent_variance",
           "write_validation", "CONTROLS"]

PILOT_KEY = 0x70696C74
"""First spawn-key entry of the pilot streams (``"pilt"``); keeps them apart from the main draws."""

CONTROLS = ("tangent", "fixed-mask")
"""Control variates: the network with frozen ReLU masks (exact multilinear response) or its
first-order (tangent) part."""

DEFAULT_PILOT = 64
"""Pilot draws used to fit β (and to time one draw for ``budget``)."""

_MEM_BUDGET = 256 * 2**20
_UL_CHUNK_BYTES = 128 * 2**20


# ====================================================================== closed form
def _geometry(ml):
    return (tuple(ml.in_shape), ml.conv.k, ml.conv.stride, ml.conv.padding)


def _ul_blocks(ml):
    """Column blocks of a UL layer with their pair variances (streamed when large)."""
    per_col = 8 * ml.n_rows * 10
    step = int(max(1, _UL_CHUNK_BYTES // per_col))
    for c0 in range(0, ml.n_cols, step):
        yield ml.block(np.arange(c0, min(ml.n_cols, c0 + step)))


def tangent_moments(mapped, x, *, fixed_mask=False):
    r"""Noiseless programmed output and covariance of the tangent (first-order) error (theory §23).

    The first-order response of the output to the device/weight noise at the noiseless point
    is ``e = Σ_l J_{L←l} ΔW_l h⁰_l``. Its covariance obeys
    ``Σ ← Wᵀ Σ W + N(h⁰)`` at a crossbar layer (FC, UR, UL: the analytic noise terms of theory §4,
    §5 Eqs. (14)–(16), §6 with a deterministic input ``h⁰``, i.e. Γ = 0 in ``q`` and ``Q``),
    ``Σ ← D Σ D`` at a ReLU (``D = diag(1[z⁰ > 0])``, the derivative at the noiseless
    pre-activation ``z⁰``) and ``Σ ← A Σ Aᵀ`` at an average pooling (theory §7). ``E e = 0``.

    ``fixed_mask=True``: the exact error of the network whose ReLUs are frozen to the masks
    ``D`` (a multilinear function of the draws): the noise terms then use the perturbed input's
    second moments, ``q = h⁰² + diag Σ`` and ``Q = Σ + h⁰h⁰ᵀ`` — the exact linear steps of
    theory §4–§6 (valid for any input law) with the ReLU replaced by ``D``; the mean stays
    ``y⁰`` (each draw is independent of its layer's input).

    Returns
    -------
    y0 : ndarray (B, J)
        Output of the noiseless programmed network (:meth:`MappedNetwork.programmed_forward`).
    cov : ndarray (B, J, J)
        ``Cov e`` per input.
    """
    net = mapped.network
    x = net.check_input(x)
    B = x.shape[0]
    fused = mapped.fused
    shapes = fused.shapes
    bypos = mapped.by_position()
    blk = {pos: ml.block() for pos, ml in bypos.items() if ml.scheme != "UL"}
    J = int(np.prod(shapes[-1]))
    y0 = np.empty((B, J))
    covs = np.empty((B, J, J))
    for b in range(B):
        mu = x[b].reshape(-1).astype(np.float64)
        S = None
        for pos, layer in enumerate(fused.layers):
            if pos in bypos:
                ml = bypos[pos]
                if ml.scheme == "FC":
                    k = blk[pos]
                    if fixed_mask:
                        mu, S = dense_moments(k.W, k.b, k.v, k.vb, mu, S)
                        continue
                    new_mu, N = dense_moments(k.W, k.b, k.v, k.vb, mu, None)
                    if S is not None:
                        N += symmetrize(k.W.T @ (S @ k.W))
                    S = N
                elif ml.scheme == "UR":
                    k = blk[pos]
                    if fixed_mask:
                        mu, S = ur_moments(ml.W, ml.b, k.v, k.vb, ml.idx, mu, S,
                                           geometry=_geometry(ml))
                        continue
                    new_mu, N = ur_moments(ml.W, ml.b, k.v, k.vb, ml.idx, mu, None)
                    if S is not None:
                        N += conv_signal_cov(ml.W, ml.idx, S, geometry=_geometry(ml))
                    S = N
                else:
                    noise = ul_noise(_ul_blocks(ml), mu, S if fixed_mask else None, ml.n_cols)
                    new_mu, S = ul_moments(ml.W, ml.b, ml.idx, noise, mu, S,
                                           geometry=_geometry(ml))
                mu = new_mu
            elif isinstance(layer, ReLU):
                d = (mu > 0).astype(np.float64)
                mu = np.maximum(mu, 0.0)
                if S is not None:
                    S *= d[:, None]
                    S *= d[None, :]
            elif isinstance(layer, AvgPool2d):
                mu, S = pool_moments(mu, S, shapes[pos], layer.kernel_size)
            elif not isinstance(layer, Flatten):
                raise ConfigError(f"layer {pos:02d} ({layer.type}) is not supported by validate")
        y0[b] = mu
        covs[b] = 0.0 if S is None else S
    return y0, covs


def _conv_transpose(G, ml):
    """``G ↦ G M`` for a conv layer's Jacobian ``M = ∂z/∂h`` (scatter of the taps), G (r, J_l)."""
    r = G.shape[0]
    C = ml.W.shape[1]                                                   # output channels
    n_pos = ml.n_pos
    L = int(np.prod(ml.in_shape))
    T = G.reshape(r, C, n_pos).transpose(0, 2, 1) @ ml.W.T               # (r, n_pos, taps)
    safe = np.where(ml.idx < 0, L, ml.idx)                              # padding -> slot L
    flat = (np.arange(r)[:, None, None] * (L + 1) + safe[None]).ravel()
    out = np.bincount(flat, weights=T.ravel(), minlength=r * (L + 1))
    return out.reshape(r, L + 1)[:, :L]


def _pool_transpose(G, in_shape, k):
    """``G ↦ G A`` for average pooling (kernel = stride = κ; dropped margins get 0)."""
    r = G.shape[0]
    C, H, W = in_shape
    E, F = H // k, W // k
    g = G.reshape(r, C, E, 1, F, 1) / (k * k)
    up = np.broadcast_to(g, (r, C, E, k, F, k)).reshape(r, C, E * k, F * k)
    out = np.zeros((r, C, H, W))
    out[:, :, :E * k, :F * k] = up
    return out.reshape(r, -1)


def tangent_variance(mapped, x):
    r"""Noiseless output and per-output variance of the tangent error, by the adjoint (theory §23).

    ``Var e_j = Σ_l Σ_devices v · (∂y_j/∂W_l)²``: with ``g_j = ∂y_j/∂z_l`` (back-propagated
    through the later layers: weights, pooling, ReLU masks at the noiseless point) and the
    noiseless layer input ``h⁰``, a layer contributes
    ``Σ_c g_j[c]² (Σ_a v[a,c] h⁰_a² + v^b_c)`` (FC, and UL with its (c, p) columns, theory §4, §6)
    or, with the devices shared by all positions (UR, theory §5),
    ``Σ_{c,a} v[a,c] (Σ_p g_j[c,p] h⁰_ι(p,a))² + Σ_c v^b_c (Σ_p g_j[c,p])²``.
    The same numbers as the diagonal of :func:`tangent_moments` at the cost of J backward passes.

    Returns ``y0`` (B, J) and ``var`` (B, J).
    """
    net = mapped.network
    x = net.check_input(x)
    tan = _Tangent(mapped, x)
    acts = tan.acts
    fused = mapped.fused
    shapes = fused.shapes
    B = x.shape[0]
    J = acts[-1].shape[1]
    var = np.zeros((B, J))
    G = np.broadcast_to(np.eye(J), (B, J, J)).copy()            # ∂y/∂(current output)
    first = min(tan.bypos)
    for pos in range(len(fused.layers) - 1, -1, -1):
        layer = fused.layers[pos]
        if pos in tan.bypos:
            ml = tan.bypos[pos]
            h0 = acts[pos]
            if ml.scheme == "UR":
                k = ml.block()
                G4 = G.reshape(B, J, ml.n_cols, ml.n_pos)
                P0 = tan.feed[pos].reshape(B, ml.n_pos, ml.n_rows)
                U = np.einsum("bjcp,bpa->bjca", G4, P0)
                var += np.einsum("bjca,ac->bj", U * U, k.v)
                if k.vb is not None:
                    var += (G4.sum(-1) ** 2) @ k.vb
            else:
                if ml.scheme == "FC":
                    k = ml.block()
                    noise = (h0 * h0) @ k.v
                    if k.vb is not None:
                        noise = noise + k.vb
                else:
                    noise = np.stack([ul_noise(_ul_blocks(ml), h0[b], None, ml.n_cols)
                                      for b in range(B)])
                var += np.einsum("bjc,bc->bj", G * G, noise)
            if pos == first:
                break
            if ml.scheme == "FC":
                G = G @ ml.W.T
            else:
                G = _conv_transpose(G.reshape(B * J, -1), ml).reshape(B, J, -1)
        elif isinstance(layer, ReLU):
            G = G * (acts[pos] > 0)[:, None, :]
        elif isinstance(layer, AvgPool2d):
            G = _pool_transpose(G.reshape(B * J, -1), shapes[pos],
                                layer.kernel_size).reshape(B, J, -1)
        elif not isinstance(layer, Flatten):
            raise ConfigError(f"layer {pos:02d} ({layer.type}) is not supported by validate")
    return acts[-1].copy(), var


# ====================================================================== sampling
class _Tangent:
    """Per-draw first-order response ``δ`` (hooked on the samplers' draws)."""

    def __init__(self, mapped, x, fixed_mask=False):
        self.fixed_mask = fixed_mask
        fused = mapped.fused
        shapes = fused.shapes
        self.shapes = shapes
        self.B = x.shape[0]
        self.bypos = mapped.by_position()
        # noiseless programmed activations: acts[pos] = input of layer pos, (B, n)
        acts = [x.reshape(self.B, -1)]
        h = x
        for pos, layer in enumerate(fused.layers):
            h = layer.forward(h, shapes[pos])
            acts.append(h.reshape(self.B, -1))
        self.acts = acts
        self.feed = {}
        self.lin = {}
        for pos, ml in self.bypos.items():
            if ml.scheme == "UR":
                self.feed[pos] = gather_patches(acts[pos], ml.idx).reshape(-1, ml.n_rows)
            else:
                self.feed[pos] = acts[pos]
            if ml.scheme != "FC":
                c = ml.conv
                self.lin[pos] = Conv2d(c.weight, None, c.stride, c.padding)
        self.time = 0.0
        self.buf = None
        self.m = 0
        self.t = -1

    def begin(self, pos, m, delta=None):
        """Prepare layer ``pos`` for ``m`` draws; ``delta`` is the perturbation of its input.

        Tangent: the draw multiplies the noiseless input ``h⁰``. Fixed-mask: it multiplies the
        perturbed input ``h⁰ + δ`` (the network with the ReLU masks frozen at the noiseless
        point is then reproduced exactly, not only to first order).
        """
        ml = self.bypos[pos]
        self.buf = np.zeros((m, self.B, int(np.prod(ml.out_shape))))
        self.m = m
        self.t = -1
        self.cur = self.feed[pos][None]
        if self.fixed_mask and delta is not None:
            h = self.acts[pos][None] + delta                          # (m, B, R_in)
            if ml.scheme == "UR":
                h = gather_patches(h.reshape(m * self.B, -1), ml.idx)
                h = h.reshape(m, -1, ml.n_rows)
            self.cur = h

    def _hook(self, pos, ml):
        R = ml.n_rows
        B = self.B
        bias_row = ml.has_bias_row

        def on_draw(st, Gp, Gm, dw):
            t0 = time.perf_counter()
            dW = ((Gp - st.gp) - (Gm - st.gm)) / st.lam[:, None]     # (m', cols, R1)
            if dw is not None:
                dW = dW + dw
            feed = self.cur
            if feed.shape[0] > 1 and dW.shape[0] != feed.shape[0]:     # streamed UL
                tt = self.t + 1 if st.cols[0] == 0 else self.t
                feed = feed[tt:tt + 1]
            y = np.matmul(feed, np.swapaxes(dW[..., :R], -1, -2))
            if bias_row:
                y = y + dW[:, None, :, R]
            mm = dW.shape[0]
            if ml.scheme == "UR":
                y = y.reshape(mm, B, ml.n_pos, ml.n_cols)
                y = y.transpose(0, 1, 3, 2).reshape(mm, B, ml.n_cols * ml.n_pos)
            cols = st.cols
            if ml.scheme == "UR":                   # every channel at every position
                self.buf[...] = y
            elif mm == self.m:
                self.buf[:, :, cols] = y
            else:                                   # streamed UL: one realization at a time
                if cols[0] == 0:
                    self.t += 1
                self.buf[self.t:self.t + 1, :, cols] = y
            self.time += time.perf_counter() - t0
        return on_draw

    def linear(self, pos, delta):
        """``W_l`` applied to ``δ`` (m, B, R) without bias."""
        ml = self.bypos[pos]
        if ml.scheme == "FC":
            return delta @ ml.W
        m = delta.shape[0]
        out = self.lin[pos].forward(delta.reshape((m * self.B,) + tuple(ml.in_shape)),
                                    ml.in_shape)
        return out.reshape(m, self.B, -1)


class _Sums:
    """Raw power sums of ``d`` (per unit) about the noiseless point, for skewness/kurtosis."""

    def __init__(self, shape):
        self.n = 0
        self.s = [np.zeros(shape) for _ in range(4)]

    def add(self, d):
        self.n += d.shape[0]
        p = d.copy()
        for k in range(4):
            self.s[k] += p.sum(0)
            if k < 3:
                p *= d

    def central(self):
        n = self.n
        m1, m2, m3, m4 = (s / n for s in self.s)
        c2 = m2 - m1 * m1
        c3 = m3 - 3 * m1 * m2 + 2 * m1 ** 3
        c4 = m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1 ** 4
        return m1, m2, c2, c3, c4


class _Mirrored:
    """A generator whose normal draws are negated and uniform draws reflected (antithetic)."""

    def __init__(self, rng):
        self.rng = rng

    def standard_normal(self, size=None):
        return -self.rng.standard_normal(size)

    def uniform(self, low=0.0, high=1.0, size=None):
        return (low + high) - self.rng.uniform(low, high, size)


def _streams(seed, key, n_streams, mirrored=False):
    out = [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key + (s,)))
           for s in range(n_streams)]
    return [_Mirrored(g) for g in out] if mirrored else out


def _simulate(mapped, x, n, seed, *, pilot, block, chunk, tangent, labels, layer_stats,
              antithetic=True, fixed_mask=False, progress=None):
    """Run ``n`` base draws (and their mirrors when ``antithetic``); per draw and input ``Y``,
    ``C`` (pair averages when antithetic), correctness; timings."""
    fused = mapped.fused
    shapes = fused.shapes
    by_pos = mapped.by_position()
    cfg = mapped.config
    samplers = {pos: _LayerSampler(ml, cfg.clip_negative) for pos, ml in by_pos.items()}
    n_xb = mapped.n_crossbar
    B = x.shape[0]
    ref = mapped.reference(x)
    J = ref.shape[1]
    tan = _Tangent(mapped, x, fixed_mask) if tangent is None else tangent
    for pos, smp in samplers.items():
        smp.on_draw = tan._hook(pos, by_pos[pos])
    tan.time = 0.0
    y0 = tan.acts[-1]
    per_real = sum(smp.bytes_per_realization() for smp in samplers.values())
    per_real += 8 * B * max(int(np.prod(sh)) for sh in shapes) * 6
    if chunk is None:
        chunk = int(max(1, min(block, _MEM_BUDGET // max(per_real, 1))))
    chunk = min(int(chunk), block)
    n_mem = 2 if antithetic else 1
    Y = np.zeros((n_mem, n, B))
    C = np.zeros((n_mem, n, B))
    correct = np.zeros((n, B)) if labels is not None else None
    stats = sq_sum = None
    if layer_stats:
        stats = {pos: _Sums((B, int(np.prod(shapes[pos + 1])))) for pos in range(len(fused.layers))}
        sq_sum = {pos: np.zeros((n, B)) for pos in stats}
    clock = {"lin": 0.0, "stat": 0.0}

    def run(streams, m, r0, mem):
        h = x.reshape(B, -1)[None]
        delta = None
        for pos, layer in enumerate(fused.layers):
            if pos in samplers:
                i = by_pos[pos].index
                tan.begin(pos, m, delta)
                h, _ = samplers[pos].forward(h, m, streams[1 + 3 * i: 4 + 3 * i])
                t0 = time.perf_counter()
                delta = tan.buf if delta is None else tan.linear(pos, delta) + tan.buf
                clock["lin"] += time.perf_counter() - t0
            else:
                M = h.shape[0]
                h = layer.forward(h.reshape((M * B,) + shapes[pos]), shapes[pos])
                h = h.reshape(M, B, -1)
                t0 = time.perf_counter()
                if delta is not None:
                    if isinstance(layer, ReLU):
                        delta = delta * (tan.acts[pos] > 0)
                    elif not isinstance(layer, Flatten):
                        delta = layer.forward(delta.reshape((m * B,) + shapes[pos]),
                                              shapes[pos]).reshape(m, B, -1)
                clock["lin"] += time.perf_counter() - t0
            if stats is not None:
                t0 = time.perf_counter()
                d = np.broadcast_to(h, (m,) + h.shape[1:]) - tan.acts[pos + 1]
                stats[pos].add(d)
                sq_sum[pos][r0:r0 + m] += (d * d).sum(-1) / n_mem
                clock["stat"] += time.perf_counter() - t0
        y = np.broadcast_to(h, (m, B, J))
        t0 = time.perf_counter()
        e = y - ref
        Y[mem, r0:r0 + m] = (e * e).mean(-1)
        e = (y0 if delta is None else y0 + delta) - ref
        C[mem, r0:r0 + m] = (e * e).mean(-1)
        if correct is not None:
            correct[r0:r0 + m] += (np.argmax(y, axis=2) == labels) / n_mem
        clock["lin"] += time.perf_counter() - t0

    t_start = time.perf_counter()
    n_blocks = -(-n // block)
    for k in range(n_blocks):
        mb = min(block, n - k * block)
        key = (PILOT_KEY, k) if pilot else (k,)
        members = [_streams(seed, key, 1 + 3 * n_xb)]
        if antithetic:
            members.append(_streams(seed, key, 1 + 3 * n_xb, mirrored=True))
        for c0 in range(0, mb, chunk):
            m = min(chunk, mb - c0)
            for mem, streams in enumerate(members):
                run(streams, m, k * block + c0, mem)
            if progress is not None:
                progress(m)
    total = time.perf_counter() - t_start
    for smp in samplers.values():
        smp.on_draw = None
    t_tan = tan.time + clock["lin"]
    total -= clock["stat"]
    out = dict(Y=Y, C=C, correct=correct, time_total=total, time_tangent=t_tan,
               time_plain=max(total - t_tan, 1e-12), tangent=tan, n_real=n * n_mem)
    if stats is not None:
        out["stats"] = stats
        out["sq_sum"] = sq_sum
    return out


# ====================================================================== result
@dataclass
class ValidationResult:
    """Analytic MSE next to an unbiased control-variate Monte-Carlo MSE (theory §23).

    Per input ``(B,)`` and over the batch (scalars ``*_batch``, the mean over inputs of the
    per-input values, each MSE itself a mean over outputs): ``mse_analytic``, ``mse_unbiased``
    (control variate) with ``mse_unbiased_se``, ``mse_mc`` / ``mse_mc_se`` (plain Monte-Carlo on
    the same draws), ``bias_rel = mse_analytic/mse_unbiased − 1`` with ``bias_rel_se``,
    ``variance_reduction`` (plain vs control-variate variance on the same draws),
    ``efficiency_gain`` (variance reduction × plain wall time / control-variate wall time,
    pilot and closed form included), ``beta`` (pilot-fitted), ``mse_tangent`` (``E C``),
    ``corr`` (correlation of ``Y`` and ``C`` on the main draws).
    """

    n: int
    n_pilot: int
    seed: int
    block: int
    per_input: dict
    batch: dict
    timing: dict
    budget: float | None = None
    antithetic: bool = True
    control: str = "tangent"
    accuracy: float | None = None
    accuracy_se: float | None = None
    layers: dict | None = field(default=None, repr=False)

    def datasets(self) -> dict:
        d = {}
        for k, v in self.per_input.items():
            d[k] = v
        for k, v in self.batch.items():
            d[k + "_batch"] = np.float64(v)
        if self.accuracy is not None:
            d["accuracy_mc"] = np.float64(self.accuracy)
            d["accuracy_mc_se"] = np.float64(self.accuracy_se)
        return d


def _fit_beta(Y, C):
    """β = Cov(Y, C)/Var(C) per column (0 where C does not vary)."""
    Yc = Y - Y.mean(0)
    Cc = C - C.mean(0)
    vc = (Cc * Cc).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(vc > 0, (Yc * Cc).sum(0) / np.where(vc > 0, vc, 1.0), 0.0)


def validate(mapped, x, *, seed, n=None, budget=None, labels=None, pilot=DEFAULT_PILOT,
             block=BLOCK, chunk=None, layer_stats=False, analytic=None, antithetic=True,
             control="tangent", progress=False):
    """Analytic MSE beside an unbiased control-variate Monte-Carlo MSE (theory §23).

    Parameters
    ----------
    mapped : refmem.mapping.MappedNetwork
    x : array (B, *input_shape)
        Deterministic inputs.
    seed : int
        Seed of every draw (main draws as :func:`refmem.montecarlo.monte_carlo`; pilot draws
        from the streams keyed ``PILOT_KEY``).
    n : int, optional
        Main draws. Exactly one of ``n`` and ``budget``.
    budget : float, optional
        Wall-time budget in seconds: the pilot's time per draw fixes ``n`` as a whole number of
        seed blocks (at least one); the chosen ``n`` is recorded so ``n=`` reproduces the run.
    labels : int array (B,), optional
        Also the Monte-Carlo accuracy (``accuracy``, ``accuracy_se``).
    pilot : int
        Pilot draws (≥ 8) for β and the timing.
    layer_stats : bool
        Record per-layer deviation moments (skewness, kurtosis, summed squared deviation).
    analytic : refmem.moments.MomentsResult, optional
        A precomputed analytic pass of the same network and inputs (else computed here).
    """
    if control not in CONTROLS:
        raise ConfigError(f"control must be one of {', '.join(CONTROLS)}, got {control!r}")
    if mapped.config.clip_negative:
        raise ConfigError("validate compares with the analytic model; clip_negative leaves it")
    net = mapped.network
    x = net.check_input(x)
    B = x.shape[0]
    if (n is None) == (budget is None):
        raise ConfigError("give exactly one of n and budget")
    try:
        seed = int(seed)
        pilot = int(pilot)
        block = int(block)
    except (TypeError, ValueError):
        raise ConfigError("seed, pilot and block must be integers") from None
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    if pilot < 8:
        raise ConfigError(f"the pilot needs at least 8 draws, got {pilot}")
    if block < 1:
        raise ConfigError("block must be >= 1")
    if n is not None:
        n = int(n)
        if n < 2:
            raise ConfigError(f"validate needs n >= 2 draws, got {n}")
    else:
        budget = float(budget)
        if not (budget > 0 and math.isfinite(budget)):
            raise ConfigError(f"budget must be a positive number of seconds, got {budget:g}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (B,):
            raise DataError(f"labels have shape {labels.shape}, expected ({B},)")
        labels = labels.astype(np.int64)

    t0 = time.perf_counter()
    if analytic is None:
        analytic = propagate(mapped, x)
    t_analytic = time.perf_counter() - t0
    t0 = time.perf_counter()
    if control == "tangent":
        y0, var_lin = tangent_variance(mapped, x)
    else:
        y0, cov_fm = tangent_moments(mapped, x, fixed_mask=True)
        var_lin = np.diagonal(cov_fm, axis1=1, axis2=2)
    ref = mapped.reference(x)
    EC = ((y0 - ref) ** 2 + var_lin).mean(-1)                      # E C per input (B,)
    t_closed = time.perf_counter() - t0

    n_mem = 2 if antithetic else 1
    pil = _simulate(mapped, x, pilot, seed, pilot=True, block=pilot, chunk=chunk, tangent=None,
                    labels=None, layer_stats=False, antithetic=antithetic,
                    fixed_mask=control == "fixed-mask")
    beta = _fit_beta(pil["Y"].mean(0), pil["C"].mean(0))
    if n is None:
        per_draw = pil["time_total"] / pilot
        spent = time.perf_counter() - t0 + t_analytic
        n_blocks = int((budget - spent) / (per_draw * block)) if per_draw > 0 else 1
        n = max(2, max(1, n_blocks) * block)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n, desc="validate", unit="draw")
    try:
        main = _simulate(mapped, x, n, seed, pilot=False, block=block, chunk=chunk,
                         tangent=pil["tangent"], labels=labels, layer_stats=layer_stats,
                         antithetic=antithetic, fixed_mask=control == "fixed-mask",
                         progress=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    Y, C = main["Y"], main["C"]                 # (n_mem, n, B): base draws and their mirrors
    Yp, Cp = Y.mean(0), C.mean(0)               # pair averages: the independent units
    V = Yp - beta * (Cp - EC)
    rt = math.sqrt(n)
    est = V.mean(0)
    se = V.std(0, ddof=1) / rt
    var_single = Y.reshape(-1, B).var(0, ddof=1)          # plain MC variance per realization
    vv = V.var(0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        vr = np.where(vv > 0, var_single / (n_mem * np.where(vv > 0, vv, 1.0)), 1.0)
    Vb = V.mean(1)
    vb_single = Y.mean(2).reshape(-1).var(ddof=1)
    vr_b = float(vb_single / (n_mem * Vb.var(ddof=1))) if Vb.var(ddof=1) > 0 else 1.0
    est_b = float(Vb.mean())
    se_b = float(Vb.std(ddof=1) / rt)
    Ypb = Yp.mean(1)

    t_cv = pil["time_total"] + main["time_total"] + t_closed
    t_plain = main["time_plain"]
    cost = t_plain / t_cv
    mse_an = analytic.mse_mean
    with np.errstate(divide="ignore", invalid="ignore"):
        bias_rel = np.where(est > 0, mse_an / est - 1.0, np.nan)
        bias_rel_se = np.where(est > 0, mse_an * se / est ** 2, np.nan)
        Cc = Cp - Cp.mean(0)
        Yc = Yp - Yp.mean(0)
        den = np.sqrt((Cc * Cc).sum(0) * (Yc * Yc).sum(0))
        corr = np.where(den > 0, (Cc * Yc).sum(0) / np.where(den > 0, den, 1.0), 0.0)
    an_b = float(mse_an.mean())
    per_input = dict(mse_analytic=mse_an, mse_unbiased=est, mse_unbiased_se=se,
                     mse_mc=Yp.mean(0), mse_mc_se=Yp.std(0, ddof=1) / rt,
                     bias_rel=bias_rel, bias_rel_se=bias_rel_se,
                     variance_reduction=vr, efficiency_gain=vr * cost, beta=beta,
                     mse_tangent=EC, corr=corr)
    batch = dict(mse_analytic=an_b, mse_unbiased=est_b, mse_unbiased_se=se_b,
                 mse_mc=float(Ypb.mean()), mse_mc_se=float(Ypb.std(ddof=1) / rt),
                 bias_rel=an_b / est_b - 1.0 if est_b > 0 else float("nan"),
                 bias_rel_se=an_b * se_b / est_b ** 2 if est_b > 0 else float("nan"),
                 variance_reduction=vr_b, efficiency_gain=vr_b * cost,
                 mse_tangent=float(EC.mean()))
    timing = dict(time_analytic=t_analytic, time_closed_form=t_closed,
                  time_pilot=pil["time_total"], time_main=main["time_total"],
                  time_main_plain=t_plain, time_main_tangent=main["time_tangent"],
                  cost_ratio=cost)
    res = ValidationResult(n=n, n_pilot=pilot, seed=seed, block=block, per_input=per_input,
                           batch=batch, timing=timing, budget=budget, antithetic=antithetic, control=control)
    if labels is not None:
        a = main["correct"].mean(1)
        res.accuracy = float(a.mean())
        res.accuracy_se = float(a.std(ddof=1) / rt)
    if layer_stats:
        res.layers = _layer_summary(main)
    return res


def _layer_summary(main):
    """Per layer position: MC summed squared deviation (B,) with SE, mean skew / excess kurtosis."""
    out = {}
    acts = main["tangent"].acts
    for pos, acc in main["stats"].items():
        m1, m2, c2, c3, c4 = acc.central()
        sq = main["sq_sum"][pos]
        n = sq.shape[0]
        ok = c2 > 1e-14 * max(float(c2.max()), 1e-300)
        with np.errstate(divide="ignore", invalid="ignore"):
            skew = np.where(ok, c3 / np.where(ok, c2, 1.0) ** 1.5, np.nan)
            kurt = np.where(ok, c4 / np.where(ok, c2, 1.0) ** 2 - 3.0, np.nan)
        out[pos] = dict(msq_sum=sq.mean(0), msq_sum_se=sq.std(0, ddof=1) / math.sqrt(n),
                        mean_dev=m1, var=c2, skew=skew, exkurt=kurt, h0=acts[pos + 1])
    return out


def layer_closure_table(result, analytic):
    """Relative error of the analytic per-layer summed MSE vs the Monte-Carlo one (theory §20).

    ``analytic`` is a :class:`refmem.moments.MomentsResult` with ``per_layer``; ``result`` a
    :class:`ValidationResult` with ``layers``. Returns ``{position: dict}`` with
    ``rel_err`` (B,) and its SE, ``skew_mean``, ``skew_max``, ``exkurt_mean`` (over units with
    non-zero variance, per input) — the deviation from the noiseless programmed activations.
    """
    if result.layers is None or analytic.per_layer is None:
        raise ConfigError("layer_closure_table needs layer_stats=True and per_layer=True")
    out = {}
    for pos, L in result.layers.items():
        a = analytic.per_layer[pos]
        an = (a["var"] + (a["mean"] - L["h0"]) ** 2).sum(-1)
        mc, se = L["msq_sum"], L["msq_sum_se"]
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(mc > 0, an / mc - 1.0, np.nan)
            rel_se = np.where(mc > 0, an * se / mc ** 2, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # all-dead layers give NaN
            out[pos] = dict(analytic=an, mc=mc, mc_se=se, rel_err=rel, rel_err_se=rel_se,
                            skew_mean=np.nanmean(L["skew"], axis=-1),
                            skew_max=np.nanmax(np.abs(L["skew"]), axis=-1),
                            exkurt_mean=np.nanmean(L["exkurt"], axis=-1))
    return out


_DESCRIPTIONS = {
    "mse_analytic": "analytic MSE (mean over outputs), Gaussian ReLU closure (theory §20)",
    "mse_unbiased": "control-variate Monte-Carlo MSE, unbiased (theory §23)",
    "mse_unbiased_se": "standard error of mse_unbiased (over independent draws)",
    "mse_mc": "plain Monte-Carlo MSE on the same draws",
    "mse_mc_se": "standard error of mse_mc",
    "bias_rel": "mse_analytic / mse_unbiased - 1",
    "bias_rel_se": "standard error of bias_rel (delta method)",
    "variance_reduction": "plain MC variance per realization / control-variate variance per "
                          "realization, same draws",
    "efficiency_gain": "variance_reduction x (plain wall time / control-variate wall time incl. "
                       "pilot and closed form)",
    "beta": "control-variate coefficient fitted on the pilot draws",
    "mse_tangent": "closed-form expectation of the control variate C",
    "corr": "correlation of Y and C on the main draws",
    "accuracy_mc": "Monte-Carlo accuracy (mean over draws and inputs)",
    "accuracy_mc_se": "standard error of accuracy_mc",
}


_MAY_BE_NAN = ("bias_rel", "corr", "beta", "variance_reduction", "efficiency_gain")
"""Ratios that are NaN when a denominator is zero (e.g. an input whose MSE is exactly 0)."""


def write_validation(path, result, attrs, *, inputs=(), force=False):
    """Write a :class:`ValidationResult` (per input ``(B,)`` and ``*_batch`` scalars) atomically
    through :func:`refmem.io.write_result` (kind ``validate``)."""
    from .io import write_result

    ds = {}
    for k, v in result.datasets().items():
        base = k[:-6] if k.endswith("_batch") else k
        unitless = base.startswith(("bias_rel", "variance", "efficiency", "beta", "corr",
                                    "accuracy"))
        desc = _DESCRIPTIONS.get(base, base) + (" (mean over the batch)" if k.endswith("_batch")
                                                else " (per input)")
        ds[k] = (np.asarray(v), {"units": "1" if unitless else "y^2", "description": desc,
                                 "equation": "theory §23"})
    write_result(path, "validate", ds, attrs=attrs, inputs=inputs, force=force,
                 allow_nonfinite={k for k in ds if k.startswith(_MAY_BE_NAN)})
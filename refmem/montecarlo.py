"""Device-level Monte-Carlo simulator of a network mapped onto noisy crossbars.

The simulator draws the *devices*, not the weights: in every realization each memristor of
each crossbar is programmed once, ``G = g + σ(g) ε`` with ``ε ~ N(0, 1)`` independent for
``G⁺`` and ``G⁻`` of every pair (theory §2 A1–A4, §19.9), and the whole batch of inputs is run
through that one programmed network:

- **FC and UL** layers: every crossbar entry has its own pair, UL structural zeros included
  (programmed at ``g_min`` and noisy, theory §6); a UL layer too large for memory is streamed
  over blocks of columns, one realization at a time;
- **UR** layers: one ``(C_in k² + 1) × C_out`` crossbar is drawn per realization and reused
  at every output position (shared device noise, theory §5, A3);
- the bias is a crossbar row driven by ``x_b = 1`` (theory §2 A4) unless the configuration puts
  it in the digital domain;
- the digital side rescales by ``1/(r λ_j)`` (theory §3.3), so ``r`` cancels from the outputs and
  appears only in the TIA power;
- MohammadiRad & Sojodishijani's multiplicative noise ``w → (1 + α ξ) w`` (theory §13) and
  subtractively dithered quantization ``q(w + u) − u`` (theory §14) perturb the weights in
  weight units, on top of the device noise; neither enters power;
- negative conductances are kept (theory §2 A1). ``clip_negative=True`` in the configuration
  clips them at 0, which leaves the analytic model.

Power is sampled per realization and input (theory §11): memristor power ``Σ (G⁺ + G⁻) X²``
over every pair (bias rows driven by 1; UR taps driven by the tap-shifted input at every
position), and TIA power ``r Σ_j (I±_j)²`` of the column currents ``I± = Σ_i G±_ij X_i + G^b±_j``.

Reproducibility
---------------
Realizations come in fixed **seed blocks** of ``block`` realizations (default
:data:`BLOCK`). Block ``k`` draws from streams ``SeedSequence(seed, spawn_key=(k, s))`` — the
children of ``SeedSequence(seed).spawn`` — with one stream ``s`` for the random inputs and
three per crossbar layer (devices, α noise, dither). Within a stream the draws are laid out
realization by realization and, within a realization, column by column (``G⁺`` rows then
``G⁻`` rows, bias row last), so any split of the work into chunks (``chunk`` realizations in
memory at once, or column blocks of a streamed UL layer) consumes the same numbers in the same
order. Statistics are reduced per seed block, in block order. Hence the same seed gives
bit-identical results whatever the chunk size, and the first ``n`` realizations do not depend
on the total.

Statistics (theory §19.2): per-output mean, variance (ddof 1), MSE against the reference
(the unquantized, noiseless network at the mean input), optional full covariance, each with
a standard error computed from the sample itself (no Gaussian assumption: the SE of a
(co)variance entry is the standard deviation of the centred products over √n). Each seed
block contributes its mean and its **centred** sums, merged exactly in block order
(:class:`refmem.stats.CentralMoments`), so a large bias (e.g. coarse quantization) next to a
tiny device noise loses no digits of the variance or of its SE.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy.special import ndtri

from .checks import check_count, check_seed
from .errors import ConfigError, DataError
from .layers import gather_patches
from .stats import CentralMoments

BLOCK = 256
"""Realizations per seed block (part of the seeding definition; stored as ``seed_block``)."""

_MEM_BUDGET = 256 * 2**20          # bytes of device arrays held at once (guides ``chunk``)
_CACHE_LIMIT = 64 * 2**20          # UL static conductance arrays above this are rebuilt per block


# ---------------------------------------------------------------------- sample size
def mc_sample_count(mean, std, p, alpha=0.05, z=None) -> int:
    """Monte-Carlo iterations for a relative precision ``p`` (theory §10, Eq. (46), corrected D25).

    ``n = ceil((z_{α/2} s / (p x̄))²)``, where ``x̄`` and ``s`` are the mean and standard
    deviation of the per-iteration quantity (from a pilot run), ``p`` is a **fraction**
    (0.01 = 1 %), and ``z_{α/2} = Φ⁻¹(1 − α/2)`` unless ``z`` is given. With probability about
    ``1 − α`` the Monte-Carlo mean is then within ``± p x̄`` of the truth.
    """
    mean, std, p = float(mean), float(std), float(p)
    if not (p > 0 and math.isfinite(p)):
        raise ConfigError(f"precision p must be a positive fraction, got {p:g}")
    if not (std >= 0 and math.isfinite(std)):
        raise ConfigError(f"std must be finite and >= 0, got {std:g}")
    if mean == 0 or not math.isfinite(mean):
        raise ConfigError("the pilot mean must be finite and non-zero")
    if z is None:
        if not 0 < alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {alpha:g}")
        z = float(ndtri(1.0 - alpha / 2.0))
    # round to 12 significant digits first so that an exact square such as 38416 is not
    # pushed to the next integer by the last bit of the division
    val = float(f"{(z * std / (p * abs(mean))) ** 2:.12g}")
    return max(1, math.ceil(val))


def precision_sample_count(mapped, x, p, *, seed, confidence=0.95, pilot=BLOCK, block=BLOCK,
                           **mc_kwargs):
    """Monte-Carlo count for a relative precision ``p`` from a pilot run (theory §10, Eq. (46)).

    Runs ``pilot`` realizations (``monte_carlo(mapped, x, pilot, seed, …)``); for every input
    the per-realization quantity is its squared error averaged over the outputs, and
    :func:`mc_sample_count` gives ``n_b`` at confidence ``confidence`` (``α = 1 − confidence``).
    ``n`` is the largest ``n_b``, at least the pilot (its realizations are the first ``pilot``
    of the run with the same seed, so they are counted in), rounded up to whole seed blocks.
    ``monte_carlo(mapped, x, n, seed, …)`` then is the run of that precision.

    Returns ``(n, info, pilot_result)`` with ``info`` a dict: ``n_per_input`` (B,) from
    Eq. (46), ``pilot``, ``precision``, ``confidence``, ``z``.
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence:g}")
    pilot = int(pilot)
    if pilot < 2:
        raise ConfigError(f"the pilot needs at least 2 realizations, got {pilot}")
    res = monte_carlo(mapped, x, pilot, seed, block=block, **mc_kwargs)
    alpha = 1.0 - float(confidence)
    mean = res.extra["mse_per_input"]
    std = res.extra["mse_per_input_std"]
    n_b = np.array([mc_sample_count(m, s, p, alpha=alpha) for m, s in zip(mean, std)])
    n = max(int(n_b.max()), pilot)
    n = -(-n // block) * block
    info = {"n_per_input": n_b, "pilot": pilot, "precision": float(p),
            "confidence": float(confidence), "z": float(ndtri(1.0 - alpha / 2.0))}
    return n, info, res


# ---------------------------------------------------------------------- result
from .results import MCResult  # noqa: E402  (the result object lives with its schema)


# ---------------------------------------------------------------------- per-layer sampler
class _LayerSampler:
    """Draws one crossbar layer's devices and runs a chunk of realizations through it."""

    def __init__(self, ml, clip):
        self.ml = ml
        self.clip = clip
        cfg = ml.config
        self.r = cfg.r
        self.R = ml.n_rows
        self.bias_row = ml.has_bias_row
        self.R1 = self.R + (1 if self.bias_row else 0)
        self.J = ml.n_cols
        self.alpha = cfg.alpha if ml.noisy else 0.0
        self.device_noise = ml.noisy and not cfg.sigma_model.is_zero
        self.dither = ml.dither
        self.digital_bias = ml.b if (ml.b is not None and not ml.has_bias_row) else None
        per_col = 8 * self.R1 * 8          # bytes per column of the static arrays
        self.cache_all = ml.scheme != "UL" or per_col * self.J <= _CACHE_LIMIT
        self._static = self._build(None) if self.cache_all else None
        # observer of every draw (refmem.validate's tangent pass, theory §23): called as
        # on_draw(static, Gp, Gm, dw) after each draw; it draws nothing and changes nothing
        self.on_draw = None

    # static (noise-free) arrays in device layout: (cols, R1), bias row last
    def _build(self, cols):
        ml = self.ml
        ns = ml.block(cols)
        def full(a, ab):
            a = a.T
            if self.bias_row:
                a = np.concatenate([a, ab[:, None]], axis=1)
            return np.ascontiguousarray(a)
        st = SimpleNamespace(lam=ns.lam, cols=ns.cols)
        st.gp = full(ns.gp, ns.gbp)
        st.gm = full(ns.gm, ns.gbm)
        st.sp = np.sqrt(full(ns.vp, ns.vbp))
        st.sm = np.sqrt(full(ns.vm, ns.vbm))
        if self.alpha or self.dither:
            b = ns.b if self.bias_row else None
            st.w = full(ns.W, b)
            st.tap = full(ns.tap, np.ones(ns.lam.shape, dtype=bool))
        return st

    def static(self, c0, c1):
        if self.cache_all:
            s = self._static
            if c0 == 0 and c1 == self.J:
                return s
            sl = slice(c0, c1)
            out = SimpleNamespace(lam=s.lam[sl], cols=s.cols[sl], gp=s.gp[sl], gm=s.gm[sl],
                                  sp=s.sp[sl], sm=s.sm[sl])
            if hasattr(s, "w"):
                out.w, out.tap = s.w[sl], s.tap[sl]
            return out
        return self._build(np.arange(c0, c1))

    def bytes_per_realization(self):
        if self.ml.scheme == "UL" and not self.cache_all:
            return 0                      # streamed one realization at a time
        return 8 * 6 * self.J * self.R1

    def draw(self, st, m, rngs):
        """Conductances (m, cols, R1) and weight-unit perturbations for ``m`` realizations."""
        shape = (m,) + st.gp.shape
        if self.device_noise:
            eps = rngs[0].standard_normal((m, st.gp.shape[0], 2, self.R1))
            Gp = st.gp + st.sp * eps[:, :, 0, :]
            Gm = st.gm + st.sm * eps[:, :, 1, :]
        else:
            Gp = np.broadcast_to(st.gp, shape)
            Gm = np.broadcast_to(st.gm, shape)
        if self.clip:
            Gp = np.maximum(Gp, 0.0)
            Gm = np.maximum(Gm, 0.0)
        dw = None
        if self.alpha:
            xi = rngs[1].standard_normal(shape)
            dw = self.alpha * st.w * xi                                   # theory §13
        if self.dither:
            delta = self.ml.delta
            u = rngs[2].uniform(-0.5 * delta, 0.5 * delta, shape)
            e = delta * np.rint((st.w + u) / delta) - u - st.w            # theory §14
            e = np.where(st.tap, e, 0.0)
            dw = e if dw is None else dw + e
        if self.on_draw is not None:
            self.on_draw(st, Gp, Gm, dw)
        return Gp, Gm, dw

    # ------------------------------------------------------------------ forward
    def forward(self, h, m, rngs):
        """``h`` (M, B, R) flat inputs (M = m, or 1 when shared) -> (out, power (m, B, 3))."""
        if self.ml.scheme == "UR":
            return self._forward_ur(h, m, rngs)
        if self.cache_all:
            return self._forward_fc_block(h, m, rngs, 0, self.J)
        # streamed UL: one realization at a time, columns in blocks (same stream order)
        B = h.shape[1]
        cb = max(1, int(_MEM_BUDGET // (8 * 6 * self.R1)))
        outs = np.empty((m, B, self.J))
        pw = np.zeros((m, B, 3))
        for t in range(m):
            ht = h[t:t + 1] if h.shape[0] > 1 else h
            for c0 in range(0, self.J, cb):
                c1 = min(self.J, c0 + cb)
                y, p = self._forward_fc_block(ht, 1, rngs, c0, c1)
                outs[t, :, c0:c1] = y[0]
                pw[t] += p[0]
        return outs, pw

    def _forward_fc_block(self, h, m, rngs, c0, c1):
        st = self.static(c0, c1)
        Gp, Gm, dw = self.draw(st, m, rngs)
        R = self.R
        hp = h @ np.swapaxes(Gp[..., :R], -1, -2)             # (m, B, cols) current I+ (rows)
        hm = h @ np.swapaxes(Gm[..., :R], -1, -2)
        if self.bias_row:
            hp = hp + Gp[:, None, :, R]
            hm = hm + Gm[:, None, :, R]
        y = (hp - hm) / st.lam                                # r cancels (theory §3.3)
        if dw is not None:
            y = y + h @ np.swapaxes(dw[..., :R], -1, -2)
            if self.bias_row:
                y = y + dw[:, None, :, R]
        if self.digital_bias is not None:
            y = y + self.digital_bias[self.ml.col_channel[c0:c1]]
        S = (Gp + Gm).sum(axis=1)                             # (m, R1): Σ_j (G+ + G-)
        mem = (h * h) @ S[..., :R, None]
        mem = mem[..., 0]
        if self.bias_row:
            mem = mem + S[:, None, R]
        pw = np.stack([mem, self.r * (hp * hp).sum(-1), self.r * (hm * hm).sum(-1)], axis=-1)
        return y, pw

    def _forward_ur(self, h, m, rngs):
        ml = self.ml
        st = self.static(0, self.J)
        Gp, Gm, dw = self.draw(st, m, rngs)                   # (m, C_out, R1)
        M, B, _ = h.shape
        n_pos = ml.n_pos
        P = gather_patches(h.reshape(M * B, -1), ml.idx).reshape(M, B, n_pos, self.R)
        R = self.R
        Pf = P.reshape(M, B * n_pos, R)
        ip = Pf @ np.swapaxes(Gp[..., :R], -1, -2)            # (m, B n_pos, C_out)
        im = Pf @ np.swapaxes(Gm[..., :R], -1, -2)
        if self.bias_row:
            ip = ip + Gp[:, None, :, R]
            im = im + Gm[:, None, :, R]
        y = (ip - im) / st.lam
        if dw is not None:
            y = y + Pf @ np.swapaxes(dw[..., :R], -1, -2)
            if self.bias_row:
                y = y + dw[:, None, :, R]
        if self.digital_bias is not None:
            y = y + self.digital_bias
        mm = y.shape[0]
        y = y.reshape(mm, B, n_pos, self.J).transpose(0, 1, 3, 2).reshape(mm, B, self.J * n_pos)
        S = (Gp + Gm).sum(axis=1)                             # (m, R1)
        q = (P * P).sum(axis=2)                               # (M, B, R): Σ_p x_ι(p,a)²
        mem = (q @ S[..., :R, None])[..., 0]
        if self.bias_row:
            mem = mem + n_pos * S[:, None, R]
        tp = self.r * (ip * ip).reshape(mm, B, -1).sum(-1)
        tm = self.r * (im * im).reshape(mm, B, -1).sum(-1)
        pw = np.stack([np.broadcast_to(mem, tp.shape), tp, tm], axis=-1)
        return y, pw


# ---------------------------------------------------------------------- inputs
def _input_factor(input_cov, B, L):
    """Square-root factors ``A`` with ``A Aᵀ = C`` (eigendecomposition; validated by
    :func:`refmem.network.check_input_cov`)."""
    from .network import check_input_cov
    _, w, V = check_input_cov(input_cov, B, L, eigh=True)
    return V * np.sqrt(np.maximum(w, 0.0))[:, None, :]      # (1 or B, L, L)


# ---------------------------------------------------------------------- main entry
def monte_carlo(mapped, x, n, seed, *, labels=None, input_cov=None, input_sampler=None,
                cov=False, chunk=None, progress=False, block=BLOCK,
                checkpoint=None, keep_checkpoint=False) -> MCResult:
    """Device-level Monte-Carlo of ``mapped`` on the batch ``x`` (see the module docstring).

    Parameters
    ----------
    mapped : refmem.mapping.MappedNetwork
        The network on its crossbars (configuration included).
    x : array (B, *input_shape)
        Inputs (the mean input when ``input_cov`` or ``input_sampler`` is given).
    n : int
        Number of realizations (each programs every device once and runs the whole batch).
    seed : int
        Non-negative seed of the ``SeedSequence`` from which every draw derives.
    labels : int array (B,), optional
        Class labels: the result then has ``accuracy`` (mean over realizations and inputs)
        and ``accuracy_se`` (standard error over realizations).
    input_cov : array (L, L) or (B, L, L), optional
        Random Gaussian inputs ``x + N(0, C)``, redrawn in every realization.
    input_sampler : callable ``(rng, m) -> (m, B, L)``, optional
        Random inputs of any law (e.g. non-Gaussian correlated inputs for testing linear
        layers, theory §19.8), drawn from the input stream.
    cov : bool
        Also estimate the full output covariance per input, with standard errors.
    chunk : int, optional
        Realizations held in memory at once (at most ``block``). Results do not depend on it.
    progress : bool
        Show a tqdm progress bar.
    block : int
        Realizations per seed block (part of the seeding definition).
    checkpoint : path, optional
        Resumable run: the accumulated statistics are saved there (atomically) after every
        completed seed block; a later call with the same model, configuration, inputs,
        seed, n, block and options resumes after the last saved block and gives results
        bit-identical to an uninterrupted run. The file is removed when the run completes
        unless ``keep_checkpoint`` (then it holds the finished state, so that a caller running
        several simulations can resume the whole sequence). A checkpoint from a different run
        is an error.
    """
    net = mapped.network
    x = net.check_input(x)
    B = x.shape[0]
    L = int(np.prod(net.input_shape))
    n = check_count(n, "the number of Monte-Carlo realizations n", minimum=2)
    seed = check_seed(seed)
    block = int(block)
    if block < 1:
        raise ConfigError("block must be >= 1")
    if input_cov is not None and input_sampler is not None:
        raise ConfigError("give either input_cov or input_sampler, not both")
    factor = None if input_cov is None else _input_factor(input_cov, B, L)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (B,):
            raise DataError(f"labels have shape {labels.shape}, expected ({B},)")
        labels = labels.astype(np.int64)

    cfg = mapped.config
    fused = mapped.fused
    shapes = fused.shapes
    by_pos = mapped.by_position()
    samplers = {pos: _LayerSampler(ml, cfg.clip_negative) for pos, ml in by_pos.items()}
    n_xb = mapped.n_crossbar
    ref = mapped.reference(x)
    J = ref.shape[1]

    per_real = sum(s.bytes_per_realization() for s in samplers.values())
    per_real += 8 * B * max(int(np.prod(s)) for s in shapes) * 4
    if chunk is None:
        chunk = int(max(1, min(block, _MEM_BUDGET // max(per_real, 1))))
    chunk = int(chunk)
    if chunk < 1:
        raise ConfigError("chunk must be >= 1")
    chunk = min(chunk, block)

    acc_y = CentralMoments((B, J), order=4, cov=cov)
    acc_p = CentralMoments((B, n_xb, 4), order=2)
    acc_t = CentralMoments((B,), order=2)
    acc_m = CentralMoments((1,), order=2)
    acc_i = CentralMoments((B,), order=2)           # per input: squared error over outputs
    acc_a = CentralMoments((1,), order=2) if labels is not None else None

    n_blocks = -(-n // block)
    accs = {"y_": acc_y, "p_": acc_p, "t_": acc_t, "m_": acc_m, "i_": acc_i}
    if acc_a is not None:
        accs["a_"] = acc_a
    start = 0
    fingerprint = None
    if checkpoint is not None:
        fingerprint = _fingerprint(mapped, x, n, seed, block, cov, labels, input_cov,
                                   input_sampler)
        start = _load_checkpoint(checkpoint, fingerprint, accs)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n, initial=min(n, start * block), desc="Monte-Carlo", unit="real")
    try:
        for k in range(start, n_blocks):
            mb = min(block, n - k * block)
            streams = [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k, s)))
                       for s in range(1 + 3 * n_xb)]
            ys = np.empty((mb, B, J))
            ps = np.empty((mb, B, n_xb, 3))
            for c0 in range(0, mb, chunk):
                m = min(chunk, mb - c0)
                h = _draw_inputs(x, m, streams[0], factor, input_sampler, L)
                for pos, layer in enumerate(fused.layers):
                    if pos in samplers:
                        ml = by_pos[pos]
                        i = ml.index
                        h, pw = samplers[pos].forward(h, m, streams[1 + 3 * i: 4 + 3 * i])
                        ps[c0:c0 + m, :, i, :] = pw
                    else:
                        M = h.shape[0]
                        h = layer.forward(h.reshape((M * B,) + shapes[pos]), shapes[pos])
                        h = h.reshape(M, B, -1)
                ys[c0:c0 + m] = np.broadcast_to(h, (m, B, J))
                if bar is not None:
                    bar.update(m)
            if not (np.all(np.isfinite(ys)) and np.all(np.isfinite(ps))):
                # finite inputs (checked) but an overflow on the way: stop at the first block
                # instead of after the whole run, and leave no checkpoint that would resume it
                if checkpoint is not None:
                    Path(checkpoint).unlink(missing_ok=True)
                what = "outputs" if not np.all(np.isfinite(ys)) else "power"
                raise DataError(f"the Monte-Carlo {what} overflowed to inf/NaN in seed block "
                                f"{k} (inputs, weights or g_u too large?); nothing written")
            d = ys - ref
            acc_y.add(d)
            acc_m.add((d * d).mean(axis=(1, 2))[:, None])
            acc_i.add((d * d).mean(axis=2))
            ps_tot = ps.sum(-1)
            acc_p.add(np.concatenate([ps, ps_tot[..., None]], axis=-1))
            acc_t.add(ps_tot.sum(-1))
            if acc_a is not None:
                acc_a.add((np.argmax(ys, axis=2) == labels).mean(axis=1)[:, None])
            if checkpoint is not None and k + 1 < n_blocks:
                _save_checkpoint(checkpoint, fingerprint, k + 1, accs)
    finally:
        if bar is not None:
            bar.close()

    if checkpoint is not None:
        if keep_checkpoint:
            if start < n_blocks:
                _save_checkpoint(checkpoint, fingerprint, n_blocks, accs)
        else:
            Path(checkpoint).unlink(missing_ok=True)
    pm, pse = acc_p.mean, acc_p.mean_se()            # (B, n_xb, 4): mem, tia+, tia-, total
    res = MCResult(
        n=n, seed=seed, block=block, reference=ref,
        mean=ref + acc_y.mean, var=acc_y.var(), mse=acc_y.mean_square(),
        mean_se=acc_y.mean_se(), var_se=acc_y.var_se(), mse_se=acc_y.mean_square_se(),
        power_mem=pm[..., 0], power_tia_pos=pm[..., 1], power_tia_neg=pm[..., 2],
        power_mem_se=pse[..., 0], power_tia_pos_se=pse[..., 1], power_tia_neg_se=pse[..., 2],
        power_layers=pm[..., 3], power_layers_se=pse[..., 3],
        power=acc_t.mean, power_se=acc_t.mean_se(),
        cov=acc_y.covariance() if cov else None, cov_se=acc_y.covariance_se() if cov else None)
    res.mse_overall = float(acc_m.mean[0])
    res.mse_overall_se = float(acc_m.mean_se()[0])
    res.extra["mse_per_input"] = acc_i.mean                  # mean over outputs, per input (B,)
    res.extra["mse_per_input_se"] = acc_i.mean_se()
    res.extra["mse_per_input_std"] = np.sqrt(acc_i.var(ddof=1))  # per-realization std (Eq. (46) s)
    if acc_a is not None:
        res.accuracy = float(acc_a.mean[0])
        res.accuracy_se = float(acc_a.mean_se()[0])
    return res


def _draw_inputs(x, m, rng, factor, sampler, L):
    B = x.shape[0]
    xf = x.reshape(B, L)
    if sampler is not None:
        h = np.asarray(sampler(rng, m), dtype=np.float64)
        if h.shape != (m, B, L):
            raise DataError(f"input_sampler returned shape {h.shape}, expected ({m}, {B}, {L})")
        return h
    if factor is None:
        return xf[None]
    z = rng.standard_normal((m, B, L))
    return xf[None] + np.einsum("bij,mbj->mbi", np.broadcast_to(factor, (B, L, L)), z)


# ---------------------------------------------------------------------- checkpoints
def _fingerprint(mapped, x, n, seed, block, cov, labels, input_cov, input_sampler):
    """SHA-256 of everything that determines the realizations and their statistics."""
    h = hashlib.sha256()
    h.update(b"refmem-mc-checkpoint-2")        # state layout: centred moments (refmem.stats)
    h.update(mapped.config.to_json().encode())
    h.update(repr((n, seed, block, bool(cov))).encode())
    for ml in mapped.layers:
        for a in (ml.W, ml.b, ml.lam):
            if a is not None:
                h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    for a in (x, labels, input_cov):
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    if input_sampler is not None:
        h.update(getattr(input_sampler, "__qualname__", repr(input_sampler)).encode())
    return h.hexdigest()


def _load_checkpoint(path, fingerprint, accs):
    path = Path(path)
    if not path.exists():
        return 0
    if not path.is_file():
        raise DataError(f"checkpoint {path} is not a regular file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint:
                raise ConfigError(f"checkpoint {path} belongs to a different run (model, "
                                  "configuration, inputs, seed or n differ); remove it to start over")
            for prefix, acc in accs.items():
                acc.load(prefix, z)
            return int(z["next_block"])
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"checkpoint {path} does not match this run (array shapes differ); "
                          "remove it to start over") from None
    except Exception as e:
        raise DataError(f"checkpoint {path} is unreadable ({type(e).__name__})") from None


def _save_checkpoint(path, fingerprint, next_block, accs):
    """Write the state after ``next_block`` completed seed blocks, atomically.

    The state is written to a uniquely named temporary in the same directory (created
    exclusively, so two runs never share or delete each other's temporary) and renamed over
    ``path``; on any failure (e.g. a full disk) the temporary is removed and the previous
    checkpoint stays as it was.
    """

    path = Path(path)
    state = {"fingerprint": np.array(fingerprint), "next_block": np.int64(next_block)}
    for prefix, acc in accs.items():
        state.update(acc.state(prefix))
    from .io import write_npz
    write_npz(path, "mc-checkpoint", state)


# ---------------------------------------------------------------------- sweeps
def sigma_sweep(network, config, sigmas, x, n, seed, **kwargs):
    """Monte-Carlo over a list of device noise levels σ in one call.

    Every σ uses the same ``seed``, hence the same standard-normal device draws scaled by σ
    (common random numbers): differences between the points of a sweep are then not blurred
    by independent sampling noise. Returns a list of ``(config, MCResult)``.
    """
    from .mapping import map_network

    out = []
    for s in sigmas:
        cfg = config.with_(sigma=float(s))
        out.append((cfg, monte_carlo(map_network(network, cfg), x, n, seed, **kwargs)))
    return out

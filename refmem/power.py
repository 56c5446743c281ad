"""Expected read power of one inference (theory §11: Propositions 5–8, Corollaries 1–2, corrected).

Power is written with conductances and currents (theory §11), so it uses the **physical** TIA
gain ``r`` (``CrossbarConfig.r``) and the target conductances ``g± = λ max(±w, 0) + g_min``
(Eqs. (5)–(6)); it never uses the weight-unit variances of the moment formulas:

- memristor power of a pair driven by ``X``: ``E[(G⁺ + G⁻) X²] = (g⁺ + g⁻) q`` with
  ``q = μ² + Γ_ii`` (Prop. 5 corrected, D17) — every pair, including the bias row (driven by
  ``x_b = 1``, D18/D20) and the UL structural zeros (``2 g_min q_n``, theory §6);
- TIA power of a column with current ``I± = Σ_i G±_i X_i + G^b± x_b``:
  ``r ((E I±)² + V I±)`` with ``V I± = g±ᵀ Γ g± + Σ_i σ²(g±_i) q_i + σ²(g^b±)`` — the
  **per-device** variance σ²(g±), not the pair variance 2σ² (Prop. 6 corrected, D19);
- UR (Props 7–8 corrected, D21–D23): each pair ``(c_o, a)`` is driven at every position by the
  tap-shifted input ``X_ι(p,a)`` (``q = 0`` in the padding); the bias pair by 1 at each of the
  ``n_pos`` positions; the TIA power is summed over positions.

Neither MohammadiRad & Sojodishijani's multiplicative noise α (theory §13) nor the dither of
theory §14 enters power: both perturb weights in the digital/weight domain of the model, not
the programmed devices, so ``block().vp/.vm`` (device variances only; zero for a layer whose
noise is switched off) are used here, never ``block().v``.

All functions take the layer's **input** moments (theory §15, Algorithm 1 corrected): mean
``mu`` (L,) and covariance ``gamma`` (L, L), a block-diagonal
:class:`refmem.moments.layout.BlockDiag`, or ``None`` (deterministic input).
"""

from __future__ import annotations

from types import SimpleNamespace

import numba
import numpy as np

from .layers import gather_patches
from .mapping import ul_column_sums
from .moments.layout import BlockDiag, cov_diagonal
from .symmetric import paired_row

__all__ = ["fc_power", "ur_power", "ul_power", "layer_power", "patch_quadforms", "patch_gram"]


def _q(mu, gamma):
    """q_i = E X_i² = μ_i² + Γ_ii."""
    d = cov_diagonal(gamma)
    return mu * mu if d is None else mu * mu + d


def fc_power(blk, mu, gamma, r):
    r"""Expected power of an FC crossbar (theory §11.1, Corollary 1 corrected, D17–D20).

    Parameters
    ----------
    blk : namespace from :meth:`refmem.mapping.MappedLayer.block`
        ``gp, gm`` (L, J) conductances; ``gbp, gbm`` (J,) bias row or None; ``vp, vm`` (L, J)
        and ``vbp, vbm`` (J,) per-device variances σ²(g±).
    mu : ndarray (L,)
    gamma : ndarray (L, L) or None
    r : float
        Physical TIA gain.

    Returns
    -------
    namespace with scalars ``mem``, ``tia_pos``, ``tia_neg``.
    """
    q = _q(mu, gamma)
    mem = float(q @ (blk.gp + blk.gm).sum(axis=1))                   # Prop. 5: Σ (g⁺+g⁻) q
    tia = []
    for g, vdev, gb, vbdev in ((blk.gp, blk.vp, blk.gbp, blk.vbp),
                               (blk.gm, blk.vm, blk.gbm, blk.vbm)):
        EI = mu @ g                                                 # E I = gᵀ μ + g^b x_b
        VI = q @ vdev                                               # Σ σ²(g_i) q_i
        if gamma is not None:
            Gg = gamma.matmul(g) if isinstance(gamma, BlockDiag) else gamma @ g
            VI = VI + np.einsum("ij,ij->j", g, Gg)                  # gᵀ Γ g
        if gb is not None:
            EI = EI + gb
            VI = VI + vbdev
        tia.append(r * float(np.sum(EI * EI + VI)))                 # Prop. 6: r (E I² )
    if blk.gbp is not None:
        mem += float(np.sum(blk.gbp + blk.gbm))                     # eq. (30) with x_b² = 1
    return SimpleNamespace(mem=mem, tia_pos=tia[0], tia_neg=tia[1])


def _gather(vec, idx):
    """``vec[ι(p, a)]`` with 0 in the padding: (n_pos, taps) (im2col, :func:`gather_patches`)."""
    return gather_patches(vec[None, :], idx)[0]


def patch_quadforms(gamma, idx, Wm, chunk_bytes=64 * 2**20):
    r"""``Σ_{a,a'} Wm[a,c] Wm[a',c] Γ[ι(p,a), ι(p,a')]`` for every position p and column c.

    The per-position quadratic form of theory §11.2 (``Γ_∅ = 0`` in the padding), computed from
    gathered taps×taps blocks of Γ, streamed over positions. Returns (n_pos, C).
    """
    n_pos, taps = idx.shape
    safe = np.where(idx < 0, 0, idx)
    ok = (idx >= 0).astype(np.float64)
    out = np.empty((n_pos, Wm.shape[1]))
    step = max(1, int(chunk_bytes // (8 * taps * taps)))
    for p0 in range(0, n_pos, step):
        s = safe[p0:p0 + step]
        m = ok[p0:p0 + step]
        if isinstance(gamma, BlockDiag):
            Gp = gamma.take(s[:, :, None], s[:, None, :])
        else:
            Gp = gamma[s[:, :, None], s[:, None, :]]
        Gp *= m[:, :, None] * m[:, None, :]
        out[p0:p0 + step] = np.einsum("pab,ac,bc->pc", Gp, Wm, Wm, optimize=True)
    return out


@numba.njit(parallel=True, cache=True)
def _patch_gram_kernel(G, blk, loc, out):
    """``out[a, a'] = Σ_p Γ[ι(p,a), ι(p,a')]`` with Γ as blocks ``G`` (nb, s, s), 0 across
    blocks; ``blk[a, p]``, ``loc[a, p]``: block and index within it of ι(p, a) (−1 in the
    padding; no division in the loop). Computed for a' ≥ a and mirrored (Γ is symmetric).
    Parallel over taps a, rows t and taps−1−t per task (equal work per task)."""
    taps, n_pos = blk.shape
    for t in numba.prange((taps + 1) // 2):
        for side in range(2):
            a = paired_row(t, side, taps)
            if a < 0:
                break
            for b in range(a, taps):
                acc = 0.0
                for p in range(n_pos):
                    ba = blk[a, p]
                    if ba >= 0 and ba == blk[b, p]:
                        acc += G[ba, loc[a, p], loc[b, p]]
                out[a, b] = acc
                out[b, a] = acc


def patch_gram(gamma, idx):
    r"""``S[a, a'] = Σ_p Γ[ι(p,a), ι(p,a')]`` (taps × taps; ``Γ_∅ = 0`` in the padding).

    The sum over positions of the patch covariances of theory §11.2: the total TIA quadratic
    form of a UR layer is ``Σ_{c,p} g_cᵀ Γ_p g_c = Σ_c g_cᵀ S g_c`` (and of a UL layer with
    a constant λ per layer). ``gamma``: dense (L, L) or :class:`BlockDiag`, symmetric (S is
    computed on and above its diagonal and mirrored).
    """
    if isinstance(gamma, BlockDiag):
        G, s = gamma.blocks, gamma.s
    else:
        G, s = gamma[None], gamma.shape[0]
    taps = idx.shape[1]
    idxT = np.asarray(idx, dtype=np.int64).T              # (taps, n_pos): p contiguous
    blk = np.where(idxT >= 0, idxT // s, -1)
    loc = np.where(idxT >= 0, idxT - blk * s, -1)
    out = np.empty((taps, taps))
    _patch_gram_kernel(G, np.ascontiguousarray(blk), np.ascontiguousarray(loc), out)
    return out


def ur_power(blk, idx, mu, gamma, r):
    r"""Expected power of a UR convolution crossbar (theory §11.2, Corollary 2 corrected).

    ``blk`` holds the shared crossbar: ``gp, gm, vp, vm`` (C_in k², C_out) and the bias row;
    ``idx`` (n_pos, C_in k²) is ι(p, a) (−1 in the padding).

    - memristors: ``Σ_{c_o,a} (g⁺+g⁻)_{a,c_o} Σ_p q_ι(p,a) + n_pos Σ_{c_o} (g^b⁺+g^b⁻)``
      (Prop. 7 with the tap-shifted input, D21; eq. (37) with ``2 g_min``, D22);
    - TIA: ``r Σ_p [(E I±_{c_o,p})² + V I±_{c_o,p}]`` (Prop. 8 via currents, D23), where
      ``V I = gᵀ Γ_p g + Σ_a σ²(g_a) q_ι(p,a) + σ²(g^b)``; shared devices do not matter here.
      Only the sum over positions enters, so ``Σ_p gᵀ Γ_p g = gᵀ S g`` (:func:`patch_gram`).
    """
    n_pos = idx.shape[0]
    S = None if gamma is None else patch_gram(gamma, idx)
    qp = _gather(_q(mu, gamma), idx)                    # (n_pos, taps)
    mp_ = _gather(mu, idx)
    qsum = qp.sum(axis=0)                               # Σ_p q_ι(p,a)
    mem = float(qsum @ (blk.gp + blk.gm).sum(axis=1))
    tia = []
    for g, vdev, gb, vbdev in ((blk.gp, blk.vp, blk.gbp, blk.vbp),
                               (blk.gm, blk.vm, blk.gbm, blk.vbm)):
        EI = mp_ @ g                                    # (n_pos, C_out)
        VI = qp @ vdev
        quad = 0.0 if S is None else float(np.sum(g * (S @ g)))     # Σ_{c,p} g_cᵀ Γ_p g_c
        if gb is not None:
            EI = EI + gb
            VI = VI + vbdev
        tia.append(r * (float(np.sum(EI * EI + VI)) + quad))
    if blk.gbp is not None:
        mem += n_pos * float(np.sum(blk.gbp + blk.gbm))  # eq. (37): n_pos (λ|b| + 2 g_min) x_b²
    return SimpleNamespace(mem=mem, tia_pos=tia[0], tia_neg=tia[1])


def ul_power(ml, mu, gamma, r, blocks=None):
    r"""Expected power of a UL (Toeplitz) convolution crossbar (theory §11.1 with W = W_UL, §6).

    Every Toeplitz entry is a pair, structural zeros at ``g_min`` included. The terms linear in
    the inputs (memristor power, mean currents, device-variance term) are sums over all L rows
    of every column: from the tap form of the layer (``blocks=None`` or the namespace of
    :meth:`refmem.mapping.MappedLayer.ul_taps`; structural zeros summed in closed form) or
    over explicit column blocks ``blocks`` (an iterable of :meth:`MappedLayer.block`
    namespaces, the Toeplitz matrix itself). The quadratic form ``g±ᵀ Γ g±`` uses the
    structure ``g± = λ w± + g_min 1`` (w± the Toeplitz column of max(±w, 0)):
    ``λ² w±ᵀΓw± + 2 λ g_min w±ᵀ(Γ1) + g_min² 1ᵀΓ1``, with ``w±ᵀΓw±`` a per-position patch
    quadratic form (:func:`patch_quadforms`; summed through :func:`patch_gram` when λ is one
    number for the layer).
    """
    q = _q(mu, gamma)
    gmin = ml.config.g_min
    if blocks is None or hasattr(blocks, "z"):
        tb = ml.ul_taps() if blocks is None else blocks
        mem = float(np.sum(ul_column_sums(tb, tb.gp + tb.gm, tb.z.gp + tb.z.gm, q)))
        EIp = ul_column_sums(tb, tb.gp, tb.z.gp, mu)
        EIm = ul_column_sums(tb, tb.gm, tb.z.gm, mu)
        VIp = ul_column_sums(tb, tb.vp, tb.z.vp, q)
        VIm = ul_column_sums(tb, tb.vm, tb.z.vm, q)
        if tb.gbp is not None:
            mem += float(np.sum(tb.gbp + tb.gbm))
            EIp += tb.gbp
            EIm += tb.gbm
            VIp += tb.vbp
            VIm += tb.vbm
    else:
        mem = 0.0
        EIp = np.empty(ml.n_cols)
        EIm = np.empty(ml.n_cols)
        VIp = np.empty(ml.n_cols)
        VIm = np.empty(ml.n_cols)
        for blk in blocks:
            c = blk.cols
            mem += float(q @ (blk.gp + blk.gm).sum(axis=1))
            EIp[c] = mu @ blk.gp
            EIm[c] = mu @ blk.gm
            VIp[c] = q @ blk.vp
            VIm[c] = q @ blk.vm
            if blk.gbp is not None:
                mem += float(np.sum(blk.gbp + blk.gbm))
                EIp[c] += blk.gbp
                EIm[c] += blk.gbm
                VIp[c] += blk.vbp
                VIm[c] += blk.vbm
    if gamma is not None:
        lam = ml.lam
        rs = gamma.row_sums() if isinstance(gamma, BlockDiag) else gamma.sum(axis=1)
        tot = float(rs.sum())
        rsp = _gather(rs, ml.idx)                        # (n_pos, taps)
        # per-column λ (column design): per-position quadratic forms; else only their sum
        S = patch_gram(gamma, ml.idx) if np.all(lam == lam[0]) else None
        quads = []
        for VI, wpm in ((VIp, np.maximum(ml.W, 0.0)), (VIm, np.maximum(-ml.W, 0.0))):
            cross = (rsp @ wpm).T.ravel()
            VI += 2.0 * gmin * lam * cross + gmin * gmin * tot
            if S is None:
                VI += lam * lam * patch_quadforms(gamma, ml.idx, wpm).T.ravel()   # (c_o, p)
                quads.append(0.0)
            else:
                quads.append(float(lam[0] ** 2 * np.sum(wpm * (S @ wpm))))
    else:
        quads = [0.0, 0.0]
    tia_pos = r * (float(np.sum(EIp * EIp + VIp)) + quads[0])
    tia_neg = r * (float(np.sum(EIm * EIm + VIm)) + quads[1])
    return SimpleNamespace(mem=mem, tia_pos=tia_pos, tia_neg=tia_neg)


def layer_power(ml, mu, gamma, *, blocks=None):
    """Expected power of one crossbar layer (theory §11) from its input moments.

    ``ml`` is a :class:`refmem.mapping.MappedLayer`; the physical ``r`` of its configuration
    is used. ``blocks`` (UL only): iterable of explicit column blocks; default: the tap form.
    Returns a namespace ``mem``, ``tia_pos``, ``tia_neg``, ``total``.
    """
    r = ml.config.r
    if ml.scheme == "FC":
        out = fc_power(ml.block(), mu, gamma, r)
    elif ml.scheme == "UR":
        out = ur_power(ml.block(), ml.idx, mu, gamma, r)
    else:
        out = ul_power(ml, mu, gamma, r, blocks)
    out.total = out.mem + out.tia_pos + out.tia_neg
    return out

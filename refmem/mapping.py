"""Crossbar mapping (theory §3): weights -> differential conductance pairs.

Conventions (fixed for the whole project):

- scale ``λ_j = (g_u,j - g_min) / w^u_j``, constant within a column (theory §3.1, D2); ``w^u`` is
  the max-abs weight over the design scope, bias row included (D3):

  ============  ==================================================================
  design        scope of ``w^u``
  ============  ==================================================================
  ``scalar``    every weight and bias of every crossbar layer
  ``layer``     one crossbar layer (its weights and bias)
  ``column``    one column: an FC output, a UR output channel, a UL column (c_o, p)
  ============  ==================================================================

- conductances ``g+ = λ max(w, 0) + g_min``, ``g- = λ max(-w, 0) + g_min`` (Eqs. (5)–(6),
  theory §3.2), so ``g+ - g- = λ w`` and every device lies in ``[g_min, g_u]``;
- the TIA gain ``r`` is undone digitally by ``1/(r λ)``: ``r`` changes power, never the
  moments (theory §3.3);
- UL (theory §6): every Toeplitz entry is a device pair, structural zeros included (programmed
  at ``g_min`` and noisy); padding contributes no rows;
- noise in weight units per pair: ``v = (σ²(g+) + σ²(g-)) / λ²`` (device noise, noisy layers
  only) ``+ α² w²`` (theory §13, noisy layers only) ``+ Δ²/12`` (dithered quantization of the
  layer's weights, theory §14; structural UL zeros are exact and get none).

Quantization (theory §14) is applied after batchnorm fusion and before noise; in ``fixed`` mode
the programmed weights are ``q(W)`` and ``w^u`` is computed on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from .config import CrossbarConfig
from .errors import ConfigError
from .layers import Conv2d, Dense, gather_patches, toeplitz_columns
from .network import Network
from .quantize import quant_step, quantize


@dataclass
class MappedLayer:
    """One crossbar layer after fusion, quantization and scaling.

    Attributes
    ----------
    index : int
        Crossbar layer number (0, 1, … in network order after batchnorm fusion).
    position : int
        Position of the layer in the fused network's layer list.
    scheme : {"FC", "UR", "UL"}
    W : ndarray (R, J0)
        Programmed weights in crossbar orientation: FC ``(L, J)``; conv ``(C_in k², C_out)``
        (the UR matrix; UL columns are generated from it, see :meth:`block`).
    b : ndarray (J0,) or None
        Programmed bias (None: no bias row).
    W_ref, b_ref : unquantized weights (equal to ``W``, ``b`` without quantization).
    lam, g_u, w_u : ndarray (n_cols,)
        Per-column scale, upper conductance and max-abs weight.
    """

    index: int
    position: int
    scheme: str
    in_shape: tuple
    out_shape: tuple
    W: np.ndarray
    b: np.ndarray | None
    W_ref: np.ndarray
    b_ref: np.ndarray | None
    lam: np.ndarray
    g_u: np.ndarray
    w_u: np.ndarray
    noisy: bool
    bits: int | None
    delta: float | None
    config: CrossbarConfig = field(repr=False)
    conv: Conv2d | None = field(default=None, repr=False)
    idx: np.ndarray | None = field(default=None, repr=False)
    bias_digital: bool = False

    # ------------------------------------------------------------------ shapes
    @property
    def n_pos(self) -> int:
        """Output positions per channel (1 for FC)."""
        return 1 if self.idx is None else self.idx.shape[0]

    @property
    def n_cols(self) -> int:
        """Crossbar columns: FC J, UR C_out, UL C_out n_pos."""
        return self.lam.shape[0]

    @property
    def n_rows(self) -> int:
        """Crossbar rows without the bias row: FC L, UR C_in k², UL C_in H W."""
        if self.scheme == "UL":
            return int(np.prod(self.in_shape))
        return self.W.shape[0]

    @property
    def has_bias_row(self) -> bool:
        return self.b is not None and not self.bias_digital

    @property
    def dither(self) -> bool:
        return self.delta is not None and self.config.quant_mode == "dither"

    @property
    def col_channel(self) -> np.ndarray:
        """Index into ``W``'s columns / ``b`` for every crossbar column."""
        if self.scheme == "UL":
            return np.arange(self.n_cols) // self.n_pos
        return np.arange(self.n_cols)

    # ------------------------------------------------------------------ blocks
    def block(self, cols=None, *, with_noise=True) -> SimpleNamespace:
        """Explicit crossbar columns ``cols`` (default: all) with conductances and variances.

        Returns a namespace with
        ``W`` (R, m) weights, ``b`` (m,) or None, ``lam`` (m,), ``gp``/``gm`` (R, m) target
        conductances, ``gbp``/``gbm`` (m,) bias-row conductances (None without a bias row),
        ``vp``/``vm`` (R, m) device variances σ²(g±) (zero for a clean layer), ``vbp``/``vbm``,
        ``v`` (R, m) and ``vb`` (m,) total pair variance in weight units (device + α + dither),
        ``tap`` (R, m) bool mask of programmed weights (all True except UL structural zeros).
        """
        cols = np.arange(self.n_cols) if cols is None else np.asarray(cols)
        if self.scheme == "UL":
            Wb, tap = toeplitz_columns(self.W, self.idx, self.n_rows, cols, self.n_pos)
        else:
            Wb = self.W[:, cols]
            tap = np.ones(Wb.shape, dtype=bool)
        return self._pairs(Wb, tap, cols, with_noise=with_noise)

    def _pairs(self, Wb, tap, cols, *, with_noise=True):
        """Conductances and variances of the pairs holding weights ``Wb`` in columns ``cols``."""
        ch = self.col_channel[cols]
        bb = None if self.b is None else self.b[ch]
        lam = self.lam[cols]
        cfg = self.config
        gp = lam * np.maximum(Wb, 0.0) + cfg.g_min                  # Eq. (5)
        gm = lam * np.maximum(-Wb, 0.0) + cfg.g_min                 # Eq. (6)
        ns = SimpleNamespace(W=Wb, b=bb, lam=lam, gp=gp, gm=gm, tap=tap, cols=cols,
                             gbp=None, gbm=None, vbp=None, vbm=None, vb=None)
        if self.has_bias_row:
            ns.gbp = lam * np.maximum(bb, 0.0) + cfg.g_min
            ns.gbm = lam * np.maximum(-bb, 0.0) + cfg.g_min
        if not with_noise:
            return ns
        sm = cfg.sigma_model
        if self.noisy and not sm.is_zero:
            ns.vp, ns.vm = sm.var(np.stack([gp, gm]))          # one range check for g⁺ and g⁻
        else:
            ns.vp = ns.vm = np.zeros_like(gp)
        v = (ns.vp + ns.vm) / lam**2                               # theory §3.2, weight units
        alpha = cfg.alpha if self.noisy else 0.0
        if alpha:
            v = v + alpha**2 * Wb**2                               # theory §13
        if self.dither:
            v = v + np.where(tap, self.delta**2 / 12.0, 0.0)       # theory §14
        ns.v = v
        if self.has_bias_row:
            if self.noisy and not sm.is_zero:
                ns.vbp, ns.vbm = sm.var(ns.gbp), sm.var(ns.gbm)
            else:
                ns.vbp = ns.vbm = np.zeros_like(lam)
            vb = (ns.vbp + ns.vbm) / lam**2
            if alpha:
                vb = vb + alpha**2 * bb**2
            if self.dither:
                vb = vb + self.delta**2 / 12.0
            ns.vb = vb
        return ns

    def ul_taps(self) -> SimpleNamespace:
        """A UL layer in tap form: the programmed entries of every Toeplitz column, and the
        value of its structural zeros (theory §6) — without the (L, J) Toeplitz matrix.

        Column ``j = (c_o, p)`` holds ``W[a, c_o]`` at row ``ι(p, a)`` for every tap inside
        the input and a structural zero (programmed at ``g_min``, noisy, no dither) at every
        other of its L rows. Returns :meth:`block`'s fields with shape (taps, J) for the taps
        (``W`` is 0 and ``tap`` False at padded taps, which have no row), plus ``z``: the same
        fields (J,) of a structural zero of each column (``z.gp``, ``z.gm``, ``z.vp``,
        ``z.vm``, ``z.v``), and ``idx``. Built once per mapped layer and kept (a mapped
        layer is not modified after :func:`map_network`); treat the result as read-only.
        """
        if self.scheme != "UL":
            raise ConfigError("ul_taps() is for UL layers")
        cached = self.__dict__.get("_ul_taps")
        if cached is not None:                 # built once per mapped layer (read-only use)
            return cached
        J = self.n_cols
        co, p = np.divmod(np.arange(J), self.n_pos)
        valid = (self.idx >= 0).T[:, p]                            # (taps, J)
        Wt = np.where(valid, self.W[:, co], 0.0)
        ns = self._pairs(Wt, valid, np.arange(J))
        zero = self._pairs(np.zeros((1, J)), np.zeros((1, J), dtype=bool), np.arange(J))
        ns.z = SimpleNamespace(gp=zero.gp[0], gm=zero.gm[0], vp=zero.vp[0], vm=zero.vm[0],
                               v=zero.v[0])
        ns.idx = self.idx
        self.__dict__["_ul_taps"] = ns
        return ns

    def __getstate__(self):
        """Pickle without the cached tap form (rebuilt on demand in the receiving process)."""
        state = self.__dict__.copy()
        state.pop("_ul_taps", None)
        return state

    def check_conductances(self):
        """Assert every target conductance lies in [g_min, g_u] (theory §3.2)."""
        ns = self.block(with_noise=False)
        g_lo = self.config.g_min
        g_hi = self.g_u[ns.cols]
        tol = 1e-12 * np.maximum(1.0, g_hi)
        ok = (ns.gp >= g_lo - tol).all() and (ns.gm >= g_lo - tol).all()
        ok &= (ns.gp <= g_hi + tol).all() and (ns.gm <= g_hi + tol).all()
        return bool(ok)

    def forward(self, x_flat: np.ndarray, W=None, b=None) -> np.ndarray:
        """Noiseless layer output ``(B, n_out)`` with weights ``W`` (default: programmed)."""
        W = self.W if W is None else W
        b = self.b if b is None else b
        if self.scheme == "FC":
            y = x_flat @ W
            return y if b is None else y + b
        conv = Conv2d(W.T.reshape(self.conv.weight.shape), b, self.conv.stride, self.conv.padding)
        return conv.forward(x_flat, self.in_shape).reshape(x_flat.shape[0], -1)


def ul_column_sums(tb, F, Fz, vec):
    """``Σ_n F[n, j] vec_n`` over all L rows of every UL column, from the tap form.

    ``tb`` from :meth:`MappedLayer.ul_taps`; ``F`` (taps, J) the per-tap values and ``Fz`` (J,)
    the structural-zero value of each column: ``Σ_a F[a, j] vec_ι(p,a) + Fz_j (Σ_n vec_n −
    Σ_a vec_ι(p,a))`` (padded taps read 0 and have no row). Returns (J,).
    """
    idx = tb.idx
    n_pos, taps = idx.shape
    C = F.shape[1] // n_pos
    vp = gather_patches(np.asarray(vec, dtype=np.float64)[None, :], idx)[0]   # (n_pos, taps)
    on = np.einsum("acp,pa->cp", F.reshape(taps, C, n_pos), vp).reshape(-1)
    rest = float(np.sum(vec)) - np.tile(vp.sum(axis=1), C)
    return on + Fz * rest


@dataclass
class MappedNetwork:
    """A network mapped onto crossbars.

    Attributes
    ----------
    network : Network
        The original network (the reference for every MSE: unquantized and noiseless).
    fused : Network
        Batchnorm-fused, dropout-free network with the *programmed* (possibly quantized)
        weights.
    layers : list of MappedLayer
        Crossbar layers in order.
    config : CrossbarConfig
    """

    network: Network
    fused: Network
    layers: list
    config: CrossbarConfig

    @property
    def n_crossbar(self) -> int:
        return len(self.layers)

    def by_position(self) -> dict:
        return {m.position: m for m in self.layers}

    def reference(self, x) -> np.ndarray:
        """Reference output: the unquantized, noiseless original network, ``(B, n_out)``."""
        return self.network.forward(x)

    def programmed_forward(self, x) -> np.ndarray:
        """Noiseless output of the programmed (quantized, if so configured) network."""
        return self.fused.forward(x)


def column_wu(W, b=None, scheme="FC", idx=None, bias_in_scope=True) -> np.ndarray:
    """Max-abs weight of every crossbar column, ``max_i |W_ij|`` (theory §3.1).

    ``W`` is the crossbar matrix (rows × columns: inputs × output neurons for a dense layer,
    ``C_in k² × C_out`` for a UR convolution). For a ``"UL"`` layer the columns are the
    ``(c_out, position)`` pairs and only the taps inside the image count (``idx ≥ 0``). The
    bias of a column's channel is inside the scope when ``bias_in_scope`` (bias on the
    crossbar). This function and :func:`design_wu` are the one definition of ``w^u``: the
    mapping and noise-aware training (:class:`refmem.training.DeviceNoise`) both use them.
    """
    absW = np.abs(W)
    if scheme == "UL":
        valid = (idx >= 0).astype(np.float64)            # (n_pos, taps)
        per = np.max(absW[None, :, :] * valid[:, :, None], axis=1)   # (n_pos, C_out)
        wu = per.T.ravel()                               # column (c_o, p)
        ch = np.repeat(np.arange(W.shape[1]), idx.shape[0])
    else:
        wu = absW.max(axis=0) if absW.shape[0] else np.zeros(W.shape[1])
        ch = np.arange(W.shape[1])
    if b is not None and bias_in_scope:
        wu = np.maximum(wu, np.abs(b)[ch])
    return wu.astype(np.float64)


def design_wu(col_wu, design) -> list:
    """``w^u`` of every column of every crossbar layer under ``design`` (theory §3.1).

    ``col_wu`` is the list of per-column maxima (:func:`column_wu`), one array per crossbar
    layer. ``"scalar"``: the maximum over all layers; ``"layer"``: the layer's maximum;
    ``"column"``: the column's own maximum, except that a column whose weights (and bias) are
    all zero takes the ``w^u`` of its layer — it still exists on the chip, is programmed at
    ``g_min`` and carries device noise with the layer's scale. A layer whose weights are all
    zero has no scale at all: :class:`~refmem.errors.ConfigError`.
    """
    col_wu = [np.asarray(c, dtype=np.float64) for c in col_wu]
    layer_wu = [float(c.max()) if c.size else 0.0 for c in col_wu]
    for i, lw in enumerate(layer_wu):
        if not lw > 0.0:
            raise ConfigError(f"crossbar layer {i} has only zero weights and bias; its scale "
                              "λ = (g_u - g_min)/w^u is undefined")
    global_wu = max(layer_wu)
    out = []
    for cw, lw in zip(col_wu, layer_wu):
        if design == "scalar":
            out.append(np.full(cw.shape, global_wu))
        elif design == "layer":
            out.append(np.full(cw.shape, lw))
        elif design == "column":
            out.append(np.where(cw > 0, cw, lw))
        else:
            raise ConfigError(f"design must be 'scalar', 'layer' or 'column', got {design!r}")
    return out


def _gu_columns(cfg, i, n_cols, n_layers):
    gu = cfg.g_u
    if isinstance(gu, dict):
        if i not in gu:
            raise ConfigError(f"column g_u has no entry for crossbar layer {i}")
        arr = np.asarray(gu[i], dtype=np.float64)
        if arr.ndim == 0:
            return np.full(n_cols, float(arr))
        if arr.shape != (n_cols,):
            raise ConfigError(f"column g_u for crossbar layer {i} has {arr.size} values, "
                              f"the layer has {n_cols} columns")
        return arr.copy()
    if isinstance(gu, tuple):
        if len(gu) == 1:
            return np.full(n_cols, gu[0])
        if len(gu) != n_layers:
            raise ConfigError(f"g_u gives {len(gu)} values but the network has {n_layers} "
                              "crossbar layers")
        return np.full(n_cols, gu[i])
    return np.full(n_cols, float(gu))


def _check_sigma_table_range(config, mapped, col_wu):
    """A σ(g) table must cover every conductance the noisy layers program (theory §3.2).

    Each weight puts one device of its pair at ``g_min`` and the other at ``g_min + λ_j |w|``
    (Eqs. (5)–(6)), so the programmed g⁺ and g⁻ (bias rows included) span exactly
    ``[g_min, g_min + max_j λ_j w^max_j]`` with ``w^max_j`` the column's max-abs weight.
    Checked before any computation, naming that full range.
    """
    sm = config.sigma_model
    if sm.kind != "table":
        return
    highs = [float(np.max(ml.lam * cw)) for ml, cw in zip(mapped, col_wu)
             if ml.noisy and cw.size]
    if not highs:
        return
    lo, hi = config.g_min, config.g_min + max(highs)
    t_lo, t_hi = float(sm.g[0]), float(sm.g[-1])
    tol = 1e-12 * max(1.0, abs(t_hi))
    if lo < t_lo - tol or hi > t_hi + tol:
        raise ConfigError(f"sigma table covers g in [{t_lo:g}, {t_hi:g}] but the mapping "
                          f"programs g+ and g- in [{lo:g}, {hi:g}] (g_min to g_min + max "
                          "λ|w| over the noisy crossbar layers, bias rows included)")


def map_network(network: Network, config: CrossbarConfig | None = None) -> MappedNetwork:
    """Map ``network`` onto crossbars under ``config`` (theory §3, §6, §7, §14)."""
    config = CrossbarConfig() if config is None else config
    ref_fused = network.fused()
    positions = ref_fused.crossbar_positions()
    n = len(positions)
    if n == 0:
        raise ConfigError("the network has no dense or conv2d layer to map onto a crossbar")
    noisy = config.noisy_layer_set(n)
    if isinstance(config.g_u, dict):
        unknown = sorted(set(config.g_u) - set(range(n)))
        if unknown:
            raise ConfigError(f"column g_u has entries for crossbar layer(s) "
                              f"{', '.join(map(str, unknown))}, but the network has {n} "
                              f"(0 to {n - 1})")
    bits = config.bits_per_layer(n)
    shapes = ref_fused.shapes
    bias_on = config.bias_on_crossbar

    prog_layers = list(ref_fused.layers)
    raw = []
    for i, pos in enumerate(positions):
        layer = ref_fused.layers[pos]
        if isinstance(layer, Dense):
            W_ref, scheme, idx = layer.matrix(), "FC", None
        else:
            W_ref, scheme = layer.ur_matrix(), config.mapping
            idx = layer.index(shapes[pos])
        b_ref = layer.bias
        W, b, delta = W_ref, b_ref, None
        if bits[i] is not None:
            m = np.abs(W_ref).max() if W_ref.size else 0.0
            if b_ref is not None and bias_on:
                m = max(m, np.abs(b_ref).max())
            delta = quant_step(m, bits[i])
            if config.quant_mode == "fixed":
                W = quantize(W_ref, delta, bits[i])
                if b_ref is not None and bias_on:
                    b = quantize(b_ref, delta, bits[i])
                if isinstance(layer, Dense):
                    prog_layers[pos] = Dense(W.T, b, attrs=layer.attrs)
                else:
                    prog_layers[pos] = Conv2d(W.T.reshape(layer.weight.shape), b, layer.stride,
                                              layer.padding, attrs=layer.attrs)
        raw.append((i, pos, layer, scheme, idx, W, b, W_ref, b_ref, delta))

    # w^u per column, then per design scope (theory §3.1)
    col_wu = [column_wu(W, b, scheme, idx, bias_on) for (_, _, _, scheme, idx, W, b, *_) in raw]
    scoped = design_wu(col_wu, config.design)
    mapped = []
    for (i, pos, layer, scheme, idx, W, b, W_ref, b_ref, delta), cw, wu in zip(raw, col_wu,
                                                                             scoped):
        if config.lam is not None:
            lam = np.full(cw.shape, config.lam)
            gu = config.g_min + lam * wu
            if np.any(gu > config.g_max):
                raise ConfigError(f"lam = {config.lam:g} needs g_u = {gu.max():g} in crossbar "
                                  f"layer {i}, above g_max = {config.g_max:g}")
        else:
            gu = _gu_columns(config, i, cw.size, n)
            lam = (gu - config.g_min) / wu
        conv = prog_layers[pos] if scheme != "FC" else None
        mapped.append(MappedLayer(
            index=i, position=pos, scheme=scheme, in_shape=shapes[pos], out_shape=shapes[pos + 1],
            W=np.ascontiguousarray(W), b=b, W_ref=W_ref, b_ref=b_ref, lam=lam, g_u=gu, w_u=wu,
            noisy=i in noisy, bits=bits[i], delta=delta, config=config, conv=conv, idx=idx,
            bias_digital=(b is not None and not bias_on)))
    _check_sigma_table_range(config, mapped, col_wu)
    programmed = Network(prog_layers, network.input_shape, network.input_preprocessing,
                         dict(network.attrs))
    programmed.validate()
    return MappedNetwork(network=network, fused=programmed, layers=mapped, config=config)

"""The analytic network pass (Kern et al., Algorithm 1 as corrected in theory §15).

:func:`propagate` carries the mean and covariance of every input through the batchnorm-fused
network by composing the public layer functions of :mod:`refmem.moments`
(:func:`~refmem.moments.dense_moments`, :func:`~refmem.moments.ur_moments`,
:func:`~refmem.moments.ul_moments`, :func:`~refmem.moments.pool_moments`,
:func:`~refmem.moments.relu_layer_moments` / :func:`~refmem.moments.relu_pool_moments` around
:func:`refmem.relu.relu_moments`) and the power functions of :mod:`refmem.power`
(:func:`~refmem.power.fc_power`, :func:`~refmem.power.ur_power`,
:func:`~refmem.power.ul_power`): what the equation index names is what runs.

Memory: the input covariance of a layer is handed over (``[Γ]``) and freed as soon as the
layer has read it; after a deterministic input the covariance stays block-diagonal across
channels (:class:`refmem.moments.BlockDiag`) until a convolution mixes the channels; a ReLU
followed by average pooling runs as one fused step.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError
from .layers import AvgPool2d, Conv2d, Dense, Flatten, ReLU
from .moments import (dense_moments, pool_moments, relu_layer_moments, relu_pool_moments,
                      symmetrize, ul_moments, ul_noise_taps, ur_moments)
from .moments.activation import warn_clipped
from .moments.factor import FactorClosure, factor_split, mixture_mean_var, mixture_moments
from .moments.layout import as_dense, cov_diagonal
from .moments.workspace import Workspace
from .power import fc_power, ul_power, ur_power

__all__ = ["propagate", "MomentsResult"]



from .results import MomentsResult  # noqa: E402  (the result object lives with its schema)


def _check_input_cov(input_cov, B, L):
    """Validate ``input_cov`` ((L, L) or (B, L, L), :func:`refmem.network.check_input_cov`);
    returns a per-sample getter."""
    if input_cov is None:
        return lambda b: None
    from .network import check_input_cov
    C = check_input_cov(input_cov, B, L)
    C = C[0] if C.shape[0] == 1 and np.ndim(input_cov) == 2 else C

    def get(b):
        M = C if C.ndim == 2 else C[b]
        if not np.any(M):
            return None                       # a zero covariance is a deterministic input
        return symmetrize(np.array(M, dtype=np.float64, order="C"))
    return get


class _Prepared:
    """Static per-layer data shared by all samples (FC/UR blocks)."""

    def __init__(self, mapped):
        self.mapped = mapped
        self.bypos = mapped.by_position()
        self.blk = {}
        self.geometry = {}
        layers = mapped.fused.layers
        for pos, ml in self.bypos.items():
            if ml.scheme in ("FC", "UR"):
                self.blk[pos] = ml.block()
            if ml.scheme in ("UR", "UL"):
                conv = layers[pos]
                self.geometry[pos] = (tuple(ml.in_shape), conv.weight.shape[-1], conv.stride,
                                      conv.padding)


def _crossbar_step(prep, pos, mu, cur, layout, work=None, symmetric=True, active_only=False):
    """Power (from the input moments) then moments of one crossbar layer.

    ``cur`` is the one-element list holding the input covariance; the layer function empties
    it (releases Γ). ``work``: the pass's :class:`~refmem.moments.workspace.Workspace`;
    ``symmetric=False`` when the consumer reads only the upper triangle (a ReLU);
    ``active_only`` when it is the Taylor ReLU (a convolution then computes only what Eq. (28)
    reads). Returns ``(power, mean, cov)``.
    """
    ml = prep.bypos[pos]
    r = ml.config.r
    G = cur[0]
    if ml.scheme == "FC":
        blk = prep.blk[pos]
        pw = fc_power(blk, mu, G, r)
        del G
        mean, cov = dense_moments(blk.W, blk.b, blk.v, blk.vb, mu, cur, layout=layout)
    elif ml.scheme == "UR":
        blk = prep.blk[pos]
        pw = ur_power(blk, ml.idx, mu, G, r)
        del G
        mean, cov = ur_moments(ml.W, ml.b, blk.v, blk.vb, ml.idx, mu, cur, layout=layout,
                               work=work, symmetric=symmetric, geometry=prep.geometry[pos],
                               active_only=active_only)
    else:
        tb = ml.ul_taps()                                # built once per mapped layer
        pw = ul_power(ml, mu, G, r, tb)
        noise = ul_noise_taps(tb, mu, G)                 # Σ_n v_nj q_n over all L rows
        del G
        mean, cov = ul_moments(ml.W, ml.b, ml.idx, noise, mu, cur, layout=layout, work=work,
                               symmetric=symmetric, geometry=prep.geometry[pos],
                               active_only=active_only)
    pw.total = pw.mem + pw.tia_pos + pw.tia_neg
    return pw, mean, cov


def propagate(mapped, x, *, input_cov=None, cov=False, per_layer=False, progress=False,
              layout="blocks", fuse_relu_pool=True, executor=None, work=None,
              factor=None):
    r"""Analytic output moments, MSE and power of ``mapped`` for a batch ``x`` (theory §15).

    Algorithm 1 as corrected in theory §15 (D16): for every sample, every layer's power and
    output moments are computed from its **input** moments ``(μ, Γ)``; Γ is symmetric after
    every linear layer; the ReLU covariance rule is ``mapped.config.relu_cov`` (``exact``,
    theory §8.2, default; or ``taylor``, Eq. (28)). ``r`` enters power only (theory §3.3).

    With ``taylor`` the covariance can stop being PSD (D15) and a ReLU can receive a negative
    variance; it is set to zero and the pass warns once (:class:`TaylorNotPSDWarning`) with
    the count and the most negative value.

    Parameters
    ----------
    mapped : refmem.mapping.MappedNetwork
        From :func:`refmem.map_network` (batchnorm fused, dropout removed).
    x : array (B, *input_shape)
        Inputs (the mean input when ``input_cov`` is given).
    input_cov : array (L, L) or (B, L, L), optional
        Covariance of a random input around ``x`` (L = prod(input_shape)); must be finite,
        symmetric and PSD. None: deterministic inputs (lazy covariance).
    cov : bool
        Keep the full output covariance (``result.cov``, (B, J, J)).
    per_layer : bool
        Record the mean and variance after every layer (``result.groups()``).
    progress : bool
        Show a tqdm progress bar over the layers of every input.
    layout : {"blocks", "dense"}
        Covariance layout after a deterministic input: block-diagonal across channels until a
        layer mixes them (default), or dense from the first crossbar layer on. Same numbers.
    fuse_relu_pool : bool
        Run a ReLU followed by average pooling as :func:`refmem.moments.relu_pool_moments`.
    executor : object with ``.map(fn, items)``, optional
        Spread the inputs over workers (e.g. :class:`refmem.executor.Executor`, one BLAS /
        Numba thread per worker): the batch is cut into one contiguous chunk per worker
        (``executor.workers``, default 2). Same numbers as the serial pass.
    work : refmem.moments.workspace.Workspace, optional
        The buffers of the large matrices (theory §15). Default: a new workspace for the call
        (``Workspace(recycle=True)``): when the call returns, its buffers stay with the
        process for the next call (at most the memory of this call;
        :func:`refmem.moments.workspace.release_cache` returns it to the system). Pass one
        workspace to many calls (a σ sweep, an optimizer's evaluations) to map its memory once:
        the memory stays held until the workspace is dropped. Same numbers either way. Ignored
        with an executor (each worker has its own).
    factor : refmem.moments.factor.FactorClosure, optional
        The factor closure (theory §20): at the ReLU after each named crossbar layer every
        component is split along its principal (common) mode into K Gauss–Hermite
        components, carried separately to the output and recombined (Eqs. F1–F2). None
        (default): the Gaussian closure alone.

    Returns
    -------
    MomentsResult
    """
    net = mapped.network
    x = net.check_input(x)
    B = x.shape[0]
    L = int(np.prod(net.input_shape))
    _check_input_cov(input_cov, B, L)
    if layout not in ("blocks", "dense"):
        raise ConfigError(f"layout must be 'blocks' or 'dense', got {layout!r}")
    for pos, layer in enumerate(mapped.fused.layers):
        if not isinstance(layer, (Dense, Conv2d, AvgPool2d, ReLU, Flatten)):
            raise ConfigError(f"layer {pos:02d} ({layer.type}) is not supported by the analytic pass")
    if factor is not None and not isinstance(factor, FactorClosure):
        raise ConfigError(f"factor must be a refmem.moments.factor.FactorClosure, got "
                          f"{type(factor).__name__}")
    if factor is not None:
        factor.relu_positions(mapped)               # bad layers fail before any work
    opts = dict(cov=cov, per_layer=per_layer, layout=layout, fuse_relu_pool=fuse_relu_pool,
                factor=factor)
    if work is not None and not isinstance(work, Workspace):
        raise ConfigError("work must be a refmem.moments.workspace.Workspace, "
                          f"got {type(work).__name__}")
    if executor is not None and B > 1:
        n_w = max(1, min(B, int(getattr(executor, "workers", None) or 2)))
        cuts = np.linspace(0, B, n_w + 1).astype(int)
        items = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            c = input_cov
            if c is not None and np.asarray(c).ndim == 3:
                c = np.asarray(c)[lo:hi]
            items.append((mapped, x[lo:hi], c, opts))
        parts = list(executor.map(_pass_chunk, items))
        out = {}
        for k in ("mean", "var", "covs", "p_mem", "p_tp", "p_tn"):
            out[k] = None if parts[0][k] is None else np.concatenate([q[k] for q in parts])
        out["rec"] = None if not per_layer else {
            pos: {k: np.concatenate([q["rec"][pos][k] for q in parts]) for k in ("mean", "var")}
            for pos in parts[0]["rec"]}
        out["clipped"] = [sum(q["clipped"][0] for q in parts),
                          min(q["clipped"][1] for q in parts),
                          set().union(*[q["clipped"][2] for q in parts])]
    else:
        out = _pass(mapped, x, input_cov, progress=progress, work=work, **opts)
    c = out["clipped"]
    warn_clipped(c[0], c[1], len(c[2]))

    mean, var = out["mean"], out["var"]
    p_mem, p_tp, p_tn = out["p_mem"], out["p_tp"], out["p_tn"]
    ref = mapped.reference(x)
    bias = mean - ref
    mse = var + bias * bias                                     # theory §9, Eq. (7)
    p_layers = p_mem + p_tp + p_tn
    return MomentsResult(mean=mean, var=var, mse=mse, reference=ref, bias=bias, cov=out["covs"],
                         power=p_layers.sum(axis=1), power_layers=p_layers, power_mem=p_mem,
                         power_tia_pos=p_tp, power_tia_neg=p_tn,
                         per_layer=out["rec"])


def _pass_chunk(item):
    """Worker entry point of :func:`propagate` with an executor (the executor pins its threads)."""
    mapped, x, input_cov, opts = item
    return _pass(mapped, x, input_cov, progress=False, **opts)


def _pass(mapped, x, input_cov, *, cov, per_layer, progress, layout, fuse_relu_pool, work=None,
          factor=None):
    """The per-input loop of :func:`propagate`: raw per-input arrays (no derived quantities)."""
    B = x.shape[0]
    L = int(np.prod(mapped.network.input_shape))
    get_cov = _check_input_cov(input_cov, B, L)
    fused = mapped.fused
    shapes = fused.shapes
    mode = mapped.config.relu_cov
    clip_negative = mode == "taylor"
    prep = _Prepared(mapped)
    n_xb = mapped.n_crossbar
    xb_index = {ml.position: ml.index for ml in mapped.layers}
    layers = fused.layers
    splits = set() if factor is None else factor.relu_positions(mapped)

    J = int(np.prod(shapes[-1]))
    mean = np.empty((B, J))
    var = np.empty((B, J))
    covs = np.empty((B, J, J)) if cov else None
    p_mem = np.zeros((B, n_xb))
    p_tp = np.zeros((B, n_xb))
    p_tn = np.zeros((B, n_xb))
    rec = {pos: {"mean": np.empty((B, int(np.prod(shapes[pos + 1])))),
                 "var": np.empty((B, int(np.prod(shapes[pos + 1]))))}
           for pos in range(len(layers))} if per_layer else None
    clipped = [0, 0.0, set()]                       # count, most negative, ReLU positions
    if work is None:
        work = Workspace(recycle=True)              # large buffers, reused across layers and inputs
                                                    # (and left to the next call, theory §15)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=B * len(layers), desc="moments", unit="layer")

    def record(pos, b, mu, G):
        if rec is not None:
            rec[pos]["mean"][b] = mu
            d = cov_diagonal(G)
            rec[pos]["var"][b] = 0.0 if d is None else d

    for b in range(B):
        # components (weight, mean, [Γ]): one unless the factor closure splits (theory §20)
        comps = [[1.0, x[b].reshape(-1).copy(), [get_cov(b)]]]
        pos = 0
        while pos < len(layers):
            layer = layers[pos]
            if bar is not None:
                bar.set_postfix_str(f"input {b}, layer {pos:02d} {layer.type}")
            step = 1
            if pos in splits:
                comps = [[w, m, [G]] for c in comps
                         for (w, m, G) in factor_split(c[0], c[1], c[2].pop(), factor.nodes)]
            for c in comps:
                w, mu, cur = c
                if pos in prep.bypos:
                    # the ReLU reads only the upper triangle (and mirrors its own output
                    # unless pooling follows): skip the conv's mirror (not before a factor
                    # split, which reads the whole matrix)
                    upper_only = (pos + 1 < len(layers) and isinstance(layers[pos + 1], ReLU)
                                  and pos + 1 not in splits)
                    pw, mu, G = _crossbar_step(prep, pos, mu, cur, layout, work, not upper_only,
                                               upper_only and mode == "taylor")
                    cur.append(G)
                    del G
                    k = xb_index[pos]
                    p_mem[b, k] += w * pw.mem
                    p_tp[b, k] += w * pw.tia_pos
                    p_tn[b, k] += w * pw.tia_neg
                elif isinstance(layer, ReLU):
                    nxt = layers[pos + 1] if pos + 1 < len(layers) else None
                    if fuse_relu_pool and isinstance(nxt, AvgPool2d) and rec is None:
                        mu, G, clip = relu_pool_moments(mu, cur, shapes[pos], nxt.kernel_size,
                                                        mode, clip_negative=clip_negative,
                                                        work=work)
                        step = 2
                    else:
                        mu, G, clip = relu_layer_moments(mu, cur, mode,
                                                         clip_negative=clip_negative)
                    cur.append(G)
                    del G
                    if clip[0]:
                        clipped[0] += clip[0]
                        clipped[1] = min(clipped[1], clip[1])
                        clipped[2].add(pos)
                elif isinstance(layer, AvgPool2d):
                    mu, G = pool_moments(mu, cur, shapes[pos], layer.kernel_size, work=work)
                    cur.append(G)
                    del G
                # Flatten: identity on the flat NCHW vector
                c[1] = mu
            if len(comps) == 1:
                record(pos, b, comps[0][1], comps[0][2][0])
            elif rec is not None:
                rec[pos]["mean"][b], rec[pos]["var"][b] = mixture_mean_var(
                    [c[0] for c in comps], [c[1] for c in comps],
                    [cov_diagonal(c[2][0]) for c in comps])
            pos += step
            if bar is not None:
                bar.update(step)
        if len(comps) == 1:
            mu = comps[0][1]
            G = as_dense(comps[0][2].pop())
        else:
            mu, G = mixture_moments([c[0] for c in comps], [c[1] for c in comps],
                                    [c[2].pop() for c in comps])
        del comps
        mean[b] = mu
        if G is None:
            var[b] = 0.0
            if cov:
                covs[b] = 0.0
        else:
            var[b] = np.diagonal(G)
            if cov:
                covs[b] = G
        del G
    if bar is not None:
        bar.close()
    return dict(mean=mean, var=var, covs=covs, p_mem=p_mem, p_tp=p_tp, p_tn=p_tn, rec=rec,
                clipped=clipped)

"""Result objects: one naming table shared with the result files (``docs/result_format.md``).

- :class:`MomentsResult` — the analytic pass (:func:`refmem.moments.propagate`) for one
  configuration: arrays ``(B, K)`` / ``(B,)`` / scalars;
- :class:`MCResult` — the Monte-Carlo simulator (:func:`refmem.montecarlo.monte_carlo`) for one
  configuration, every estimate ``X`` with its standard error ``X_se``;
- :class:`Sweep` — ``P`` points of either kind with the swept parameters (``axes``); an
  attribute of a sweep is the points' attribute stacked along a leading axis of length ``P``
  (``sweep.mse_batch`` is ``(P,)``, ``sweep.mean`` is ``(P, B, K)``), exactly as in the file. A
  single run is a sweep of length one: every result file is written from a :class:`Sweep`.

Names (theory §9 for the MSE family): ``mse`` (B, K) per output; ``mse_per_input`` (B,) mean over
outputs; ``mse_max_per_input`` (B,) max over outputs; ``mse_batch`` mean over inputs of
``mse_per_input``; ``mse_batch_max`` max over inputs of it; ``mse_rel`` = ``mse_per_input`` /
mean over outputs of ``reference²`` (noise power over signal power) and ``mse_rel_batch``; with
targets the same four as ``mse_targets*`` against the ground truth; ``power`` (B,) and per
crossbar layer ``power_layers``, ``power_mem``, ``power_tia_pos``, ``power_tia_neg`` (B, n_xb);
with labels ``accuracy`` (B,) and ``accuracy_mean``.

Monte-Carlo standard errors: ``mean_se``, ``var_se``, ``mse_se``, ``cov_se``, the power SEs and
``mse_batch_se``, ``accuracy_mean_se`` come from the sample (theory §19.2, §23). The SEs of
quantities derived from several estimates (``mse_per_input_se`` and the maxima; ``mse_targets_se``
from the mean and the variance) are Minkowski upper bounds (sd(ΣX) ≤ Σ sd(X)), never
underestimates; the file says so in their ``description``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["MomentsResult", "MCResult", "Sweep", "layer_table", "crossbar_index_of_layers"]


# ====================================================================== layer numbering
def layer_table(network) -> list:
    """The fused network's layers with the one crossbar numbering.

    One dict per fused layer (batchnorm folded into the dense/conv before it, dropout removed):
    ``fused_index`` (position in the fused network), ``type``, ``crossbar_index`` (0..n−1 for
    dense/conv layers, ``None`` otherwise), ``source_layers`` (indices of the model file's
    layers it came from, e.g. ``[3, 4]`` for dense + batchnorm) and ``source_names``
    (``"03 dense"``, ``"04 batchnorm"``). A dropout is listed with the layer before it.
    """
    out = []
    xb = 0
    for i, layer in enumerate(network.layers):
        t = layer.type
        if t in ("batchnorm", "dropout") and out:
            out[-1]["source_layers"].append(i)
            out[-1]["source_names"].append(f"{i:02d} {t}")
            continue
        if t == "dropout":
            continue
        row = {"fused_index": len(out), "type": t, "crossbar_index": None,
               "source_layers": [i], "source_names": [f"{i:02d} {t}"]}
        if t in ("dense", "conv2d"):
            row["crossbar_index"] = xb
            xb += 1
        out.append(row)
    return out


def crossbar_index_of_layers(network) -> list:
    """For every layer of the model file: the crossbar index it belongs to (its own for a
    dense/conv, the preceding crossbar's for a batchnorm fused into it), else ``None``."""
    idx = [None] * len(network.layers)
    for row in layer_table(network):
        if row["crossbar_index"] is not None:
            for i in row["source_layers"]:
                if network.layers[i].type != "dropout":
                    idx[i] = row["crossbar_index"]
    return idx


# ====================================================================== helpers
def _ref_power(reference):
    """Mean over outputs of reference² (B,) — the signal power of ``mse_rel``."""
    return np.mean(reference * reference, axis=-1)


def _ratio(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(a, dtype=np.float64) / b


class _MSEFamily:
    """The derived MSE names, shared by both result kinds (axes: ..., B, K)."""

    @property
    def mse_per_input(self):
        return self.mse.mean(axis=-1)

    @property
    def mse_max_per_input(self):
        return self.mse.max(axis=-1)

    @property
    def mse_batch_max(self):
        return np.max(self.mse_per_input, axis=-1)

    @property
    def mse_rel(self):
        return _ratio(self.mse_per_input, _ref_power(self.reference))

    @property
    def mse_rel_batch(self):
        return _ratio(self.mse_batch, np.mean(self.reference * self.reference))

    # targets ---------------------------------------------------------------
    @property
    def mse_targets(self):
        if self.targets is None:
            return None
        vb = self._var_about_mean()
        e = self.mean - self.targets
        return vb + e * e

    @property
    def mse_targets_per_input(self):
        m = self.mse_targets
        return None if m is None else m.mean(axis=-1)

    @property
    def mse_targets_max_per_input(self):
        m = self.mse_targets
        return None if m is None else m.max(axis=-1)

    @property
    def mse_targets_batch(self):
        m = self.mse_targets_per_input
        return None if m is None else m.mean(axis=-1)

    @property
    def mse_targets_batch_max(self):
        m = self.mse_targets_per_input
        return None if m is None else m.max(axis=-1)

    # backward-compatible names of refmem 0.1 -------------------------------
    @property
    def mse_mean(self):
        """Deprecated name of :attr:`mse_per_input`."""
        return self.mse_per_input

    @property
    def mse_max(self):
        """Deprecated name of :attr:`mse_max_per_input`."""
        return self.mse_max_per_input

    def summary_names(self):
        names = ["mean", "var", "cov", "bias", "mse", "mse_per_input", "mse_max_per_input",
                 "mse_batch", "mse_batch_max", "mse_rel", "mse_rel_batch", "power",
                 "power_layers", "power_mem", "power_tia_pos", "power_tia_neg"]
        if self.targets is not None:
            names += ["mse_targets", "mse_targets_per_input", "mse_targets_max_per_input",
                      "mse_targets_batch", "mse_targets_batch_max"]
        return names


# ====================================================================== analytic
@dataclass
class MomentsResult(_MSEFamily):
    """Analytic moments, MSE and power for ``B`` inputs and ``K`` outputs (one configuration).

    Attributes
    ----------
    mean, var, mse, reference, bias : ndarray (B, K)
        Output mean and variance, per-output MSE ``var + (mean − reference)²`` (theory §9,
        Eq. (7)), the reference output (unquantized noiseless network), ``mean − reference``.
    cov : ndarray (B, K, K) or None
        Full output covariance (when requested).
    power : ndarray (B,)
        Expected total power per inference (theory §11).
    power_layers, power_mem, power_tia_pos, power_tia_neg : ndarray (B, n_xb)
        Per crossbar layer 0..n_xb−1: total, memristors (bias rows included), TIA of the
        positive and negative arrays.
    per_layer : dict or None
        ``{fused position: {"mean": (B, n), "var": (B, n)}}`` after every layer of the fused
        network (when requested).
    targets : ndarray (B, K) or None
        Ground truth for the ``mse_targets*`` names.
    accuracy : ndarray (B,) or None; accuracy_mean : float or None
        Predicted accuracy from the output moments (theory §21), with labels.

    Derived names (properties): ``mse_per_input``, ``mse_max_per_input``, ``mse_batch``,
    ``mse_batch_max``, ``mse_rel``, ``mse_rel_batch``, ``mse_targets*``.
    """

    mean: np.ndarray
    var: np.ndarray
    mse: np.ndarray
    reference: np.ndarray
    bias: np.ndarray
    cov: np.ndarray | None
    power: np.ndarray
    power_layers: np.ndarray
    power_mem: np.ndarray
    power_tia_pos: np.ndarray
    power_tia_neg: np.ndarray
    per_layer: dict | None = field(default=None, repr=False)
    targets: np.ndarray | None = field(default=None, repr=False)
    accuracy: np.ndarray | None = None
    accuracy_mean: float | None = None
    accuracy_error_bound: float | None = None

    kind = "moments"

    @property
    def mse_batch(self):
        return self.mse_per_input.mean(axis=-1)

    def _var_about_mean(self):
        return self.var

    def datasets(self) -> dict:
        """Schema name → array of this point (no sweep axis; ``reference`` included)."""
        d = {k: getattr(self, k) for k in self.summary_names()}
        d["reference"] = self.reference
        if self.accuracy is not None:
            d["accuracy"] = self.accuracy
            d["accuracy_mean"] = self.accuracy_mean
            d["accuracy_error_bound"] = self.accuracy_error_bound
        return {k: v for k, v in d.items() if v is not None}

    def groups(self) -> dict:
        """``"layers/NN"`` → ``{"mean": (B, n), "var": (B, n)}`` (empty without ``per_layer``)."""
        if not self.per_layer:
            return {}
        return {f"layers/{pos:02d}": dict(v) for pos, v in sorted(self.per_layer.items())}


# ====================================================================== Monte-Carlo
def _alias(name, doc):
    def get(self):
        return getattr(self, name)

    def put(self, v):
        setattr(self, name, v)
    return property(get, put, doc=f"Deprecated name of ``{name}`` ({doc}).")


@dataclass
class MCResult(_MSEFamily):
    """Monte-Carlo estimates for ``B`` inputs and ``K`` outputs (one configuration).

    ``(B, K)`` arrays ``mean``, ``var`` (ddof 1), ``mse`` (mean of (y − reference)² over the
    realizations), ``reference`` and their standard errors ``mean_se``, ``var_se``, ``mse_se``;
    ``cov``, ``cov_se`` ``(B, K, K)`` when requested; ``power``, ``power_se`` ``(B,)`` and per
    crossbar layer ``(B, n_xb)`` ``power_layers``, ``power_mem``, ``power_tia_pos``,
    ``power_tia_neg`` with ``_se`` companions; ``mse_batch`` (the MSE averaged over inputs and
    outputs) with ``mse_batch_se``, its standard error over realizations (one realization is
    shared by the whole batch, so this is the correct SE of a batch average); with labels
    ``accuracy_mean`` ± ``accuracy_mean_se``; with targets the ``mse_targets*`` names.
    """

    n: int
    seed: int
    block: int
    reference: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    mse: np.ndarray
    mean_se: np.ndarray
    var_se: np.ndarray
    mse_se: np.ndarray
    power_mem: np.ndarray
    power_tia_pos: np.ndarray
    power_tia_neg: np.ndarray
    power_mem_se: np.ndarray
    power_tia_pos_se: np.ndarray
    power_tia_neg_se: np.ndarray
    power_layers: np.ndarray
    power_layers_se: np.ndarray
    power: np.ndarray
    power_se: np.ndarray
    cov: np.ndarray | None = None
    cov_se: np.ndarray | None = None
    mse_batch: float | None = None
    mse_batch_se: float | None = None
    accuracy_mean: float | None = None
    accuracy_mean_se: float | None = None
    targets: np.ndarray | None = field(default=None, repr=False)
    extra: dict = field(default_factory=dict)

    kind = "mc"
    mse_overall = _alias("mse_batch", "refmem 0.1")
    mse_overall_se = _alias("mse_batch_se", "refmem 0.1")
    accuracy = _alias("accuracy_mean", "refmem 0.1: the batch accuracy")
    accuracy_se = _alias("accuracy_mean_se", "refmem 0.1")

    @property
    def bias(self):
        return self.mean - self.reference

    @property
    def bias_se(self):
        return self.mean_se

    def _var_about_mean(self):
        return self.var * ((self.n - 1) / self.n)

    # standard errors of the derived names (Minkowski bounds where marked)
    @property
    def mse_per_input_se(self):
        exact = self.extra.get("mse_per_input_se")     # per-input accumulator, when the run has one
        return np.asarray(exact) if exact is not None else self.mse_se.mean(axis=-1)

    def bound_se_names(self) -> set:
        """Names of the ``_se`` values of this result that are upper bounds, not estimates."""
        names = set(BOUND_SE)
        if self.extra.get("mse_per_input_se") is not None:
            names -= {"mse_per_input_se", "mse_batch_max_se", "mse_rel_se"}
        return names

    @property
    def mse_max_per_input_se(self):
        k = np.argmax(self.mse, axis=-1)[..., None]
        return np.take_along_axis(self.mse_se, k, axis=-1)[..., 0]

    @property
    def mse_batch_max_se(self):
        b = np.argmax(self.mse_per_input, axis=-1)
        return np.take(self.mse_per_input_se, b, axis=-1)

    @property
    def mse_rel_se(self):
        return _ratio(self.mse_per_input_se, _ref_power(self.reference))

    @property
    def mse_rel_batch_se(self):
        return _ratio(self.mse_batch_se, np.mean(self.reference * self.reference))

    @property
    def mse_targets_se(self):
        if self.targets is None:
            return None
        return self.var_se + 2.0 * np.abs(self.mean - self.targets) * self.mean_se

    @property
    def mse_targets_per_input_se(self):
        s = self.mse_targets_se
        return None if s is None else s.mean(axis=-1)

    @property
    def mse_targets_max_per_input_se(self):
        if self.targets is None:
            return None
        k = np.argmax(self.mse_targets, axis=-1)[..., None]
        return np.take_along_axis(self.mse_targets_se, k, axis=-1)[..., 0]

    @property
    def mse_targets_batch_se(self):
        s = self.mse_targets_per_input_se
        return None if s is None else s.mean(axis=-1)

    @property
    def mse_targets_batch_max_se(self):
        if self.targets is None:
            return None
        b = np.argmax(self.mse_targets_per_input, axis=-1)
        return np.take(self.mse_targets_per_input_se, b, axis=-1)

    def datasets(self) -> dict:
        """Schema name → array of this point (no sweep axis; ``reference`` included)."""
        d = {}
        for k in self.summary_names():
            d[k] = getattr(self, k)
            se = k + "_se"
            if hasattr(self, se):
                d[se] = getattr(self, se)
        d["reference"] = self.reference
        if self.accuracy_mean is not None:
            d["accuracy_mean"] = np.float64(self.accuracy_mean)
            d["accuracy_mean_se"] = np.float64(self.accuracy_mean_se)
        return {k: v for k, v in d.items() if v is not None}

    def groups(self) -> dict:
        return {}


_BOUND_NOTE = " (upper bound: Minkowski, sd of a sum ≤ sum of sds)"
BOUND_SE = ("mse_per_input_se", "mse_max_per_input_se", "mse_batch_max_se", "mse_rel_se",
            "mse_targets_se", "mse_targets_per_input_se", "mse_targets_max_per_input_se",
            "mse_targets_batch_se", "mse_targets_batch_max_se")
"""Standard errors that are conservative bounds, not estimates."""


# ====================================================================== sweeps
@dataclass
class Sweep:
    """``P`` results of one kind with the swept parameters.

    ``points`` holds the :class:`MomentsResult` / :class:`MCResult` of every sweep point,
    ``axes`` maps ``"sigma"``, ``"alpha"``, ``"g_u"`` to ``(P,)`` arrays (a parameter that is not
    a scalar in this run — a σ table, per-layer g_u — is absent), ``configs`` the
    :class:`~refmem.config.CrossbarConfig` actually used at each point. Any schema name read
    from a sweep is the points' values stacked along a leading axis ``P`` (``reference`` is
    shared and has no sweep axis).
    """

    points: list
    axes: dict
    configs: list = field(default_factory=list)

    @property
    def kind(self):
        return self.points[0].kind

    def __len__(self):
        return len(self.points)

    def __getattr__(self, name):
        if name.startswith("_") or name in ("points", "axes", "configs"):
            raise AttributeError(name)
        if name == "reference":
            return self.points[0].reference
        vals = [getattr(p, name) for p in self.points]
        if any(v is None for v in vals):
            return None
        return np.stack([np.asarray(v) for v in vals])

    def datasets(self) -> dict:
        """Every dataset of the result file: ``axes/*`` and the stacked schema names."""
        out = {f"axes/{k}": np.asarray(v, dtype=np.float64) for k, v in self.axes.items()}
        first = self.points[0].datasets()
        for name in first:
            if name == "reference":
                out[name] = self.points[0].reference
                continue
            vals = [p.datasets().get(name) for p in self.points]
            if any(v is None for v in vals):
                continue
            arr = np.stack([np.asarray(v) for v in vals])
            bounds = set().union(*(getattr(p, "bound_se_names", lambda: set())()
                                   for p in self.points))
            if name in bounds:
                from .io import dataset_meta
                meta = dataset_meta(name)
                meta["description"] += _BOUND_NOTE
                out[name] = (arr, meta)
            else:
                out[name] = arr
        return out

    def groups(self, table=None) -> dict:
        """Per-layer groups ``layers/NN`` (NN = fused position) with the points stacked and the
        attributes ``type``, ``fused_index``, ``crossbar_index`` (−1: not a crossbar layer),
        ``source_layers`` and ``source_names`` from :func:`layer_table` ``table``."""
        g0 = self.points[0].groups()
        out = {}
        by_fused = {r["fused_index"]: r for r in (table or [])}
        for gname in g0:
            dsets = {k: np.stack([p.groups()[gname][k] for p in self.points]) for k in g0[gname]}
            pos = int(gname.rsplit("/", 1)[-1])
            row = by_fused.get(pos)
            attrs = None
            if row is not None:
                attrs = {"type": row["type"], "fused_index": pos,
                         "crossbar_index": -1 if row["crossbar_index"] is None
                         else row["crossbar_index"],
                         "source_layers": row["source_layers"],
                         "source_names": row["source_names"]}
            out[gname] = (dsets, attrs)
        return out


# ====================================================================== printed summaries
UNITS_LEGEND = ("units: y = network output unit, g = conductance unit (of g_u and σ), "
                "x = network input unit; ± = Monte-Carlo standard error")


def _fmt(v, se=None, unit=""):
    s = f"{float(v):.4g}"
    if se is not None:
        s += f" ± {float(se):.2g}"
    return s + (f" {unit}" if unit else "")


def point_label(sweep, i) -> str:
    """``σ=0.1 g, α=0, g_u=1 g`` for sweep point ``i`` (the parameters that are on an axis)."""
    names = {"sigma": ("σ", " g"), "alpha": ("α", ""), "g_u": ("g_u", " g")}
    parts = [f"{names[k][0]}={float(v[i]):g}{names[k][1]}" for k, v in sweep.axes.items()
             if k in names]
    return ", ".join(parts) if parts else f"point {i}"


def summary_lines(sweep) -> tuple:
    """``(lines, warnings)``: one printed line per sweep point with units and ± SE, and one
    warning per point whose relative MSE exceeds 1 (noise power above signal power)."""
    lines = [UNITS_LEGEND]
    warnings = []
    for i, p in enumerate(sweep.points):
        mc = p.kind == "mc"
        B, K = p.reference.shape
        tag = "Monte-Carlo" if mc else "analytic"
        se = (lambda name: getattr(p, name + "_se")) if mc else (lambda name: None)
        parts = [f"MSE {_fmt(p.mse_batch, se('mse_batch'), 'y²')} (mean over {B} inputs × "
                 f"{K} outputs)",
                 f"worst input {_fmt(p.mse_batch_max, se('mse_batch_max'), 'y²')}",
                 f"relative MSE {_fmt(p.mse_rel_batch, se('mse_rel_batch'))}"]
        if p.targets is not None:
            parts.append(f"MSE to targets {_fmt(p.mse_targets_batch, se('mse_targets_batch'), 'y²')}")
        pw_se = float(np.mean(p.power_se)) if mc else None
        parts.append(f"power {_fmt(np.mean(p.power), pw_se, 'g·x²')} per inference")
        if mc and p.accuracy_mean is not None:
            parts.append(f"accuracy {_fmt(p.accuracy_mean, p.accuracy_mean_se)}")
        elif not mc and p.accuracy_mean is not None:
            parts.append(f"predicted accuracy {p.accuracy_mean:.4f} (integration error ≤ "
                         f"{p.accuracy_error_bound:.1g})")
        lines.append(f"{point_label(sweep, i)} [{tag}]: " + ", ".join(parts))
        r = float(p.mse_rel_batch)
        if r > 1:
            warnings.append(f"relative MSE {r:.3g} > 1 at {point_label(sweep, i)}: the noise "
                            "power exceeds the signal power (check σ, g_u and the design)")
    return lines, warnings

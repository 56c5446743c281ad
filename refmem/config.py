"""The one configuration object for the crossbar mapping and the noise model.

:class:`CrossbarConfig` is shared by the Python API and every CLI command, serialises to JSON
(:meth:`CrossbarConfig.to_json` / :meth:`CrossbarConfig.from_json`) and is stored in the
``config`` attribute of every result file.

Units
-----
Conductances (``g_min``, ``g_max``, ``g_u``, the device standard deviation ``sigma`` and the
``g`` / ``sigma`` columns of a sigma table) share one arbitrary unit ``[G]``. Input voltages
are the network's input values ``[V]``. Power is in ``[G]·[V]²`` (memristors: ``G V²``;
TIA: ``r I²`` with ``r`` in ``1/[G]``). The weight-to-conductance scale λ is in ``[G]`` per
weight unit.

Fields and defaults
-------------------
sigma : float, default 0
    Standard deviation of one device's programming noise (constant model, theory §2 A1). The
    differential pair ``G = G+ - G-`` has variance ``2 sigma²`` (theory §3.2; corrects D1/D6).
sigma_table : (g, sigma) pair of 1-D arrays or None
    σ(g) by linear interpolation in a table (theory §4 generalised). Evaluating it outside the
    table's g range is an error. Overrides ``sigma``.
sigma_fn : callable or None
    σ(g) as a Python callable (vectorised over a NumPy array). Overrides ``sigma``; recorded in
    JSON by name only (a JSON round trip cannot restore it).
alpha : float, default 0
    MohammadiRad & Sojodishijani's multiplicative noise ``w -> (1 + alpha N(0,1)) w`` on every
    weight and bias of a noisy layer, i.e. weight-unit variance ``alpha² w²`` (theory §13). It
    acts on the weights directly and does not enter power.
bits : None, int, or sequence of (int or None), default None
    k-bit uniform quantization (theory §14), one value for every crossbar layer or one per
    crossbar layer (None = not quantized). Applied after batchnorm fusion, before noise.
quant_mode : {"fixed", "dither"}, default "fixed"
    "fixed": the network is programmed with q(W) (one deterministic network; adds no
    variance). "dither": subtractively dithered quantization, whose error is exactly
    U(-Δ/2, Δ/2) i.i.d., i.e. the Δ²/12 model of theory §14.
g_min : float, default 0
    Lowest programmable conductance (every device of a pair sits at ``g_min`` for weight 0).
g_max : float, default +inf
    Highest programmable conductance; every g_u must satisfy ``g_min < g_u <= g_max``.
g_u : float, sequence of float, or dict {layer index: array of per-column values}
    The chosen upper conductance (theory §3.1). A float is broadcast to every column; a sequence
    gives one value per crossbar layer (broadcast over its columns); a dict gives one array per
    crossbar layer with one value per column (column design). Default 1.0.
lam : float or None
    If set, λ = ``lam`` for every column instead of ``g_u`` (then ``g_u = g_min + lam w^u``).
design : {"scalar", "layer", "column"}, default "scalar"
    Scope of the max-abs weight ``w^u`` (which always includes the bias row; theory §3.1).
mapping : {"UR", "UL"}, default "UR"
    Convolution mapping: unfold-repeat (one shared crossbar, theory §5) or unrolled-linear
    (one Toeplitz crossbar, theory §6).
r : float, default 1
    TIA feedback resistance. The digital side rescales by ``1/(r λ)``, so r changes power,
    never the moments (theory §3.3).
noisy_layers : "all" or sequence of layer specs, default "all"
    Crossbar layers that receive device noise and alpha noise (MohammadiRad & Sojodishijani's
    "first only / last only / all"). Specs are ints (negative counts from the end) or the
    words "first", "last", "all". Layers whose noise is off stay crossbars (same mapping and
    power, σ = 0).
bias_on_crossbar : bool, default True
    The bias is a noisy crossbar row driven by ``x_b = 1`` (theory §2 A4, D5b).
clip_negative : bool, default False
    Monte-Carlo only: clip realised conductances at 0. This leaves the analytic model
    (theory §2 A1), which assumes unclipped Gaussian devices.
relu_cov : {"exact", "taylor"}, default "exact"
    ReLU covariance rule of the analytic path (theory §8.2 exact; §8.3 Eq. (28) Taylor).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .errors import ConfigError

DESIGNS = ("scalar", "layer", "column")
MAPPINGS = ("UR", "UL")
QUANT_MODES = ("fixed", "dither")
RELU_COV = ("exact", "taylor")


class SigmaModel:
    """Device noise standard deviation as a function of the target conductance, σ(g).

    Three kinds: ``constant`` (σ(g) ≡ sigma), ``table`` (linear interpolation in (g, sigma)
    columns; an error outside the table's range) and ``callable``.
    """

    def __init__(self, kind: str, sigma: float = 0.0, g=None, s=None, fn=None):
        self.kind = kind
        self.sigma = float(sigma)
        self.g = None if g is None else np.asarray(g, dtype=np.float64)
        self.s = None if s is None else np.asarray(s, dtype=np.float64)
        self.fn = fn

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant"

    @property
    def is_zero(self) -> bool:
        return self.kind == "constant" and self.sigma == 0.0

    def std(self, g) -> np.ndarray:
        """σ(g) elementwise (float64 array of the shape of ``g``)."""
        g = np.asarray(g, dtype=np.float64)
        if self.kind == "constant":
            return np.full(g.shape, self.sigma)
        if self.kind == "table":
            lo, hi = self.g[0], self.g[-1]
            tol = 1e-12 * max(1.0, abs(hi))
            if g.size and (np.min(g) < lo - tol or np.max(g) > hi + tol):
                raise ConfigError(
                    f"sigma table covers g in [{lo:g}, {hi:g}] but the mapping needs "
                    f"g in [{np.min(g):g}, {np.max(g):g}]")
            return np.interp(g, self.g, self.s)
        out = np.asarray(self.fn(g), dtype=np.float64)
        if out.shape != g.shape:
            out = np.broadcast_to(out, g.shape).copy()
        if not np.all(np.isfinite(out)) or np.any(out < 0):
            raise ConfigError("sigma callable returned a negative or non-finite standard deviation")
        return out

    def var(self, g) -> np.ndarray:
        """σ²(g) elementwise."""
        s = self.std(g)
        return s * s

    def to_dict(self) -> dict:
        if self.kind == "constant":
            return {"kind": "constant", "sigma": self.sigma}
        if self.kind == "table":
            return {"kind": "table", "g": self.g.tolist(), "sigma": self.s.tolist()}
        return {"kind": "callable", "name": getattr(self.fn, "__name__", repr(self.fn))}


def _check_finite(name, value, *, minimum=None, strict=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v):
        raise ConfigError(f"{name} must not be NaN")
    if minimum is not None:
        if strict and not v > minimum:
            raise ConfigError(f"{name} must be > {minimum:g}, got {v:g}")
        if not strict and not v >= minimum:
            raise ConfigError(f"{name} must be >= {minimum:g}, got {v:g}")
    return v


@dataclass(frozen=True)
class CrossbarConfig:
    """Crossbar mapping and noise specification (see the module docstring for every field)."""

    sigma: float = 0.0
    sigma_table: Optional[tuple] = None
    sigma_fn: Optional[Callable] = field(default=None, compare=False)
    alpha: float = 0.0
    bits: Any = None
    quant_mode: str = "fixed"
    g_min: float = 0.0
    g_max: float = math.inf
    g_u: Any = 1.0
    lam: Optional[float] = None
    design: str = "scalar"
    mapping: str = "UR"
    r: float = 1.0
    noisy_layers: Any = "all"
    bias_on_crossbar: bool = True
    clip_negative: bool = False
    relu_cov: str = "exact"

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "sigma", _check_finite("sigma", self.sigma, minimum=0.0))
        if math.isinf(self.sigma):
            raise ConfigError("sigma must be finite")
        set_(self, "alpha", _check_finite("alpha", self.alpha, minimum=0.0))
        if math.isinf(self.alpha):
            raise ConfigError("alpha must be finite")
        set_(self, "g_min", _check_finite("g_min", self.g_min, minimum=0.0))
        if math.isinf(self.g_min):
            raise ConfigError("g_min must be finite")
        gmax = _check_finite("g_max", self.g_max)
        if not gmax > self.g_min:
            raise ConfigError(f"g_max ({gmax:g}) must be > g_min ({self.g_min:g})")
        set_(self, "g_max", gmax)
        r = _check_finite("r", self.r, minimum=0.0, strict=True)
        if math.isinf(r):
            raise ConfigError("r must be finite")
        set_(self, "r", r)
        if self.design not in DESIGNS:
            raise ConfigError(f"design must be one of {', '.join(DESIGNS)}, got {self.design!r}")
        if self.mapping not in MAPPINGS:
            raise ConfigError(f"mapping must be UR or UL, got {self.mapping!r}")
        if self.quant_mode not in QUANT_MODES:
            raise ConfigError(f"quant_mode must be fixed or dither, got {self.quant_mode!r}")
        if self.relu_cov not in RELU_COV:
            raise ConfigError(f"relu_cov must be exact or taylor, got {self.relu_cov!r}")
        if self.sigma_table is not None and self.sigma_fn is not None:
            raise ConfigError("give either sigma_table or sigma_fn, not both")
        if self.sigma_table is not None:
            set_(self, "sigma_table", _validate_table(self.sigma_table))
            if self.sigma != 0.0:
                raise ConfigError(f"give either sigma ({self.sigma:g}) or a sigma table, not "
                                  "both (the table would be used and sigma recorded)")
        if self.sigma_fn is not None and not callable(self.sigma_fn):
            raise ConfigError("sigma_fn must be callable")
        if self.lam is not None:
            lam = _check_finite("lam", self.lam, minimum=0.0, strict=True)
            if math.isinf(lam):
                raise ConfigError("lam must be finite")
            set_(self, "lam", lam)
        else:
            set_(self, "g_u", _validate_gu(self.g_u, self.g_min, self.g_max))
            if isinstance(self.g_u, dict) and self.design != "column":
                raise ConfigError("a per-column g_u (one entry per crossbar layer, e.g. a .npz "
                                  f"file) needs design='column', got design={self.design!r}")
        set_(self, "bits", _validate_bits(self.bits))
        set_(self, "noisy_layers", _validate_noisy(self.noisy_layers))

    # ------------------------------------------------------------------ noise model
    @property
    def sigma_model(self) -> SigmaModel:
        """The device noise law σ(g) (theory §2 A1, §4 generalised)."""
        if self.sigma_table is not None:
            return SigmaModel("table", g=self.sigma_table[0], s=self.sigma_table[1])
        if self.sigma_fn is not None:
            return SigmaModel("callable", fn=self.sigma_fn)
        return SigmaModel("constant", sigma=self.sigma)

    def with_(self, **changes) -> "CrossbarConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "sigma_fn":
                d[f.name] = None if v is None else getattr(v, "__name__", repr(v))
            elif f.name == "sigma_table":
                d[f.name] = None if v is None else [v[0].tolist(), v[1].tolist()]
            elif f.name == "g_u":
                d[f.name] = _gu_to_json(v)
            else:
                d[f.name] = _jsonable(v)
        return d

    def to_json(self) -> str:
        """JSON text (infinities written as the string "inf")."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "CrossbarConfig":
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown configuration field(s): {', '.join(sorted(unknown))}")
        if d.get("sigma_fn") is not None:
            raise ConfigError("a configuration with a Python sigma callable cannot be restored "
                              "from JSON; use a sigma table")
        d.pop("sigma_fn", None)
        for k in ("g_max", "g_min", "sigma", "alpha", "r"):
            if isinstance(d.get(k), str):
                d[k] = float(d[k])
        if isinstance(d.get("g_u"), dict):
            d["g_u"] = {int(k): np.asarray(v, dtype=np.float64) for k, v in d["g_u"].items()}
        elif isinstance(d.get("g_u"), list):
            d["g_u"] = tuple(float(x) for x in d["g_u"])
        if isinstance(d.get("sigma_table"), list):
            d["sigma_table"] = (d["sigma_table"][0], d["sigma_table"][1])
        if isinstance(d.get("bits"), list):
            d["bits"] = tuple(d["bits"])
        if isinstance(d.get("noisy_layers"), list):
            d["noisy_layers"] = tuple(d["noisy_layers"])
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "CrossbarConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"configuration is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError("configuration JSON must be an object")
        return cls.from_dict(d)

    # ------------------------------------------------------------------ helpers
    def noisy_layer_set(self, n_layers: int) -> frozenset:
        """Indices of the crossbar layers with noise switched on."""
        if self.noisy_layers == "all":
            return frozenset(range(n_layers))
        return frozenset(resolve_layer_spec(s, n_layers) for s in self.noisy_layers)

    def bits_per_layer(self, n_layers: int) -> list:
        """Quantization bits per crossbar layer (None = not quantized)."""
        if self.bits is None or isinstance(self.bits, int):
            return [self.bits] * n_layers
        if len(self.bits) != n_layers:
            raise ConfigError(f"bits gives {len(self.bits)} values but the network has "
                              f"{n_layers} crossbar layers")
        return list(self.bits)


def resolve_layer_spec(spec, n_layers: int) -> int:
    """Crossbar layer index from an int (negative counts from the end), "first" or "last"."""
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "first":
            return 0
        if s == "last":
            return n_layers - 1
        try:
            spec = int(s)
        except ValueError:
            raise ConfigError(f"unknown layer name {spec!r} (use an index, first, last or all)") from None
    i = int(spec)
    if i < 0:
        i += n_layers
    if not 0 <= i < n_layers:
        raise ConfigError(f"crossbar layer {spec} does not exist: the network has {n_layers} "
                          f"crossbar layers, numbered 0..{n_layers - 1} (column xb of "
                          "`refmem info`)")
    return i


def _validate_table(table):
    try:
        g = np.asarray(table[0], dtype=np.float64).ravel()
        s = np.asarray(table[1], dtype=np.float64).ravel()
    except (TypeError, ValueError, IndexError):
        raise ConfigError("sigma_table must be a pair (g, sigma) of numeric arrays") from None
    if g.size < 2 or g.size != s.size:
        raise ConfigError("sigma_table needs at least two rows and equal-length g and sigma columns")
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(s))):
        raise ConfigError("sigma_table contains NaN or infinite values")
    if np.any(s < 0):
        raise ConfigError("sigma_table has a negative standard deviation")
    if np.any(np.diff(g) <= 0):
        raise ConfigError("sigma_table g column must be strictly increasing")
    g.setflags(write=False)
    s.setflags(write=False)
    return (g, s)


def _check_gu_value(v, g_min, g_max, where=""):
    if not np.all(np.isfinite(v)):
        raise ConfigError(f"g_u{where} must be finite")
    if np.any(v <= g_min) or np.any(v > g_max):
        bad = np.asarray(v).ravel()
        bad = bad[(bad <= g_min) | (bad > g_max)][0]
        raise ConfigError(f"g_u{where} = {bad:g} is outside (g_min, g_max] = ({g_min:g}, {g_max:g}]")


def _validate_gu(gu, g_min, g_max):
    if isinstance(gu, dict):
        out = {}
        for k, v in gu.items():
            arr = np.asarray(v, dtype=np.float64)
            if arr.ndim > 1:
                raise ConfigError(f"g_u for layer {k} must be a scalar or a 1-D array")
            _check_gu_value(arr, g_min, g_max, f" (layer {k})")
            arr = arr.copy()
            arr.setflags(write=False)
            out[int(k)] = arr
        return out
    if isinstance(gu, (list, tuple, np.ndarray)):
        vals = tuple(float(_check_finite("g_u", x)) for x in np.ravel(gu))
        if not vals:
            raise ConfigError("g_u list is empty")
        _check_gu_value(np.array(vals), g_min, g_max)
        return vals
    v = _check_finite("g_u", gu)
    _check_gu_value(np.array(v), g_min, g_max)
    return v


def _validate_bits(bits):
    if bits is None:
        return None

    def one(b):
        if b is None:
            return None
        try:
            bi = int(b)
        except (TypeError, ValueError):
            raise ConfigError(f"bits must be integers >= 2, got {b!r}") from None
        if bi != b or not 2 <= bi <= 53:
            raise ConfigError(f"bits must be integers in [2, 53] (a float64 holds 53 bits), "
                              f"got {b!r}")
        return bi

    if isinstance(bits, (list, tuple, np.ndarray)):
        return tuple(one(b) for b in bits)
    return one(bits)


def _validate_noisy(spec):
    if isinstance(spec, str):
        if spec.strip().lower() == "all":
            return "all"
        parts = [p for p in spec.split(",") if p.strip()]
        if not parts:
            raise ConfigError("noisy_layers is empty; give all, or layer indices / first / last")
        return _validate_noisy(parts)
    out = []
    for s in spec:
        if isinstance(s, str):
            t = s.strip().lower()
            if t == "all":
                return "all"
            if t not in ("first", "last"):
                try:
                    int(t)
                except ValueError:
                    raise ConfigError(f"unknown layer name {s!r} in noisy_layers "
                                      "(use indices, first, last or all)") from None
            out.append(t)
        else:
            out.append(int(s))
    return tuple(out)


def _jsonable(v):
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _gu_to_json(v):
    if isinstance(v, dict):
        return {str(k): np.asarray(a).tolist() for k, a in sorted(v.items())}
    return _jsonable(v)


def parse_layer_list(text: str) -> Sequence:
    """Parse a CLI layer list such as ``"0,last"`` or ``"all"``."""
    return _validate_noisy(text)

r"""The cheapest g_u for a required error: Kern et al. Eq. (45) and Algorithm 2 (theory §22).

Problem (Eq. (45), theory §12 / §22)::

    minimise   P(g_u)            mean expected power per inference over a fixed batch (theory §11)
    subject to MSE(g_u) <= ν     the chosen batch aggregate of the analytic MSE (theory §9)
               g_min < g_u <= g_max   element-wise

The genome ``g_u`` has one gene (``scalar`` design), one per crossbar layer (``layer``) or one
per crossbar column, layers concatenated in order (``column``). Every evaluation is one
analytic pass (:func:`refmem.moments.propagate` on :func:`refmem.mapping.map_network` with the
genome's g_u) on the same evaluation batch.

The constraint (theory §9, D27) is explicit: the per-input MSE is the mean over the outputs of
``Var + (mean − z)²`` with ``z`` the noiseless reference network (``against="reference"``) or
the ground truth (``against="targets"``); the batch aggregate is the mean or the max over
inputs. The four names follow the result schema: ``mse_batch``, ``mse_batch_max``,
``mse_targets_batch``, ``mse_targets_batch_max``.

Three solvers, all evaluating through one cached :class:`Archive`:

- :func:`solve_scalar` — the scalar g_u that meets the constraint (MSE falls and power rises
  with g_u), by a safeguarded regula falsi (Illinois) in ``t = 1/(g_u − g_min)²``, the
  variable in which the device-noise part of the MSE is affine;
- :func:`kkt_baseline` — the deterministic Lagrange/KKT allocation: the MSE is linearised in
  the per-group ``t_k = 1/λ_k²`` and the power fitted as ``β λ + γ λ² + d/λ²`` per group from
  two probe passes per group, the convex separable problem is solved by a 1-D search on the
  multiplier, and the result is rescaled to meet the exact constraint (theory §22);
- :func:`run_ga` — the reference GA of theory §12 (Gaussian init around ``g_u_init`` with std
  ``σ_init``, clipping to ``[g_min + ε, g_max]``, Deb's feasibility ranking, tournament of 3,
  elitism 2, BLX blend ``u ~ U(−0.25, 1.25)``, Gaussian mutation whose std decays linearly from
  ``0.1 (g_max − g_min)``, ``N_gen`` generations).

:func:`optimize` chains them with warm starts scalar → layer → column (Algorithm 2) and
returns the **best feasible archive entry** of the requested design under Deb's rule (not the
plain argmin of power printed in Algorithm 2, D26), with its origin (``method``). Warm starts
are carried between designs through λ (the same λ gives the same MSE and power in every design,
while the same g_u does not: ``w^u`` differs). An evaluation that fails or overflows is an
infeasible individual with MSE = power = +inf; it never aborts the run.

Resume: the archive (every evaluation, keyed by design and genome bytes) is the checkpoint.
A rerun with the same problem and seed replays the deterministic algorithm and takes every
evaluation already in the archive from it, so it is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DESIGNS, CrossbarConfig
from .errors import ConfigError, DataError
from .network import Network

__all__ = ["Problem", "Evaluation", "Archive", "Evaluator", "OptimizeResult", "evaluate",
           "evaluate_task", "process_workspace", "release_process_workspace",
           "solve_scalar", "kkt_baseline", "kkt_step", "kkt_linearize", "kkt_apply",
           "kkt_allocate", "run_ga", "optimize", "deb_order", "convert_genome",
           "CONSTRAINT_NAMES", "write_optimization", "plot_archive"]

AGAINST = ("reference", "targets")
AGGREGATES = ("mean", "max")
CONSTRAINT_NAMES = {("reference", "mean"): "mse_batch", ("reference", "max"): "mse_batch_max",
                    ("targets", "mean"): "mse_targets_batch",
                    ("targets", "max"): "mse_targets_batch_max"}
RESULT_KINDS = ("ga", "kkt", "bisection", "warm-start")
"""Archive kinds a returned solution may come from (``kkt-probe`` entries are linearisation
probes of the baseline and ``init`` the user's initial point; both stay in the archive only)."""


def _builtin_map(fn, items):
    return [fn(it) for it in items]


# ====================================================================== the problem
@dataclass(frozen=True)
class Problem:
    """Eq. (45) on a fixed evaluation batch (theory §22).

    Parameters
    ----------
    network : Network
    config : CrossbarConfig
        Noise and mapping; its ``g_u`` and ``design`` are replaced by each genome. ``g_max``
        must be finite (the GA's search box).
    x : array (B, *input_shape)
        The evaluation batch (the same inputs for every evaluation).
    max_mse : float
        The bound ν > 0.
    targets : array (B, J) or (B,) for J = 1, optional
        Ground truth (required with ``against="targets"``).
    against : {"reference", "targets"}
    aggregate : {"mean", "max"}
        Over inputs, of the per-input MSE (mean over outputs).
    """

    network: Network
    config: CrossbarConfig
    x: np.ndarray
    max_mse: float
    targets: np.ndarray | None = None
    against: str = "reference"
    aggregate: str = "mean"
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        cfg = self.config
        if not isinstance(cfg, CrossbarConfig):
            raise ConfigError("config must be a CrossbarConfig")
        if cfg.lam is not None:
            raise ConfigError("optimize chooses g_u; do not give lam")
        if not math.isfinite(cfg.g_max):
            raise ConfigError("optimize needs a finite g_max (--gmax): the GA searches "
                              "g_u in (g_min, g_max]")
        try:
            nu = float(self.max_mse)
        except (TypeError, ValueError):
            raise ConfigError(f"max_mse must be a number, got {self.max_mse!r}") from None
        if not (math.isfinite(nu) and nu > 0):
            raise ConfigError(f"max_mse must be a finite number > 0, got {self.max_mse!r}")
        object.__setattr__(self, "max_mse", nu)
        if self.against not in AGAINST:
            raise ConfigError(f"mse against must be reference or targets, got {self.against!r}")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"mse aggregate must be mean or max, got {self.aggregate!r}")
        x = self.network.check_input(self.x)
        object.__setattr__(self, "x", x)
        J = self.network.n_out
        if self.against == "targets":
            if self.targets is None:
                raise DataError("the MSE against the targets needs targets (--targets Y.npy)")
        if self.targets is not None:
            y = np.asarray(self.targets)
            if y.dtype.kind not in "biuf":
                raise DataError(f"targets must be numeric, got dtype {y.dtype}")
            y = y.astype(np.float64)
            if y.ndim == 1 and J == 1:
                y = y[:, None]
            if y.shape != (x.shape[0], J):
                raise DataError(f"targets have shape {np.shape(self.targets)}, expected "
                                f"({x.shape[0]}, {J})" + (f" or ({x.shape[0]},)" if J == 1 else ""))
            if not np.all(np.isfinite(y)):
                raise DataError("targets contain NaN or infinite values")
            object.__setattr__(self, "targets", y)

    # ------------------------------------------------------------------ names and scopes
    @property
    def constraint_name(self) -> str:
        """``mse_batch``, ``mse_batch_max``, ``mse_targets_batch`` or ``mse_targets_batch_max``."""
        return CONSTRAINT_NAMES[(self.against, self.aggregate)]

    @property
    def g_min(self) -> float:
        return self.config.g_min

    @property
    def g_max(self) -> float:
        return self.config.g_max

    @property
    def eps(self) -> float:
        """Smallest distance of a gene from g_min (the box is ``[g_min + ε, g_max]``)."""
        return 1e-9 * (self.g_max - self.g_min)

    def scope(self, design):
        """``(w_cols, group, layer_of_col, n_cols_per_layer)`` of ``design`` (theory §3.1).

        ``w_cols`` is the concatenated per-column ``w^u``, ``group`` the gene of every column
        and ``layer_of_col`` its crossbar layer.
        """
        if design not in DESIGNS:
            raise ConfigError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
        if design not in self._cache:
            from .mapping import map_network
            m = map_network(self.network, self.config.with_(design=design, g_u=self.g_max))
            w = np.concatenate([ml.w_u for ml in m.layers])
            ncol = [ml.n_cols for ml in m.layers]
            layer = np.repeat(np.arange(len(ncol)), ncol)
            group = {"scalar": np.zeros(w.size, dtype=np.int64), "layer": layer,
                     "column": np.arange(w.size)}[design]
            self._cache[design] = (w, group, layer, ncol)
        return self._cache[design]

    def genome_size(self, design) -> int:
        w, group, layer, ncol = self.scope(design)
        return int(group.max()) + 1

    def group_wu(self, design) -> np.ndarray:
        """``w^u`` of every gene (one per group; equal over a group's columns)."""
        w, group, _, _ = self.scope(design)
        out = np.empty(self.genome_size(design))
        out[group] = w
        return out

    def layer_of_gene(self, design) -> np.ndarray:
        """Crossbar layer of every gene (−1 for the scalar gene, which spans all layers)."""
        if design == "scalar":
            return np.array([-1])
        _, group, layer, _ = self.scope(design)
        out = np.empty(self.genome_size(design), dtype=np.int64)
        out[group] = layer
        return out

    def gu_value(self, design, genome):
        """The genome as a :class:`CrossbarConfig` ``g_u`` (float, tuple or per-layer dict)."""
        g = np.asarray(genome, dtype=np.float64).ravel()
        n = self.genome_size(design)
        if g.size != n:
            raise ConfigError(f"a {design} genome has {n} genes, got {g.size}")
        if design == "scalar":
            return float(g[0])
        if design == "layer":
            return tuple(float(v) for v in g)
        _, _, _, ncol = self.scope(design)
        edges = np.cumsum([0] + list(ncol))
        return {i: g[edges[i]:edges[i + 1]].copy() for i in range(len(ncol))}

    def clip(self, genome):
        return np.clip(genome, self.g_min + self.eps, self.g_max)

    def fingerprint(self) -> str:
        """SHA-256 of everything that defines the problem (checkpoint identity)."""
        h = hashlib.sha256()
        h.update(self.config.with_(g_u=self.g_max, design="scalar").to_json().encode())
        h.update(json.dumps([self.max_mse, self.against, self.aggregate]).encode())
        h.update(np.ascontiguousarray(self.x).tobytes())
        h.update(str(self.x.shape).encode())
        if self.targets is not None:
            h.update(np.ascontiguousarray(self.targets).tobytes())
        for layer in self.network.layers:
            h.update(layer.type.encode())
            for k, v in sorted(layer.params().items()):
                h.update(k.encode())
                h.update(np.ascontiguousarray(np.asarray(v, dtype=np.float64)).tobytes())
        return h.hexdigest()


def convert_genome(problem, genome, from_design, to_design):
    """The genome of ``to_design`` with the same per-column λ as ``genome`` (theory §3.1).

    λ = (g_u − g_min)/w^u; the same λ in every column gives the same MSE and power whatever the
    design, so warm starts go from a coarser design to a finer one through λ. Going from a
    finer to a coarser design needs equal λ within each coarse group (else an error).
    """
    g = np.asarray(genome, dtype=np.float64).ravel()
    w_from, grp_from, _, _ = problem.scope(from_design)
    lam_cols = (g[grp_from] - problem.g_min) / w_from
    w_to, grp_to, _, _ = problem.scope(to_design)
    n = problem.genome_size(to_design)
    lam = np.empty(n)
    lam[grp_to] = lam_cols
    if not np.allclose(lam[grp_to], lam_cols, rtol=1e-12, atol=0):
        raise ConfigError(f"a {from_design} genome with unequal λ within a group has no "
                          f"{to_design} equivalent")
    return problem.clip(problem.g_min + lam * problem.group_wu(to_design))


# ====================================================================== one evaluation
@dataclass
class Evaluation:
    """One analytic pass: the constraint value, mean power, per-layer power, feasibility."""

    mse: float
    power: float
    power_layers: np.ndarray
    feasible: bool
    error: str = ""


def evaluate(problem: Problem, design: str, genome, *, work=None) -> Evaluation:
    """MSE aggregate and mean power of one genome: one analytic pass (theory §9, §11, §15).

    Any failure (an overflow, a non-finite result, an exception of the pass) returns an
    infeasible :class:`Evaluation` with MSE = power = +inf and the error text. ``work``: a
    :class:`refmem.moments.workspace.Workspace` kept across passes (the optimizer's
    evaluations use one per process, :func:`process_workspace`); it changes no number.
    """
    from .mapping import map_network
    from .propagate import propagate

    n_xb = len(problem.scope("layer")[3])
    try:
        with np.errstate(all="ignore"):
            cfg = problem.config.with_(design=design, g_u=problem.gu_value(design, genome))
            res = propagate(map_network(problem.network, cfg), problem.x, work=work)
            if problem.against == "targets":
                err = res.var + (res.mean - problem.targets) ** 2        # theory §9, z -> y
            else:
                err = res.mse                                            # Eq. (7)
            per_input = err.mean(axis=1)
            mse = float(per_input.mean() if problem.aggregate == "mean" else per_input.max())
            pl = res.power_layers.mean(axis=0)
            power = float(res.power.mean())
        if not (math.isfinite(mse) and math.isfinite(power) and np.all(np.isfinite(pl))):
            return Evaluation(math.inf, math.inf, np.full(n_xb, np.nan), False,
                              "non-finite MSE or power")
        return Evaluation(mse, power, pl, mse <= problem.max_mse)
    except Exception as e:  # an individual that cannot be evaluated is infeasible
        return Evaluation(math.inf, math.inf, np.full(n_xb, np.nan), False,
                          f"{type(e).__name__}: {' '.join(str(e).split())}")


_WORKSPACE = []


def process_workspace():
    """The :class:`~refmem.moments.workspace.Workspace` of this process's optimizer
    evaluations: made on first use and kept, so the thousands of passes of a run populate
    their large buffers once (theory §15, "How the pass is computed") instead of once per
    pass. :func:`release_process_workspace` returns its memory."""
    if not _WORKSPACE:
        from .moments.workspace import Workspace
        _WORKSPACE.append(Workspace())
    return _WORKSPACE[0]


def release_process_workspace():
    """Drop this process's evaluation workspace (its memory is returned once unreferenced)."""
    _WORKSPACE.clear()


def evaluate_task(task):
    """``evaluate(problem, design, genome)`` for ``task = (problem, design, genome)`` with this
    process's kept workspace: the function :class:`Evaluator` maps over worker processes (or
    the builtin map), picklable for any executor."""
    problem, design, genome = task
    return evaluate(problem, design, genome, work=process_workspace())


# ====================================================================== archive
class Archive:
    """Every evaluation, per design, keyed by the genome's bytes (the run's checkpoint)."""

    FIELDS = ("g_u", "mse", "power", "power_layers", "feasible", "kind", "generation", "error")
    """Row keys; :meth:`arrays` names them as in refmem.io.SCHEMA (``mse`` → ``constraint_value``,
    ``power`` → ``power_batch``, ``power_layers`` → ``power_layers_batch``)."""

    def __init__(self):
        self.rows = {d: [] for d in DESIGNS}
        self.index = {d: {} for d in DESIGNS}

    @staticmethod
    def key(genome) -> bytes:
        return np.ascontiguousarray(genome, dtype=np.float64).tobytes()

    def get(self, design, genome):
        i = self.index[design].get(self.key(genome))
        return None if i is None else self.rows[design][i]

    def add(self, design, genome, ev: Evaluation, kind, generation):
        k = self.key(genome)
        if k in self.index[design]:
            return self.rows[design][self.index[design][k]]
        row = dict(g_u=np.array(genome, dtype=np.float64), mse=ev.mse, power=ev.power,
                   power_layers=np.asarray(ev.power_layers, dtype=np.float64),
                   feasible=bool(ev.feasible), kind=kind, generation=int(generation),
                   error=ev.error)
        self.index[design][k] = len(self.rows[design])
        self.rows[design].append(row)
        return row

    def __len__(self):
        return sum(len(r) for r in self.rows.values())

    def arrays(self, design) -> dict:
        """Column arrays of one design's archive (empty dict when it has no entry)."""
        rows = self.rows[design]
        if not rows:
            return {}
        return {"g_u": np.stack([r["g_u"] for r in rows]),
                "constraint_value": np.array([r["mse"] for r in rows]),
                "power_batch": np.array([r["power"] for r in rows]),
                "power_layers_batch": np.stack([r["power_layers"] for r in rows]),
                "feasible": np.array([r["feasible"] for r in rows]),
                "kind": np.array([r["kind"] for r in rows], dtype="S"),
                "generation": np.array([r["generation"] for r in rows]),
                "error": np.array([r["error"] for r in rows], dtype="S")}

    def save(self, path, fingerprint):
        """Write atomically (refmem's one writer), so an interruption keeps the last one."""
        from .io import write_h5

        def build(f):
            f.attrs["format"] = "refmem-checkpoint"
            f.attrs["fingerprint"] = fingerprint
            for d in DESIGNS:
                for k, v in self.arrays(d).items():
                    f.create_dataset(f"{d}/{k}", data=v)

        write_h5(path, "refmem-checkpoint", build, force=True)

    @classmethod
    def load(cls, path, fingerprint):
        import h5py

        a = cls()
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("fingerprint") != fingerprint:
                    raise DataError(f"checkpoint {path} belongs to a different optimization "
                                    "problem (model, inputs, configuration or bound); delete it")
                for d in DESIGNS:
                    if d not in f:
                        continue
                    g = {k: f[d][_FILE_NAMES.get(k, k) if _FILE_NAMES.get(k, k) in f[d]
                                 else k][()] for k in cls.FIELDS}   # (old files: mse, power)
                    for i in range(g["mse"].shape[0]):
                        ev = Evaluation(float(g["mse"][i]), float(g["power"][i]),
                                        g["power_layers"][i], bool(g["feasible"][i]),
                                        g["error"][i].decode())
                        a.add(d, g["g_u"][i], ev, g["kind"][i].decode(), g["generation"][i])
        except OSError as e:
            raise DataError(f"checkpoint {path} is not readable ({type(e).__name__}); "
                            "delete it to start afresh") from None
        return a


class Evaluator:
    """Evaluates genomes through ``map_fn`` and records them in the :class:`Archive`.

    ``map_fn(fn, items) -> list`` (order preserved) runs the passes: the builtin map by default,
    :meth:`refmem.executor.Executor.map` for worker processes or a Dask cluster.
    """

    def __init__(self, problem, map_fn=None, archive=None, checkpoint=None):
        self.problem = problem
        self.map_fn = _builtin_map if map_fn is None else map_fn
        self.archive = Archive() if archive is None else archive
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.fingerprint = problem.fingerprint()
        self.n_passes = 0
        if self.checkpoint is not None and self.checkpoint.exists():
            self.archive = Archive.load(self.checkpoint, self.fingerprint)
        self.resumed_entries = len(self.archive)

    def evaluate(self, design, genomes, kind, generation=-1):
        """Archive rows for ``genomes`` (a (n, genes) array), computing only the new ones."""
        genomes = np.atleast_2d(np.asarray(genomes, dtype=np.float64))
        todo, seen = [], set()
        for g in genomes:
            k = Archive.key(g)
            if self.archive.get(design, g) is None and k not in seen:
                seen.add(k)
                todo.append(g)
        if todo:
            results = self.map_fn(evaluate_task, [(self.problem, design, g) for g in todo])
            self.n_passes += len(todo)
            for g, ev in zip(todo, results):
                self.archive.add(design, g, ev, kind, generation)
        return [self.archive.get(design, g) for g in genomes]

    def one(self, design, genome, kind, generation=-1):
        return self.evaluate(design, np.asarray(genome, dtype=np.float64)[None, :], kind,
                             generation)[0]

    def save(self):
        if self.checkpoint is not None:
            self.archive.save(self.checkpoint, self.fingerprint)


# ====================================================================== Deb's rule
def deb_order(mse, power, feasible):
    """Indices sorted by Deb's feasibility rules (theory §12 step 3).

    Feasible before infeasible; feasible by lower power; infeasible by lower MSE (closest to
    the constraint); ties by index (stable). Non-finite values sort last.
    """
    mse = np.nan_to_num(np.asarray(mse, dtype=np.float64), nan=np.inf)
    power = np.nan_to_num(np.asarray(power, dtype=np.float64), nan=np.inf)
    feasible = np.asarray(feasible, dtype=bool)
    value = np.where(feasible, power, mse)
    idx = np.arange(value.size)
    return np.lexsort((idx, value, ~feasible))


def _best_row(rows, kinds=None):
    rows = [r for r in rows if kinds is None or r["kind"] in kinds]
    if not rows:
        return None
    o = deb_order([r["mse"] for r in rows], [r["power"] for r in rows],
                  [r["feasible"] for r in rows])
    return rows[int(o[0])]


# ====================================================================== 1-D solver
def _solve_monotone(ev, problem, design, make, c_max, *, kind, rtol=1e-10, max_evals=60):
    """Smallest ``c`` in (0, c_max] with MSE(make(c)) <= ν, MSE decreasing in c.

    Regula falsi with the Illinois modification in ``t = 1/c²`` (the device-noise MSE is
    affine in t; theory §22), bracketed, so it always converges; stops when the bracket in c
    is narrower than ``rtol c`` or after ``max_evals`` passes. Returns the feasible end of the
    bracket (or ``c_max``, infeasible, when even ``c_max`` violates the bound).
    """
    nu = problem.max_mse
    hi_row = ev.one(design, make(c_max), kind)
    for _ in range(40):                    # a failing evaluation at the top: halve the box
        if math.isfinite(hi_row["mse"]):
            break
        c_max *= 0.5
        hi_row = ev.one(design, make(c_max), kind)
    if not hi_row["feasible"]:
        return c_max, hi_row
    c_lo = c_max * 1e-6
    lo_row = ev.one(design, make(c_lo), kind)
    if lo_row["feasible"]:
        return c_lo, lo_row
    # f(t) = MSE - ν ; t_hi < t_lo ; f(t_hi) <= 0 < f(t_lo)
    t_f, f_f, c_f, row_f = 1 / c_max**2, hi_row["mse"] - nu, c_max, hi_row   # feasible end
    t_i, f_i, c_i = 1 / c_lo**2, lo_row["mse"] - nu, c_lo                    # infeasible end
    side = 0
    for _ in range(max_evals):
        if c_f - c_i <= rtol * c_f:
            break
        if math.isfinite(f_i):
            t = t_f - f_f * (t_i - t_f) / (f_i - f_f)
        else:
            t = math.nan
        c = 1 / math.sqrt(t) if (math.isfinite(t) and t > 0) else math.nan
        if not (c_i < c < c_f) or not math.isfinite(c):
            c = 0.5 * (c_i + c_f)                                # bisection safeguard
        row = ev.one(design, make(c), kind)
        f = row["mse"] - nu
        if row["feasible"]:
            t_f, f_f, c_f, row_f = 1 / c**2, f, c, row
            if side == +1:
                f_i *= 0.5                                       # Illinois
            side = +1
        else:
            t_i, f_i, c_i = 1 / c**2, f, c
            if side == -1:
                f_f *= 0.5
            side = -1
    return c_f, row_f


def solve_scalar(ev: "Evaluator", *, rtol=1e-10, max_evals=60):
    """The scalar g_u meeting the bound (theory §22): MSE falls and power rises with g_u.

    Returns the archive row (kind ``bisection``); infeasible at g_max when the bound cannot be
    met by any scalar g_u.
    """
    p = ev.problem
    _, row = _solve_monotone(ev, p, "scalar", lambda c: p.clip(np.array([p.g_min + c])),
                             p.g_max - p.g_min, kind="bisection", rtol=rtol, max_evals=max_evals)
    return row


# ====================================================================== KKT baseline
def kkt_allocate(s, beta, gamma, d, budget, lam_max):
    r"""Closed-form/1-D solution of the linearised Eq. (45) (theory §22).

    Minimise ``Σ_k β_k λ_k + γ_k λ_k² + d_k/λ_k²`` subject to ``Σ_k s_k/λ_k² <= budget`` and
    ``0 < λ_k <= λmax_k``. Per group the Lagrangian is minimised at the root of
    ``β + 2γλ − 2(d + μ s)/λ³ = 0`` (unique: the left side increases in λ), clipped to λmax;
    the multiplier μ >= 0 solves ``Σ s_k/λ_k(μ)² = budget`` (decreasing in μ; brentq on log μ).
    With γ = d = 0 this is ``λ_k = (s_k/β_k)^{1/3} (Σ_i s_i^{1/3} β_i^{2/3} / budget)^{1/2}``.

    Returns ``(lam, feasible)``; infeasible (λ = λmax) when even λmax violates the budget.
    """
    from scipy.optimize import brentq

    s = np.maximum(np.asarray(s, dtype=np.float64), 0.0)
    beta = np.maximum(np.asarray(beta, dtype=np.float64), 0.0)
    gamma = np.maximum(np.asarray(gamma, dtype=np.float64), 0.0)
    d = np.maximum(np.asarray(d, dtype=np.float64), 0.0)
    lam_max = np.asarray(lam_max, dtype=np.float64)
    lam_min = lam_max * 1e-9
    if not budget > 0 or np.sum(s / lam_max**2) > budget:
        return lam_max.copy(), False

    def lam_of(mu):
        out = np.empty_like(s)
        for k in range(s.size):
            c = d[k] + mu * s[k]
            def g(lam, k=k, c=c):
                return beta[k] + 2 * gamma[k] * lam - 2 * c / lam**3
            if c <= 0:
                out[k] = lam_min[k]
            elif g(lam_max[k]) <= 0:
                out[k] = lam_max[k]
            elif g(lam_min[k]) >= 0:
                out[k] = lam_min[k]
            else:
                out[k] = brentq(g, lam_min[k], lam_max[k], xtol=1e-15 * lam_max[k], rtol=1e-14)
        return out

    def excess(logmu):
        lam = lam_of(math.exp(logmu))
        return np.sum(s / lam**2) / budget - 1.0

    if np.sum(s / lam_of(0.0) ** 2) <= budget:
        return lam_of(0.0), True
    lo, hi = -60.0, 0.0
    while excess(hi) > 0:
        hi += 10.0
        if hi > 700:
            return lam_max.copy(), False
    while excess(lo) <= 0:
        lo -= 20.0
        if lo < -700:
            break
    logmu = brentq(excess, lo, hi, xtol=1e-13, rtol=1e-13)
    lam = lam_of(math.exp(logmu))
    return lam, True


def kkt_baseline(ev: "Evaluator", design: str, at, *, iterations=4, rtol=1e-3,
                 factors=(0.8, 1.25), scale_rtol=1e-10):
    r"""Sequential Lagrange/KKT allocation: :func:`kkt_step` repeated from its own solution.

    The first linearisation is at the warm start, which may be far from the optimum (the
    linear model's slopes change along the way: on the Fig. 7 diabetes net one step from the
    scalar solution gave power 62.6, the second 40.5, the third 39.79, the fourth 39.76). Each
    step re-linearises at the previous step's point, which meets the bound exactly. The loop
    stops after ``iterations`` steps, when a step saves less than ``rtol`` of the power, or
    when a step fails. Returns the best row under Deb's rule (kind ``kkt``) and the info of the
    last step with ``history`` (the power of each step).
    """
    best, history, info = None, [], {}
    for _ in range(max(1, int(iterations))):
        row, info = kkt_step(ev, design, at, factors=factors, rtol=scale_rtol)
        history.append(row["power"])
        prev = best
        best = row if best is None else _best_row([best, row])
        if not (row["feasible"] and info.get("linearization_ok", False)):
            break
        if prev is not None and prev["feasible"] and prev["power"] - row["power"] <= rtol * prev["power"]:
            break
        at = row["g_u"]
    info = dict(info, history=np.array(history))
    return best, info


def kkt_step(ev: "Evaluator", design: str, at, *, factors=(0.8, 1.25), rtol=1e-10):
    r"""One Lagrange/KKT allocation of g_u over the genes of ``design`` (theory §22).

    :func:`kkt_linearize` at the genome ``at``, then :func:`kkt_apply` to the bound of
    ``ev.problem``. Returns ``(row, info)``: the archive row of the final point (kind ``kkt``)
    and a dict with the coefficients and the linear model's prediction.
    """
    return kkt_apply(ev, design, kkt_linearize(ev, design, at, factors=factors), rtol=rtol)


def kkt_linearize(ev: "Evaluator", design: str, at, *, factors=(0.8, 1.25)):
    r"""The linear model of the MSE and the power around the genome ``at`` (theory §22).

    Linearisation at ``at`` (λ⁰): for every gene k, two probe passes with λ_k scaled by
    ``factors`` (kind ``kkt-probe``) give the MSE's slope ``s_k`` in ``t_k = 1/λ_k²`` (least
    squares over the three points: to first order the device-noise MSE is affine in the t_k),
    the own layer's power as an exact quadratic ``c + β λ + γ λ²`` in λ_k (the layer's power
    depends on its own λ only through its conductances), and the downstream layers' power as
    affine in t_k (slope ``d_k``, the noise raising their input second moments), and
    ``M₀ = MSE(λ⁰) − Σ s_k t⁰_k``. None of these depends on the bound ν, so one linearisation
    serves every bound of the same network, batch and design (:func:`kkt_apply`).

    Returns a dict with ``s, beta, gamma, d, m0, at, linearization_ok`` and ``base`` (the
    archive row of ``at``).
    """
    p = ev.problem
    at = p.clip(np.asarray(at, dtype=np.float64))
    n = at.size
    w = p.group_wu(design)
    lam0 = (at - p.g_min) / w
    lam_max = (p.g_max - p.g_min) / w
    layer = p.layer_of_gene(design)
    probes, fac = [], np.empty((n, 2))
    for k in range(n):
        f_hi = min(factors[1], lam_max[k] / lam0[k])
        fk = (factors[0], f_hi if f_hi > 1.01 else factors[0] ** 2)
        fac[k] = fk
        for f in fk:
            g = at.copy()
            g[k] = p.g_min + f * lam0[k] * w[k]
            probes.append(p.clip(g))
    base = ev.one(design, at, "kkt-probe")
    rows = ev.evaluate(design, np.array(probes), "kkt-probe")
    s, beta, gamma, d = (np.zeros(n) for _ in range(4))
    ok = np.isfinite(base["mse"])
    for k in range(n):
        r = [base, rows[2 * k], rows[2 * k + 1]]
        if not all(np.isfinite(x["mse"]) for x in r):
            ok = False
            continue
        lam = lam0[k] * np.array([1.0, fac[k, 0], fac[k, 1]])
        t = 1.0 / lam**2
        m = np.array([x["mse"] for x in r])
        tc = t - t.mean()
        s[k] = np.dot(tc, m - m.mean()) / np.dot(tc, tc)
        ptot = np.array([x["power"] for x in r])
        if layer[k] >= 0:
            own = np.array([x["power_layers"][layer[k]] for x in r])
        else:
            own = ptot.copy()
        V = np.stack([np.ones(3), lam, lam**2], axis=1)
        c0, beta[k], gamma[k] = np.linalg.solve(V, own)
        down = ptot - own
        d[k] = np.dot(tc, down - down.mean()) / np.dot(tc, tc)
    t0 = 1.0 / lam0**2
    m0 = base["mse"] - float(np.sum(s * t0))
    return dict(s=s, beta=beta, gamma=gamma, d=d, m0=m0, at=at, linearization_ok=bool(ok),
                base=base)


def kkt_apply(ev: "Evaluator", design: str, lin: dict, *, rtol=1e-10):
    r"""The KKT allocation of a linear model (:func:`kkt_linearize`) for the bound of ``ev``.

    :func:`kkt_allocate` solves the separable convex problem with the budget ``ν − M₀``; the
    solution is then scaled uniformly, ``g_u − g_min ← c (g_u − g_min)``, to meet the exact
    constraint (:func:`_solve_monotone`, relative tolerance ``rtol`` in c). ``lin`` may come
    from another bound's evaluator of the same problem (its coefficients do not depend on ν).

    Returns ``(row, info)``: the archive row of the final point (kind ``kkt``; the row of the
    linearisation point when the linearisation failed) and ``lin`` with the allocation.
    """
    p = ev.problem
    info = {k: v for k, v in lin.items() if k != "base"}
    if not lin["linearization_ok"]:
        info["model_feasible"] = False
        return ev.one(design, lin["at"], "kkt-probe"), info
    s = lin["s"]
    w = p.group_wu(design)
    lam_max = (p.g_max - p.g_min) / w
    lam, feas = kkt_allocate(s, lin["beta"], lin["gamma"], lin["d"], p.max_mse - lin["m0"],
                             lam_max)
    raw = p.clip(p.g_min + lam * w)
    info["model_feasible"] = bool(feas)
    info["model_g_u"] = raw
    info["model_mse"] = lin["m0"] + float(np.sum(s / lam**2))
    # exact constraint: scale (g_u - g_min) uniformly (MSE falls as c grows)
    span = raw - p.g_min
    c_max = float(np.min((p.g_max - p.g_min) / span))
    c, row = _solve_monotone(ev, p, design, lambda c: p.clip(p.g_min + c * span), c_max,
                             kind="kkt", rtol=rtol)
    info["scale"] = c
    return row, info


# ====================================================================== the GA
def run_ga(ev: "Evaluator", design, init, *, population=100, generations=20, seed=0,
           init_std=None, warm_starts=(), progress=None, mutation_std=None):
    r"""The reference GA of theory §12 (Algorithm 2 with the corrections of D26).

    1. init: ``g_u⁽ⁱ⁾ = g_u^init + ξ_i``, ``ξ_i ~ N(0, σ_init² I)`` (σ_init a standard
       deviation; default ``0.1 (g_u^init − g_min)`` per gene), the ``warm_starts`` replacing
       the first individuals; clipped to ``[g_min + ε, g_max]``;
    2. evaluate (one analytic pass each; all recorded in the archive);
    3. rank by Deb's rules (:func:`deb_order`);
    4. tournament of 3 (with replacement) and elitism 2;
    5. BLX blend ``c = p₁ + u ⊙ (p₂ − p₁)``, ``u ~ U(−0.25, 1.25)`` per gene, plus Gaussian
       mutation of std ``m₀ (1 − gen/N_gen)`` on every gene, ``m₀ = 0.1 (g_max − g_min)``
       (theory §12; ``mutation_std`` overrides m₀, a scalar or one value per gene); clipped;
    6. stop after ``N_gen = generations`` evaluated generations.

    Returns the per-generation record ``(G, 3)`` arrays: best of the generation and running best
    (``mse``, ``power``, ``feasible``) and the best genome per generation.
    """
    p = ev.problem
    if population < 3:
        raise ConfigError("population must be at least 3 (tournament of 3, elitism 2)")
    if generations < 1:
        raise ConfigError("generations must be at least 1")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), DESIGNS.index(design)]))
    init = p.clip(np.asarray(init, dtype=np.float64).ravel())
    n = init.size
    std = 0.1 * (init - p.g_min) if init_std is None else np.broadcast_to(
        np.asarray(init_std, dtype=np.float64), init.shape)
    if np.any(~np.isfinite(std)) or np.any(std < 0):
        raise ConfigError("init_std must be finite and >= 0")
    pop = p.clip(init + rng.normal(size=(population, n)) * std)
    warm = [p.clip(np.asarray(w, dtype=np.float64).ravel()) for w in warm_starts]
    for i, w in enumerate(warm[:population]):
        pop[i] = w
    m0 = 0.1 * (p.g_max - p.g_min) if mutation_std is None else np.broadcast_to(
        np.asarray(mutation_std, dtype=np.float64), init.shape)
    if np.any(~np.isfinite(m0)) or np.any(np.asarray(m0) < 0):
        raise ConfigError("mutation_std must be finite and >= 0")
    rec = {k: np.empty(generations) for k in ("gen_constraint_value", "gen_power",
                                              "best_constraint_value", "best_power")}
    rec.update(gen_feasible=np.zeros(generations, bool), best_feasible=np.zeros(generations, bool),
               best_g_u=np.empty((generations, n)))
    running = None
    for gen in range(generations):
        rows = ev.evaluate(design, pop, "ga", gen)
        mse = np.array([r["mse"] for r in rows])
        pw = np.array([r["power"] for r in rows])
        fe = np.array([r["feasible"] for r in rows])
        order = deb_order(mse, pw, fe)
        b = rows[int(order[0])]
        running = b if running is None else _best_row([running, b])
        rec["gen_constraint_value"][gen] = b["mse"]
        rec["gen_power"][gen], rec["gen_feasible"][gen] = b["power"], b["feasible"]
        rec["best_constraint_value"][gen], rec["best_power"][gen] = running["mse"], running["power"]
        rec["best_feasible"][gen] = running["feasible"]
        rec["best_g_u"][gen] = running["g_u"]
        ev.save()
        if progress is not None:
            progress(gen, running)
        if gen == generations - 1:
            break
        rank = np.empty(population, dtype=np.int64)
        rank[order] = np.arange(population)
        new = np.empty_like(pop)
        new[:2] = pop[order[:2]]                                   # elitism 2
        mut = m0 * (1.0 - gen / generations)                       # linear decay
        for i in range(2, population):
            a = rng.integers(0, population, 3)
            c = rng.integers(0, population, 3)
            p1 = pop[a[np.argmin(rank[a])]]                        # tournament of 3
            p2 = pop[c[np.argmin(rank[c])]]
            u = rng.uniform(-0.25, 1.25, n)                         # BLX blend
            new[i] = p1 + u * (p2 - p1) + rng.normal(0.0, mut, n)
        pop = p.clip(new)
    return rec


# ====================================================================== the chain
@dataclass
class OptimizeResult:
    """The returned solution and everything that led to it.

    Attributes
    ----------
    g_u : ndarray
        The best genome of ``design`` under Deb's rule (length 1, n_layers or n_columns).
    power, mse : float
        Mean power and the constraint value at ``g_u``.
    feasible : bool
    design : str
    method : str
        Origin of ``g_u``: ``ga``, ``kkt`` (the baseline), ``bisection`` or ``warm-start``.
    constraint : str
        ``mse_batch`` … (see :data:`CONSTRAINT_NAMES`).
    max_mse : float
    stages : dict
        Per design run: ``ga`` (per-generation record), ``baseline`` (row and coefficients),
        ``best`` (row), ``warm_starts``.
    archive : Archive
    message : str
        Empty when feasible; else why not.
    n_passes : int
        Analytic passes computed in this run (archive hits excluded).
    """

    g_u: np.ndarray
    power: float
    mse: float
    feasible: bool
    design: str
    method: str
    constraint: str
    max_mse: float
    stages: dict
    archive: Archive
    message: str = ""
    n_passes: int = 0


def optimize(problem: Problem, design="layer", *, population=100, generations=20, seed=0,
             init_gu=None, init_std=None, map_fn=None, checkpoint=None, progress=False,
             log=None, mutation_std=None) -> OptimizeResult:
    """Eq. (45) for ``design`` with warm starts scalar → layer → column (theory §22).

    - ``scalar``: the bisection solution (the scalar optimum), then the GA around ``init_gu``
      (default: that solution);
    - ``layer``: the KKT baseline linearised at the scalar solution, then the GA around the
      scalar solution with both warm starts in its initial population;
    - ``column``: the layer stage first; then the KKT baseline linearised at the layer
      solution, and the GA around the layer solution with both warm starts.

    The result is the best archive entry of ``design`` under Deb's rule among the GA, the
    baseline and the warm starts (``method`` records which). ``checkpoint``: path of the
    archive file written after every generation; an existing one is resumed.
    """
    if design not in DESIGNS:
        raise ConfigError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    say = log or (lambda *a: None)
    ev = Evaluator(problem, map_fn=map_fn, checkpoint=checkpoint)
    if ev.resumed_entries:
        say(f"resuming from {checkpoint} ({ev.resumed_entries} archived evaluations)")
    bar = None
    if progress:
        from tqdm import tqdm
        n_stages = max(1, DESIGNS.index(design))          # GA stages: scalar | layer | layer+column
        bar = tqdm(total=n_stages * generations, desc="optimize", unit="gen")

    def tick(gen, best):
        if bar is not None:
            bar.set_postfix(power=f"{best['power']:.4g}", mse=f"{best['mse']:.4g}",
                            feasible=best["feasible"])
            bar.update(1)

    stages = {}
    if init_gu is None:
        scal = solve_scalar(ev)
        start = scal["g_u"]
    else:
        start = problem.clip(np.array([float(init_gu)]))
        scal = ev.one("scalar", start, "init")
    stages["scalar"] = {"warm_starts": {"bisection" if init_gu is None else "init": start},
                        "best": scal}
    ev.save()
    say(f"scalar start g_u={start[0]:.6g}: {problem.constraint_name}={scal['mse']:.6g}, "
        f"power={scal['power']:.6g}, feasible={scal['feasible']}")
    if design == "scalar":
        stages["scalar"]["ga"] = run_ga(ev, "scalar", start, population=population,
                                        generations=generations, seed=seed, init_std=init_std,
                                        warm_starts=[start], progress=tick,
                                        mutation_std=mutation_std)
    prev_design, prev = "scalar", start
    for d in DESIGNS[1:DESIGNS.index(design) + 1]:
        warm = convert_genome(problem, prev, prev_design, d)
        ev.one(d, warm, "warm-start")
        base, info = kkt_baseline(ev, d, warm)
        say(f"{d} KKT baseline: {problem.constraint_name}={base['mse']:.6g}, "
            f"power={base['power']:.6g}, feasible={base['feasible']}")
        rec = run_ga(ev, d, warm, population=population, generations=generations, seed=seed,
                     init_std=init_std, warm_starts=[warm, base["g_u"]], progress=tick,
                     mutation_std=mutation_std)
        best = _best_row(ev.archive.rows[d], RESULT_KINDS)
        stages[d] = {"warm_starts": {"previous": warm, "kkt": base["g_u"]}, "ga": rec,
                     "baseline": {"row": base, "info": info}, "best": best}
        prev_design, prev = d, best["g_u"]
        say(f"{d} best: method={best['kind']}, power={best['power']:.6g}, "
            f"{problem.constraint_name}={best['mse']:.6g}, feasible={best['feasible']}")
    if bar is not None:
        bar.close()
    ev.save()
    release_process_workspace()             # this process's; worker processes end with their pool
    best = _best_row(ev.archive.rows[design], RESULT_KINDS)
    stages.setdefault(design, {})["best"] = best
    msg = ""
    if not best["feasible"]:
        msg = (f"no g_u in (g_min, g_max] = ({problem.g_min:g}, {problem.g_max:g}] meets "
               f"{problem.constraint_name} <= {problem.max_mse:g}: the closest point found has "
               f"{problem.constraint_name} = {best['mse']:.6g} (raise --gmax, or the bound: the "
               "σ-free part of the error, e.g. the network's error against the targets, is a floor)")
        if not math.isfinite(best["mse"]):
            msg = (f"every evaluation of the {design} design failed; the first error: "
                   f"{best['error'] or 'non-finite MSE or power'}")
    return OptimizeResult(g_u=best["g_u"].copy(), power=best["power"], mse=best["mse"],
                          feasible=best["feasible"], design=design, method=best["kind"],
                          constraint=problem.constraint_name, max_mse=problem.max_mse,
                          stages=stages, archive=ev.archive, message=msg, n_passes=ev.n_passes)


# ====================================================================== output
# dataset names of the result file and the checkpoint: refmem.io.SCHEMA describes them
_FILE_NAMES = {"mse": "constraint_value", "power": "power_batch",
               "power_layers": "power_layers_batch"}      # archive row key -> dataset name
_NONFINITE = ("constraint_value", "power_batch", "power_layers_batch", "gen_constraint_value",
              "gen_power", "best_constraint_value", "best_power")


def result_datasets(result: OptimizeResult) -> tuple:
    """``(datasets, groups, attrs)`` of the result file (docs/result_format.md)."""
    ds = {"g_u": result.g_u}
    groups = {}
    for d in DESIGNS:
        arr = result.archive.arrays(d)
        if arr:
            groups[f"archive/{d}"] = arr
        st = result.stages.get(d, {})
        if "ga" in st:
            groups[f"generations/{d}"] = st["ga"]
        if "baseline" in st:
            info = st["baseline"]["info"]
            row = st["baseline"]["row"]
            groups[f"baseline/{d}"] = {
                "g_u": row["g_u"], "constraint_value": np.float64(row["mse"]),
                "power_batch": np.float64(row["power"]), "feasible": np.bool_(row["feasible"]),
                "kkt_sensitivity": info["s"], "kkt_beta": info["beta"],
                "kkt_gamma": info["gamma"], "kkt_downstream": info["d"],
                "kkt_m0": np.float64(info["m0"]), "kkt_linearized_at": info["at"],
                "kkt_power_per_step": info["history"]}
        if st.get("best") is not None:
            b = st["best"]
            groups[f"best/{d}"] = {"g_u": b["g_u"], "constraint_value": np.float64(b["mse"]),
                                   "power_batch": np.float64(b["power"]),
                                   "feasible": np.bool_(b["feasible"])}
    # root attribute ``mse`` as issue 12 names it; ``constraint_value`` says which MSE it is
    attrs = {"power": float(result.power), "mse": float(result.mse),
             "constraint_value": float(result.mse),
             "feasible": bool(result.feasible), "design": result.design, "method": result.method,
             "constraint": result.constraint, "max_mse": float(result.max_mse),
             "message": result.message}
    return ds, groups, attrs


def write_optimization(path, result: OptimizeResult, attrs: dict, *, inputs=(),
                       force=False) -> None:
    """Write the result file atomically (:func:`refmem.io.write_result`, kind ``optimize``)."""
    from .io import write_result

    ds, groups, a = result_datasets(result)
    a.update(attrs)
    allow = set(_NONFINITE) | {f"{g}/{n}" for g, v in groups.items() for n in v
                               if n in _NONFINITE}
    write_result(path, "optimize", ds, attrs=a, groups=groups, inputs=inputs, force=force,
                 allow_nonfinite=allow)


def plot_archive(result: OptimizeResult, path, *, force=False) -> None:
    """PNG: power vs the constraint value over the archive, the bound drawn, the solution marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = {"scalar": "tab:blue", "layer": "tab:orange", "column": "tab:green"}
    for d in DESIGNS:
        a = result.archive.arrays(d)
        if not a:
            continue
        cv, pw = a["constraint_value"], a["power_batch"]
        ok = np.isfinite(cv) & np.isfinite(pw)
        ax.scatter(cv[ok], pw[ok], s=6, alpha=0.4, color=colors[d],
                   label=f"{d} archive ({int(ok.sum())})")
    ax.axvline(result.max_mse, color="k", ls="--", lw=1, label=f"bound ν = {result.max_mse:g}")
    ax.scatter([result.mse], [result.power], marker="*", s=160, color="red", zorder=5,
               label=f"solution ({result.design}, {result.method})")
    ax.set_xscale("log")
    ax.set_xlabel(result.constraint)
    ax.set_ylabel("mean power per inference [G V²]")
    ax.legend(fontsize=7)
    ax.set_title("refmem optimize: archive of evaluations (Eq. (45))", fontsize=9)
    fig.tight_layout()
    from .io import write_png
    try:
        write_png(path, "optimize-figure", fig, force=force)
    finally:
        plt.close(fig)

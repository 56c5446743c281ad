"""The result schema: one naming table, :func:`write_result` and :func:`read_result`.

Every result file refmem writes (``moments``, ``mc``, ``budget``, ``optimize``, ``validate``,
``demo`` and the reproduction scripts) is an HDF5 file with root attribute
``format = "refmem-result"`` and ``kind`` (the command or script), laid out as in
``docs/result_format.md``:

- a single run is a sweep of length one: every swept quantity has a leading axis of length
  ``P``, the swept parameters are ``axes/sigma``, ``axes/alpha``, ``axes/g_u`` (length ``P``);
- the names of :data:`SCHEMA` mean the same thing in every file and in the Python result
  objects (:mod:`refmem.results`); ``X_se`` is the standard error of the Monte-Carlo estimate
  ``X``; a name inside a group (``layers/03/mean``) means what its last component means;
- every dataset carries ``units`` and ``description`` attributes, and ``equation`` where one
  applies (theory-guide section / equation number);
- the root records provenance: ``refmem_version``, ``numpy_version``, ``h5py_version``,
  ``created_utc``, the inputs (path as given and SHA-256: ``model``, ``model_sha256``,
  ``input``, ``input_sha256``, … and the JSON list ``inputs``), and whatever the caller adds
  (``config``: the configuration actually used).

Units: ``y`` is the unit of the network output, ``g`` the conductance unit (the unit of
``g_u``, ``g_min``, ``σ``), ``x`` the unit of the network input (a voltage on the crossbar);
power is in ``g·x²``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._version import __version__
from ..errors import DataError
from .atomic import file_sha256, normalize_inputs, write_h5
from .codec import decode_attrs, write_attrs

__all__ = ["SCHEMA", "FORMAT", "FORMAT_VERSION", "dataset_meta", "write_result", "read_result",
           "ResultFile", "provenance_attrs"]

FORMAT = "refmem-result"
FORMAT_VERSION = 2

_Y, _Y2, _PW = "y", "y^2", "g*x^2"

# name → (units, description, equation reference or "")
SCHEMA = {
    # axes of a sweep
    "axes/sigma": ("g", "device noise standard deviation σ of each sweep point", "theory §2"),
    "axes/alpha": ("1", "multiplicative weight noise α of each sweep point", "theory §13"),
    "axes/g_u": ("g", "conductance unit g_u of each sweep point", "theory §3, Eqs. (2)-(6)"),
    # output moments
    "mean": (_Y, "expected network output E[y] over the noise, per sweep point, input, output",
             "theory §4-§8, §15"),
    "var": (_Y2, "variance of the network output over the noise", "theory §4-§8, §15"),
    "cov": (_Y2, "covariance of the network outputs over the noise", "theory §4-§8, §15"),
    "reference": (_Y, "output of the noiseless, unquantized network (the MSE reference)",
                  "theory §1, §5"),
    "bias": (_Y, "mean − reference", "theory §9"),
    # MSE against the noiseless network
    "mse": (_Y2, "E[(y − reference)²] per output = var + bias²", "theory §9, Eq. (7)"),
    "mse_per_input": (_Y2, "MSE averaged over the outputs of each input", "theory §9, Eq. (7)"),
    "mse_max_per_input": (_Y2, "MSE maximised over the outputs of each input",
                          "theory §9, Eq. (7)"),
    "mse_batch": (_Y2, "mean over inputs of mse_per_input", "theory §9, Eq. (7)"),
    "mse_batch_max": (_Y2, "max over inputs of mse_per_input", "theory §9, Eq. (7)"),
    "mse_rel": ("1", "mse_per_input / mean over outputs of reference² (noise power over signal "
                "power; > 1: the noise dominates)", "theory §9"),
    "mse_rel_batch": ("1", "mse_batch / mean over inputs and outputs of reference²", "theory §9"),
    # MSE against ground-truth targets
    "mse_targets": (_Y2, "E[(y − target)²] per output against the ground-truth targets",
                    "theory §9"),
    "mse_targets_per_input": (_Y2, "mse_targets averaged over the outputs of each input",
                              "theory §9"),
    "mse_targets_max_per_input": (_Y2, "mse_targets maximised over the outputs of each input",
                                  "theory §9"),
    "mse_targets_batch": (_Y2, "mean over inputs of mse_targets_per_input", "theory §9"),
    "mse_targets_batch_max": (_Y2, "max over inputs of mse_targets_per_input", "theory §9"),
    # power
    "power": (_PW, "expected read power per inference, all crossbar layers", "theory §11"),
    "power_layers": (_PW, "expected read power per inference of each crossbar layer",
                     "theory §11"),
    "power_mem": (_PW, "memristor-array part of power_layers (bias rows included)",
                  "theory §11, Props 5, 7"),
    "power_tia_pos": (_PW, "TIA part of power_layers, positive array", "theory §11, Props 6, 8"),
    "power_tia_neg": (_PW, "TIA part of power_layers, negative array", "theory §11, Props 6, 8"),
    "power_batch": (_PW, "mean over inputs of power", "theory §11"),
    # classification
    "accuracy": ("1", "probability that the arg-max output equals the label, per input",
                 "theory §21"),
    "accuracy_mean": ("1", "accuracy averaged over the inputs", "theory §21"),
    "accuracy_error_bound": ("1", "numerical error bound of the predicted accuracy",
                             "theory §21"),
    "reference_accuracy": ("1", "accuracy of the noiseless network on the same inputs", ""),
    # per-layer budget (refmem budget)
    "crossbar_index": ("1", "crossbar layer index 0..n−1 (dense/conv after batchnorm fusion)", ""),
    "mse_alone": (_Y2, "mse_batch with noise in this crossbar layer only", "theory §9"),
    "mse_all_but": (_Y2, "mse_batch with noise in every crossbar layer but this one",
                    "theory §9"),
    "mse_all": (_Y2, "mse_batch with noise in every crossbar layer", "theory §9"),
    "mse_alone_rel": ("1", "mse_alone / mse_all", "theory §9"),
    "power_layer": (_PW, "mean over inputs of the expected read power of this crossbar layer",
                    "theory §11"),
    # optimization (refmem optimize, theory §22): one row per evaluated genome
    "g_u": ("g", "g_u of every gene of an optimization genome (scalar design: 1 gene, layer: "
            "one per crossbar layer, column: one per output column of every crossbar layer in "
            "layer order)", "theory §3, §12"),
    "constraint_value": (_Y2, "value of the constrained MSE aggregate of Eq. (45) for that "
                         "g_u: the schema name in the root attribute 'constraint' "
                         "(mse_batch, mse_batch_max, mse_targets_batch or "
                         "mse_targets_batch_max), bounded by the root attribute 'max_mse'",
                         "theory §9, §22, Eq. (45)"),
    "power_layers_batch": (_PW, "mean over inputs of power_layers", "theory §11"),
    "feasible": ("1", "the constraint of Eq. (45) holds: constraint_value <= max_mse",
                 "Eq. (45)"),
    "kind": ("1", "how the genome was produced (ga, kkt, kkt-probe, bisection, warm-start, …)",
             "theory §22"),
    "generation": ("1", "GA generation of the evaluation (-1 outside the GA)", "theory §12"),
    "error": ("1", "error text of a failed evaluation (empty when it succeeded)", ""),
    "gen_constraint_value": (_Y2, "constraint_value of each generation's best individual "
                             "(Deb's rule)", "theory §12"),
    "gen_power": (_PW, "power_batch of each generation's best individual (Deb's rule)",
                  "theory §12"),
    "gen_feasible": ("1", "feasibility of each generation's best individual", "theory §12"),
    "best_constraint_value": (_Y2, "constraint_value of the best individual so far, per "
                              "generation", "theory §12"),
    "best_power": (_PW, "power_batch of the best individual so far, per generation",
                   "theory §12"),
    "best_feasible": ("1", "feasibility of the best individual so far, per generation",
                      "theory §12"),
    "best_g_u": ("g", "genome of the best individual so far, per generation", "theory §12"),
    "kkt_sensitivity": (_Y2, "slope s_k of constraint_value in 1/λ_k² of every gene at the "
                        "linearisation point", "theory §22.2"),
    "kkt_beta": (_PW, "own-layer power coefficient β_k of every gene (power c + β λ + γ λ²)",
                 "theory §22.2"),
    "kkt_gamma": (_PW, "own-layer power coefficient γ_k of every gene (power c + β λ + γ λ²)",
                  "theory §22.2"),
    "kkt_downstream": (_PW, "slope d_k of the downstream layers' power in 1/λ_k²",
                       "theory §22.2"),
    "kkt_m0": (_Y2, "noise-free part M₀ of constraint_value in the linear model (λ → ∞)",
               "theory §22.2"),
    "kkt_linearized_at": ("g", "g_u of the last linearisation point", "theory §22.2"),
    "kkt_power_per_step": (_PW, "power_batch of the KKT solution after each re-linearisation",
                           "theory §22.2"),
}


def dataset_meta(name: str) -> dict | None:
    """``{"units", "description", "equation"}`` of a schema name (``X_se`` and names inside
    groups included), or ``None`` for a name the table does not know."""
    key = name
    if key not in SCHEMA:
        key = name.rsplit("/", 1)[-1]
    se = False
    if key not in SCHEMA and key.endswith("_se"):
        key, se = key[:-3], True
    if key not in SCHEMA:
        return None
    units, desc, eq = SCHEMA[key]
    if se:
        desc = f"Monte-Carlo standard error of {key} ({desc})"
        eq = "theory §19.2, §23"
    return {"units": units, "description": desc, "equation": eq}


def provenance_attrs(inputs=()) -> dict:
    """The root attributes every result file carries (versions, time, inputs with SHA-256)."""
    import h5py

    attrs = {
        "refmem_version": __version__,
        "numpy_version": np.__version__,
        "h5py_version": h5py.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    listed = []
    for inp in normalize_inputs(inputs):
        sha = file_sha256(inp.given)
        listed.append({"role": inp.role, "path": inp.given, "sha256": sha})
        attrs[inp.role] = inp.given
        if sha is not None:
            attrs[f"{inp.role}_sha256"] = sha
    attrs["inputs"] = listed
    return attrs


def _split(value, name):
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        arr, meta = value
        base = dataset_meta(name) or {}
        meta = {**base, **meta}
    else:
        arr, meta = value, dataset_meta(name)
    if meta is None or "units" not in meta or "description" not in meta:
        raise TypeError(f"dataset {name!r} is not in the result schema: pass "
                        "(array, {'units': ..., 'description': ...})")
    return np.asarray(arr), meta


def _check_finite(name, arr, allow):
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)) and name not in allow:
        raise DataError(f"result {name!r} contains inf or NaN (the computation overflowed: "
                        "inputs, weights or g_u too large?); no file written")


def _prepare(datasets: dict, prefix: str, allow) -> list:
    """``(name, array, meta)`` of every dataset of one group that is not ``None``: the schema
    (or the caller) describes it under its full path ``prefix + name``, and it is finite unless
    that path is in ``allow``."""
    items = []
    for name, value in datasets.items():
        if value is None:
            continue
        arr, meta = _split(value, prefix + name)
        _check_finite(prefix + name, arr, allow)
        items.append((name, arr, meta))
    return items


def _fill(g, attrs, items):
    """Write ``attrs`` and the prepared ``items`` into the HDF5 group (or file) ``g``."""
    write_attrs(g, attrs)
    for name, arr, meta in items:
        _dataset(g, name, arr, meta)


def write_result(path, kind: str, datasets: dict, *, attrs=None, groups=None, inputs=(),
                 force=False, allow_nonfinite=()) -> Path:
    """Write a result file atomically (through :func:`refmem.io.atomic.atomic_write`).

    Parameters
    ----------
    path : output path (the preflight :func:`refmem.io.check_output` should have run first).
    kind : the producing command or script (``"moments"``, ``"mc"``, ``"budget"``, …); an
        existing file at ``path`` is replaced only when it is a result of the same kind.
    datasets : name → array, or name → ``(array, {"units", "description", "equation"})``;
        ``None`` values are skipped; names may contain ``/`` (``axes/sigma``).
    attrs : extra root attributes (dicts, lists and objects with ``to_json`` become JSON text).
    groups : group path → datasets mapping, or → ``(datasets, group_attrs)``.
    inputs : mapping role → path (``{"model": ..., "input": ...}``) or sequence of paths: the
        output may not be any of them; their paths and SHA-256 are recorded.
    force : replace an existing file that is not a refmem result of this kind.
    allow_nonfinite : dataset names that may hold inf/NaN; any other non-finite float is an
        error (an overflow), and no file is written.
    """
    allow = set(allow_nonfinite)
    items = _prepare(datasets, "", allow)
    gitems = []
    for gname, gval in (groups or {}).items():
        gdsets, gattrs = gval if isinstance(gval, tuple) else (gval, None)
        gitems.append((gname, _prepare(gdsets, f"{gname}/", allow), gattrs))
    root = provenance_attrs(inputs)
    root.update({k: v for k, v in (attrs or {}).items() if k not in ("format", "kind")})
    root["format"] = FORMAT
    root["format_version"] = np.int64(FORMAT_VERSION)
    root["kind"] = str(kind)

    def build(f):
        _fill(f, {k: root[k] for k in sorted(root)}, items)
        for gname, sub, gattrs in gitems:
            _fill(f.require_group(gname), gattrs, sub)

    return write_h5(path, kind, build, inputs=inputs, force=force)


def _dataset(f, name, arr, meta):
    ds = f.create_dataset(name, data=arr)
    ds.attrs["units"] = str(meta.get("units", ""))
    ds.attrs["description"] = str(meta.get("description", ""))
    if meta.get("equation"):
        ds.attrs["equation"] = str(meta["equation"])


@dataclass
class ResultFile:
    """A result file read back: ``kind``, decoded root ``attrs``, ``data`` (path → array, e.g.
    ``"mse_batch"``, ``"axes/sigma"``, ``"layers/00/mean"``), per-dataset ``meta`` (units,
    description, equation) and ``group_attrs`` (group path → decoded attributes)."""

    path: str
    kind: str
    attrs: dict
    data: dict
    meta: dict = field(default_factory=dict)
    group_attrs: dict = field(default_factory=dict)

    def __getitem__(self, name):
        return self.data[name]

    def __contains__(self, name):
        return name in self.data


def read_result(path) -> ResultFile:
    """Read a refmem result file (any kind) into a :class:`ResultFile`."""
    import h5py

    from .codec import decode_attr

    p = Path(path)
    if not p.is_file():
        raise DataError(f"result file not found: {p}")
    try:
        f = h5py.File(p, "r")
    except OSError:
        raise DataError(f"{p} is not a readable HDF5 file") from None
    with f:
        fmt = decode_attr(f.attrs.get("format", None))
        if fmt != FORMAT:
            raise DataError(f"{p} is not a refmem result file (format {fmt!r})")
        data, meta, gattrs = {}, {}, {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                data[name] = obj[()]
                meta[name] = decode_attrs(obj.attrs)
            elif isinstance(obj, h5py.Group) and len(obj.attrs):
                gattrs[name] = decode_attrs(obj.attrs)
        try:
            f.visititems(visit)
        except (KeyError, OSError, RuntimeError) as e:
            raise DataError(f"{p}: unreadable result file ({type(e).__name__})") from None
        attrs = decode_attrs(f.attrs)
    return ResultFile(str(p), str(attrs.get("kind")), attrs, data, meta, gattrs)

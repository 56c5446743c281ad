"""Golden suite, part 2: writing and reading the golden file and candidate files (HDF5 through
the one writer of :mod:`refmem.io`)."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import CrossbarConfig
from ..errors import ConfigError, DataError, RefmemError
from ..network import Network
from .cases import (ENTROPY, FILENAME, FORMAT, QUANTITIES, SPEC, TIERS, VERSION, _dataset_tags,
                    _feature_tags, _layer_kinds, _scales, build_cases, recompute_case)

# ---------------------------------------------------------------------- model as a group
def _model_to_group(network, group):
    """Write ``network`` into ``group`` as a complete model file (docs/model_format.md)."""
    from ..modelfile import write_model_group

    write_model_group(network, group)


def _model_from_group(group, where):
    """Read a model group with the model-file reader (same validation)."""
    from ..modelfile import read_model_group

    return read_model_group(group, where)


# ---------------------------------------------------------------------- writing the suite
def _dsort(ids):
    """Discrepancy ids in spec order (D5b after D5, D13 after D9)."""
    def key(d):
        num = "".join(ch for ch in d if ch.isdigit())
        return (int(num) if num else 0, d)
    return sorted(set(ids), key=key)


def _json(v):
    return json.dumps(v, sort_keys=True, ensure_ascii=False)


def write_suite(out_dir, *, only=None) -> Path:
    """Generate the golden suite into ``out_dir`` (created if its parent exists).

    Writes ``out_dir/refmem-golden-v1.h5`` atomically (:func:`refmem.io.atomic_h5`) and
    ``out_dir/SUMMARY.md`` (the printed case list, for reviewing a regeneration as a diff).
    Returns the path of the HDF5 file.
    """
    from .._version import __version__
    from ..io import atomic_h5, atomic_write
    from ..mapping import map_network

    from ..io import check_output

    if str(out_dir) == "":
        raise DataError("the golden output directory name is empty")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"golden output {out_dir} exists and is not a directory")
    created = False
    if not out_dir.exists():
        if not out_dir.parent.is_dir():
            raise DataError(f"output directory does not exist: {out_dir.parent}")
        try:
            out_dir.mkdir()
        except OSError as e:
            raise DataError(f"cannot create the golden output directory {out_dir}: "
                            f"{e.strerror or type(e).__name__}") from None
        created = True
    path = out_dir / FILENAME
    try:
        check_output(path, FORMAT)              # before any computation (refmem.io)
    except BaseException:
        if created:
            out_dir.rmdir()
        raise
    cases = build_cases(only)
    summary = []
    with atomic_h5(path, FORMAT) as f:
        attrs = {"refmem_version": __version__, "numpy_version": np.__version__,
                 "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                     timespec="seconds")}
        attrs.update(format=FORMAT, version=np.int64(VERSION), spec=SPEC,
                     case_ids=_json([c.id for c in cases]),
                     quantities=_json(list(QUANTITIES) + ["layers/NN/mean", "layers/NN/var"]),
                     tiers=_json(TIERS), entropy=np.int64(ENTROPY))
        for k in sorted(attrs):
            f.attrs[k] = attrs[k]
        for case in cases:
            summary.append(_write_case(f, case, map_network))
    text = _summary_text(cases, summary).encode()
    # replaced when the golden file next to it is a golden suite (just written above)
    atomic_write(out_dir / "SUMMARY.md", FORMAT, lambda fh: fh.write(text), marker=path)
    return path


def _write_case(f, case, map_network):
    mapped = map_network(case.network, case.config)
    expected = recompute_case(case.network, case.x, case.config, case.input_cov)
    kinds = _layer_kinds(mapped)
    feats = _feature_tags(case)
    g = f.create_group(case.id)
    secs_all, eqs_all = _dataset_tags("mean", kinds, mapped, feats)
    psecs, peqs = _dataset_tags("power", kinds, mapped, feats)
    for s in psecs:
        if s not in secs_all:
            secs_all.append(s)
    case_attrs = {
        "description": case.description, "config": case.config.to_json(),
        "seed": _json(case.seed), "detects": _json(_dsort(case.detects)),
        "spec_sections": _json(secs_all), "equations": eqs_all + "; " + peqs,
        "fused_layers": _json([{"position": i, "type": l.type, "kind": k} for i, (l, k) in
                               enumerate(zip(mapped.fused.layers, kinds))]),
        "input_random": bool(case.input_cov is not None), "batch": np.int64(case.x.shape[0]),
    }
    for k in sorted(case_attrs):
        g.attrs[k] = case_attrs[k]
    _model_to_group(case.network, g.create_group("model"))
    g.create_dataset("input/mean", data=np.asarray(case.x, dtype=np.float64))
    if case.input_cov is not None:
        g.create_dataset("input/cov", data=np.asarray(case.input_cov, dtype=np.float64))
    for ml in mapped.layers:
        m = g.create_group(f"mapping/{ml.index:02d}")
        m.attrs["scheme"] = ml.scheme
        m.attrs["position"] = np.int64(ml.position)
        m.attrs["noisy"] = bool(ml.noisy)
        m.attrs["bias_row"] = bool(ml.has_bias_row)
        if ml.delta is not None:
            m.attrs["delta"] = float(ml.delta)
            m.attrs["bits"] = np.int64(ml.bits)
        for k in ("lam", "g_u", "w_u"):
            m.create_dataset(k, data=np.asarray(getattr(ml, k), dtype=np.float64))
    scales = _scales(expected)
    e = g.create_group("expected")
    rows = []
    for name in sorted(expected):
        ds = e.create_dataset(name, data=expected[name])
        secs, eqs = _dataset_tags(name, kinds, mapped, feats)
        ds.attrs["spec_sections"] = _json(secs)
        ds.attrs["equations"] = eqs
        ds.attrs["scale"] = scales[name]
        for tier, t in TIERS.items():
            ds.attrs[f"rtol_{tier}"] = t["rtol"]
            ds.attrs[f"atol_{tier}"] = t["atol_factor"] * scales[name]
        rows.append((name, expected[name].shape, scales[name]))
    return mapped, kinds, rows


def _summary_text(cases, summary):
    lines = [f"# refmem golden suite v{VERSION} ({FILENAME})", "",
             "Generated by `refmem golden` / `scripts/make_golden.py`; review a regeneration as a "
             "diff of this file. Format: docs/golden.md.", "",
             "| case | layers (fused) | config | random input | detects |", "|---|---|---|---|---|"]
    for case, (mapped, kinds, rows) in zip(cases, summary):
        cfg = case.config.to_dict()
        keep = {k: v for k, v in cfg.items()
                if v != CrossbarConfig().to_dict()[k] or k in ("sigma", "g_min", "design", "mapping")}
        lines.append(f"| `{case.id}` | {'-'.join(kinds)} | `{_json(keep)}` | "
                     f"{'yes' if case.input_cov is not None else 'no'} | "
                     f"{', '.join(_dsort(case.detects)) or '—'} |")
    lines += ["", "## Case descriptions", ""]
    for case in cases:
        lines.append(f"- `{case.id}`: {case.description}.")
    lines += ["", "## Dataset scales (atol = atol_factor × scale)", ""]
    for case, (_, _, rows) in zip(cases, summary):
        lines.append(f"- `{case.id}`: " + ", ".join(f"{n} {tuple(s)} {sc:.6g}" for n, s, sc in rows))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- reading the suite
@dataclass
class GoldenCase:
    """One case read back from a golden file."""

    id: str
    attrs: dict
    network: Network
    config: CrossbarConfig
    x: np.ndarray
    input_cov: np.ndarray | None
    expected: dict
    tolerances: dict

    @property
    def description(self):
        return self.attrs.get("description", "")


@dataclass
class GoldenSuite:
    path: Path
    attrs: dict
    cases: dict

    @property
    def case_ids(self):
        return list(self.cases)


def _attr(v):
    """The one attribute codec (:func:`refmem.io.decode_attr`), JSON text kept as text."""
    from ..io.codec import decode_attr
    if isinstance(v, np.ndarray):
        return v                      # arrays stay arrays (as golden v1 readers expect)
    return decode_attr(v, json_text=False)


def _open_h5(path, what):
    import h5py

    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} file not found: {p}")
    if p.is_dir():
        raise DataError(f"{what} {p} is a directory, expected an HDF5 file")
    try:
        return h5py.File(p, "r")
    except OSError:
        raise DataError(f"{what} {p} is not a readable HDF5 file") from None


def _resolve_golden(path):
    p = Path(path)
    if p.is_dir():
        cand = sorted(p.glob("refmem-golden-v*.h5"))
        if not cand:
            raise DataError(f"no golden file (refmem-golden-v*.h5) in directory {p}")
        return p / FILENAME if (p / FILENAME).exists() else cand[-1]
    return p


def _datasets(group, prefix=""):
    """Every dataset below ``group`` as ``relative/name`` → h5py dataset."""
    out = {}

    def visit(name, obj):
        if hasattr(obj, "dtype"):
            out[prefix + name] = obj
    group.visititems(visit)
    return out


_CACHE = {}


def read_suite(path, *, only=None) -> GoldenSuite:
    """Read and validate a golden file (or a directory holding one).

    Raises :class:`~refmem.errors.DataError` (one line) for a missing or malformed file, a
    wrong ``format``, an unsupported ``version`` or an incomplete case. The last file read is
    cached (keyed by path, size and modification time); treat the result as read-only.
    """
    path = _resolve_golden(path)
    key = None
    if path.is_file():
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns,
               None if only is None else tuple(only))
        if key in _CACHE:
            return _CACHE[key]
    try:
        suite = _read_suite(path, only)
    except RefmemError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
        # damage inside the HDF5 file (h5py: bad B-tree, truncated heap, dangling link, …)
        raise DataError(f"golden file {path} is damaged or unreadable ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:120]})") from None
    if key is not None:
        _CACHE.clear()
        _CACHE[key] = suite
    return suite


def _read_suite(path, only):
    with _open_h5(path, "golden") as f:
        fmt = _attr(f.attrs.get("format", ""))
        if fmt != FORMAT:
            raise DataError(f"{path}: root attribute format is {fmt!r}, expected {FORMAT!r}")
        version = _attr(f.attrs.get("version", None))
        if not isinstance(version, int) or not 1 <= version <= VERSION:
            raise DataError(f"{path}: unsupported golden version {version!r} (this refmem reads "
                            f"1..{VERSION})")
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        try:
            ids = json.loads(attrs.get("case_ids", "null"))
        except json.JSONDecodeError:
            ids = None
        if not isinstance(ids, list):
            raise DataError(f"{path}: root attribute case_ids is missing or not a JSON list")
        if only is not None:
            unknown = [c for c in only if c not in ids]
            if unknown:
                raise ConfigError(f"unknown case(s) {', '.join(unknown)}; the golden file has: "
                                  f"{', '.join(ids)}")
            ids = [c for c in ids if c in only]
        cases = {cid: _read_case(f, cid, path) for cid in ids}
    return GoldenSuite(path=path, attrs=attrs, cases=cases)


def _read_case(f, cid, path):
    where = f"{path}:/{cid}"
    if cid not in f:
        raise DataError(f"{where}: case group missing")
    g = f[cid]
    for need in ("model", "input/mean", "expected"):
        if need not in g:
            raise DataError(f"{where}: missing {need!r}")
    attrs = {k: _attr(v) for k, v in g.attrs.items()}
    if "config" not in attrs:
        raise DataError(f"{where}: missing attribute 'config'")
    config = CrossbarConfig.from_json(attrs["config"])
    network = _model_from_group(g["model"], f"{where}/model")
    x = np.asarray(g["input/mean"][()], dtype=np.float64)
    cov = np.asarray(g["input/cov"][()], dtype=np.float64) if "input/cov" in g else None
    expected, tol = {}, {}
    for name, ds in _datasets(g["expected"]).items():
        expected[name] = np.asarray(ds[()], dtype=np.float64)
        a = ds.attrs
        tol[name] = {f"{k}_{t}": float(a[f"{k}_{t}"]) for t in TIERS for k in ("rtol", "atol")
                     if f"{k}_{t}" in a}
        tol[name]["spec_sections"] = _attr(a.get("spec_sections", "[]"))
        tol[name]["equations"] = _attr(a.get("equations", ""))
    if not expected:
        raise DataError(f"{where}: no expected datasets")
    return GoldenCase(id=cid, attrs=attrs, network=network, config=config, x=x, input_cov=cov,
                      expected=expected, tolerances=tol)


# ---------------------------------------------------------------------- candidate files
def write_candidate(path, results: dict, attrs: dict | None = None) -> None:
    """Write a candidate file: ``results`` maps case id → {dataset name → array}.

    Names may contain ``/`` (``layers/03/mean``); groups are created as needed. Written
    atomically. Float32 or float64 arrays are both accepted by :func:`check`.
    """
    from ..io import atomic_h5, write_attrs

    with atomic_h5(path, "golden-candidate") as f:
        write_attrs(f, {"format": "refmem-result", "kind": "golden-candidate", **(attrs or {})})
        for cid in results:
            for name, arr in results[cid].items():
                f.create_dataset(f"{cid}/{name}", data=np.asarray(arr))

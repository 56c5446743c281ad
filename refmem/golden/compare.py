"""Golden suite, part 3: the comparison of a candidate (or of refmem itself) with the suite
(``refmem check``)."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .cases import TIERS, recompute_case
from .suite import GoldenSuite, _datasets, _open_h5, read_suite

# ---------------------------------------------------------------------- comparison
@dataclass
class Row:
    case: str
    quantity: str
    status: str
    max_abs: float = math.nan
    max_rel: float = math.nan
    ratio: float = math.nan
    note: str = ""

    @property
    def ok(self):
        return self.status == "PASS"


@dataclass
class CheckReport:
    """Per-case, per-quantity results of :func:`check`."""

    golden: Path
    tier: str
    candidate: str
    rows: list

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    @property
    def failures(self) -> list:
        return [r for r in self.rows if not r.ok]

    def ratio(self, case=None) -> float:
        """Largest error/tolerance over the rows (of one case); ∞ for a missing quantity."""
        vals = [r.ratio if r.status in ("PASS", "FAIL") else math.inf
                for r in self.rows if case is None or r.case == case]
        return max(vals) if vals else 0.0

    def format(self, failures_only=False) -> str:
        wc = max([4] + [len(r.case) for r in self.rows])
        wq = max([8] + [len(r.quantity) for r in self.rows])
        head = (f"refmem check: golden {self.golden} (tier {self.tier}: rtol "
                f"{TIERS[self.tier]['rtol']:g}, atol {TIERS[self.tier]['atol_factor']:g} x scale)"
                f" vs {self.candidate}")
        lines = [head, f"{'case':<{wc}}  {'quantity':<{wq}}  {'max abs err':>11}  "
                       f"{'max rel err':>11}  {'err/tol':>9}  status"]

        def num(v):
            return "-" if math.isnan(v) else f"{v:11.3e}"
        for r in self.rows:
            if failures_only and r.ok:
                continue
            ratio = "-" if math.isnan(r.ratio) else f"{r.ratio:9.2e}"
            lines.append(f"{r.case:<{wc}}  {r.quantity:<{wq}}  {num(r.max_abs)}  "
                         f"{num(r.max_rel)}  {ratio:>9}  {r.status}"
                         + (f"  ({r.note})" if r.note else ""))
        n_cases = len({r.case for r in self.rows})
        bad_cases = sorted({r.case for r in self.failures})
        lines.append(f"{len(self.rows) - len(self.failures)}/{len(self.rows)} quantities passed in "
                     f"{n_cases - len(bad_cases)}/{n_cases} cases"
                     + (f"; FAILED: {', '.join(bad_cases)}" if bad_cases else "; all PASS"))
        return "\n".join(lines)


def compare(expected, candidate, rtol, atol):
    """``(max_abs, max_rel, ratio)`` of a candidate array against the expected one.

    ``ratio = max |c − e| / (atol + rtol |e|)`` (pass iff ≤ 1); ``max_rel`` measures
    near-zero entries against ``atol``: ``|c − e| / max(|e|, atol)``.
    """
    e = np.asarray(expected, dtype=np.float64)
    c = np.asarray(candidate, dtype=np.float64)
    if e.size == 0:
        return 0.0, 0.0, 0.0
    err = np.abs(c - e)
    tol = atol + rtol * np.abs(e)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(tol > 0, err / np.where(tol > 0, tol, 1.0), np.where(err > 0, np.inf, 0.0))
        den = np.maximum(np.abs(e), atol)
        rel = np.where(den > 0, err / np.where(den > 0, den, 1.0), np.where(err > 0, np.inf, 0.0))
    return float(err.max()), float(rel.max()), float(ratio.max())


def _parse_only(only):
    """``"case1,case2:mean"`` → {case: None (all) or set of quantities}."""
    if only is None:
        return None
    items = [t.strip() for t in (only.split(",") if isinstance(only, str) else only) if t.strip()]
    if not items:
        raise ConfigError("--only is empty")
    sel = {}
    for t in items:
        cid, _, q = t.partition(":")
        if not q:
            sel[cid] = None
        elif sel.get(cid, set()) is not None:
            sel.setdefault(cid, set()).add(q)
    return sel


def check(golden, candidate=None, *, only=None, tier="float64", quantities=None) -> CheckReport:
    """Compare a candidate file (or refmem itself) against a golden suite.

    Parameters
    ----------
    golden : path or GoldenSuite
        Golden file, a directory holding ``refmem-golden-v*.h5``, or a suite already read.
    candidate : path or None
        Candidate file (one group per case id, the result schema of ``refmem moments``).
        None: recompute every case with refmem (a self-test).
    only : str or list, optional
        Cases to check: ``"CASE"`` or ``"CASE:QUANTITY"`` items (comma-separated). Cases and
        quantities outside the selection are not required.
    tier : {"float64", "float32"}
    quantities : str or list, optional
        Quantity name patterns (fnmatch, e.g. ``"mean,var,cov,layers/*"``) compared in every
        selected case; default all.

    Returns
    -------
    CheckReport
        A missing case or quantity (within the selection) is a failure; so is a shape
        mismatch or a non-finite value.
    """
    if tier not in TIERS:
        raise ConfigError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    sel = _parse_only(only)
    if isinstance(golden, GoldenSuite):
        suite = golden
        if sel is not None:
            unknown = [c for c in sel if c not in suite.cases]
            if unknown:
                raise ConfigError(f"unknown case(s) {', '.join(unknown)}")
            suite = GoldenSuite(suite.path, suite.attrs,
                                {c: v for c, v in suite.cases.items() if c in sel})
    else:
        suite = read_suite(golden, only=None if sel is None else list(sel))
    pats = None
    if quantities is not None:
        pats = [q.strip() for q in (quantities.split(",") if isinstance(quantities, str)
                                    else quantities) if q.strip()]
        if not pats:
            raise ConfigError("--quantities is empty")
    cand = None
    if candidate is not None:
        cand = _open_h5(candidate, "candidate")
    rows = []
    try:
        for cid, case in suite.cases.items():
            names = sorted(case.expected)
            if sel is not None and sel[cid] is not None:
                unknown = sorted(sel[cid] - set(names))
                if unknown:
                    raise ConfigError(f"case {cid} has no quantity {', '.join(unknown)} "
                                      f"(it has {', '.join(names)})")
                names = [n for n in names if n in sel[cid]]
            if pats is not None:
                names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)]
            got = _read_candidate_case(cand, cid, case, candidate)
            for name in names:
                rows.append(_row(cid, name, case, got, tier))
    finally:
        if cand is not None:
            cand.close()
    if pats is not None and not rows:
        raise ConfigError(f"--quantities {','.join(pats)} matches no quantity of the selected cases")
    return CheckReport(golden=suite.path, tier=tier,
                       candidate=str(candidate) if candidate is not None else "refmem (self-test)",
                       rows=rows)


def _read_candidate_case(cand, cid, case, candidate):
    """:func:`_candidate_case` with damage inside a candidate file as one-line DataError."""
    if cand is None:
        return _candidate_case(cand, cid, case)
    try:
        return _candidate_case(cand, cid, case)
    except (OSError, RuntimeError, KeyError) as e:
        raise DataError(f"candidate {candidate} is damaged or unreadable "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


def _candidate_case(cand, cid, case):
    """Candidate datasets of one case (name → array), or None if the case is missing."""
    if cand is None:
        return recompute_case(case.network, case.x, case.config, case.input_cov)
    if cid not in cand or hasattr(cand[cid], "dtype"):
        return None
    out = {}
    for name, ds in _datasets(cand[cid]).items():
        if ds.dtype.kind not in "fiu":
            out[name] = None
        else:
            out[name] = np.asarray(ds[()], dtype=np.float64)
    return out


def _row(cid, name, case, got, tier):
    if got is None:
        return Row(cid, name, "FAIL", note="case missing in candidate")
    if name not in got:
        return Row(cid, name, "FAIL", note="quantity missing in candidate")
    c = got[name]
    e = case.expected[name]
    if c is None:
        return Row(cid, name, "FAIL", note="not a numeric dataset")
    if c.shape != e.shape:
        return Row(cid, name, "FAIL", note=f"shape {c.shape} != expected {e.shape}")
    if not np.all(np.isfinite(c)):
        return Row(cid, name, "FAIL", note="non-finite values")
    t = case.tolerances[name]
    rtol = t.get(f"rtol_{tier}")
    atol = t.get(f"atol_{tier}")
    if rtol is None or atol is None:
        raise DataError(f"golden case {cid} dataset {name} has no {tier} tolerance attributes")
    ma, mr, ratio = compare(e, c, rtol, atol)
    return Row(cid, name, "PASS" if ratio <= 1.0 else "FAIL", ma, mr, ratio)

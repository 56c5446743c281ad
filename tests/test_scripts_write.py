"""The result writers of the scripts (reproduction and benchmark), on tiny synthetic records.

Each script keeps its file writing in one small function that goes through the one writer
:func:`refmem.io.write_result`. These tests call those functions directly (the scripts' full
runs take minutes) and read the files back with h5py: every dataset carries real ``units``
(never ``"unspecified"``) and a ``description``, the values round-trip, the root records the
kind and the provenance, and a non-finite value is refused where it would be an overflow.
"""

import importlib.util
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from refmem import io as rio
from refmem.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"_scripts_write_{name}",
                                                  ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def scripts():
    return {n: _script(n) for n in ("bench_analytic", "reproduce_seed000", "reproduce_seed002",
                                    "reproduce_optimization")}


def _datasets(path):
    """path → (value, attrs) of every dataset in the file."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj[()], dict(obj.attrs))
        f.visititems(visit)
    return out


def _check_described(path, kind):
    """Every dataset has real units and a description; the root has kind and provenance."""
    ds = _datasets(path)
    assert ds
    for name, (_, attrs) in ds.items():
        units = attrs.get("units")
        assert isinstance(units, str) and units and units != "unspecified", (name, units)
        desc = attrs.get("description")
        assert isinstance(desc, str) and len(desc) > 10, (name, desc)
        assert "deprecated" not in desc
    r = rio.read_result(path)
    assert r.kind == kind and r.attrs["format"] == "refmem-result"
    for key in ("refmem_version", "numpy_version", "h5py_version", "created_utc"):
        assert r.attrs[key]
    return ds


def test_the_deprecated_shim_is_gone():
    # (a file check, not find_spec: an editable install elsewhere may still resolve the name)
    assert not (ROOT / "refmem" / "hdf5io.py").exists()
    for script in ("bench_analytic", "reproduce_seed000", "reproduce_seed002",
                   "reproduce_optimization"):
        assert "hdf5io" not in (ROOT / "scripts" / f"{script}.py").read_text()


def test_bench_analytic_write_h5(scripts, tmp_path):
    rec = {"analytic": [{"first_s": 2.5, "warm_s": 1.25, "peak_rss_gb": 0.5, "kept_s": 1.0,
                         "kept_min_s": 0.75, "kept_max_s": 1.5,
                         "spec": {"net": "w8", "mapping": "UR", "mode": "exact"}},
                        {"first_s": 3.0, "warm_s": None, "peak_rss_gb": 0.75,
                         "spec": {"net": "w8", "mapping": "UL", "mode": "taylor"}}],
           "fig6": [{"speedup": 40.0, "n": 1200, "net": "w8", "mapping": "UR", "sigma": 0.01,
                     "z": 1.96, "p": 0.01, "pilot": 64}],
           "machine": {"cores": 2}, "date": "2026-11-30 23:00 UTC"}
    path = tmp_path / "bench.h5"
    scripts["bench_analytic"].write_h5(path, rec)
    ds = _check_described(path, "bench_analytic")
    assert ds["analytic_first_s"][1]["units"] == "s"
    assert ds["analytic_warm_s"][1]["units"] == "s"
    assert ds["analytic_peak_rss_gb"][1]["units"] == "GiB"
    assert ds["fig6_speedup"][1]["units"] == "1" and "Eq. (46)" in ds["fig6_n"][1]["equation"]
    np.testing.assert_array_equal(ds["analytic_first_s"][0], [2.5, 3.0])
    w = ds["analytic_warm_s"][0]
    assert w[0] == 1.25 and np.isnan(w[1])                 # one call only: no warm time
    for k, v in (("kept", 1.0), ("kept_min", 0.75), ("kept_max", 1.5)):   # median, min, max
        got = ds[f"analytic_{k}_s"]
        assert got[1]["units"] == "s" and got[0][0] == v and np.isnan(got[0][1])
    assert scripts["bench_analytic"].kept_cell(rec["analytic"][0]) == "1.0 (0.8–1.5)"
    assert json.loads(ds["analytic_config"][0][1].decode())["mapping"] == "UL"
    assert ds["fig6_n"][0].tolist() == [1200]
    r = rio.read_result(path)
    assert r.attrs["record"]["date"] == rec["date"]        # the whole record, as JSON


def test_bench_analytic_refuses_an_overflowed_timing(scripts, tmp_path):
    rec = {"analytic": [{"first_s": np.inf, "warm_s": 1.0, "peak_rss_gb": 0.5,
                         "spec": {"net": "w8", "mapping": "UR", "mode": "exact"}}], "fig6": []}
    with pytest.raises(DataError, match="analytic_first_s"):
        scripts["bench_analytic"].write_h5(tmp_path / "bad.h5", rec)
    assert not (tmp_path / "bad.h5").exists()


def test_reproduce_seed002_writer(scripts, tmp_path):
    mod = scripts["reproduce_seed002"]
    ds = {"fig4/g_u": np.array([1.0, 10.0]), "fig4/sigma": np.array([0.005, 0.02]),
          "fig4/mse_analytic": np.array([0.1, 0.2]), "fig4/mse_mc": np.array([0.11, 0.19]),
          "fig4/mse_mc_se": np.array([0.01, 0.01]),
          "fig4/mse_targets_noiseless": np.float64(0.5),
          "fig5_w8/UR/sigma": np.array([0.005, 0.02]),
          "fig5_w8/UR/mse_taylor": np.array([np.nan, 0.3]),     # refused Taylor rule: NaN
          "fig5_w8/UR/time_analytic": np.array([15.0, 2.0]),
          "fig5_w8/UR/accuracy_mc": np.array([1.0, 0.9])}
    groups = {"fig5_w8/closure/UR/sigma_0.02": {
        "position": np.array([0, 2]), "rel_err": np.array([0.01, np.nan]),
        "skew_mean": np.array([0.1, 0.2]), "relu_position": np.array([1, 3])}}
    path = tmp_path / "seed002.h5"
    mod.write_seed002(path, ds, groups, {"command": "x", "quick": True},
                      {"model_fig4": str(ROOT / "data" / "models" / "diabetes_mlp_10-50-1.h5")})
    got = _check_described(path, "reproduce_seed002")
    units = {k: a["units"] for k, (_, a) in got.items()}
    assert units["fig4/g_u"] == "g" and units["fig4/sigma"] == "g"
    assert units["fig4/mse_analytic"] == "y^2" and units["fig4/mse_mc_se"] == "y^2"
    assert units["fig5_w8/UR/time_analytic"] == "s"
    assert units["fig5_w8/UR/accuracy_mc"] == "1"
    assert units["fig5_w8/closure/UR/sigma_0.02/rel_err"] == "1"
    assert "Eq. (28)" in got["fig5_w8/UR/mse_taylor"][1]["equation"]
    np.testing.assert_array_equal(got["fig4/mse_mc"][0], [0.11, 0.19])
    r = rio.read_result(path)
    assert r.attrs["quick"] is True and len(r.attrs["model_fig4_sha256"]) == 64
    # Fig. 4 must be finite (an overflow there is an error, no file written)
    bad = dict(ds, **{"fig4/mse_analytic": np.array([np.inf, 0.2])})
    with pytest.raises(DataError, match="fig4/mse_analytic"):
        mod.write_seed002(tmp_path / "bad.h5", bad, {}, {})
    assert not (tmp_path / "bad.h5").exists()
    with pytest.raises(KeyError):                          # an undescribed dataset
        mod.write_seed002(tmp_path / "bad.h5", {"fig4/novel": np.ones(2)}, {}, {})


def test_reproduce_seed000_writer(scripts, tmp_path):
    mod = scripts["reproduce_seed000"]
    A, R = 3, 2
    acc = np.array([[0.9, 0.88], [0.7, 0.72], [0.3, 0.35]])
    groups = {
        "noise/mnist5k/784-50-10/first": {
            "axes/alpha": np.array([0.1, 1.0, 3.0]), "mc/accuracy_repeats": acc,
            "mc/accuracy_mean": acc.mean(1), "mc/accuracy_std": acc.std(1, ddof=1),
            "mc/accuracy_mean_se": acc.std(1, ddof=1) / np.sqrt(R),
            "mc/mse_batch": np.array([0.1, 1.0, 9.0]), "analytic/accuracy": np.ones((A, 4)),
            "analytic/accuracy_error_bound": np.zeros(A),
            "subset/mc_mse_batch_se": np.array([np.nan, 0.1, 0.2])},   # one repeat: NaN SE
        "quant/mnist5k/784-50-10/all": {"axes/bits": np.array([2, 3]),
                                        "fixed/accuracy": np.array([0.5, 0.8]),
                                        "dither_model/mse_batch": np.array([1.0, 0.25])},
        "aware/mnist5k/784-50-10/0.3": {"axes/alpha": np.array([0.1]),
                                        "aware/accuracy_repeats": np.ones((1, R)),
                                        "aware/train_seconds": np.float64(12.0)},
        "proxy/fashion-mnist/784-100-10/5000": {"all/accuracy_repeats": np.ones((1, R)),
                                                "clean": np.float64(0.8),
                                                "train_seconds": np.float64(30.0)},
        "reasons/mnist5k/784-50-10/adam": {"no_bias_noise_second": np.ones((3, R)),
                                           "relu_output_first": np.ones((3, R))},
    }
    path = tmp_path / "seed000.h5"
    mod.write_results(path, {}, {"study": "x", "command": "scripts/reproduce_seed000.py -q"},
                      groups)
    got = _check_described(path, "reproduce_seed000")
    units = {k: a["units"] for k, (_, a) in got.items()}
    g = "noise/mnist5k/784-50-10/first/"
    assert units[g + "mc/mse_batch"] == "y^2" and units[g + "mc/accuracy_std"] == "1"
    assert units["aware/mnist5k/784-50-10/0.3/aware/train_seconds"] == "s"
    assert units["quant/mnist5k/784-50-10/all/dither_model/mse_batch"] == "y^2"
    assert "theory §14" in got["quant/mnist5k/784-50-10/all/axes/bits"][1]["equation"]
    d = got["reasons/mnist5k/784-50-10/adam/no_bias_noise_second"][1]["description"]
    assert "second layer" in d and "weights only" in d
    assert "every layer" in got["proxy/fashion-mnist/784-100-10/5000/all/accuracy_repeats"][1][
        "description"]
    np.testing.assert_array_equal(got[g + "mc/accuracy_repeats"][0], acc)
    assert rio.read_result(path).attrs["command"] == "scripts/reproduce_seed000.py -q"
    bad = {"noise/x": {"mc/mse_batch": np.array([np.inf])}}
    with pytest.raises(DataError, match="mc/mse_batch"):
        mod.write_results(tmp_path / "bad.h5", {}, {}, bad)
    with pytest.raises(KeyError, match="novel"):
        mod.write_results(tmp_path / "bad.h5", {}, {}, {"noise/x": {"novel": np.ones(1)}})
    assert not (tmp_path / "bad.h5").exists()


def test_reproduce_optimization_writers(scripts, tmp_path):
    mod = scripts["reproduce_optimization"]
    rows = [{"nu": 1.0, "power": [3.0, 2.0, 1.5], "mse": [0.9, 0.95, 1.0],
             "test_mse": [1.1, 1.2, 1.3], "ga_power": [np.nan, 2.1, 1.5],
             "kkt_power": [np.nan, 2.0, 1.6], "method": ["bisection", "kkt", "ga"],
             "feasible": [True, True, True]},
            {"nu": 2.0, "power": [1.0, 0.8, 0.7], "mse": [1.9, 2.0, 1.8],
             "test_mse": [2.1, 2.2, 2.3], "ga_power": [np.nan, 0.9, 0.7],
             "kkt_power": [np.nan, 0.8, 0.75], "method": ["bisection", "kkt", "ga"],
             "feasible": [True, True, False]}]
    p7 = tmp_path / "fig7.h5"
    mod.write_fig7(p7, rows, {"figure": "Kern et al. Fig. 7", "floor": 0.8, "command": None})
    got = _check_described(p7, mod.KIND)
    assert got["axes/max_mse"][1]["units"] == "y^2" and got["power"][1]["units"] == "g*x^2"
    assert got["power"][0].shape == (2, 3) and got["power"][0][1, 2] == 0.7
    assert got["method"][0][0, 1] == b"kkt" and got["feasible"][0].dtype == bool
    assert not got["feasible"][0][1, 2]
    assert "command" not in rio.read_result(p7).attrs     # None: not written

    p8 = tmp_path / "fig8.h5"
    mod.write_fig8(p8, np.array([0.1, 0.2]), np.array([0.9, 0.8]), np.array([0.01, 0.02]),
                   {"spearman": -1.0})
    got = _check_described(p8, mod.KIND)
    assert got["mse_batch_max"][1]["units"] == "y^2" and got["accuracy_se"][1]["units"] == "1"

    p9 = tmp_path / "fig9.h5"
    ds = {}
    for d, g in (("scalar", np.array([3.0])), ("layer", np.array([2.0, 4.0]))):
        ds.update({f"{d}/g_u": g, f"{d}/mse_batch": np.float64(0.05),
                   f"{d}/power_batch": np.float64(1.0), f"{d}/accuracy": np.float64(0.9),
                   f"{d}/accuracy_se": np.float64(0.01), f"{d}/power_test": np.float64(1.1),
                   f"{d}/method": np.bytes_("ga"), f"{d}/mse_batch_check": np.float64(0.06),
                   f"{d}/power_check": np.float64(1.2)})
    ds.update({"layer/power_kkt": np.float64(1.0), "layer/power_ga": np.float64(np.nan)})
    mod.write_fig9_point(p9, ds, {"max_mse": 0.05})
    got = _check_described(p9, mod.KIND)
    assert got["layer/g_u"][1]["units"] == "g" and got["scalar/power_test"][1]["units"] == "g*x^2"
    assert got["layer/mse_batch_check"][1]["units"] == "y^2"
    assert got["scalar/power_check"][1]["units"] == "g*x^2" and np.isnan(got["layer/power_ga"][0])
    np.testing.assert_array_equal(got["layer/g_u"][0], [2.0, 4.0])
    # the same kind replaces its own file; a foreign file is not replaced
    mod.write_fig8(p8, np.array([0.3]), np.array([0.7]), np.array([0.01]), {})
    (tmp_path / "foreign.h5").write_bytes(b"not a result")
    with pytest.raises(DataError):
        mod.write_fig8(tmp_path / "foreign.h5", np.ones(1), np.ones(1), np.ones(1), {})


def test_reproduce_optimization_fig9_summary(scripts, tmp_path):
    """fig9.h5 from per-bound files: the layer design costs 0.9× the scalar one at every bound
    and the accuracies coincide, so the saving at equal accuracy is 10 % wherever both curves
    reach the target, and NaN outside."""
    import types

    mod = scripts["reproduce_optimization"]
    acc, pw = [0.85, 0.88, 0.90], [1.0, 2.0, 4.0]
    paths = {}
    for nu, a, p in zip((1.0, 0.3, 0.1), acc, pw):
        ds = {}
        for d, f in (("scalar", 1.0), ("layer", 0.9)):
            ds.update({f"{d}/g_u": np.array([2.0]), f"{d}/mse_batch": np.float64(nu),
                       f"{d}/power_batch": np.float64(f * p), f"{d}/accuracy": np.float64(a),
                       f"{d}/accuracy_se": np.float64(0.01), f"{d}/method": np.bytes_("kkt"),
                       f"{d}/mse_batch_check": np.float64(nu),
                       f"{d}/power_check": np.float64(f * p)})
        paths[nu] = tmp_path / f"nu{nu:g}.h5"
        mod.write_fig9_point(paths[nu], ds, {"max_mse": nu})
    args = types.SimpleNamespace(out=str(tmp_path), cnn_model="m.h5", force=False, argv=["fig9"])
    mod._fig9_collect(args, paths, 0.905, 10, 12, 2, 0.3)
    got = _check_described(tmp_path / "fig9.h5", mod.KIND)
    np.testing.assert_array_equal(got["axes/max_mse"][0], [0.1, 0.3, 1.0])
    np.testing.assert_array_equal(got["power_check"][0][:, 0], [4.0, 2.0, 1.0])
    np.testing.assert_allclose(got["target_accuracy"][0], [0.90, 0.90, 0.895, 0.885])
    np.testing.assert_allclose(got["saving_at_accuracy"][0], 0.1, rtol=1e-12)
    assert (tmp_path / "fig9.png").exists()
    mod._fig9_collect(args, paths, 0.96, 10, 12, 2, 0.3)    # noiseless − x above every accuracy
    got = _check_described(tmp_path / "fig9.h5", mod.KIND)
    assert got["saving_at_accuracy"][0][0] == pytest.approx(0.1, rel=1e-12)     # 90 %
    assert np.isnan(got["saving_at_accuracy"][0][1:]).all()

    (tmp_path / "foreign.h5").write_bytes(b"not a result")
    with pytest.raises(DataError):
        mod.write_fig8(tmp_path / "foreign.h5", np.ones(1), np.ones(1), np.ones(1), {})

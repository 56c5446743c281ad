"""CLI: every error path gives one line on stderr, exit status != 0 and no output file; the
success paths write the documented datasets with the configuration in the attributes."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from refmem import AvgPool2d, Conv2d, CrossbarConfig, Dense, Flatten, Network, ReLU, save_model
from refmem.cli import main


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    mlp = Network([Dense(rng.normal(size=(6, 5)) / 2, rng.normal(size=6)), ReLU(),
                   Dense(rng.normal(size=(3, 6)) / 2, rng.normal(size=3))], (5,),
                  input_preprocessing="none")
    cnn = Network([Conv2d(rng.normal(size=(2, 1, 3, 3)), rng.normal(size=2), 1, 1), ReLU(),
                   AvgPool2d(2), Flatten(), Dense(rng.normal(size=(3, 8)), rng.normal(size=3))],
                  (1, 4, 4))
    save_model(mlp, tmp_path / "mlp.h5")
    save_model(cnn, tmp_path / "cnn.h5")
    np.save(tmp_path / "x.npy", rng.uniform(0, 1, size=(4, 5)))
    np.save(tmp_path / "ximg.npy", rng.uniform(0, 1, size=(2, 1, 4, 4)))
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 1]))
    return tmp_path


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, pattern, out_path=None):
    assert code == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("refmem: error: ")
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in err
    if out_path is not None:
        assert not out_path.exists()
        assert not out_path.with_name(out_path.name + ".partial").exists()


def test_info_text_and_json(files, capsys):
    code, out, _ = run(["info", files / "cnn.h5"], capsys)
    assert code == 0 and "UR 10 x 2" in out and "UL 17 x 32" in out
    code, out, _ = run(["info", files / "mlp.h5", "--json"], capsys)
    d = json.loads(out)
    assert d["input_shape"] == [5] and d["layers"][0]["crossbar"] == [6, 6]
    assert d["n_crossbar_layers"] == 2


@pytest.mark.parametrize("extra,pattern", [
    (["--sigma", "-0.1"], "sigma must be >= 0"),
    (["--gu", "0.0"], "outside (g_min, g_max]"),
    (["--gu", "5", "--gmax", "2"], "outside (g_min, g_max]"),
    (["--gu", "1,2,3"], "crossbar layers"),
    (["--noisy-layers", "second"], "unknown layer name"),
    (["--noisy-layers", "7"], "does not exist"),
    (["--bits", "1"], "bits"),
    (["--sigma-table", "missing.csv"], "sigma table not found"),
    (["--gu", "missing.npz"], "g_u file not found"),
])
def test_mc_and_moments_config_errors(files, capsys, extra, pattern):
    out = files / "out.h5"
    for cmd in (["mc", "-n", "10", "--seed", "1"], ["moments"]):
        code, _, err = run(cmd[:1] + [files / "mlp.h5", "--input", files / "x.npy", "-o", out]
                           + cmd[1:] + extra, capsys)
        assert_user_error(code, err, pattern, out)


def test_input_errors(files, capsys, tmp_path):
    out = files / "out.h5"
    base = ["mc", files / "mlp.h5", "-n", "10", "--seed", "1", "-o", out, "--sigma", "0.1"]
    code, _, err = run(base + ["--input", files / "nope.npy"], capsys)
    assert_user_error(code, err, "input file not found", out)
    (files / "bad.npy").write_bytes(b"garbage")
    code, _, err = run(base + ["--input", files / "bad.npy"], capsys)
    assert_user_error(code, err, "not a valid .npy", out)
    np.save(files / "wrong.npy", np.ones((3, 7)))
    code, _, err = run(base + ["--input", files / "wrong.npy"], capsys)
    assert_user_error(code, err, "expects (B, 5)", out)
    np.save(files / "nan.npy", np.full((2, 5), np.nan))
    code, _, err = run(base + ["--input", files / "nan.npy"], capsys)
    assert_user_error(code, err, "NaN", out)
    code, _, err = run(base + ["--input", files / "x.npy", "--labels", files / "ximg.npy"], capsys)
    assert_user_error(code, err, "labels", out)
    np.save(files / "c.npy", np.eye(4))
    code, _, err = run(base + ["--input", files / "x.npy", "--input-cov", files / "c.npy"], capsys)
    assert_user_error(code, err, "input covariance has shape", out)
    code, _, err = run(["mc", files / "nomodel.h5", "--input", files / "x.npy", "-n", "10",
                        "--seed", "1", "-o", out], capsys)
    assert_user_error(code, err, "model file not found", out)
    code, _, err = run(base + ["--input", files / "x.npy", "-o", files / "no_dir" / "o.h5"], capsys)
    assert code == 2 and "output directory does not exist" in err


def test_nan_weights_and_unknown_layer_in_model(files, capsys):
    with h5py.File(files / "mlp.h5", "a") as f:
        w = f["layers/00/weight"][()]
        w[0, 0] = np.nan
        f["layers/00/weight"][...] = w
    out = files / "out.h5"
    code, _, err = run(["moments", files / "mlp.h5", "--input", files / "x.npy", "-o", out], capsys)
    assert_user_error(code, err, "layer 00 (dense): weight contains NaN", out)
    with h5py.File(files / "cnn.h5", "a") as f:
        f["layers/01"].attrs["type"] = "gelu"
    code, _, err = run(["info", files / "cnn.h5"], capsys)
    assert_user_error(code, err, "unknown or unsupported layer type 'gelu'")


def test_mc_writes_schema_and_config(files, capsys):
    out = files / "mc.h5"
    code, text, err = run(["mc", files / "mlp.h5", "--input", files / "x.npy", "--labels",
                           files / "y.npy", "--sigma", "0.05", "--gmin", "0.1", "--gu", "1.5",
                           "--design", "layer", "-n", "64", "--seed", "3", "--cov", "-q",
                           "-o", out], capsys)
    assert code == 0, err
    with h5py.File(out) as f:
        assert f.attrs["format"] == "refmem-result" and f.attrs["kind"] == "mc"
        for k in ("mean", "var", "mse", "mean_se", "var_se", "mse_se", "mse_targets_se"):
            if k in f:
                assert f[k].shape == (1, 4, 3), k
        assert f["reference"].shape == (4, 3)
        assert f["cov"].shape == (1, 4, 3, 3) and f["cov_se"].shape == (1, 4, 3, 3)
        assert f["accuracy_mean"].shape == (1,) and f["accuracy_mean_se"].shape == (1,)
        np.testing.assert_array_equal(f["axes/sigma"][()], [0.05])
        np.testing.assert_array_equal(f["axes/g_u"][()], [1.5])
        cfg = CrossbarConfig.from_json(f.attrs["config"])
        assert cfg.sigma == 0.05 and cfg.g_min == 0.1 and cfg.design == "layer"
        assert int(f.attrs["seed"]) == 3 and int(f.attrs["n"]) == 64
        assert f.attrs["refmem_version"] and f.attrs["created_utc"] and f.attrs["model_sha256"]
        for name, ds in f.items():
            if isinstance(ds, h5py.Dataset):
                assert ds.attrs["units"] is not None and ds.attrs["description"], name


def test_mc_sigma_sweep_axes(files, capsys):
    out = files / "sweep.h5"
    code, _, err = run(["mc", files / "cnn.h5", "--input", files / "ximg.npy", "--sigma",
                        "0,0.05", "--mapping", "UL", "-n", "32", "--seed", "1", "-q", "-o", out],
                       capsys)
    assert code == 0, err
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["axes/sigma"][()], [0.0, 0.05])
        assert f["var"][0].max() < 1e-20
        assert f["var"][1].min() > 0
        assert f["mse_batch"].shape == (2,) and f["mse_batch_se"].shape == (2,)


def test_moments_writes_schema(files, capsys):
    out = files / "an.h5"
    code, _, err = run(["moments", files / "cnn.h5", "--input", files / "ximg.npy", "--sigma",
                        "0.05", "--per-layer", "--cov", "-q", "-o", out], capsys)
    assert code == 0, err
    with h5py.File(out) as f:
        for k in ("mean", "var", "mse", "bias"):
            assert f[k].shape == (1, 2, 3), k
        assert f["reference"].shape == (2, 3)
        assert f["cov"].shape == (1, 2, 3, 3)
        assert f["power"].shape == (1, 2)
        for k in ("power_layers", "power_mem", "power_tia_pos", "power_tia_neg"):
            assert f[k].shape == (1, 2, 2), k
        assert f["mse_per_input"].shape == (1, 2) and f["mse_max_per_input"].shape == (1, 2)
        assert f["mse_batch"].shape == (1,) and f["mse_batch_max"].shape == (1,)
        np.testing.assert_allclose(f["mse_batch"][()], f["mse"][()].mean(axis=(1, 2)))
        np.testing.assert_allclose(f["mse_rel"][()], f["mse"][()].mean(axis=2)
                                   / (f["reference"][()] ** 2).mean(axis=1))
        assert "layers/00/mean" in f and "layers/04/var" in f
        assert f["layers/00/mean"].shape[0] == 1
        assert f["layers/00"].attrs["crossbar_index"] == 0
        assert f["layers/00"].attrs["type"] == "conv2d"
        assert f["layers/01"].attrs["crossbar_index"] == -1
        assert CrossbarConfig.from_json(f.attrs["config"]).sigma == 0.05


def test_console_script_exit_code(files):
    r = subprocess.run([sys.executable, "-m", "refmem.cli", "info", str(files / "missing.h5")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "model file not found" in r.stderr


def test_mc_precision_equals_mc_n_bit_for_bit(files, capsys):
    """--precision (``refmem.montecarlo.precision_sample_count``): pilot, n from Eq. (46)
    (largest over inputs, whole seed blocks, pilot counted in), recorded; the result equals
    `refmem mc -n <that n>` bit for bit."""
    from refmem import load_model, map_network, mc_sample_count
    from refmem.montecarlo import monte_carlo
    a, b = files / "prec.h5", files / "n.h5"
    common = [files / "mlp.h5", "--input", files / "x.npy", "--sigma", "0.3", "--seed", "5", "-q"]
    code, _, err = run(["mc", *common, "--precision", "0.004", "--confidence", "0.9",
                        "--pilot", "64", "-o", a], capsys)
    assert code == 0, err
    with h5py.File(a) as f:
        n = int(f.attrs["n"])
        n_b = json.loads(f.attrs["mc_n_per_input"])[0]
        assert f.attrs["mc_pilot"] == 64 and f.attrs["mc_confidence"] == 0.9
        da = {k: f[k][()] for k in ("mean", "var", "mse", "mse_se", "power")}
    # the count, recomputed from an independent pilot run through Eq. (46)
    net = load_model(files / "mlp.h5")
    x = np.load(files / "x.npy")
    mapped = map_network(net, CrossbarConfig(sigma=0.3))
    pil = monte_carlo(mapped, x, 64, 5)
    want = [mc_sample_count(m, s, 0.004, alpha=0.1) for m, s in
            zip(pil.extra["mse_per_input"], pil.extra["mse_per_input_std"])]
    np.testing.assert_array_equal(n_b, want)
    assert n == max(256, -(-max(want) // 256) * 256) and n > 256, (n, want)
    code, _, err = run(["mc", *common, "-n", str(n), "-o", b], capsys)
    assert code == 0, err
    with h5py.File(b) as f:
        for k, v in da.items():
            np.testing.assert_array_equal(f[k][()], v)


def test_mc_n_and_precision_are_exclusive(files, capsys):
    out = files / "x.h5"
    code = main([str(a) for a in ["mc", files / "mlp.h5", "--input", files / "x.npy", "-n", "10",
                                  "--precision", "0.01", "--seed", "1", "-o", out]])
    assert code == 2
    assert not out.exists()

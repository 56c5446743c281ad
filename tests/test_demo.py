"""`refmem demo`, the README's main job: it runs from the shipped model and data, writes the
documented result set and figure, and its analytic and Monte-Carlo columns agree."""

import json

import h5py
import numpy as np

from refmem.cli import main
from refmem.demo import run_demo


def test_demo_writes_result_set_and_figure(tmp_path):
    out = run_demo(tmp_path / "d", sigmas=[0.0, 0.05], n_images=10, n_mc=40, seed=1,
                   progress=False, log=lambda *a: None)
    with h5py.File(tmp_path / "d" / "demo.h5") as f:
        assert f.attrs["format"] == "refmem-result" and f.attrs["kind"] == "demo"
        np.testing.assert_array_equal(f["axes/sigma"][()], [0.0, 0.05])
        for k in ("analytic/mse_batch", "montecarlo/mse_batch", "montecarlo/mse_batch_se",
                  "montecarlo/accuracy_mean", "montecarlo/accuracy_mean_se"):
            assert f[k].shape == (2,), k
        for k in ("analytic/power", "montecarlo/power", "montecarlo/power_se",
                  "analytic/mse_per_input"):
            assert f[k].shape == (2, 10), k
        assert f["reference"].shape == (10, 10)
        assert f.attrs["n_mc"] == 40 and f.attrs["n_images"] == 10
        assert json.loads(f.attrs["configs"])[1]["sigma"] == 0.05
        assert f.attrs["model_sha256"]
        acc0 = f["montecarlo/accuracy_mean"][0]
        assert acc0 == f["reference_accuracy"][()]           # σ = 0 is the noiseless network
        np.testing.assert_array_equal(f["analytic/mse_batch"][()], out["an_mse"])
        for name, ds in f["montecarlo"].items():
            assert ds.attrs["units"] is not None and ds.attrs["description"], name
    assert (tmp_path / "d" / "demo.png").stat().st_size > 10_000
    assert out["an_mse"][0] < 1e-20 and out["mc_mse"][0] < 1e-20
    # network MSE carries the Gaussian-closure bias (theory §19.7): a loose band around MC
    assert abs(out["an_mse"][1] - out["mc_mse"][1]) <= 4 * out["mc_mse_se"][1] + 0.05 * out["mc_mse"][1]
    # power: the analytic expectation is exact (theory §11)
    assert abs(out["an_power"][1] - out["mc_power"][1]) <= 5 * out["mc_power_se"][1] + 1e-9


def test_demo_cli_errors_leave_nothing(tmp_path, capsys):
    code = main(["demo", "-o", str(tmp_path / "o"), "--images", "0"])
    assert code == 2 and "--images" in capsys.readouterr().err
    code = main(["demo", "-o", str(tmp_path / "o2"), "--model", str(tmp_path / "missing.h5"),
                 "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "model file not found" in err
    assert not (tmp_path / "o2" / "demo.h5").exists()
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()
    code = main(["demo", "-o", str(tmp_path / "o3"), "--train", "--epochs", "0", "-q"])
    assert code == 2 and "--epochs" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()


def test_demo_can_train_its_model(tmp_path):
    """--train: refmem's own trainer produces the model the demo then evaluates."""
    out = run_demo(tmp_path, sigmas=[0.0], n_images=20, n_mc=2, train=True, epochs=1,
                   progress=False, log=lambda *a: None)
    model = tmp_path / "mnist5k_mlp_784-100-10.h5"
    assert model.exists()
    with h5py.File(model) as f:
        assert f.attrs["input_preprocessing"] == "pixels/255"
        assert f.attrs["training_epochs"] == 1
    assert out["reference_accuracy"] > 0.5          # one epoch of Adam already learns MNIST


def test_demo_labels_come_from_the_model_and_configuration():
    """Issue 10 item 6: not a hard-coded "784-100-10" / "g_u = 1"."""
    from refmem import CrossbarConfig, Dense, Network, ReLU
    from refmem.demo import _labels

    rng = np.random.default_rng(0)
    net = Network([Dense(rng.normal(size=(50, 784)), None), ReLU(),
                   Dense(rng.normal(size=(10, 50)), None)], (784,))
    lab = _labels(net, "/x/my_model.h5", CrossbarConfig(g_u=1.5, g_min=0.1, design="layer"))
    assert "784-50-10 MLP" in lab["title"] and "my_model.h5" in lab["title"]
    assert "layer design" in lab["title"] and "g_u = 1.5" in lab["title"]
    assert "g_u = 1.5" in lab["xlabel"] and "g_min = 0.1" in lab["xlabel"]
    assert "784-100-10" not in lab["title"]

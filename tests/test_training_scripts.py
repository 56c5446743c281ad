"""Smoke tests of scripts/train_seed_networks.py (tiny settings; resumable runs; model attrs)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from refmem import load_model
from refmem import datasets as D

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_seed_networks",
                                                  ROOT / "scripts" / "train_seed_networks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dirs(tmp_path):
    return ["--out-dir", str(tmp_path / "models"), "--work-dir", str(tmp_path / "work"),
            "--no-progress"]


def test_mlp_script_writes_model_with_split_and_timing(script, tmp_path):
    assert script.main(["mlp", "--hidden", "8", "--depth", "1", "--epochs", "1",
                        *dirs(tmp_path)]) == 0
    path = tmp_path / "models" / "mnist5k_mlp_784-8-10.h5"
    net = load_model(path)
    assert net.input_preprocessing == "pixels/255" and net.input_shape == (784,)
    tr, te = D.mnist5k_split(0)
    np.testing.assert_array_equal(net.attrs["train_indices"], tr)
    np.testing.assert_array_equal(net.attrs["test_indices"], te)
    assert net.attrs["split_seed"] == 0 and net.attrs["training_epochs"] == 1
    assert json.loads(net.attrs["training_optimizer"])["optimizer"] == "adam"
    assert 0.2 < net.attrs["test_accuracy"] <= 1.0                  # 1 epoch, 8 units
    assert (tmp_path / "models" / "training_times.h5").exists()
    assert "mnist5k_mlp_784-8-10" in (tmp_path / "models" / "training_times.md").read_text()
    # finished model: skipped; changed settings with an existing checkpoint: refused
    assert script.main(["mlp", "--hidden", "8", "--depth", "1", "--epochs", "1",
                        *dirs(tmp_path)]) == 0
    with pytest.raises(SystemExit, match="other settings"):
        script.main(["mlp", "--hidden", "8", "--depth", "1", "--epochs", "1", "--lr", "0.01",
                     "--force", *dirs(tmp_path)])


def test_regression_script_folds_target_scaling(script, tmp_path):
    assert script.main(["regression", "--epochs", "3", "--hidden", "6", *dirs(tmp_path)]) == 0
    net = load_model(tmp_path / "models" / "diabetes_mlp_10-6-1.h5")
    assert net.input_preprocessing == "standardize"
    x, y, _ = D.load_split("diabetes", "test")
    xt, _, _ = D.load_split("diabetes", "train")
    X, _ = D.apply_preprocessing("standardize", x, xt)
    mse = float(np.mean((net.forward(X)[:, 0] - y) ** 2))
    assert mse == pytest.approx(net.attrs["test_mse"], rel=1e-5)     # float32 storage
    assert mse < 2 * np.var(y)                                      # original target units


def test_cnn_script_smoke_run_resumes(script, tmp_path):
    args = ["cnn", "--dataset", "mnist5k", "--width-div", "16", "--epochs", "1",
            "--batch-size", "16", "--limit-train", "48", "--checkpoint-every", "1",
            *dirs(tmp_path)]
    assert script.main(args + ["--max-steps", "1"]) == 0
    assert (tmp_path / "work" / "mnist5k_cnn13_w16.ckpt.h5").exists()
    assert not (tmp_path / "models" / "mnist5k_cnn13_w16.h5").exists()
    assert script.main(args) == 0                                   # resumes, finishes epoch 1
    net = load_model(tmp_path / "models" / "mnist5k_cnn13_w16.h5")
    assert net.input_preprocessing == "pixels/255-pad32" and net.input_shape == (1, 32, 32)
    assert net.attrs["training_steps"] == 3
    assert sum(l.type == "batchnorm" for l in net.layers) == 13

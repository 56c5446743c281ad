"""Network validation, batchnorm fusion (theory §7), the HDF5 model file and the configuration."""

import json

import h5py
import numpy as np
import pytest
from hypothesis import given, strategies as st

from refmem import (AvgPool2d, BatchNorm, Conv2d, CrossbarConfig, Dense, Dropout, Flatten,
                    Network, ReLU, load_model, save_model)
from refmem.config import resolve_layer_spec
from refmem.errors import ConfigError, DataError, ModelFileError


def bn(rng, n):
    return BatchNorm(rng.uniform(0.5, 1.5, n), rng.normal(size=n), rng.normal(size=n),
                     rng.uniform(0.2, 2.0, n), eps=1e-4)


def cnn_with_bn(rng, bias=True):
    return Network([
        Conv2d(rng.normal(size=(3, 1, 3, 3)), rng.normal(size=3) if bias else None, 1, 1),
        bn(rng, 3), ReLU(), AvgPool2d(2), Dropout(0.3), Flatten(),
        Dense(rng.normal(size=(5, 12)), None), bn(rng, 5), ReLU(),
        Dense(rng.normal(size=(2, 5)), rng.normal(size=2)),
    ], (1, 4, 4), input_preprocessing="test", attrs={"epochs": 3})


@given(st.integers(0, 2**31 - 1), st.booleans())
def test_batchnorm_fusion_equals_unfused_forward(seed, bias):
    rng = np.random.default_rng(seed)
    net = cnn_with_bn(rng, bias)
    x = rng.normal(size=(4, 1, 4, 4))
    f = net.fused()
    assert [l.type for l in f.layers] == ["conv2d", "relu", "avgpool2d", "flatten", "dense",
                                          "relu", "dense"]
    # fusion creates a bias even where the layer had none (it becomes a noisy bias row)
    assert f.layers[0].bias is not None and f.layers[4].bias is not None
    np.testing.assert_allclose(f.forward(x), net.forward(x), rtol=1e-11, atol=1e-12)


def test_batchnorm_not_after_crossbar_is_an_error():
    rng = np.random.default_rng(0)
    net = Network([Dense(rng.normal(size=(3, 4))), ReLU(), bn(rng, 3)], (4,))
    with pytest.raises(ModelFileError, match="layer 02 .batchnorm. does not directly follow"):
        net.fused()


def test_validation_messages_name_the_layer():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 4))
    w[1, 2] = np.nan
    with pytest.raises(ModelFileError, match=r"layer 00 \(dense\): weight contains NaN"):
        Network([Dense(w)], (4,)).validate()
    with pytest.raises(ModelFileError, match=r"layer 01 \(dense\): dense weight expects 3 inputs"):
        Network([Dense(rng.normal(size=(2, 4))), Dense(rng.normal(size=(2, 3)))], (4,)).validate()
    with pytest.raises(ModelFileError, match="flatten"):
        Network([Conv2d(np.ones((1, 1, 1, 1))), Dense(np.ones((2, 4)))], (1, 2, 2)).validate()
    with pytest.raises(ModelFileError, match="bias has shape"):
        Network([Dense(np.ones((2, 4)), np.ones(3))], (4,)).validate()
    net = Network([Dense(np.ones((2, 4)))], (4,))
    with pytest.raises(DataError, match="expects"):
        net.forward(np.ones((3, 5)))
    with pytest.raises(DataError, match="NaN"):
        net.forward(np.full((1, 4), np.nan))


def test_model_file_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    net = cnn_with_bn(rng)
    path = tmp_path / "m.h5"
    save_model(net, path)
    assert not (tmp_path / "m.h5.partial").exists()
    back = load_model(path)
    assert back.input_shape == (1, 4, 4) and back.input_preprocessing == "test"
    assert back.attrs["epochs"] == 3
    assert [l.type for l in back.layers] == [l.type for l in net.layers]
    x = rng.normal(size=(2, 1, 4, 4))
    np.testing.assert_array_equal(back.forward(x), net.forward(x))
    with h5py.File(path) as f:
        assert f.attrs["format"] == "refmem-model" and f.attrs["version"] == 1
        assert f["layers/00"].attrs["type"] == "conv2d"
        assert f["layers/00/weight"].shape == (3, 1, 3, 3)       # PyTorch layout
        assert int(f["layers/00"].attrs["padding"]) == 1
        assert f["layers/06/weight"].shape == (5, 12)
        assert "bias" not in f["layers/06"]
    # float32 storage is read back as float64
    save_model(net, tmp_path / "m32.h5", dtype=np.float32)
    b32 = load_model(tmp_path / "m32.h5")
    assert b32.layers[0].weight.dtype == np.float64
    np.testing.assert_allclose(b32.forward(x), net.forward(x), rtol=1e-5, atol=1e-5)


def _write_raw(path, layers, input_shape=(4,), **root):
    with h5py.File(path, "w") as f:
        f.attrs["format"] = root.get("format", "refmem-model")
        f.attrs["version"] = root.get("version", 1)
        f.attrs["input_shape"] = np.asarray(input_shape)
        g = f.create_group("layers")
        for i, (t, dsets, attrs) in enumerate(layers):
            lg = g.create_group(f"{i:02d}")
            if t is not None:
                lg.attrs["type"] = t
            for k, v in dsets.items():
                lg.create_dataset(k, data=v)
            for k, v in attrs.items():
                lg.attrs[k] = v


def test_model_file_errors(tmp_path):
    p = tmp_path / "bad.h5"
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.h5")
    p.write_text("not hdf5")
    with pytest.raises(ModelFileError, match="not a readable HDF5"):
        load_model(p)
    _write_raw(p, [("lstm", {}, {})])
    with pytest.raises(ModelFileError, match=r"layer 00: unknown or unsupported layer type 'lstm'"):
        load_model(p)
    _write_raw(p, [("dense", {}, {})])
    with pytest.raises(ModelFileError, match=r"layer 00 \(dense\): missing dataset 'weight'"):
        load_model(p)
    _write_raw(p, [("conv2d", {"weight": np.ones((1, 1, 3, 3))}, {"stride": 1})], (1, 4, 4))
    with pytest.raises(ModelFileError, match="padding"):
        load_model(p)
    _write_raw(p, [("dense", {"weight": np.ones((2, 4))}, {})], format="other")
    with pytest.raises(ModelFileError, match="format"):
        load_model(p)
    _write_raw(p, [("dense", {"weight": np.ones((2, 4))}, {})], version=7)
    with pytest.raises(ModelFileError, match="version"):
        load_model(p)
    w = np.ones((2, 4))
    w[0, 0] = np.inf
    _write_raw(p, [("dense", {"weight": w}, {})])
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        load_model(p)


def test_config_json_round_trip_and_validation():
    cfg = CrossbarConfig(alpha=0.1, bits=(4, None), g_min=0.1, g_max=5.0,
                         g_u={0: [1.0, 2.0], 1: 3.0}, design="column", mapping="UL", r=2.0,
                         noisy_layers=("first", -1), sigma_table=([0.0, 5.0], [0.01, 0.02]))
    back = CrossbarConfig.from_json(cfg.to_json())
    assert back.to_json() == cfg.to_json()
    d = json.loads(CrossbarConfig().to_json())
    assert d["g_max"] == "inf" and d["g_min"] == 0.0 and d["r"] == 1.0
    assert CrossbarConfig.from_json(CrossbarConfig().to_json()) == CrossbarConfig()
    for bad, msg in [(dict(sigma=-0.1), "sigma"), (dict(sigma=float("nan")), "NaN"),
                     (dict(design="row"), "design"), (dict(mapping="XX"), "mapping"),
                     (dict(r=0), "r must be"), (dict(bits=1), "bits"),
                     (dict(g_min=1.0, g_max=0.5), "g_max"),
                     (dict(noisy_layers="second"), "unknown layer"),
                     (dict(noisy_layers=""), "empty"), (dict(bits=54), "bits"),
                     (dict(sigma=0.3, sigma_table=([0.0, 1.0], [0.1, 0.1])), "not both"),
                     (dict(g_u={0: 1.0}, design="layer"), "column")]:
        with pytest.raises(ConfigError, match=msg):
            CrossbarConfig(**bad)
    with pytest.raises(ConfigError, match="unknown configuration field"):
        CrossbarConfig.from_json('{"sigmaa": 1}')
    assert resolve_layer_spec("last", 4) == 3 and resolve_layer_spec(-2, 4) == 2
    assert CrossbarConfig(noisy_layers="first,last").noisy_layer_set(3) == {0, 2}
    with pytest.raises(ConfigError, match="does not exist"):
        CrossbarConfig(noisy_layers=(5,)).noisy_layer_set(3)

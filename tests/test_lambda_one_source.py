"""Issue 10 item 4: noise-aware training's λ is the mapping's λ (one source of truth).

For every design, with an all-zero output neuron and an all-zero output channel, the scale λ
that :class:`refmem.training.DeviceNoise` uses during training equals the λ that
:func:`refmem.map_network` programs, column by column. The expected w^u of the zero columns
(the layer's w^u, theory §3.1) is also restated here by hand.
"""

import numpy as np
import pytest

from refmem import CrossbarConfig, map_network
from refmem.errors import ConfigError
from refmem.training import DeviceNoise, Sequential
from refmem.training.backprop import TConv2d, TDense, TFlatten, TReLU


def model_with_zero_columns():
    rng = np.random.default_rng(0)
    wc = rng.normal(size=(3, 1, 3, 3))
    bc = rng.normal(size=3)
    wc[1], bc[1] = 0.0, 0.0                          # an all-zero output channel
    wd = rng.normal(size=(4, 3 * 4 * 4)) * 0.3
    bd = rng.normal(size=4) * 0.1
    wd[2], bd[2] = 0.0, 0.0                          # an all-zero output neuron
    wd2 = rng.normal(size=(2, 4)) * 2.0
    return Sequential([TConv2d(wc, bc, 1, 1), TReLU(), TFlatten(), TDense(wd, bd), TReLU(),
                       TDense(wd2, None)], (1, 4, 4))


@pytest.mark.parametrize("design, g_u", [("scalar", 1.7), ("layer", (1.2, 1.5, 0.9)),
                                         ("column", (1.2, 1.5, 0.9)), ("column", 1.0)])
def test_training_lambda_equals_mapping_lambda(design, g_u):
    model = model_with_zero_columns()
    g_min = 0.1
    train = DeviceNoise(0.05, g_u=g_u, g_min=g_min, design=design).scales(model)
    mapped = map_network(model.to_network(),
                         CrossbarConfig(sigma=0.05, g_u=g_u, g_min=g_min, design=design,
                                        mapping="UR"))
    xb = model.crossbar_layers()
    assert len(xb) == mapped.n_crossbar == 3
    for k, pos in enumerate(xb):
        np.testing.assert_array_equal(train[pos], mapped.layers[k].lam)
        assert np.all(np.isfinite(train[pos]))
    # independent restatement for the zero columns: they take the layer's w^u
    gus = np.broadcast_to(np.atleast_1d(g_u), (3,))
    layer_max = []
    for pos in xb:
        p = model.layers[pos].params
        w = np.abs(p["weight"]).reshape(p["weight"].shape[0], -1).max(1)
        if "bias" in p:
            w = np.maximum(w, np.abs(p["bias"]))
        layer_max.append(w.max())
    if design == "column":
        assert train[xb[0]][1] == pytest.approx((gus[0] - g_min) / layer_max[0], rel=1e-15)
        assert train[xb[1]][2] == pytest.approx((gus[1] - g_min) / layer_max[1], rel=1e-15)


def test_zero_column_is_noisy_in_training():
    model = model_with_zero_columns()
    noise = DeviceNoise(0.05, g_u=1.0, g_min=0.0, design="column")
    pos = model.crossbar_layers()[1]
    draws = np.array([noise.draw(model, np.random.default_rng(s))[f"{pos:02d}.weight"][2]
                      for s in range(200)])
    assert np.all(np.isfinite(draws)) and draws.std() > 0


def test_all_zero_layer_is_an_error_in_both():
    model = model_with_zero_columns()
    model.layers[5].params["weight"][...] = 0.0
    with pytest.raises(ConfigError, match="only zero weights"):
        DeviceNoise(0.05, design="column").scales(model)
    with pytest.raises(ConfigError, match="only zero weights"):
        map_network(model.to_network(), CrossbarConfig(design="column"))

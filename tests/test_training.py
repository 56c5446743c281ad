"""Framework-free training: gradient checks, optimizer oracles, determinism, exact resume.

Gradient checks compare ``<v, J u>`` by central differences along random directions ``u``
with the analytic ``<J^T v, u>`` (``eps = 1e-6``, ``rtol = 1e-6``, float64), for every layer
(input, weight, bias), both losses and batchnorm in training mode.
"""

import json

import h5py
import numpy as np
import pytest

from refmem import Conv2d, load_model, save_model
from refmem.errors import ConfigError, DataError
from refmem.layers import AvgPool2d, gather_patches, im2col_index
from refmem.training import (SGD, Adam, CrossEntropy, DeviceNoise, MSE, MultiplicativeNoise,
                             Sequential, StepLR, TBatchNorm, TDense, TDropout, TReLU, Trainer,
                             cnn13, mlp)
from refmem.training import backprop as bp
from refmem.training.losses import log_softmax

EPS = 1e-6
RTOL = 1e-6


def check_vjp(f, vjp, x, rng, eps=EPS, rtol=RTOL):
    """<v, J u> by central differences vs <J^T v, u> analytically (autograd's check_vjp idea)."""
    u = rng.standard_normal(np.shape(x))
    v = rng.standard_normal(np.shape(f(x)))
    numeric = np.vdot(v, (f(x + 0.5 * eps * u) - f(x - 0.5 * eps * u)) / eps)
    analytic = np.vdot(vjp(x, v), u)
    assert abs(numeric - analytic) <= rtol * (abs(numeric) + abs(analytic)) + 1e-9, \
        (numeric, analytic)


def away_from_zero(rng, shape, margin=0.05):
    """Normal draws pushed away from the ReLU kink so a finite difference never crosses it."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < margin, np.sign(x + 1e-300) * margin, x) + 0.0


# ============================================================================ layer gradients
def test_dense_gradients():
    rng = np.random.default_rng(0)
    x, W, b = rng.normal(size=(5, 7)), rng.normal(size=(3, 7)), rng.normal(size=3)
    check_vjp(lambda x_: bp.dense_forward(x_, W, b), lambda x_, v: bp.dense_backward(v, x_, W)[0],
              x, rng)
    check_vjp(lambda W_: bp.dense_forward(x, W_, b), lambda W_, v: bp.dense_backward(v, x, W_)[1],
              W, rng)
    check_vjp(lambda b_: bp.dense_forward(x, W, b_), lambda b_, v: bp.dense_backward(v, x, W)[2],
              b, rng)


@pytest.mark.parametrize("stride,padding,H,W", [(1, 1, 5, 6), (2, 0, 7, 5), (2, 1, 6, 6)])
def test_conv2d_gradients(stride, padding, H, W):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 2, H, W))
    K, b = rng.normal(size=(4, 2, 3, 3)), rng.normal(size=4)

    def fwd(x_, K_, b_):
        return bp.conv2d_forward(x_, K_, b_, stride, padding)[0]

    def bwd(x_, K_, v):
        _, cache = bp.conv2d_forward(x_, K_, b, stride, padding)
        return bp.conv2d_backward(v, cache, K_)

    check_vjp(lambda x_: fwd(x_, K, b), lambda x_, v: bwd(x_, K, v)[0], x, rng)
    check_vjp(lambda K_: fwd(x, K_, b), lambda K_, v: bwd(x, K_, v)[1], K, rng)
    check_vjp(lambda b_: fwd(x, K, b_), lambda b_, v: bwd(x, K, v)[2], b, rng)


def test_conv2d_forward_equals_layer_forward_and_col2im_is_adjoint():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 6, 5))
    K, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    y, _ = bp.conv2d_forward(x, K, b, 2, 1)
    # one 2-D GEMM here vs a stacked matmul in refmem.layers: equal up to summation order
    np.testing.assert_allclose(y, Conv2d(K, b, 2, 1).forward(x), rtol=1e-12, atol=1e-14)
    idx = im2col_index((3, 6, 5), 3, 2, 1)
    np.testing.assert_array_equal(bp.im2col(x.reshape(2, -1), idx),
                                  gather_patches(x.reshape(2, -1), idx))
    assert bp.im2col(x.reshape(2, -1), idx).flags["C_CONTIGUOUS"]
    P = rng.normal(size=(2,) + idx.shape)
    lhs = np.vdot(gather_patches(x.reshape(2, -1), idx), P)
    rhs = np.vdot(x, bp.col2im(P, (3, 6, 5), 3, 2, 1))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_avgpool_relu_flatten_gradients():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 5, 7))              # odd sides: the border row/col is dropped
    np.testing.assert_array_equal(bp.avgpool2d_forward(x, 2), AvgPool2d(2).forward(x))
    check_vjp(lambda x_: bp.avgpool2d_forward(x_, 2),
              lambda x_, v: bp.avgpool2d_backward(v, x_.shape[1:], 2), x, rng)
    xr = away_from_zero(rng, (4, 9))
    check_vjp(bp.relu_forward, lambda x_, v: bp.relu_backward(v, x_), xr, rng)
    from refmem.training import TFlatten
    fl = TFlatten()
    check_vjp(lambda x_: fl.forward(x_), lambda x_, v: (fl.forward(x_), fl.backward(v))[1], x, rng)


@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 4, 5)])
def test_batchnorm_train_gradients(shape):
    rng = np.random.default_rng(4)
    n = shape[1]
    x = rng.normal(size=shape) * 2 + 1
    g, be = rng.uniform(0.5, 2, n), rng.normal(size=n)

    def f(x_, g_, b_):
        return bp.batchnorm_forward_train(x_, g_, b_, 1e-5)[0]

    def grads(x_, g_, v):
        _, cache = bp.batchnorm_forward_train(x_, g_, be, 1e-5)
        return bp.batchnorm_backward(v, cache, g_)

    check_vjp(lambda x_: f(x_, g, be), lambda x_, v: grads(x_, g, v)[0], x, rng)
    check_vjp(lambda g_: f(x, g_, be), lambda g_, v: grads(x, g_, v)[1], g, rng)
    check_vjp(lambda b_: f(x, g, b_), lambda b_, v: grads(x, g, v)[2], be, rng)


def test_batchnorm_running_statistics_and_eval_mode():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 3, 2, 2)) * 3 + 2
    layer = TBatchNorm.init(3)
    layer.buffers["running_mean"][:] = [0.5, -1, 2]
    layer.buffers["running_var"][:] = [1.5, 2, 0.5]
    rm0 = layer.buffers["running_mean"].copy()
    rv0 = layer.buffers["running_var"].copy()
    y = layer.forward(x, train=True)
    mean = x.mean(axis=(0, 2, 3))
    var_unbiased = x.var(axis=(0, 2, 3), ddof=1)
    # PyTorch: momentum 0.1, unbiased running variance
    np.testing.assert_allclose(layer.buffers["running_mean"], 0.9 * rm0 + 0.1 * mean, rtol=1e-13)
    np.testing.assert_allclose(layer.buffers["running_var"], 0.9 * rv0 + 0.1 * var_unbiased,
                               rtol=1e-13)
    c = (slice(None), None, None)
    xhat = (x - mean[c]) / np.sqrt(x.var(axis=(0, 2, 3)) + 1e-5)[c]
    np.testing.assert_allclose(y, xhat, rtol=1e-12, atol=1e-12)
    ye = layer.forward(x, train=False)
    np.testing.assert_array_equal(ye, layer.to_layer().forward(x))
    check_vjp(lambda x_: bp.batchnorm_forward_eval(x_, layer.params["gamma"], layer.params["beta"],
                                                   rm0, rv0),
              lambda x_, v: bp.batchnorm_eval_backward(v, layer.params["gamma"], rv0), x, rng)
    with pytest.raises(DataError, match="more than one value per channel"):
        layer.forward(np.ones((1, 3)).reshape(1, 3, 1, 1), train=True)


def test_dropout_inverted_seeded_identity_at_eval():
    x = np.ones((400, 50))
    d = TDropout(0.25)
    np.testing.assert_array_equal(d.forward(x, train=False), x)
    y1 = d.forward(x, train=True, rng=np.random.default_rng(7))
    y2 = d.forward(x, train=True, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(y1, y2)
    assert set(np.unique(y1)) == {0.0, 1 / 0.75}
    assert abs((y1 == 0).mean() - 0.25) < 0.01           # 20,000 draws: 5 SE ≈ 0.015
    rng = np.random.default_rng(8)
    def drop(x_):
        return bp.dropout_forward(x_, 0.3, np.random.default_rng(1))

    check_vjp(lambda x_: drop(x_)[0], lambda x_, v: bp.dropout_backward(v, drop(x_)[1]),
              rng.normal(size=(5, 6)), rng)
    with pytest.raises(ConfigError, match="dropout p"):
        TDropout(1.0)


def test_loss_gradients_and_stability():
    rng = np.random.default_rng(9)
    z, y = rng.normal(size=(6, 5)) * 3, rng.integers(0, 5, 6)
    ce, mse = CrossEntropy(), MSE()
    check_vjp(lambda z_: np.array(ce(z_, y)[0]), lambda z_, v: v * ce(z_, y)[1], z, rng)
    t = rng.normal(size=(6, 2))
    p = rng.normal(size=(6, 2))
    check_vjp(lambda p_: np.array(mse(p_, t)[0]), lambda p_, v: v * mse(p_, t)[1], p, rng)
    # MSE is the mean over all elements; (B,) targets for one output
    assert mse(p[:, :1], t[:, 0])[0] == pytest.approx(np.mean((p[:, 0] - t[:, 0]) ** 2), rel=1e-14)
    # log-sum-exp: huge logits neither overflow nor lose the answer; negative logits are kept
    big = np.array([[1000.0, 0.0, -1000.0]])
    loss, dz = ce(big, np.array([1]))
    assert loss == pytest.approx(1000.0, rel=1e-12) and np.all(np.isfinite(dz))
    np.testing.assert_allclose(np.exp(log_softmax(np.array([[-5.0, -6.0]]))).sum(), 1.0)
    with pytest.raises(DataError, match="labels must lie"):
        ce(z, np.full(6, 5))
    with pytest.raises(DataError, match="integer labels"):
        ce(z, np.zeros(6))
    with pytest.raises(DataError, match="MSE target"):
        mse(p, t[:, :1])


def test_whole_network_gradient_with_batchnorm_and_dropout():
    """All parameter gradients of a small CNN (train mode) against one finite difference."""
    rng = np.random.default_rng(10)
    model = cnn13(16, input_size=32, seed=1)
    x = rng.normal(size=(3, 1, 32, 32))
    y = np.array([1, 4, 7])
    params = model.named_params()
    names = list(params)
    theta0 = {k: v.copy() for k, v in params.items()}

    def loss_at(step):
        for k in names:
            params[k][...] = theta0[k] + step * dirs[k]
        out = model.forward(x, train=True, rng=np.random.default_rng(3))
        return CrossEntropy()(out, y)

    dirs = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    num = (loss_at(0.5 * EPS)[0] - loss_at(-0.5 * EPS)[0]) / EPS
    _, dout = loss_at(0.0)
    model.backward(dout)
    grads = model.named_grads()
    ana = sum(np.vdot(grads[k], dirs[k]) for k in names)
    assert abs(num - ana) <= 1e-5 * (abs(num) + abs(ana)) + 1e-9, (num, ana)


# ============================================================================ optimizers
def test_adam_two_step_oracle():
    """Kingma & Ba (2015) Algorithm 1 by hand for two steps on w = [1, -2], wd = 0.1."""
    w = np.array([1.0, -2.0])
    g1, g2 = np.array([0.5, -1.0]), np.array([0.1, 2.0])
    opt = Adam(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    params = {"w": w}
    opt.step(params, {"w": g1.copy()})
    opt.step(params, {"w": g2.copy()})
    # by hand
    w0 = np.array([1.0, -2.0])
    G1 = g1 + 0.1 * w0
    m1, v1 = 0.1 * G1, 0.001 * G1 ** 2
    w1 = w0 - 0.01 * (m1 / 0.1) / (np.sqrt(v1 / 0.001) + 1e-8)
    G2 = g2 + 0.1 * w1
    m2, v2 = 0.9 * m1 + 0.1 * G2, 0.999 * v1 + 0.001 * G2 ** 2
    w2 = w1 - 0.01 * (m2 / (1 - 0.9 ** 2)) / (np.sqrt(v2 / (1 - 0.999 ** 2)) + 1e-8)
    np.testing.assert_allclose(params["w"], w2, rtol=1e-14)
    assert opt.t == 2
    # first step of Adam moves every coordinate by ~lr (the bias-corrected ratio is ±1)
    np.testing.assert_allclose(np.abs(w1 - w0), 0.01, rtol=1e-6)


def test_sgd_momentum_weight_decay_oracle():
    w = np.array([1.0, -1.0, 0.5])
    gs = [np.array([0.2, 0.1, -0.3]), np.array([-0.4, 0.0, 0.2]), np.array([0.1, 0.1, 0.1])]
    opt = SGD(lr=0.1, momentum=0.9, weight_decay=0.01)
    params = {"w": w.copy()}
    for g in gs:
        opt.step(params, {"w": g})
    ref, vel = w.copy(), np.zeros(3)
    for g in gs:
        vel = 0.9 * vel + (g + 0.01 * ref)
        ref = ref - 0.1 * vel
    np.testing.assert_allclose(params["w"], ref, rtol=1e-15)
    plain = {"w": w.copy()}
    SGD(lr=0.5).step(plain, {"w": gs[0]})
    np.testing.assert_array_equal(plain["w"], w - 0.5 * gs[0])


def test_step_lr_schedule_and_optimizer_errors():
    s = StepLR([2, 4])
    assert [s(0.1, e) for e in range(6)] == [0.1, 0.1, 0.1 / 10, 0.1 / 10, 0.1 / 100, 0.1 / 100]
    with pytest.raises(ConfigError, match="lr must be > 0"):
        Adam(lr=0)
    with pytest.raises(ConfigError, match="momentum"):
        SGD(0.1, momentum=1.5)
    with pytest.raises(ConfigError, match="weight_decay"):
        SGD(0.1, weight_decay=-1)


# ============================================================================ training loop
def separable(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    x = x + 0.3 * np.where(y[:, None] == 1, 1.0, -1.0) * np.array([1.0, 0.5])   # margin
    return x, y


def test_separable_problem_reaches_full_training_accuracy():
    x, y = separable()
    model = mlp(2, 16, 2, seed=0)
    tr = Trainer(model, "cross_entropy", Adam(0.02), batch_size=20, seed=0, progress=False)
    hist = tr.fit(x, y, epochs=30)
    assert tr.evaluate(x, y)["accuracy"] == 1.0
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_regression_mse_training_decreases_loss():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(128, 3))
    t = np.stack([x[:, 0] - 2 * x[:, 1], np.abs(x[:, 2])], axis=1)
    tr = Trainer(mlp(3, 20, 2, seed=0), "mse", Adam(0.01), batch_size=32, progress=False)
    h = tr.fit(x, t, epochs=40)
    assert h[-1]["loss"] < 0.05 * h[0]["loss"]
    assert "accuracy" not in h[-1]


def small_cnn_trainer(tmp=None, seed=5, noise=None, **kw):
    model = cnn13(16, input_size=32, seed=2)
    opt = SGD(0.05, momentum=0.9, weight_decay=5e-4)
    return Trainer(model, "cross_entropy", opt, batch_size=8, seed=seed, lr_schedule=StepLR([2]),
                   noise=noise, progress=False, checkpoint=tmp, **kw)


def cnn_data(n=40):
    rng = np.random.default_rng(11)
    return rng.normal(size=(n, 1, 32, 32)), rng.integers(0, 10, n)


def assert_same_state(a, b):
    sa, sb = a.model.state_arrays(), b.model.state_arrays()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    oa, ob = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert oa.keys() == ob.keys()
    for k in oa:
        np.testing.assert_array_equal(oa[k], ob[k], err_msg=k)
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    assert (a.epoch, a.step) == (b.epoch, b.step)


def test_determinism_same_seed_same_weights_bit_for_bit():
    x, y = cnn_data()
    a = small_cnn_trainer(noise=MultiplicativeNoise(0.1))
    b = small_cnn_trainer(noise=MultiplicativeNoise(0.1))
    a.fit(x, y, 2)
    b.fit(x, y, 2)
    assert_same_state(a, b)
    assert a.history == [{**h, "train_seconds": a.history[i]["train_seconds"]}
                         for i, h in enumerate(b.history)]
    c = small_cnn_trainer(seed=6, noise=MultiplicativeNoise(0.1))
    c.fit(x, y, 1)
    assert not np.array_equal(c.model.named_params()["00.weight"],
                              a.model.named_params()["00.weight"])


@pytest.mark.parametrize("stop_at", [3, 5, 9])      # mid-epoch (5 batches/epoch) and at a boundary
def test_resume_from_checkpoint_equals_uninterrupted(tmp_path, stop_at):
    x, y = cnn_data()
    ref = small_cnn_trainer(noise=DeviceNoise(0.02, g_u=1.0, design="column"))
    ref.fit(x, y, 3)
    ck = tmp_path / "ck.h5"
    first = small_cnn_trainer(ck, noise=DeviceNoise(0.02, g_u=1.0, design="column"))
    first.fit(x, y, 3, max_steps=stop_at)
    assert first.step == stop_at and ck.exists()
    # a fresh process: a model with different initial weights, then resume from the file
    model = cnn13(16, input_size=32, seed=99)
    resumed = Trainer(model, "cross_entropy", SGD(0.05, momentum=0.9, weight_decay=5e-4),
                      batch_size=8, seed=123, lr_schedule=StepLR([2]),
                      noise=DeviceNoise(0.02, g_u=1.0, design="column"), progress=False,
                      checkpoint=ck)
    resumed.fit(x, y, 3)
    assert_same_state(ref, resumed)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in ref.history]


def test_checkpoint_every_steps_and_mismatch_errors(tmp_path):
    x, y = cnn_data(24)
    ck = tmp_path / "c.h5"
    tr = small_cnn_trainer(ck, checkpoint_every=2)
    tr.fit(x, y, 1, max_steps=2)
    with h5py.File(ck) as f:
        assert f.attrs["format"] == "refmem-checkpoint" and f.attrs["step"] == 2
        assert "perm" in f and json.loads(f.attrs["rng_state"])["bit_generator"] == "PCG64"
    other = Trainer(mlp(1024, 4, 10), "cross_entropy", SGD(0.1), progress=False)
    with pytest.raises(DataError, match="does not match the model"):
        other.load_checkpoint(ck)
    with pytest.raises(DataError, match="optimizer"):
        Trainer(cnn13(16, seed=0), "cross_entropy", Adam(0.1), progress=False).load_checkpoint(ck)
    with pytest.raises(DataError, match="checkpoint not found"):
        tr.load_checkpoint(tmp_path / "nope.h5")


def test_saved_model_forward_equals_trainer_eval_forward(tmp_path):
    x, y = cnn_data(16)
    tr = small_cnn_trainer()
    tr.fit(x, y, 1)
    net = tr.model.to_network(input_preprocessing="pixels/255-pad32", attrs=tr.metadata())
    save_model(net, tmp_path / "m.h5")
    back = load_model(tmp_path / "m.h5")
    assert back.input_preprocessing == "pixels/255-pad32"
    assert back.attrs["training_optimizer"] and back.attrs["training_epochs"] == 1
    assert [l.type for l in back.layers] == [l.type for l in tr.model.layers]
    # conv: same operations, the GEMM grouping may differ in the last bit (see above)
    np.testing.assert_allclose(back.forward(x), tr.predict(x), rtol=1e-12, atol=1e-14)
    # batchnorm stays its own layer; the crossbar form fuses it and computes the same function
    np.testing.assert_allclose(back.fused().forward(x), tr.predict(x), rtol=1e-9, atol=1e-10)
    # and the MLP, plus a trainable round trip
    xm, ym = separable(50)
    tm = Trainer(mlp(2, 5, 2, seed=1), "cross_entropy", Adam(0.01), batch_size=10, progress=False)
    tm.fit(xm, ym, 2)
    save_model(tm.model.to_network("none"), tmp_path / "mlp.h5")
    netm = load_model(tmp_path / "mlp.h5")
    np.testing.assert_array_equal(netm.forward(xm), tm.predict(xm))
    np.testing.assert_array_equal(Sequential.from_network(netm).forward(xm), tm.predict(xm))


def test_float32_training_keeps_dtype():
    x, y = separable(64)
    model = mlp(2, 8, 2, seed=0, dtype=np.float32)
    tr = Trainer(model, "cross_entropy", Adam(0.01), batch_size=16, progress=False)
    tr.fit(x, y, 2)
    assert all(v.dtype == np.float32 for v in model.named_params().values())
    assert tr.predict(x).dtype == np.float32


# ============================================================================ noise-aware training
def test_noise_is_straight_through_on_clean_weights():
    """w_new = w_clean - lr * grad(noisy weights): reproduce the draw with the same Generator."""
    x, y = separable(16)
    model = mlp(2, 4, 2, seed=3)
    clean = {k: v.copy() for k, v in model.named_params().items()}
    noise = MultiplicativeNoise(0.3)
    tr = Trainer(model, "cross_entropy", SGD(1.0), batch_size=16, seed=4, noise=noise,
                 progress=False)
    perm = np.random.default_rng(4).permutation(16)
    tr.fit(x, y, 1)
    # oracle: same RNG sequence (permutation, then the noise draw), gradient at noisy weights
    rng = np.random.default_rng(4)
    assert np.array_equal(rng.permutation(16), perm)
    twin = mlp(2, 4, 2, seed=3)
    noisy = noise.draw(twin, rng)
    for k, v in noisy.items():
        twin.named_params()[k][...] = v
    out = twin.forward(x[perm], train=True)
    twin.backward(CrossEntropy()(out, y[perm])[1])
    g = twin.named_grads()
    for k, v in model.named_params().items():
        np.testing.assert_allclose(v, clean[k] - g[k], rtol=1e-13, atol=1e-15)


def test_noise_models_statistics_and_scopes():
    model = Sequential([TDense(np.array([[1.0, -2.0], [0.5, 0.25]]), np.array([0.1, -4.0])),
                        TReLU(), TDense(np.array([[3.0, 1.0]]), np.array([0.0]))], (2,))
    # scope of w^u (bias included): scalar 4, layer (4 | 3), column (2, 4 | 3)
    for design, wu0, wu2 in [("scalar", [4, 4], [4]), ("layer", [4, 4], [3]),
                             ("column", [2, 4], [3])]:
        lam = DeviceNoise(0.1, g_u=2.0, g_min=0.5, design=design).scales(model)
        np.testing.assert_allclose(lam[0], 1.5 / np.array(wu0))
        np.testing.assert_allclose(lam[2], 1.5 / np.array(wu2))
    # additive weight-unit noise N(0, 2σ²/λ²), one std per column
    n = 20000
    rng = np.random.default_rng(0)
    dn = DeviceNoise(0.1, g_u=2.0, g_min=0.5, design="column")
    w0 = model.layers[0].params["weight"]
    draws = np.array([dn.draw(model, rng)["00.weight"] for _ in range(n)]) - w0
    expect = np.sqrt(2) * 0.1 / (1.5 / np.array([2.0, 4.0]))
    np.testing.assert_allclose(draws.std(axis=0), np.repeat(expect[:, None], 2, 1), rtol=0.03)
    # multiplicative: relative std α on every weight and bias; layer selection
    mn = MultiplicativeNoise(0.2, layers="last")
    d = np.array([mn.draw(model, rng)["02.weight"] for _ in range(n)])
    assert set(mn.draw(model, rng)) == {"02.weight", "02.bias"}
    np.testing.assert_allclose(d.std(axis=0) / np.abs(model.layers[2].params["weight"]), 0.2,
                               rtol=0.03)
    with pytest.raises(ConfigError, match="g_u must be > g_min"):
        DeviceNoise(0.1, g_u=0.5, g_min=0.5)
    with pytest.raises(ConfigError, match="alpha"):
        MultiplicativeNoise(-1)
    with pytest.raises(ConfigError, match="not a crossbar layer"):
        MultiplicativeNoise(0.1, layers=[5]).draw(model, rng)


def test_bad_input_errors():
    model = mlp(4, 3, 2)
    tr = Trainer(model, "cross_entropy", Adam(0.01), progress=False)
    with pytest.raises(DataError, match="expects"):
        tr.fit(np.zeros((5, 3)), np.zeros(5, int), 1)
    with pytest.raises(DataError, match="rows"):
        tr.fit(np.zeros((5, 4)), np.zeros(4, int), 1)
    with pytest.raises(ConfigError, match="batch_size"):
        Trainer(model, "cross_entropy", Adam(0.01), batch_size=0)
    with pytest.raises(ConfigError, match="unknown loss"):
        Trainer(model, "hinge", Adam(0.01))
    with pytest.raises(ConfigError, match="width_div"):
        cnn13(0)
    x = np.full((4, 4), 1e200)
    tr2 = Trainer(mlp(4, 3, 2, seed=0), "mse", SGD(1e10), progress=False)
    with pytest.raises(DataError, match="diverged"), np.errstate(all="ignore"):
        tr2.fit(x, np.zeros((4, 2)), 3)


def test_model_constructors():
    m = mlp(784, [100, 100], 10)
    assert [l.type for l in m.layers] == ["dense", "relu", "dense", "relu", "dense"]
    assert m.n_params == 784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10
    full = cnn13(1, dtype=np.float32)
    convs = [l for l in full.layers if l.type == "conv2d"]
    assert [c.params["weight"].shape[0] for c in convs] == [16, 16, 32, 32, 64, 64, 64, 128, 128,
                                                            128, 256, 256, 256]
    assert full.to_network().output_shape == (10,)
    assert sum(l.type == "batchnorm" for l in full.layers) == 13
    assert full.to_network().fused().validate()[-1] == (10,)

"""Layers as explicit matrices: each noiseless forward against a literal loop restatement.

Oracles are written independently of refmem.layers: plain index loops over the definitions of
theory §1 (NCHW flattening), §5 (index map ι(p, a), PyTorch cross-correlation), §6 (Toeplitz
W_UL) and §7 (average pooling, corrected window D13; batchnorm inference form).
"""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refmem.layers import (AvgPool2d, BatchNorm, Conv2d, Dense, Dropout, Flatten, ReLU,
                           im2col_index)


def conv_loops(x, K, b, stride, pad):
    """Direct convolution by loops: y[c_o, oh, ow] = Σ_{c,u,v} K[c_o,c,u,v] x[c, s oh+u-p, s ow+v-p]."""
    C, H, W = x.shape
    Co, Ci, k, _ = K.shape
    E = (H + 2 * pad - k) // stride + 1
    F = (W + 2 * pad - k) // stride + 1
    y = np.zeros((Co, E, F))
    for co in range(Co):
        for oh in range(E):
            for ow in range(F):
                acc = 0.0 if b is None else b[co]
                for c in range(Ci):
                    for u in range(k):
                        for v in range(k):
                            h, w = stride * oh + u - pad, stride * ow + v - pad
                            if 0 <= h < H and 0 <= w < W:
                                acc += K[co, c, u, v] * x[c, h, w]
                y[co, oh, ow] = acc
    return y


def toeplitz_loops(K, in_shape, stride, pad):
    """W_UL by loops (theory §6): row = flat input index, column = (c_o, o_h, o_w)."""
    C, H, W = in_shape
    Co, Ci, k, _ = K.shape
    E = (H + 2 * pad - k) // stride + 1
    F = (W + 2 * pad - k) // stride + 1
    T = np.zeros((C * H * W, Co * E * F))
    for co in range(Co):
        for oh in range(E):
            for ow in range(F):
                col = co * E * F + oh * F + ow
                for c in range(Ci):
                    for u in range(k):
                        for v in range(k):
                            h, w = stride * oh + u - pad, stride * ow + v - pad
                            if 0 <= h < H and 0 <= w < W:
                                T[c * H * W + h * W + w, col] += K[co, c, u, v]
    return T


conv_case = st.tuples(
    st.integers(1, 3),  # C_in
    st.integers(1, 3),  # C_out
    st.integers(1, 3),  # k
    st.integers(1, 3),  # stride
    st.integers(0, 2),  # padding
    st.integers(3, 7),  # H
    st.integers(3, 7),  # W
    st.booleans(),      # bias
    st.integers(0, 2**31 - 1),
)


@given(conv_case)
def test_conv_ur_forward_and_ul_toeplitz_equal_direct_convolution(case):
    Ci, Co, k, s, p, H, W, has_b, seed = case
    if H + 2 * p < k or W + 2 * p < k:
        return
    rng = np.random.default_rng(seed)
    K = rng.normal(size=(Co, Ci, k, k))
    b = rng.normal(size=Co) if has_b else None
    x = rng.normal(size=(2, Ci, H, W))
    layer = Conv2d(K, b, s, p)
    y = layer.forward(x)
    for i in range(2):
        ref = conv_loops(x[i], K, b, s, p)
        np.testing.assert_allclose(y[i], ref, rtol=1e-12, atol=1e-12)
    # UL: one Toeplitz crossbar with C_in H W rows (padding contributes no rows)
    T = layer.toeplitz((Ci, H, W))
    np.testing.assert_array_equal(T, toeplitz_loops(K, (Ci, H, W), s, p))
    E, F = y.shape[2], y.shape[3]
    yul = x.reshape(2, -1) @ T + (0 if b is None else np.repeat(b, E * F))
    np.testing.assert_allclose(yul, y.reshape(2, -1), rtol=1e-12, atol=1e-12)
    # streaming a subset of columns gives the same columns
    cols = np.arange(0, T.shape[1], 2)
    np.testing.assert_array_equal(layer.toeplitz((Ci, H, W), cols), T[:, cols])


def test_im2col_index_matches_definition():
    idx = im2col_index((2, 4, 5), k=3, stride=2, padding=1)
    E, F = 2, 3
    assert idx.shape == (E * F, 2 * 9)
    for oh in range(E):
        for ow in range(F):
            for c in range(2):
                for u in range(3):
                    for v in range(3):
                        h, w = 2 * oh + u - 1, 2 * ow + v - 1
                        want = c * 20 + h * 5 + w if (0 <= h < 4 and 0 <= w < 5) else -1
                        assert idx[oh * F + ow, c * 9 + u * 3 + v] == want


def test_dense_forward_and_matrix_orientation():
    rng = np.random.default_rng(1)
    Wt = rng.normal(size=(3, 5))      # PyTorch layout (out, in)
    b = rng.normal(size=3)
    x = rng.normal(size=(4, 5))
    d = Dense(Wt, b)
    ref = np.array([[sum(Wt[j, i] * x[n, i] for i in range(5)) + b[j] for j in range(3)]
                    for n in range(4)])
    np.testing.assert_allclose(d.forward(x), ref, rtol=1e-13)
    assert d.matrix().shape == (5, 3)  # theory §1: rows = inputs, columns = outputs
    np.testing.assert_array_equal(d.matrix()[2, 1], Wt[1, 2])


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 4),
       st.integers(0, 2**31 - 1))
def test_avgpool_forward_and_matrix_match_loops(C, E, F, kappa, seed):
    rng = np.random.default_rng(seed)
    H, W = E * kappa + rng.integers(0, kappa), F * kappa + rng.integers(0, kappa)
    x = rng.normal(size=(2, C, H, W))
    pool = AvgPool2d(kappa)
    y = pool.forward(x)
    ref = np.zeros((2, C, H // kappa, W // kappa))
    for n in range(2):
        for c in range(C):
            for i in range(H // kappa):
                for j in range(W // kappa):
                    tot = 0.0
                    for kk in range(kappa * i, kappa * i + kappa):   # κ terms (corrects D13)
                        for ll in range(kappa * j, kappa * j + kappa):
                            tot += x[n, c, kk, ll]
                    ref[n, c, i, j] = tot / kappa**2
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-14)
    A = pool.matrix((C, H, W))
    np.testing.assert_allclose(x.reshape(2, -1) @ A.T, ref.reshape(2, -1), rtol=1e-13, atol=1e-14)
    # O17: pooling a constant map gives the constant
    np.testing.assert_allclose(A @ np.full(C * H * W, 3.5), 3.5, rtol=1e-15)


def test_batchnorm_relu_flatten_dropout_forward():
    rng = np.random.default_rng(2)
    g, be, m, v = rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.1, 2, 3)
    bn = BatchNorm(g, be, m, v, eps=1e-3)
    x = rng.normal(size=(2, 3, 2, 2))
    y = bn.forward(x)
    for c in range(3):
        np.testing.assert_allclose(y[:, c], g[c] * (x[:, c] - m[c]) / np.sqrt(v[c] + 1e-3) + be[c],
                                   rtol=1e-13)
    np.testing.assert_array_equal(ReLU().forward(x), np.where(x > 0, x, 0.0))
    f = Flatten().forward(x)
    assert f.shape == (2, 12)
    np.testing.assert_array_equal(f[1, 1 * 4 + 1 * 2 + 0], x[1, 1, 1, 0])  # NCHW flattening
    np.testing.assert_array_equal(Dropout(0.5).forward(x), x)


def test_conv_output_shape_errors():
    from refmem.errors import ModelFileError
    c = Conv2d(np.ones((2, 3, 3, 3)))
    with pytest.raises(ModelFileError, match="input channels"):
        c.output_shape((2, 5, 5))
    with pytest.raises(ModelFileError, match="does not fit"):
        c.output_shape((3, 2, 2))

"""Golden-reference vectors (``refmem golden``) and the conformance check (``refmem check``).

A *golden suite* is one HDF5 file (``refmem-golden-v1.h5``, root attributes
``format="refmem-golden"``, ``version=1``) holding small, self-contained test cases of the
corrected specification (``spec §n``). Other implementations of MemSE-style moment
propagation compute every case their own way, write a *candidate* file and run
``refmem check GOLDEN --candidate CANDIDATE.h5``. The format and an adapter guide are in
``docs/golden.md``; this docstring is the short version.

Golden file
-----------
::

    /                        attrs format, version, case_ids (JSON), quantities (JSON),
                                   tiers (JSON), spec, refmem_version, numpy_version, created_utc
    /<case_id>/              attrs description, config (CrossbarConfig JSON), seed, detects (JSON),
                                   spec_sections (JSON), equations, fused_layers (JSON),
                                   input_random
        model/               a complete model file (docs/model_format.md) as a group
        input/mean           (B, *input_shape)
        input/cov            (B, L, L), only when the input is random
        mapping/NN/          lam, g_u, w_u (n_cols,) of crossbar layer NN (informative, not checked)
        expected/            the result schema of ``refmem moments --cov --per-layer``
                             (docs/result_format.md): mean, var, mse, reference, bias (B, J);
                             cov (B, J, J); power (B,); power_layers, power_mem, power_tia_pos,
                             power_tia_neg (B, n_xb); mse_mean, mse_max (B,);
                             layers/NN/mean, layers/NN/var (B, n_NN) after layer NN of the
                             *fused* network
            each dataset:    attrs spec_sections, equations, scale, rtol_float64, atol_float64,
                             rtol_float32, atol_float32

Candidate file: one group per case id with the same dataset names as ``expected/`` (float32 or
float64). An element passes when ``|c - e| <= atol + rtol |e|`` (tier ``float64`` or
``float32``; ``atol = atol_factor × scale`` with ``scale`` the dataset's max-abs value, see
:data:`TIERS`). Every stored value is a deterministic function of the code: regenerating the
suite on one machine gives bit-identical datasets; only ``created_utc`` (and the version
strings) change, and the check ignores attributes.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import CrossbarConfig
from .errors import ConfigError, DataError, RefmemError
from .layers import AvgPool2d, BatchNorm, Conv2d, Dense, Dropout, Flatten, ReLU
from .network import Network

__all__ = ["FORMAT", "VERSION", "FILENAME", "TIERS", "QUANTITIES", "CASES", "build_cases",
           "write_suite", "read_suite", "GoldenSuite", "GoldenCase", "recompute_case",
           "write_candidate", "check", "CheckReport", "add_golden_commands", "cmd_golden",
           "cmd_check"]

FORMAT = "refmem-golden"
VERSION = 1
FILENAME = f"refmem-golden-v{VERSION}.h5"
ENTROPY = 20_240_917
"""Root entropy of every random draw: case ``id`` uses ``default_rng([ENTROPY, crc32(id)])``."""

B = 2
"""Inputs per case (batch size)."""

TIERS = {
    "float64": {"rtol": 1e-9, "atol_factor": 1e-9},
    "float32": {"rtol": 1e-4, "atol_factor": 1e-5},
}
"""Tolerance tiers: ``|c − e| ≤ atol_factor·scale + rtol·|e|`` per element.

float64: sums here have ≤ ~300 terms, so rounding is ≲ 300·1.1e-16·κ with a cancellation
factor κ ≲ 10³ (Γ sums, ρ < 0 ReLU covariances) — about 3e-11; the exact ReLU covariance
(spec §8.2) by 64-point Gauss–Legendre is good to 2e-11·s₁s₂. 1e-9 leaves ≥ 30× headroom.
float32: ε₃₂ = 6e-8 per operation, the same sums give ≲ 2e-5 relative; an independent
float32 implementation (``tests/golden_mutants.py``) reaches ≤ 2 % of this tier, and every
deliberate formula error there still moves a compared quantity by ≥ 10× it (measured ≥ 80×).
"""

QUANTITIES = ("mean", "var", "cov", "mse", "reference", "bias", "mse_mean", "mse_max", "power",
              "power_layers", "power_mem", "power_tia_pos", "power_tia_neg")
"""Compared output quantities (plus ``layers/NN/mean`` and ``layers/NN/var``)."""

IGNORED_ATTRS = ("created_utc", "refmem_version", "numpy_version")
"""Root attributes that may differ between two generations of the same suite."""

SPEC = "corrected specification v1 (equations.md), Kern et al. MemSE + MohammadiRad & Sojodishijani"

# ---------------------------------------------------------------------- spec tags
_T_MAP = ("§3", "Eqs. (2)-(6): λ per column (D2), w^u over the design scope incl. the bias row (D3)")
_T_MOM = {
    "FC": ("§4", "Prop. 1, Eqs. (8)-(11) corrected: 2σ² on every input term (D6), Γ_ii (D7), "
                 "bias-row noise (D5b)"),
    "UR": ("§5", "Prop. 2, Eqs. (12)-(16) corrected: bias inside r (D8), same-tap shared-device "
                 "term (D9, D28), index map ι(p,a) (D10)"),
    "UL": ("§6", "UL Toeplitz crossbar: every entry a noisy pair, structural zeros included (D12)"),
    "avgpool2d": ("§7", "Prop. 3, Eqs. (17)-(20) corrected: window κi..κi+κ-1 (D13)"),
    "relu:exact": ("§8.1, §8.2", "Prop. 4, Eqs. (22)-(23) stable form (D14); exact bivariate "
                                 "ReLU covariance (D15)"),
    "relu:taylor": ("§8.1, §8.3", "Prop. 4, Eqs. (22)-(23) stable form (D14); Taylor covariance "
                                  "Eq. (28)"),
    "flatten": ("§1", "NCHW flattening"),
}
_T_POW = {
    "FC": ("§11.1", "Props 5-6, Eqs. (29)-(31), Cor. 1 corrected (D17-D20)"),
    "UR": ("§11.2", "Props 7-8, Eqs. (36)-(41), Cor. 2 corrected (D21-D24)"),
    "UL": ("§11.1, §6", "Props 5-6 with W = W_UL, structural zeros at g_min (D12, D17-D20)"),
}
_T_ALG = ("§15", "Algorithm 1 corrected: every layer from its input moments (D16)")
_T_MSE = ("§9", "Eq. (7): MSE = Var + (E - z)^2 against the unquantized noiseless network")
_T_REF = ("§1, §5", "reference forward: PyTorch layouts, NCHW flattening, cross-correlation (D10)")


# ---------------------------------------------------------------------- case definitions
@dataclass
class CaseDef:
    """A golden case before evaluation: the network, inputs and configuration."""

    id: str
    description: str
    network: Network
    x: np.ndarray
    config: CrossbarConfig
    input_cov: np.ndarray | None = None
    detects: tuple = ()
    features: tuple = ()
    seed: list = field(default_factory=list)


CASES = []
"""Ordered ``(case_id, builder)`` pairs; a builder maps a Generator to a :class:`CaseDef`."""


def _case(cid):
    def deco(fn):
        CASES.append((cid, fn))
        return fn
    return deco


def _rng(cid):
    return np.random.default_rng([ENTROPY, zlib.crc32(cid.encode())])


def _x(rng, shape, lo=0.1, hi=1.0):
    """Non-binary deterministic inputs (E X ≠ E X², spec §11)."""
    return rng.uniform(lo, hi, size=(B,) + tuple(shape))


def _cov(rng, L, scale=1.0, rank=3, jitter=0.25):
    """A random correlated covariance per input, (B, L, L): low rank (both-sign correlations,
    |ρ| up to ~0.9) plus a diagonal (spec §19.8 correlated inputs)."""
    out = np.empty((B, L, L))
    for b in range(B):
        F = rng.normal(size=(L, rank))
        d = rng.uniform(jitter, 2 * jitter, size=L)
        M = F @ F.T / rank + np.diag(d)
        out[b] = scale ** 2 * 0.5 * (M + M.T)
    return out


def _dense(rng, n_out, n_in, bias=True, scale=0.5):
    return Dense(scale * rng.normal(size=(n_out, n_in)),
                 scale * rng.normal(size=n_out) if bias else None)


def _conv(rng, c_out, c_in, k, stride, pad, bias=True, scale=0.4):
    return Conv2d(scale * rng.normal(size=(c_out, c_in, k, k)),
                  scale * rng.normal(size=c_out) if bias else None, stride, pad)


def _identity_conv(C):
    return Conv2d(np.eye(C).reshape(C, C, 1, 1), None, 1, 0)


@_case("dense_scalar")
def _c_dense_scalar(rng):
    net = Network([_dense(rng, 4, 6)], (6,))
    return CaseDef("dense_scalar", "single FC layer, scalar design, deterministic non-binary input, "
                   "g_min > 0", net, _x(rng, (6,)),
                   CrossbarConfig(sigma=0.08, g_min=0.1, g_u=1.0, design="scalar"),
                   detects=("D5b", "D6", "D17", "D19", "D22"))


@_case("dense_column_random")
def _c_dense_column(rng):
    net = Network([_dense(rng, 5, 8)], (8,))
    gu = {0: np.array([0.6, 0.7, 0.8, 0.9, 1.0])}
    return CaseDef("dense_column_random", "single FC layer, column design (one g_u per column), "
                   "correlated random input", net, rng.normal(0.3, 0.5, size=(B, 8)),
                   CrossbarConfig(sigma=0.05, g_min=0.05, g_u=gu, design="column"),
                   input_cov=_cov(rng, 8, 0.4), detects=("D5b", "D6", "D7", "D17", "D19"))


@_case("dense_digital_bias")
def _c_dense_digital(rng):
    net = Network([_dense(rng, 4, 5)], (5,))
    return CaseDef("dense_digital_bias", "single FC layer with the bias added digitally "
                   "(bias_on_crossbar=false: no bias row, no bias noise, bias outside w^u)",
                   net, _x(rng, (5,)),
                   CrossbarConfig(sigma=0.06, g_min=0.1, g_u=0.8, design="layer",
                                  bias_on_crossbar=False),
                   features=("digital_bias",))


@_case("dense_sigma_table")
def _c_dense_table(rng):
    net = Network([_dense(rng, 4, 6)], (6,))
    table = ([0.1, 0.4, 0.7, 1.0], [0.02, 0.06, 0.07, 0.12])
    return CaseDef("dense_sigma_table", "single FC layer with a conductance-dependent σ(g) table "
                   "(linear interpolation), g_min > 0 so σ(g_min) differs from σ(g_u)",
                   net, _x(rng, (6,)),
                   CrossbarConfig(sigma_table=table, g_min=0.1, g_u=1.0, design="layer"),
                   detects=("D5b", "D6", "D19"), features=("sigma_table",))


@_case("dense_r2_lam")
def _c_dense_r2(rng):
    net = Network([_dense(rng, 4, 6)], (6,))
    return CaseDef("dense_r2_lam", "single FC layer, TIA gain r = 2.5 (power only), fixed λ = 2 "
                   "(g_u = g_min + λ w^u), g_min = 0.2", net, _x(rng, (6,)),
                   CrossbarConfig(sigma=0.05, g_min=0.2, lam=2.0, r=2.5),
                   detects=("D17", "D19", "D22"), features=("r",))


@_case("dense_batchnorm")
def _c_dense_bn(rng):
    bn = BatchNorm(rng.uniform(0.5, 1.5, 5), rng.normal(0, 0.3, 5), rng.normal(0, 0.3, 5),
                   rng.uniform(0.5, 2.0, 5), 1e-5)
    net = Network([_dense(rng, 5, 6, bias=False), bn], (6,))
    return CaseDef("dense_batchnorm", "FC layer without bias followed by batchnorm: fused before "
                   "w^u and λ (spec §7); the fusion creates a noisy bias row", net, _x(rng, (6,)),
                   CrossbarConfig(sigma=0.05, g_min=0.1, g_u=1.0),
                   detects=("D5b",), features=("batchnorm",))


@_case("dropout_identity")
def _c_dropout(rng):
    net = Network([_dense(rng, 3, 5), Dropout(0.5)], (5,))
    return CaseDef("dropout_identity", "FC layer followed by dropout (identity at inference, "
                   "removed from the fused network: layers/NN index the fused layers)",
                   net, _x(rng, (5,)), CrossbarConfig(sigma=0.05, g_min=0.1, g_u=1.0),
                   features=("dropout",))


@_case("relu_exact")
def _c_relu_exact(rng):
    L = 6
    net = Network([Dense(np.eye(L)), ReLU()], (L,))
    return CaseDef("relu_exact", "ReLU alone (after a noiseless identity FC layer) on a correlated "
                   "Gaussian input with mixed-sign means: Prop. 4 and the exact covariance",
                   net, rng.normal(0.0, 0.8, size=(B, L)),
                   CrossbarConfig(sigma=0.0, g_min=0.1, g_u=1.0, relu_cov="exact"),
                   input_cov=_cov(rng, L, 0.9), detects=("D15",))


@_case("relu_taylor")
def _c_relu_taylor(rng):
    L = 6
    net = Network([Dense(np.eye(L)), ReLU()], (L,))
    return CaseDef("relu_taylor", "ReLU alone with relu_cov='taylor' (the paper's Eq. (28)): for "
                   "implementations that offer the paper's rule", net,
                   rng.normal(0.0, 0.8, size=(B, L)),
                   CrossbarConfig(sigma=0.0, g_min=0.1, g_u=1.0, relu_cov="taylor"),
                   input_cov=_cov(rng, L, 0.9))


@_case("avgpool")
def _c_avgpool(rng):
    shape = (2, 5, 5)
    L = int(np.prod(shape))
    net = Network([_identity_conv(2), AvgPool2d(2)], shape)
    return CaseDef("avgpool", "average pooling κ = 2 alone (after a noiseless identity 1x1 conv) on "
                   "a 2x5x5 random input (the last row/column is dropped)", net,
                   rng.normal(0.5, 0.5, size=(B,) + shape),
                   CrossbarConfig(sigma=0.0, g_min=0.1, g_u=1.0), input_cov=_cov(rng, L, 0.5),
                   detects=("D13",))


@_case("flatten")
def _c_flatten(rng):
    shape = (2, 3, 3)
    net = Network([_identity_conv(2), Flatten()], shape)
    return CaseDef("flatten", "flatten alone (after a noiseless identity 1x1 conv): NCHW order",
                   net, rng.normal(0.5, 0.5, size=(B,) + shape),
                   CrossbarConfig(sigma=0.0, g_min=0.1, g_u=1.0),
                   input_cov=_cov(rng, int(np.prod(shape)), 0.5))


@_case("conv_ur_s1p1")
def _c_conv_ur(rng):
    net = Network([_conv(rng, 2, 2, 3, 1, 1)], (2, 4, 4))
    return CaseDef("conv_ur_s1p1", "UR conv k=3, stride 1, padding 1, scalar design, deterministic "
                   "input: the shared-device covariance between positions", net, _x(rng, (2, 4, 4)),
                   CrossbarConfig(sigma=0.06, g_min=0.1, g_u=1.0, mapping="UR"),
                   detects=("D5b", "D9", "D17", "D19", "D22", "D23", "D28"))


@_case("conv_ur_s2p1_column")
def _c_conv_ur2(rng):
    net = Network([_conv(rng, 3, 2, 3, 2, 1)], (2, 5, 5))
    gu = {0: np.array([0.7, 0.9, 1.1])}
    return CaseDef("conv_ur_s2p1_column", "UR conv k=3, stride 2, padding 1, column design (one g_u "
                   "per output channel), correlated random input, r = 1.3", net,
                   rng.normal(0.4, 0.4, size=(B, 2, 5, 5)),
                   CrossbarConfig(sigma=0.04, g_min=0.05, g_u=gu, design="column", mapping="UR",
                                  r=1.3),
                   input_cov=_cov(rng, 50, 0.3), detects=("D7", "D9", "D17", "D23", "D28"),
                   features=("r",))


@_case("conv_ul_s1p1")
def _c_conv_ul(rng):
    net = Network([_conv(rng, 2, 2, 3, 1, 1)], (2, 4, 4))
    return CaseDef("conv_ul_s1p1", "UL conv k=3, stride 1, padding 1 (Toeplitz crossbar, noisy "
                   "structural zeros), deterministic input", net, _x(rng, (2, 4, 4)),
                   CrossbarConfig(sigma=0.06, g_min=0.1, g_u=1.0, mapping="UL"),
                   detects=("D5b", "D12", "D17", "D19", "D23"))


@_case("conv_ul_s2p0_column")
def _c_conv_ul2(rng):
    net = Network([_conv(rng, 2, 2, 3, 2, 0)], (2, 5, 5))
    gu = {0: np.linspace(0.6, 1.0, 8)}
    return CaseDef("conv_ul_s2p0_column", "UL conv k=3, stride 2, no padding, column design (one g_u "
                   "per Toeplitz column (c_o, p)), correlated random input", net,
                   rng.normal(0.4, 0.4, size=(B, 2, 5, 5)),
                   CrossbarConfig(sigma=0.05, g_min=0.05, g_u=gu, design="column", mapping="UL"),
                   input_cov=_cov(rng, 50, 0.3), detects=("D7", "D12", "D17", "D23"))


@_case("conv_ur_pool")
def _c_conv_ur_pool(rng):
    net = Network([_conv(rng, 2, 1, 3, 1, 1), AvgPool2d(2)], (1, 4, 4))
    return CaseDef("conv_ur_pool", "UR conv followed by average pooling: the shared-device term "
                   "appears in the pooled variance", net, _x(rng, (1, 4, 4)),
                   CrossbarConfig(sigma=0.08, g_min=0.05, g_u=1.0, mapping="UR"),
                   detects=("D9", "D13", "D23", "D28"))


@_case("conv_batchnorm_ur")
def _c_conv_bn(rng):
    bn = BatchNorm(rng.uniform(0.5, 1.5, 3), rng.normal(0, 0.3, 3), rng.normal(0, 0.3, 3),
                   rng.uniform(0.5, 2.0, 3), 1e-5)
    net = Network([_conv(rng, 3, 1, 3, 1, 0, bias=False), bn], (1, 5, 5))
    return CaseDef("conv_batchnorm_ur", "UR conv without bias + batchnorm (per-channel fusion, "
                   "spec §7), layer design", net, _x(rng, (1, 5, 5)),
                   CrossbarConfig(sigma=0.05, g_min=0.1, g_u=1.0, design="layer", mapping="UR"),
                   detects=("D5b", "D9", "D23"), features=("batchnorm",))


@_case("alpha_mlp2")
def _c_alpha(rng):
    net = Network([_dense(rng, 5, 6), ReLU(), _dense(rng, 3, 5)], (6,))
    return CaseDef("alpha_mlp2", "MohammadiRad & Sojodishijani multiplicative noise (1+αN)w, "
                   "α = 0.25, on both layers, no device noise (spec §13)", net, _x(rng, (6,)),
                   CrossbarConfig(alpha=0.25, g_min=0.0, g_u=1.0), features=("alpha",))


@_case("noisy_last_mlp2")
def _c_noisy_last(rng):
    net = Network([_dense(rng, 5, 6), ReLU(), _dense(rng, 3, 5)], (6,))
    return CaseDef("noisy_last_mlp2", "device noise on the last crossbar layer only "
                   "(noisy_layers=['last']); the clean layer still dissipates power",
                   net, _x(rng, (6,)),
                   CrossbarConfig(sigma=0.06, g_min=0.1, g_u=1.0, noisy_layers=("last",)),
                   features=("noisy_layers",))


@_case("quant_fixed")
def _c_quant_fixed(rng):
    net = Network([_dense(rng, 5, 6), ReLU(), _dense(rng, 3, 5)], (6,))
    return CaseDef("quant_fixed", "4-bit / 3-bit fixed quantization (q(W) programmed; the reference "
                   "stays unquantized, so the MSE has a deterministic bias)", net, _x(rng, (6,)),
                   CrossbarConfig(sigma=0.03, g_min=0.05, g_u=1.0, design="layer", bits=(4, 3),
                                  quant_mode="fixed"),
                   features=("quant_fixed",))


@_case("quant_dither")
def _c_quant_dither(rng):
    net = Network([_dense(rng, 4, 6)], (6,))
    return CaseDef("quant_dither", "3-bit subtractively dithered quantization: Δ²/12 per pair, "
                   "bias row included", net, _x(rng, (6,)),
                   CrossbarConfig(sigma=0.02, g_min=0.05, g_u=1.0, bits=3, quant_mode="dither"),
                   features=("quant_dither",))


def _mlp3(rng):
    return Network([_dense(rng, 6, 8), ReLU(), _dense(rng, 5, 6), ReLU(), _dense(rng, 3, 5)], (8,))


@_case("mlp3_scalar")
def _c_mlp3(rng):
    return CaseDef("mlp3_scalar", "3-layer MLP 8-6-5-3 with ReLUs, scalar design, deterministic "
                   "input", _mlp3(rng), _x(rng, (8,)),
                   CrossbarConfig(sigma=0.08, g_min=0.05, g_u=1.0, design="scalar"),
                   detects=("D5b", "D6", "D7", "D15", "D17", "D19"))


@_case("mlp3_layer_random")
def _c_mlp3_layer(rng):
    net = _mlp3(rng)
    return CaseDef("mlp3_layer_random", "3-layer MLP, layer design (one g_u per layer), r = 1.5, "
                   "correlated random input", net, rng.normal(0.3, 0.4, size=(B, 8)),
                   CrossbarConfig(sigma=0.06, g_min=0.05, g_u=(0.8, 1.0, 0.6), design="layer",
                                  r=1.5),
                   input_cov=_cov(rng, 8, 0.3), detects=("D6", "D7", "D15", "D17", "D19"),
                   features=("r",))


def _cnn(rng):
    return Network([_conv(rng, 2, 1, 3, 1, 1), ReLU(), AvgPool2d(2), _conv(rng, 3, 2, 2, 1, 0),
                    ReLU(), Flatten(), _dense(rng, 3, 12)], (1, 6, 6))


def _cnn_case(cid, mapping, rng):
    rng = _rng("cnn")                     # the same network and inputs in both mappings
    return CaseDef(cid, f"small CNN conv(1-2,k3,p1)-relu-pool2-conv(2-3,k2)-relu-flatten-dense(12-3), "
                   f"{mapping} mapping, layer design, r = 1.5", _cnn(rng), _x(rng, (1, 6, 6)),
                   CrossbarConfig(sigma=0.05, g_min=0.05, g_u=(1.0, 0.8, 0.9), design="layer",
                                  mapping=mapping, r=1.5),
                   detects=(("D9", "D28") if mapping == "UR" else ("D12",))
                   + ("D5b", "D7", "D13", "D15", "D17", "D19", "D23"), features=("r",))


@_case("cnn_ur")
def _c_cnn_ur(rng):
    return _cnn_case("cnn_ur", "UR", rng)


@_case("cnn_ul")
def _c_cnn_ul(rng):
    return _cnn_case("cnn_ul", "UL", rng)


def build_cases(only=None) -> list:
    """Instantiate the case definitions (deterministic: seeded per case id)."""
    out = []
    for cid, fn in CASES:
        if only is not None and cid not in only:
            continue
        case = fn(_rng(cid))
        case.seed = [ENTROPY, zlib.crc32(cid.encode())]
        case.network.validate()
        out.append(case)
    return out


# ---------------------------------------------------------------------- evaluation with refmem
def recompute_case(network, x, config, input_cov=None) -> dict:
    """All compared quantities of one case computed by refmem (``refmem moments --cov
    --per-layer``): dataset name → float64 array (spec §4–§11, §15)."""
    from .mapping import map_network
    from .moments import propagate

    mapped = map_network(network, config)
    res = propagate(mapped, x, input_cov=input_cov, cov=True, per_layer=True)
    out = {k: np.asarray(v, dtype=np.float64) for k, v in res.datasets().items()}
    for gname, dsets in res.groups().items():
        for k, v in dsets.items():
            out[f"{gname}/{k}"] = np.asarray(v, dtype=np.float64)
    return out


def _layer_kinds(mapped):
    """Per fused position: the tag key of the layer (FC/UR/UL/relu:…/avgpool2d/flatten)."""
    bypos = mapped.by_position()
    kinds = []
    for pos, layer in enumerate(mapped.fused.layers):
        if pos in bypos:
            kinds.append(bypos[pos].scheme)
        elif isinstance(layer, ReLU):
            kinds.append(f"relu:{mapped.config.relu_cov}")
        else:
            kinds.append(layer.type)
    return kinds


def _feature_tags(case):
    cfg = case.config
    tags = []
    if cfg.sigma_table is not None:
        tags.append(("§2 A8, §3.2", "σ(g) per device: V = σ²(g+) + σ²(g-)"))
    if cfg.alpha:
        tags.append(("§13", "[M] multiplicative noise α²w² (bias included)"))
    if cfg.bits is not None:
        tags.append(("§14", f"k-bit uniform quantization ({cfg.quant_mode}"
                            + (": Δ²/12 per pair)" if cfg.quant_mode == "dither" else ": q(W))")))
    if not cfg.bias_on_crossbar:
        tags.append(("§2 A4", "digital bias: no bias row (D5b)"))
    if cfg.noisy_layers != "all":
        tags.append(("§13", "noise on selected layers only"))
    if any(isinstance(l, BatchNorm) for l in case.network.layers):
        tags.append(("§7", "batchnorm fused before w^u and λ"))
    return tags


def _dataset_tags(name, kinds, mapped, feats):
    """(spec_sections, equations) exercised by one expected dataset."""
    xb = {m.position: m.scheme for m in mapped.layers}
    last_xb = max(xb)
    tags = [_T_MAP]
    if name.startswith("layers/"):
        upto = int(name.split("/")[1])
    elif name.startswith("power"):
        upto = last_xb - 1
        tags += [_T_POW[s] for p, s in sorted(xb.items())]
        if mapped.config.r != 1.0:
            tags.append(("§3.3", "physical TIA gain r in power only"))
    else:
        upto = len(kinds) - 1
    tags += [_T_MOM[k] for k in kinds[:upto + 1] if k in _T_MOM]
    tags += feats
    if upto >= 1 or name.startswith("power"):
        tags.append(_T_ALG)
    if name in ("mse", "mse_mean", "mse_max", "bias"):
        tags.append(_T_MSE)
    if name in ("reference", "bias"):
        tags = [_T_REF] + [t for t in feats if t[0] == "§7"]
        if name == "bias":
            tags.append(_T_MSE)
    secs, eqs = [], []
    for s, e in tags:
        for part in s.split(", "):
            if part not in secs:
                secs.append(part)
        if e not in eqs:
            eqs.append(e)
    return secs, "; ".join(eqs)


def _scales(expected):
    """Tolerance scale per dataset: its max-abs value (bias: that of the mean / reference);
    a dataset that is identically zero borrows the largest scale of its kind."""
    def kind(n):
        leaf = n.rsplit("/", 1)[-1]
        if leaf in ("mean", "reference", "bias"):
            return "first"
        if n.startswith("power"):
            return "power"
        return "second"
    mx = {n: float(np.max(np.abs(v))) if v.size else 0.0 for n, v in expected.items()}
    mx["bias"] = max(mx.get("mean", 0.0), mx.get("reference", 0.0))
    by_kind = {}
    for n, v in mx.items():
        by_kind[kind(n)] = max(by_kind.get(kind(n), 0.0), v)
    return {n: (v if v > 0 else by_kind[kind(n)]) for n, v in mx.items()}


# ---------------------------------------------------------------------- model as a group
def _model_to_group(network, group):
    """Write ``network`` into ``group`` as a complete model file (docs/model_format.md)."""
    from .modelfile import write_model_group

    write_model_group(network, group)


def _model_from_group(group, where):
    """Read a model group with the model-file reader (same validation)."""
    from .modelfile import read_model_group

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

    Writes ``out_dir/refmem-golden-v1.h5`` atomically (:func:`refmem.hdf5io.atomic_h5`) and
    ``out_dir/SUMMARY.md`` (the printed case list, for reviewing a regeneration as a diff).
    Returns the path of the HDF5 file.
    """
    from .hdf5io import atomic_h5, standard_attrs
    from .mapping import map_network

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"golden output {out_dir} exists and is not a directory")
    if not out_dir.exists():
        if not out_dir.parent.exists():
            raise DataError(f"output directory does not exist: {out_dir.parent}")
        out_dir.mkdir()
    cases = build_cases(only)
    path = out_dir / FILENAME
    summary = []
    with atomic_h5(path) as f:
        attrs = standard_attrs()
        attrs.update(format=FORMAT, version=np.int64(VERSION), spec=SPEC,
                     case_ids=_json([c.id for c in cases]),
                     quantities=_json(list(QUANTITIES) + ["layers/NN/mean", "layers/NN/var"]),
                     tiers=_json(TIERS), entropy=np.int64(ENTROPY))
        for k in sorted(attrs):
            f.attrs[k] = attrs[k]
        for case in cases:
            summary.append(_write_case(f, case, map_network))
    (out_dir / "SUMMARY.md").write_text(_summary_text(cases, summary))
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
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


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
    from .hdf5io import atomic_h5

    with atomic_h5(path) as f:
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        for cid in results:
            for name, arr in results[cid].items():
                f.create_dataset(f"{cid}/{name}", data=np.asarray(arr))


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


# ---------------------------------------------------------------------- CLI
def cmd_golden(args) -> int:
    """``refmem golden -o DIR``: write the golden suite (see :func:`write_suite`)."""
    only = None
    if getattr(args, "only", None):
        only = [t.strip() for t in args.only.split(",") if t.strip()]
        known = [c for c, _ in CASES]
        bad = [c for c in only if c not in known]
        if bad:
            raise ConfigError(f"unknown case(s) {', '.join(bad)}; known: {', '.join(known)}")
    path = write_suite(args.output, only=only)
    if not getattr(args, "quiet", False):
        suite = read_suite(path)
        for cid, case in suite.cases.items():
            print(f"{cid:<22} {case.description}")
        print(f"wrote {len(suite.cases)} cases to {path} (format {FORMAT} v{VERSION}; "
              f"{os.path.getsize(path) / 1024:.0f} KiB) and {path.parent / 'SUMMARY.md'}")
    return 0


def cmd_check(args) -> int:
    """``refmem check GOLDEN [--candidate RESULT.h5]``: exit 0 if every quantity passes, 1 if
    any fails (bad files raise a one-line error: exit 2 from the CLI)."""
    if args.save and args.candidate:
        raise ConfigError("--save writes refmem's own recomputation; it cannot be combined with "
                          "--candidate")
    report = check(args.golden, args.candidate, only=args.only, tier=args.tier,
                   quantities=args.quantities)
    print(report.format(failures_only=args.quiet))
    if args.save:
        results = {}
        suite = read_suite(args.golden, only=list({r.case for r in report.rows}) or None)
        for cid, case in suite.cases.items():
            results[cid] = recompute_case(case.network, case.x, case.config, case.input_cov)
        write_candidate(args.save, results, attrs={"golden_format": FORMAT,
                                                   "golden_version": np.int64(VERSION),
                                                   "producer": "refmem check --save"})
        print(f"wrote refmem's candidate file {args.save}")
    return 0 if report.ok else 1


def add_golden_commands(subparsers) -> None:
    """Register ``refmem golden`` and ``refmem check`` on an argparse subparsers object."""
    s = subparsers.add_parser(
        "golden", help="write the golden-reference suite (HDF5 test vectors for other implementations)",
        description="Write the versioned golden suite DIR/refmem-golden-v1.h5 (one group per case: "
                    "model, input, configuration, expected moments/MSE/power with tolerances) and "
                    "DIR/SUMMARY.md. Format: docs/golden.md.")
    s.add_argument("-o", "--output", required=True, metavar="DIR")
    s.add_argument("--only", metavar="CASE,...", help="generate only these cases")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_golden)

    s = subparsers.add_parser(
        "check", help="compare a candidate result file (or refmem itself) with a golden suite",
        description="Per case and quantity: max abs / rel error and PASS/FAIL "
                    "(|c-e| <= atol + rtol|e|). Exit status 0 if all pass, 1 if any fails, "
                    "2 for a bad file. Without --candidate refmem recomputes every case (self-test).")
    s.add_argument("golden", metavar="GOLDEN", help="golden file or a directory holding one")
    s.add_argument("--candidate", metavar="RESULT.h5",
                   help="one group per case id in the result schema of `refmem moments`")
    s.add_argument("--only", metavar="CASE[:QUANTITY],...",
                   help="check only these cases (or single quantities); others are not required")
    s.add_argument("--quantities", metavar="PATTERN,...",
                   help="compare only quantities matching these patterns (e.g. 'mean,var,cov,layers/*')")
    s.add_argument("--tier", choices=sorted(TIERS), default="float64",
                   help="tolerance tier: float64 (default) or float32 (looser)")
    s.add_argument("--save", metavar="OUT.h5",
                   help="self-test only: also write refmem's recomputation as a candidate file")
    s.add_argument("-q", "--quiet", action="store_true", help="print failing rows and the summary only")
    s.set_defaults(func=cmd_check)

"""Golden suite, part 1: the constants of format v1, the case definitions (seeded per case id)
and the evaluation of a case with refmem (expected values, spec tags, tolerance scales).

The package docstring (:mod:`refmem.golden`) describes the file format.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from ..config import CrossbarConfig
from ..layers import AvgPool2d, BatchNorm, Conv2d, Dense, Dropout, Flatten, ReLU
from ..network import Network

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
(theory §8.2) by 64-point Gauss–Legendre is good to 2e-11·s₁s₂. 1e-9 leaves ≥ 30× headroom.
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
    """Non-binary deterministic inputs (E X ≠ E X², theory §11)."""
    return rng.uniform(lo, hi, size=(B,) + tuple(shape))


def _cov(rng, L, scale=1.0, rank=3, jitter=0.25):
    """A random correlated covariance per input, (B, L, L): low rank (both-sign correlations,
    |ρ| up to ~0.9) plus a diagonal (theory §19.8 correlated inputs)."""
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
                   "w^u and λ (theory §7); the fusion creates a noisy bias row", net, _x(rng, (6,)),
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
                   "theory §7), layer design", net, _x(rng, (1, 5, 5)),
                   CrossbarConfig(sigma=0.05, g_min=0.1, g_u=1.0, design="layer", mapping="UR"),
                   detects=("D5b", "D9", "D23"), features=("batchnorm",))


@_case("alpha_mlp2")
def _c_alpha(rng):
    net = Network([_dense(rng, 5, 6), ReLU(), _dense(rng, 3, 5)], (6,))
    return CaseDef("alpha_mlp2", "MohammadiRad & Sojodishijani multiplicative noise (1+αN)w, "
                   "α = 0.25, on both layers, no device noise (theory §13)", net, _x(rng, (6,)),
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
    --per-layer``): dataset name → float64 array (theory §4–§11, §15)."""
    from ..mapping import map_network
    from ..moments import propagate

    mapped = map_network(network, config)
    res = propagate(mapped, x, input_cov=input_cov, cov=True, per_layer=True)
    # the golden v1 names (a published contract): mse_mean / mse_max are the result schema's
    # mse_per_input / mse_max_per_input
    v1 = {"mse_mean": "mse_per_input", "mse_max": "mse_max_per_input"}
    out = {q: np.asarray(getattr(res, v1.get(q, q)), dtype=np.float64) for q in QUANTITIES}
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

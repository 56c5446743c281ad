"""Registry of bad command lines for ``tests/test_bad_inputs.py`` (issue 10).

Every case is a command line (run in a fresh working directory holding the standard files of
:func:`standard_files`), an optional ``files`` factory that adds or breaks files there, and an
optional regular expression the one error line must match. The test asserts, for every case:
exit status 2, exactly one line on stderr, starting ``refmem: error: ``, no traceback, and the
working directory unchanged afterwards (the same names, the same bytes).

A subcommand adds its own cases from its test module (or here) with :func:`register`::

    from badinputs import register
    register("options", "optimize-budget-negative",
             ["optimize", "model.h5", "--input", "x.npy", "--budget", "-1", "-o", "o.h5"],
             match="budget")

``mode="fsize"`` runs the command in a child process whose file-size limit (RLIMIT_FSIZE) is
``fsize`` bytes, with SIGXFSZ ignored, so a write past it fails like a full disk (real even as
root, where permission bits stop nothing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import h5py
import numpy as np

CATEGORIES = ("files", "arrays", "options", "outputs")


@dataclass
class BadCase:
    category: str
    id: str
    argv: list
    files: Optional[Callable[[Path], None]] = None
    match: Optional[str] = None
    mode: str = "inprocess"            # or "fsize"
    fsize: int = 0
    needs: tuple = ()                  # features that must be present (e.g. "io")
    marks: tuple = field(default_factory=tuple)


REGISTRY: list[BadCase] = []


def register(category, id, argv, files=None, match=None, **kw) -> BadCase:
    """Add a bad-input case (``category`` one of :data:`CATEGORIES`; ``id`` unique)."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}")
    if any(c.id == id for c in REGISTRY):
        raise ValueError(f"duplicate bad-input case id {id!r}")
    case = BadCase(category, id, [str(a) for a in argv], files, match, **kw)
    REGISTRY.append(case)
    return case


# ---------------------------------------------------------------------- standard files
def standard_files(d: Path) -> None:
    """model.h5 (dense 4→3, ReLU, dense 3→2), cnn.h5, x.npy (3, 4), ximg.npy, y.npy, cov.npy,
    table.csv (σ table over [0, 10]), gu.npz (keys 0, 1), golden/ (not created here)."""
    from refmem import AvgPool2d, Conv2d, Dense, Flatten, Network, ReLU, save_model

    rng = np.random.default_rng(0)
    mlp = Network([Dense(rng.normal(size=(3, 4)), rng.normal(size=3)), ReLU(),
                   Dense(rng.normal(size=(2, 3)), rng.normal(size=2))], (4,))
    cnn = Network([Conv2d(rng.normal(size=(2, 1, 3, 3)), rng.normal(size=2), 1, 1), ReLU(),
                   AvgPool2d(2), Flatten(), Dense(rng.normal(size=(3, 8)), rng.normal(size=3))],
                  (1, 4, 4))
    save_model(mlp, d / "model.h5")
    save_model(cnn, d / "cnn.h5")
    np.save(d / "x.npy", rng.uniform(0, 1, size=(3, 4)))
    np.save(d / "ximg.npy", rng.uniform(0, 1, size=(2, 1, 4, 4)))
    np.save(d / "y.npy", np.array([0, 1, 1]))
    np.save(d / "cov.npy", np.eye(4) * 0.01)
    (d / "table.csv").write_text("g,sigma\n0,0.01\n10,0.02\n")
    np.savez(d / "gu.npz", **{"0": np.float64(1.0), "1": np.float64(1.0)})


# ---------------------------------------------------------------------- file makers
def write(name, data: bytes | str):
    def make(d):
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return make


def npy(name, arr, allow_pickle=False):
    def make(d):
        np.save(d / name, arr, allow_pickle=allow_pickle)
    return make


def truncated(src, name, frac):
    def make(d):
        b = (d / src).read_bytes()
        (d / name).write_bytes(b[:int(len(b) * frac)])
    return make


def h5edit(name, fn, src="model.h5"):
    """Copy ``src`` to ``name`` and apply ``fn(h5py.File)`` to the copy."""
    def make(d):
        (d / name).write_bytes((d / src).read_bytes())
        with h5py.File(d / name, "a") as f:
            fn(f)
    return make


def chain(*makers):
    def make(d):
        for m in makers:
            m(d)
    return make


MC = ["mc", "model.h5", "--input", "x.npy", "-n", "4", "--seed", "1", "-q"]
MOM = ["moments", "model.h5", "--input", "x.npy", "-q"]


def mc(*extra, out="out.h5"):
    return MC + list(extra) + ["-o", out]


def mom(*extra, out="out.h5"):
    return MOM + list(extra) + ["-o", out]


# ====================================================================== files
def _set(path, key, value):
    def fn(f):
        f[path].attrs[key] = value
    return fn


def _del(path):
    def fn(f):
        del f[path]
    return fn


def _replace_layer_with_dataset(f):
    del f["layers/01"]
    f["layers/01"] = np.zeros(3)


def _dangling(f):
    del f["layers/01"]
    f["layers/01"] = h5py.SoftLink("/nowhere")


def _external(f):
    del f["layers/01"]
    f["layers/01"] = h5py.ExternalLink("missing_other.h5", "/layers/01")


def _zero_layers(f):
    for k in list(f["layers"].keys()):
        del f["layers"][k]


def _string_weight(f):
    del f["layers/00/weight"]
    f["layers/00/weight"] = np.array([b"a", b"b"])


def _bn_model(f):
    """insert a batchnorm with a string eps after layer 00 (layers renumbered)."""
    g = f["layers"]
    g.move("02", "03")
    g.move("01", "02")
    bn = g.create_group("01")
    bn.attrs["type"] = "batchnorm"
    for k, v in (("gamma", 1.0), ("beta", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        bn[k] = np.full(3, v)
    bn.attrs["eps"] = "small"


def _dropout_p(value):
    def fn(f):
        g = f["layers"]
        g.move("02", "03")
        g.move("01", "02")
        dp = g.create_group("01")
        dp.attrs["type"] = "dropout"
        dp.attrs["p"] = value
    return fn


_INFO_FILES = [
    ("missing-model", ["info", "nope.h5"], None, "not found"),
    ("empty-model", ["info", "e.h5"], write("e.h5", b""), None),
    ("truncated-model-half", ["info", "t.h5"], truncated("model.h5", "t.h5", 0.5), None),
    ("truncated-model-header", ["info", "t.h5"], truncated("model.h5", "t.h5", 0.01), None),
    ("corrupt-model", ["info", "c.h5"], write("c.h5", os.urandom(0) + bytes(range(256)) * 8), None),
    ("text-as-model", ["info", "x.npy"], None, None),
    ("directory-as-model", ["info", "sub"], lambda d: (d / "sub").mkdir(), None),
    ("wrong-format-attr", ["info", "m.h5"], h5edit("m.h5", _set("/", "format", "other")), "format"),
    ("wrong-version", ["info", "m.h5"], h5edit("m.h5", _set("/", "version", 99)), "version"),
    ("version-string", ["info", "m.h5"], h5edit("m.h5", _set("/", "version", "one")), "version"),
    ("input-shape-float", ["info", "m.h5"], h5edit("m.h5", _set("/", "input_shape", [4.5])),
     "input_shape"),
    ("input-shape-string", ["info", "m.h5"], h5edit("m.h5", _set("/", "input_shape", "4")),
     "input_shape"),
    ("input-shape-negative", ["info", "m.h5"], h5edit("m.h5", _set("/", "input_shape", [-4])),
     None),
    ("input-shape-missing", ["info", "m.h5"], h5edit("m.h5", lambda f: f.attrs.__delitem__(
        "input_shape")), "input_shape"),
    ("no-layers-group", ["info", "m.h5"], h5edit("m.h5", _del("layers")), "layers"),
    ("layers-is-dataset", ["info", "m.h5"],
     h5edit("m.h5", lambda f: (f.__delitem__("layers"), f.create_dataset("layers", data=[1]))),
     "layers"),
    ("layer-entry-is-dataset", ["info", "m.h5"], h5edit("m.h5", _replace_layer_with_dataset),
     "01"),
    ("dangling-soft-link", ["info", "m.h5"], h5edit("m.h5", _dangling), "01"),
    ("external-link", ["info", "m.h5"], h5edit("m.h5", _external), "01"),
    ("unknown-layer-type", ["info", "m.h5"], h5edit("m.h5", _set("layers/01", "type", "gelu")),
     "gelu"),
    ("layer-type-missing", ["info", "m.h5"],
     h5edit("m.h5", lambda f: f["layers/01"].attrs.__delitem__("type")), "type"),
    ("layer-names-gap", ["info", "m.h5"], h5edit("m.h5", lambda f: f["layers"].move("02", "05")),
     "00, 01"),
    ("weight-missing", ["info", "m.h5"], h5edit("m.h5", _del("layers/00/weight")), "weight"),
    ("weight-string", ["info", "m.h5"], h5edit("m.h5", _string_weight), "weight"),
    ("weight-nan", ["info", "m.h5"], h5edit("m.h5", lambda f: f["layers/00/weight"].__setitem__(
        (0, 0), np.nan)), "NaN"),
    ("weight-3d", ["info", "m.h5"], h5edit("m.h5", lambda f: (
        f.__delitem__("layers/00/weight"), f.create_dataset("layers/00/weight",
                                                            data=np.ones((3, 4, 1))))), None),
    ("bias-wrong-length", ["info", "m.h5"], h5edit("m.h5", lambda f: (
        f.__delitem__("layers/00/bias"), f.create_dataset("layers/00/bias", data=np.ones(5)))),
     "bias"),
    ("shape-chain-broken", ["info", "m.h5"], h5edit("m.h5", lambda f: (
        f.__delitem__("layers/02/weight"), f.create_dataset("layers/02/weight",
                                                            data=np.ones((2, 5))))), None),
    ("batchnorm-eps-string", ["info", "m.h5"], h5edit("m.h5", _bn_model), "eps"),
    ("dropout-p-string", ["info", "m.h5"], h5edit("m.h5", _dropout_p("half")), "p"),
    ("dropout-p-array", ["info", "m.h5"], h5edit("m.h5", _dropout_p([0.1, 0.2])), "p"),
    ("dropout-p-out-of-range", ["info", "m.h5"], h5edit("m.h5", _dropout_p(1.5)), "p"),
    ("conv-stride-string", ["info", "m.h5"], h5edit("m.h5", _set("layers/00", "stride", "two"),
                                                   src="cnn.h5"), "stride"),
    ("conv-stride-zero", ["info", "m.h5"], h5edit("m.h5", _set("layers/00", "stride", 0),
                                                 src="cnn.h5"), "stride"),
    ("conv-padding-negative", ["info", "m.h5"], h5edit("m.h5", _set("layers/00", "padding", -1),
                                                      src="cnn.h5"), "padding"),
    ("pool-kernel-zero", ["info", "m.h5"], h5edit("m.h5", _set("layers/02", "kernel_size", 0),
                                                 src="cnn.h5"), "kernel"),
    ("zero-layer-model", ["info", "m.h5"], h5edit("m.h5", _zero_layers), "layer"),
    ("model-for-mc-missing", mc()[:1] + ["nope.h5"] + mc()[2:], None, "not found"),
    ("mc-model-corrupt", ["mc", "c.h5"] + mc()[2:], write("c.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 64),
     None),
    ("moments-zero-layer-model", ["moments", "m.h5"] + mom()[2:], h5edit("m.h5", _zero_layers),
     None),
    ("input-missing", mc()[:3] + ["nope.npy"] + mc()[4:], None, "not found"),
    ("input-empty-file", mc()[:3] + ["e.npy"] + mc()[4:], write("e.npy", b""), None),
    ("input-truncated", mc()[:3] + ["t.npy"] + mc()[4:], truncated("x.npy", "t.npy", 0.7), None),
    ("input-corrupt", mc()[:3] + ["c.npy"] + mc()[4:], write("c.npy", b"\x93NUMPY garbage"), None),
    ("input-is-directory", mc()[:3] + ["sub"] + mc()[4:], lambda d: (d / "sub").mkdir(), None),
    ("input-is-npz", mc()[:3] + ["gu.npz"] + mc()[4:], None, None),
    ("input-is-hdf5", mc()[:3] + ["model.h5"] + mc()[4:], None, None),
    ("labels-missing", mc("--labels", "nope.npy"), None, "not found"),
    ("input-cov-missing", mom("--input-cov", "nope.npy"), None, "not found"),
    ("sigma-table-missing", mom("--sigma-table", "nope.csv"), None, "not found"),
    ("sigma-table-directory", mom("--sigma-table", "sub"), lambda d: (d / "sub").mkdir(), None),
    ("sigma-table-empty", mom("--sigma-table", "e.csv"), write("e.csv", ""), None),
    ("sigma-table-binary", mom("--sigma-table", "b.csv"), write("b.csv", bytes(range(256))), None),
    ("sigma-table-no-header", mom("--sigma-table", "t.csv"), write("t.csv", "0,0.1\n1,0.2\n"),
     None),
    ("sigma-table-text-cell", mom("--sigma-table", "t.csv"),
     write("t.csv", "g,sigma\n0,0.1\n1,abc\n"), None),
    ("sigma-table-ragged", mom("--sigma-table", "t.csv"), write("t.csv", "g,sigma\n0\n1,0.2\n"),
     None),
    ("sigma-table-one-row", mom("--sigma-table", "t.csv"), write("t.csv", "g,sigma\n0,0.1\n"),
     None),
    ("sigma-table-decreasing", mom("--sigma-table", "t.csv"),
     write("t.csv", "g,sigma\n5,0.1\n0,0.2\n"), None),
    ("sigma-table-negative", mom("--sigma-table", "t.csv"),
     write("t.csv", "g,sigma\n0,-0.1\n5,0.2\n"), None),
    ("sigma-table-nan", mom("--sigma-table", "t.csv"), write("t.csv", "g,sigma\n0,nan\n5,0.2\n"),
     None),
    ("sigma-table-too-narrow", mom("--sigma-table", "t.csv", "--gu", "2"),
     write("t.csv", "g,sigma\n0,0.1\n1,0.2\n"), r"g\+ and g-"),
    ("gu-npz-missing", mom("--design", "column", "--gu", "nope.npz"), None, "not found"),
    ("gu-npz-corrupt", mom("--design", "column", "--gu", "c.npz"), write("c.npz", b"PK\x03\x04xx"),
     None),
    ("gu-npz-unknown-key", mom("--design", "column", "--gu", "k.npz"),
     lambda d: np.savez(d / "k.npz", **{"0": 1.0, "1": 1.0, "7": 1.0}), "7"),
    ("gu-npz-text-key", mom("--design", "column", "--gu", "k.npz"),
     lambda d: np.savez(d / "k.npz", **{"0": 1.0, "first": 1.0}), None),
    ("gu-npz-missing-layer", mom("--design", "column", "--gu", "k.npz"),
     lambda d: np.savez(d / "k.npz", **{"0": 1.0}), "1"),
    ("gu-npz-wrong-length", mom("--design", "column", "--gu", "k.npz"),
     lambda d: np.savez(d / "k.npz", **{"0": np.ones(5), "1": 1.0}), None),
    ("gu-npz-pickled", mom("--design", "column", "--gu", "k.npz"),
     lambda d: np.savez(d / "k.npz", **{"0": np.array([{"a": 1}], dtype=object), "1": 1.0}),
     None),
    ("gu-npz-string", mom("--design", "column", "--gu", "k.npz"),
     lambda d: np.savez(d / "k.npz", **{"0": np.array(["x"]), "1": 1.0}), None),
    ("gu-npz-nan", mom("--design", "column", "--gu", "k.npz"),
     lambda d: np.savez(d / "k.npz", **{"0": np.nan, "1": 1.0}), None),
    ("check-golden-missing", ["check", "nope.h5"], None, None),
    ("check-golden-corrupt", ["check", "g.h5"], write("g.h5", b"\x89HDF\r\n\x1a\n" + b"\1" * 500),
     None),
    ("check-golden-empty", ["check", "g.h5"], write("g.h5", b""), None),
    ("check-golden-is-model", ["check", "model.h5"], None, None),
    ("check-golden-empty-dir", ["check", "sub"], lambda d: (d / "sub").mkdir(), None),
    ("check-golden-text", ["check", "table.csv"], None, None),
    ("prepare-root-missing", ["prepare", "mnist-idx", "--preprocessing", "pixels/255", "-o", "p",
                              "--root", "nope"], None, None),
    ("prepare-root-empty-dir", ["prepare", "mnist-idx", "--preprocessing", "pixels/255", "-o", "p",
                                "--root", "sub"], lambda d: (d / "sub").mkdir(), None),
    ("prepare-cifar-corrupt", ["prepare", "cifar10", "--preprocessing", "pixels/255", "-o", "p",
                               "--root", "c"],
     chain(write("c/test_batch", b"\x80\x04garbage"), write("c/data_batch_1", b"")), None),
    ("prepare-naval-bad", ["prepare", "naval", "--preprocessing", "none", "-o", "p",
                           "--root", "n.txt"], write("n.txt", "1 2 3\nx y z\n"), None),
]
for _id, _argv, _files, _match in _INFO_FILES:
    register("files", _id, _argv, _files, _match)


# ====================================================================== arrays
_ARRAYS = [
    ("x-wrong-shape", npy("b.npy", np.zeros((3, 5))), None),
    ("x-wrong-rank", npy("b.npy", np.zeros((3, 2, 2))), None),
    ("x-scalar", npy("b.npy", np.float64(1.0)), None),
    ("x-empty-batch", npy("b.npy", np.zeros((0, 4))), None),
    ("x-complex", npy("b.npy", np.zeros((3, 4), dtype=complex)), None),
    ("x-string", npy("b.npy", np.array([["a"] * 4] * 3)), None),
    ("x-bool", npy("b.npy", np.zeros((3, 4), dtype=bool)), None),
    ("x-object-pickled", npy("b.npy", np.array([[None] * 4] * 3, dtype=object), True), None),
    ("x-structured", npy("b.npy", np.zeros(3, dtype=[("a", "f8"), ("b", "f8")])), None),
    ("x-nan", npy("b.npy", np.full((3, 4), np.nan)), "NaN"),
    ("x-inf", npy("b.npy", np.array([[np.inf, 0, 0, 0]] * 3)), None),
    ("x-huge-overflows", npy("b.npy", np.full((3, 4), 1e300)), None),
]
for _id, _files, _match in _ARRAYS:
    _needs = ("io",) if "overflow" in _id else ()      # the writer's inf/NaN check
    register("arrays", "mc-" + _id, mc()[:3] + ["b.npy"] + mc()[4:], _files,
             "overflow" if "overflow" in _id else _match)
    register("arrays", "moments-" + _id, mom()[:3] + ["b.npy"] + mom()[4:], _files, _match,
             needs=_needs)
for _id, arr, _match in [
        ("labels-wrong-length", np.array([0, 1]), "labels"),
        ("labels-2d", np.zeros((3, 1), dtype=int), "labels"),
        ("labels-out-of-range", np.array([0, 1, 5]), "labels"),
        ("labels-negative", np.array([0, -1, 1]), "labels"),
        ("labels-fractional", np.array([0.0, 0.5, 1.0]), "labels"),
        ("labels-nan", np.array([0.0, np.nan, 1.0]), None),
        ("labels-string", np.array(["a", "b", "c"]), None)]:
    register("arrays", _id, mc("--labels", "l.npy"), npy("l.npy", arr), _match)
for _id, arr, _match in [
        ("cov-wrong-shape", np.eye(3), "shape"),
        ("cov-not-symmetric", np.triu(np.ones((4, 4))), "symmetric"),
        ("cov-not-psd", -np.eye(4), "semi-definite|negative"),
        ("cov-nan", np.full((4, 4), np.nan), "NaN"),
        ("cov-empty", np.zeros((0, 0)), None)]:
    register("arrays", "mc-" + _id, mc("--input-cov", "c.npy"), npy("c.npy", arr), _match)
    register("arrays", "moments-" + _id, mom("--input-cov", "c.npy"), npy("c.npy", arr), _match)
register("arrays", "cnn-input-flat", ["moments", "cnn.h5", "--input", "x.npy", "-q", "-o", "o.h5"])


# ====================================================================== options
_MC_OPTS = [
    ("bits-5000", ["--bits", "5000"], "bits"),
    ("bits-zero", ["--bits", "0"], "bits"),
    ("bits-negative", ["--bits", "-3"], "bits"),
    ("bits-text", ["--bits", "abc"], "bits"),
    ("bits-too-many", ["--bits", "4,4,4"], None),
    ("bits-empty", ["--bits", ""], "bits"),
    ("seed-2-63", None, "seed"),
    ("seed-negative", None, "seed"),
    ("n-one", None, None),
    ("n-zero", None, None),
    ("sigma-negative", ["--sigma", "-0.1"], "sigma"),
    ("sigma-nan", ["--sigma", "nan"], "sigma"),
    ("sigma-inf", ["--sigma", "inf"], "sigma"),
    ("sigma-empty", ["--sigma", ""], "sigma"),
    ("sigma-text", ["--sigma", "0.1,x"], "sigma"),
    ("gu-at-gmin", ["--gu", "0"], "g_u"),
    ("gu-above-gmax", ["--gu", "5", "--gmax", "2"], "g_u"),
    ("gu-negative", ["--gu", "-1"], "g_u"),
    ("gu-nan", ["--gu", "nan"], None),
    ("gu-inf", ["--gu", "inf"], None),
    ("gu-1e200-overflows", ["--gu", "1e200", "--sigma", "0.1"], None),
    ("gu-wrong-count", ["--gu", "1,2,3", "--design", "layer"], "g_u"),
    ("gu-empty", ["--gu", ""], None),
    ("gmin-negative", ["--gmin", "-1"], "g_min"),
    ("gmin-nan", ["--gmin", "nan"], None),
    ("gmax-below-gmin", ["--gmin", "1", "--gmax", "0.5", "--gu", "0.7"], None),
    ("alpha-negative", ["--alpha", "-0.1"], "alpha"),
    ("alpha-nan", ["--alpha", "nan"], "alpha"),
    ("r-zero", ["--r", "0"], None),
    ("r-negative", ["--r", "-1"], None),
    ("lam-zero", ["--lam", "0"], None),
    ("lam-negative", ["--lam", "-2"], None),
    ("lam-and-gu", ["--lam", "1", "--gu", "1"], None),
    ("lam-needs-gmax", ["--lam", "1e3", "--gmax", "1"], None),
    ("noisy-layers-empty", ["--noisy-layers", ""], "noisy"),
    ("noisy-layers-out-of-range", ["--noisy-layers", "7"], None),
    ("noisy-layers-text", ["--noisy-layers", "middle"], None),
    ("design-unknown", ["--design", "row"], "design"),
    ("mapping-unknown", ["--mapping", "XY"], "mapping"),
    ("quant-mode-unknown", ["--quant-mode", "round"], None),
    ("sigma-and-table", ["--sigma", "0.3", "--sigma-table", "table.csv"], "sigma"),
    ("chunk-zero", ["--chunk", "0"], "chunk"),
    ("chunk-negative", ["--chunk", "-2"], "chunk"),
    ("unknown-option", ["--frobnicate"], None),
    ("n-not-int", None, None),
]
_OVERFLOW = ("gu-1e200-overflows",)
for _id, extra, _match in _MC_OPTS:
    if _id.startswith("seed") or _id.startswith("n-"):
        argv = ["mc", "model.h5", "--input", "x.npy", "-q", "-o", "out.h5"] + {
            "seed-2-63": ["-n", "4", "--seed", str(2**63)],
            "seed-negative": ["-n", "4", "--seed", "-1"],
            "n-one": ["-n", "1", "--seed", "0"],
            "n-zero": ["-n", "0", "--seed", "0"],
            "n-not-int": ["-n", "1e3", "--seed", "0"]}[_id]
    else:
        argv = mc(*extra)
    register("options", "mc-" + _id, argv, None, "overflow" if _id in _OVERFLOW else _match)
for _id, extra, _match in _MC_OPTS:
    if _id.startswith(("seed", "n-", "chunk", "sigma-and")):
        continue
    register("options", "moments-" + _id, mom(*extra), None, _match,
             needs=("io",) if _id in _OVERFLOW else ())
register("options", "moments-sigma-and-table", mom("--sigma", "0.3", "--sigma-table", "table.csv"),
         None, "sigma")
register("options", "mc-seed-2-64", ["mc", "model.h5", "--input", "x.npy", "-n", "4", "--seed",
                                     str(2**64), "-q", "-o", "out.h5"], None, "seed")
register("options", "mc-seed-text", ["mc", "model.h5", "--input", "x.npy", "-n", "4", "--seed",
                                     "abc", "-q", "-o", "out.h5"], None, "seed")
register("options", "mc-n-huge", ["mc", "model.h5", "--input", "x.npy", "-n", str(2**70),
                                  "--seed", "0", "-q", "-o", "out.h5"], None, None)
register("options", "mc-conv-gu-npz-design-scalar", mc("--gu", "gu.npz"), None, "column")
register("options", "no-command", [], None, "command")
register("options", "unknown-command", ["frobnicate"], None, "invalid choice")
register("options", "info-extra-arg", ["info", "model.h5", "extra"], None, None)
_DEMO = [
    ("demo-images-zero", ["--images", "0"], "images"),
    ("demo-images-too-many", ["--images", "100000"], "images"),
    ("demo-n-one", ["-n", "1"], None),
    ("demo-sigmas-empty", ["--sigmas", ""], "sigma"),
    ("demo-sigmas-negative", ["--sigmas", "0,-0.1"], "sigma"),
    ("demo-sigmas-text", ["--sigmas", "a"], "sigma"),
    ("demo-sigmas-nan", ["--sigmas", "nan"], "sigma"),
    ("demo-seed-negative", ["--seed", "-1"], "seed"),
    ("demo-seed-2-63", ["--seed", str(2**63)], "seed"),
    ("demo-gu-zero", ["--gu", "0"], "g_u"),
    ("demo-gu-nan", ["--gu", "nan"], None),
    ("demo-train-epochs-zero", ["--train", "--epochs", "0"], "epochs"),
    ("demo-train-epochs-negative", ["--train", "--epochs", "-1"], "epochs"),
    ("demo-train-and-model", ["--train", "--model", "model.h5"], None),
    ("demo-model-missing", ["--model", "nope.h5"], "not found"),
    ("demo-model-wrong-input", ["--model", "model.h5"], "784"),
    ("demo-model-corrupt", ["--model", "x.npy"], None),
]
for _id, extra, _match in _DEMO:
    register("options", _id, ["demo", "-q", "-o", "demo_out"] + extra, None, _match)
_PREP = [
    ("prepare-unknown-dataset", ["mnist6k", "--preprocessing", "pixels/255"], "mnist6k"),
    ("prepare-unknown-preprocessing", ["mnist5k", "--preprocessing", "pixels/256"], None),
    ("prepare-wrong-kind", ["diabetes", "--preprocessing", "pixels/255"], None),
    ("prepare-limit-zero", ["mnist5k", "--preprocessing", "pixels/255", "--limit", "0"], "limit"),
    ("prepare-limit-too-big", ["mnist5k", "--preprocessing", "pixels/255", "--limit", "5000"],
     "limit"),
    ("prepare-seed-negative", ["mnist5k", "--preprocessing", "pixels/255", "--seed", "-1"],
     "seed"),
    ("prepare-seed-2-63", ["mnist5k", "--preprocessing", "pixels/255", "--seed", str(2**63)],
     "seed"),
    ("prepare-root-for-shipped", ["mnist5k", "--preprocessing", "pixels/255", "--root", "."],
     "root"),
    ("prepare-needs-root", ["cifar10", "--preprocessing", "pixels/255"], "root"),
    ("prepare-split-unknown", ["mnist5k", "--preprocessing", "pixels/255", "--split", "val"],
     None),
]
for _id, extra, _match in _PREP:
    register("options", _id, ["prepare"] + extra + ["-q", "-o", "prep_out"], None, _match)
register("options", "golden-only-unknown", ["golden", "-q", "--only", "nope", "-o", "gold"], None,
         "nope")
register("options", "check-only-unknown", ["check", "golden_dir", "--only", "nope"],
         None, None, needs=("golden",))
register("options", "check-save-with-candidate",
         ["check", "golden_dir", "--candidate", "model.h5", "--save", "s.h5"], None, "save",
         needs=("golden",))
register("options", "check-candidate-corrupt", ["check", "golden_dir", "--candidate", "c.h5"],
         write("c.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 100), None, needs=("golden",))
register("options", "check-candidate-missing", ["check", "golden_dir", "--candidate", "nope.h5"],
         None, None, needs=("golden",))
register("options", "check-candidate-empty", ["check", "golden_dir", "--candidate", "e.h5"],
         write("e.h5", b""), None, needs=("golden",))


# ====================================================================== output targets
def _mkdir(name):
    return lambda d: (d / name).mkdir()


def _symlink(d):
    (d / "target.h5").write_bytes(b"precious")
    os.symlink(d / "target.h5", d / "link.h5")


def _fifo(d):
    os.mkfifo(d / "fifo.h5")


def _hardlink_model(d):
    os.link(d / "model.h5", d / "hard.h5")


def _foreign(d):
    (d / "notes.h5").write_text("my notes, not a refmem result")


_OUT = [
    ("missing-directory", "nodir/out.h5", None, "director"),
    ("is-directory", "sub", _mkdir("sub"), None),
    ("proc", "/proc/refmem-bad-input.h5", None, None),
    ("empty-name", "", None, None),
    ("overlong-name", "a" * 300 + ".h5", None, None),
    ("the-model", "model.h5", None, None),
    ("the-input", "x.npy", None, None),
    ("hardlink-to-model", "hard.h5", _hardlink_model, None),
    ("symlink", "link.h5", _symlink, None),
    ("fifo", "fifo.h5", _fifo, None),
    ("device", "/dev/null", None, None),
    ("foreign-file", "notes.h5", _foreign, None),
]
for _id, target, _files, _match in _OUT:
    register("outputs", "mc-" + _id, mc(out=target), _files, _match, needs=("io",))
    register("outputs", "moments-" + _id, mom(out=target), _files, _match, needs=("io",))
register("outputs", "moments-gu-table-is-output", mom("--sigma-table", "table.csv",
                                                      out="table.csv"), None, None, needs=("io",))
for _id, target, _files, _match in [("is-file", "x.npy", None, None),
                                    ("proc", "/proc/refmem-bad", None, None),
                                    ("empty", "", None, None)]:
    register("outputs", "prepare-" + _id, ["prepare", "diabetes", "--preprocessing", "none",
                                           "-q", "-o", target], _files, _match, needs=("io",))
    register("outputs", "golden-" + _id, ["golden", "--only", "dense_scalar", "-q", "-o",
                                          target], _files, _match, needs=("io",))
register("outputs", "demo-o-is-file", ["demo", "-q", "-o", "x.npy"], None, None, needs=("io",))
register("outputs", "demo-o-proc", ["demo", "-q", "-o", "/proc/refmem-demo"], None, None,
         needs=("io",))
register("outputs", "demo-o-empty", ["demo", "-q", "-o", ""], None, None, needs=("io",))
register("outputs", "check-save-proc", ["check", "golden_dir", "--save", "/proc/refmem.h5"], None,
         None, needs=("golden", "io"))
# full disk: a child process with RLIMIT_FSIZE (SIGXFSZ ignored)
register("outputs", "moments-full-disk", mom("--cov", "--per-layer", out="big.h5"),
         mode="fsize", fsize=4096, needs=("io",))
register("outputs", "mc-full-disk", mc("--cov", out="big.h5"), mode="fsize", fsize=2048,
         needs=("io",))
register("outputs", "prepare-full-disk", ["prepare", "mnist5k", "--preprocessing", "pixels/255",
                                          "-q", "-o", "prep_out"], mode="fsize", fsize=65536,
         needs=("io",))
register("outputs", "mc-full-disk-at-first-checkpoint",
         ["mc", "model.h5", "--input", "x.npy", "-n", "600", "--seed", "1", "-q", "--cov",
          "-o", "big.h5"], mode="fsize", fsize=1024)

# ====================================================================== optimize and validate
OPT = ["optimize", "model.h5", "--input", "x.npy", "--max-mse", "0.5", "--sigma", "0.01",
       "--gmax", "100", "--population", "4", "--generations", "1", "--workers", "1", "-q"]
VAL = ["validate", "model.h5", "--input", "x.npy", "--sigma", "0.01", "--seed", "1", "-q"]
_OPT_VAL = [
    ("optimize-population-two", OPT[:-5] + ["--population", "2", "--generations", "1", "-q"],
     "population"),
    ("optimize-generations-zero", OPT[:-5] + ["--population", "4", "--generations", "0", "-q"],
     "generations"),
    ("optimize-max-mse-missing", [a for a in OPT if a not in ("--max-mse", "0.5")], "max-mse"),
    ("optimize-gu-given", OPT + ["--gu", "2"], "g_u"),
    ("optimize-targets-needed", OPT + ["--mse-against", "targets"], "targets"),
    ("optimize-targets-wrong-shape", OPT + ["--targets", "ximg.npy"], "targets"),
    ("optimize-model-missing", ["optimize", "nope.h5"] + OPT[2:], "not found"),
    ("optimize-sigma-negative", [a if a != "0.01" else "-0.01" for a in OPT], "sigma"),
    ("validate-no-n", VAL, None),
    ("validate-n-and-budget", VAL + ["-n", "8", "--budget", "1"], None),
    ("validate-labels-wrong-length", VAL + ["-n", "8", "--labels", "cov.npy"], "labels"),
    ("validate-input-wrong-shape", ["validate", "model.h5", "--input", "ximg.npy", "--seed", "1",
                                    "-n", "8", "-q"], None),
    ("validate-model-corrupt", ["validate", "x.npy", "--input", "x.npy", "--seed", "1", "-n",
                                "8", "-q"], None),
]
for _id, argv, _match in _OPT_VAL:
    register("options", _id, argv + ["-o", "out.h5"], None, _match)
register("outputs", "optimize-o-is-input", OPT + ["-o", "x.npy"], None, "input", needs=("io",))
register("outputs", "validate-o-is-model", VAL + ["-n", "8", "-o", "model.h5"], None, "input",
         needs=("io",))
register("outputs", "optimize-o-not-refmem", OPT + ["-o", "y.npy"], None, "refusing",
         needs=("io",))


# the factor closure options of `refmem moments` (theory §20)
for _id, extra, _match in [
        ("factor-layers-text", ["--factor-layers", "late"], "factor"),
        ("factor-layers-out-of-range", ["--factor-layers", "9"], None),
        ("factor-nodes-one", ["--factor-layers", "0", "--factor-nodes", "1"], "nodes"),
        ("factor-nodes-alone", ["--factor-nodes", "3"], "factor"),
]:
    register("options", "moments-" + _id, mom(*extra), None, _match)

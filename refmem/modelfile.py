"""The HDF5 model file (``format="refmem-model"``, ``version=1``) — a public interface.

Schema (documented for other implementations in ``docs/model_format.md``)::

    /                       attrs: format="refmem-model", version=1,
                                   input_shape (int array, no batch axis),
                                   input_preprocessing (str, optional), any other attrs (kept)
    /layers/00, /layers/01, …   one group per layer, in order, attr type ∈
        dense      weight (out, in), bias (out,) optional
        conv2d     weight (C_out, C_in, k, k), bias (C_out,) optional; int attrs stride, padding
        avgpool2d  int attr kernel_size (stride = kernel_size, no padding)
        relu, flatten
        batchnorm  gamma, beta, running_mean, running_var (n,); attr eps
        dropout    optional attr p

Datasets are PyTorch layouts in float32 or float64 and are read as float64. Unknown layer
types, missing datasets, wrong shapes and NaN/inf values are errors whose message names the
layer (:class:`~refmem.errors.ModelFileError`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ModelFileError
from .layers import LAYER_TYPES, AvgPool2d, BatchNorm, Conv2d, Dense, Dropout, Flatten, ReLU
from .network import Network

FORMAT = "refmem-model"
VERSION = 1
_RESERVED_ROOT = {"format", "version", "input_shape", "input_preprocessing"}
_RESERVED_LAYER = {"type", "stride", "padding", "kernel_size", "eps", "p"}


def _attr_value(v):
    """The one attribute codec (:func:`refmem.io.decode_attr`), JSON text kept as text."""
    from .io.codec import decode_attr
    return decode_attr(v, json_text=False)


def _member(g, name, where, kind):
    """``g[name]`` if it is a ``kind`` ("group" or "dataset") stored in this file; a dangling
    or external link, or the wrong kind of object, is a :class:`ModelFileError`."""
    import h5py

    link = g.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise ModelFileError(f"{where}: {name!r} is an external link to {link.filename!r}; "
                             "a model file must be self-contained")
    try:
        obj = g[name]
    except (KeyError, OSError, ValueError):
        raise ModelFileError(f"{where}: {name!r} is a dangling link or unreadable") from None
    want = h5py.Group if kind == "group" else h5py.Dataset
    if not isinstance(obj, want):
        raise ModelFileError(f"{where}: {name!r} must be a {kind}, found a "
                             f"{'group' if isinstance(obj, h5py.Group) else 'dataset'}")
    return obj


def _read_array(g, name, where, required=True):
    if name not in g:
        if g.get(name, getlink=True) is not None:       # a dangling soft link
            _member(g, name, where, "dataset")
        if required:
            raise ModelFileError(f"{where}: missing dataset {name!r}")
        return None
    ds = _member(g, name, where, "dataset")
    if ds.dtype.kind not in "fiu":
        raise ModelFileError(f"{where}: dataset {name!r} is not numeric")
    try:
        return np.asarray(ds[()], dtype=np.float64)
    except (OSError, ValueError, TypeError):
        raise ModelFileError(f"{where}: dataset {name!r} is unreadable") from None


def _float_attr(g, name, where, default=None, low=None, high=None, low_open=False,
                high_open=False):
    """A real scalar attribute (finite, within the given bounds) or ``default`` if absent."""
    if name not in g.attrs:
        return default
    v = _attr_value(g.attrs[name])
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise ModelFileError(f"{where}: attribute {name!r} must be a finite number, got {v!r}")
    v = float(v)
    if low is not None and (v < low or (low_open and v == low)):
        raise ModelFileError(f"{where}: attribute {name!r} = {v:g} is out of range")
    if high is not None and (v > high or (high_open and v == high)):
        raise ModelFileError(f"{where}: attribute {name!r} = {v:g} is out of range")
    return v


def _int_attr(g, name, where, default=None):
    if name not in g.attrs:
        if default is None:
            raise ModelFileError(f"{where}: missing int attribute {name!r}")
        return default
    v = _attr_value(g.attrs[name])
    try:
        iv = int(v)
    except (TypeError, ValueError):
        raise ModelFileError(f"{where}: attribute {name!r} must be an integer, got {v!r}") from None
    if iv != v:
        raise ModelFileError(f"{where}: attribute {name!r} must be an integer, got {v!r}")
    return iv


def load_model(path) -> Network:
    """Read and validate a model file; return a :class:`~refmem.network.Network`."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"model file {path} is not a regular file")
    try:
        f = h5py.File(path, "r")
    except (OSError, RuntimeError, ValueError):
        raise ModelFileError(f"{path} is not a readable HDF5 file") from None
    with f:
        try:
            return read_model_group(f, str(path))
        except ModelFileError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
            # h5py reports damage inside the file (bad B-tree, truncated heap, …) this way
            msg = " ".join(str(e).split())[:120]
            raise ModelFileError(f"{path} is damaged or unreadable ({type(e).__name__}: "
                                 f"{msg})") from None


def read_model_group(f, where="model") -> Network:
    """Read and validate a model stored in an HDF5 group ``f`` (a file's root or any group laid
    out like one, e.g. a golden case's ``model`` group); ``where`` names it in errors."""
    path = where
    fmt = _attr_value(f.attrs.get("format", ""))
    if fmt != FORMAT:
        raise ModelFileError(f"{path}: root attribute format is {fmt!r}, expected {FORMAT!r}")
    version = _attr_value(f.attrs.get("version", None))
    if version != VERSION:
        raise ModelFileError(f"{path}: unsupported model-file version {version!r} (this refmem reads {VERSION})")
    if "input_shape" not in f.attrs:
        raise ModelFileError(f"{path}: missing root attribute input_shape")
    ishape = np.atleast_1d(np.asarray(f.attrs["input_shape"]))
    if ishape.dtype.kind not in "iu":
        raise ModelFileError(f"{path}: input_shape must be integers")
    prep = f.attrs.get("input_preprocessing", None)
    prep = None if prep is None else str(_attr_value(prep))
    extra = {k: _attr_value(v) for k, v in f.attrs.items() if k not in _RESERVED_ROOT}
    if f.get("layers", getlink=True) is None:
        raise ModelFileError(f"{path}: missing group 'layers'")
    grp = _member(f, "layers", path, "group")
    names = sorted(grp.keys())
    if not names:
        raise ModelFileError(f"{path}: the model has no layers")
    expected = [f"{i:02d}" for i in range(len(names))]
    if names != expected:
        raise ModelFileError(f"{path}: layer groups must be named 00, 01, … in order, got {names}")
    layers = []
    for name in names:
        g = _member(grp, name, f"{path}: layers", "group")
        where = f"layer {name}"
        ltype = _attr_value(g.attrs.get("type", None))
        if ltype not in LAYER_TYPES:
            raise ModelFileError(f"{where}: unknown or unsupported layer type {ltype!r}")
        where = f"layer {name} ({ltype})"
        attrs = {k: _attr_value(v) for k, v in g.attrs.items() if k not in _RESERVED_LAYER}
        if ltype == "dense":
            layer = Dense(_read_array(g, "weight", where), _read_array(g, "bias", where, False), attrs)
        elif ltype == "conv2d":
            layer = Conv2d(_read_array(g, "weight", where), _read_array(g, "bias", where, False),
                           _int_attr(g, "stride", where), _int_attr(g, "padding", where), attrs)
        elif ltype == "avgpool2d":
            layer = AvgPool2d(_int_attr(g, "kernel_size", where), attrs)
        elif ltype == "relu":
            layer = ReLU(attrs)
        elif ltype == "flatten":
            layer = Flatten(attrs)
        elif ltype == "batchnorm":
            eps = _float_attr(g, "eps", where, 1e-5, low=0.0, low_open=True)
            layer = BatchNorm(*(_read_array(g, n, where) for n in
                                ("gamma", "beta", "running_mean", "running_var")), eps, attrs)
        else:
            p = _float_attr(g, "p", where, None, low=0.0, high=1.0, high_open=True)
            layer = Dropout(p, attrs)
        layers.append(layer)
    net = Network(layers, tuple(int(s) for s in ishape), prep, extra)
    try:
        net.validate()
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}") from None
    return net


def save_model(network: Network, path, *, dtype=np.float64, force=False) -> None:
    """Write ``network`` to ``path`` through the one atomic writer (:mod:`refmem.io`).

    An existing file is replaced only when it is a refmem model file (``force=True``: any
    regular file)."""
    from .io import write_h5

    network.validate()
    write_h5(path, FORMAT, lambda f: write_model_group(network, f, dtype=dtype), force=force)


def write_model_group(network: Network, f, *, dtype=np.float64) -> None:
    """Write ``network`` into the HDF5 group ``f`` (a file's root or any group) in the model
    file schema: root attributes on ``f``, layers in ``f["layers"]``."""
    network.validate()
    f.attrs["format"] = FORMAT
    f.attrs["version"] = VERSION
    f.attrs["input_shape"] = np.asarray(network.input_shape, dtype=np.int64)
    if network.input_preprocessing is not None:
        f.attrs["input_preprocessing"] = str(network.input_preprocessing)
    from .io.codec import write_attrs

    write_attrs(f, {k: v for k, v in network.attrs.items() if k not in _RESERVED_ROOT})
    grp = f.create_group("layers")
    for i, layer in enumerate(network.layers):
        g = grp.create_group(f"{i:02d}")
        g.attrs["type"] = layer.type
        write_attrs(g, {k: v for k, v in getattr(layer, "attrs", {}).items()
                        if k not in _RESERVED_LAYER})
        for k, v in layer.params().items():
            g.create_dataset(k, data=np.asarray(v, dtype=dtype))
        if isinstance(layer, Conv2d):
            g.attrs["stride"] = np.int64(layer.stride)
            g.attrs["padding"] = np.int64(layer.padding)
        elif isinstance(layer, AvgPool2d):
            g.attrs["kernel_size"] = np.int64(layer.kernel_size)
        elif isinstance(layer, BatchNorm):
            g.attrs["eps"] = float(layer.eps)
        elif isinstance(layer, Dropout) and layer.p is not None:
            g.attrs["p"] = float(layer.p)

"""Deprecated: use :mod:`refmem.io`. A thin compatibility layer for code written against
refmem 0.1 (and for branches written before :mod:`refmem.io` landed); everything here goes
through the one atomic writer of :mod:`refmem.io`."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

from .io import atomic_h5 as _atomic_h5
from .io import dataset_meta, encode_attr, provenance_attrs
from .io import write_result as _write_result

__all__ = ["standard_attrs", "atomic_h5", "write_result"]

_LEGACY_META = {"units": "unspecified",
                "description": "written through the deprecated refmem.hdf5io (no description)"}


def standard_attrs(config=None, **extra) -> dict:
    """Provenance attributes plus ``config`` and ``extra`` (use :func:`refmem.io.write_result`)."""
    attrs = provenance_attrs()
    if config is not None:
        attrs["config"] = config.to_json() if hasattr(config, "to_json") else config
    attrs.update({k: v for k, v in extra.items() if v is not None})
    return {k: encode_attr(v) for k, v in attrs.items() if encode_attr(v) is not None}


@contextlib.contextmanager
def atomic_h5(path, kind=None, *, inputs=(), force=False):
    """Yield an in-memory HDF5 file written atomically to ``path`` at the end (see
    :func:`refmem.io.atomic_h5`); without ``kind`` the root attribute ``kind`` (or ``command``)
    set in the block names it, else ``"result"``."""
    import h5py

    from .io.codec import decode_attr

    # the kind is only known after the block: build in memory here, write through refmem.io
    name = f"refmem-legacy-{id(object())}.h5"
    with h5py.File(name, "w", driver="core", backing_store=False) as f:
        yield f
        k = kind or decode_attr(f.attrs.get("kind", None)) or \
            decode_attr(f.attrs.get("command", None)) or "result"
        if "format" not in f.attrs:
            f.attrs["format"] = "refmem-result"
        if "kind" not in f.attrs:
            f.attrs["kind"] = str(k)
        f.flush()
        image = bytes(f.id.get_file_image())
    from .io import atomic_write
    atomic_write(path, str(k), lambda fh: fh.write(image), inputs=inputs, force=force)


def _legacy(name, value):
    if isinstance(value, tuple) or dataset_meta(name) is not None:
        return value
    return (np.asarray(value), _LEGACY_META)


def write_result(path, datasets: dict, attrs: dict, groups: dict | None = None) -> None:
    """The refmem 0.1 signature; use :func:`refmem.io.write_result`. ``kind`` comes from
    ``attrs["kind"]`` or ``attrs["command"]``; names outside the schema are written with
    ``units = "unspecified"``; non-finite values are accepted (0.1 behaviour)."""
    warnings.warn("refmem.hdf5io.write_result is deprecated; use refmem.io.write_result",
                  DeprecationWarning, stacklevel=2)
    from .io.codec import decode_attr
    kind = decode_attr(attrs.get("kind", None)) or decode_attr(attrs.get("command", None)) \
        or "result"
    dsets = {k: _legacy(k, v) for k, v in datasets.items() if v is not None}
    grps = {}
    for g, d in (groups or {}).items():
        sub, gattrs = (d if isinstance(d, tuple) else (d, None))
        grps[g] = ({k: _legacy(k, v) for k, v in sub.items() if v is not None}, gattrs)
    names = list(dsets) + [f"{g}/{k}" for g, (sub, _) in grps.items() for k in sub]
    _write_result(path, str(kind), dsets, attrs=attrs, groups=grps,
                  allow_nonfinite=tuple(names))

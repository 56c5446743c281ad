"""Deprecated: use :mod:`refmem.io`. A thin re-export for code written against refmem 0.1;
everything here goes through the one atomic writer of :mod:`refmem.io`."""

from __future__ import annotations

import warnings

from .io import atomic_h5, encode_attr, provenance_attrs
from .io import write_result as _write_result

__all__ = ["standard_attrs", "atomic_h5", "write_result"]


def standard_attrs(config=None, **extra) -> dict:
    """Provenance attributes plus ``config`` and ``extra`` (use :func:`refmem.io.write_result`)."""
    attrs = provenance_attrs()
    if config is not None:
        attrs["config"] = config.to_json() if hasattr(config, "to_json") else config
    attrs.update({k: v for k, v in extra.items() if v is not None})
    return {k: encode_attr(v) for k, v in attrs.items() if encode_attr(v) is not None}


def write_result(path, datasets: dict, attrs: dict, groups: dict | None = None) -> None:
    """The refmem 0.1 signature; use :func:`refmem.io.write_result` (``kind`` from
    ``attrs["kind"]`` or ``attrs["command"]``)."""
    warnings.warn("refmem.hdf5io.write_result is deprecated; use refmem.io.write_result",
                  DeprecationWarning, stacklevel=2)
    kind = attrs.get("kind", attrs.get("command", "result"))
    _write_result(path, kind, datasets, attrs=attrs, groups=groups)

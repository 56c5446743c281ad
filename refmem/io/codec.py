"""The one attribute codec of every file refmem writes.

HDF5 attributes hold scalars, strings and flat arrays. refmem stores richer values (the
configuration, lists of layers, dicts of settings) as JSON text; :func:`encode_attr` is the one
place that decides how a Python value becomes an attribute and :func:`decode_attr` the one place
that turns an attribute back into a Python value:

- ``dict``, ``list`` and ``tuple`` → JSON text (non-finite floats written as ``"inf"``,
  ``"-inf"``, ``"nan"``); decoded back to ``dict``/``list``;
- objects with a ``to_json()`` method (:class:`~refmem.config.CrossbarConfig`) → that JSON text;
- ``None`` → the attribute is not written;
- numbers, strings, booleans and NumPy arrays are stored as they are; bytes, NumPy scalars and
  arrays are decoded to ``str``, Python scalars and lists.

A string attribute is decoded as JSON only when it starts with ``{`` or ``[`` and parses; any
other string stays a string.
"""

from __future__ import annotations

import json
import math

import numpy as np

__all__ = ["encode_attr", "decode_attr", "decode_attrs", "json_text", "write_attrs"]


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if hasattr(v, "to_dict"):
        return _jsonable(v.to_dict())
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def json_text(v) -> str:
    """Deterministic JSON text of ``v`` (sorted keys, non-finite floats as strings)."""
    return json.dumps(_jsonable(v), sort_keys=True, ensure_ascii=False)


def encode_attr(v):
    """Python value → HDF5 attribute value (``None`` → ``None``: do not write)."""
    if v is None:
        return None
    if hasattr(v, "to_json") and callable(v.to_json):
        return v.to_json()
    if isinstance(v, (dict, list, tuple)):
        return json_text(v)
    if isinstance(v, bool):
        return np.bool_(v)
    if isinstance(v, (int, float, str, np.generic)):
        return v
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "biuf":
            return v
        return json_text(v)
    return str(v)


def decode_attr(v, *, json_text: bool = True):
    """HDF5 attribute value → Python value (the inverse of :func:`encode_attr`).

    ``json_text=False`` keeps JSON text as a string (the model file and the golden suite
    expose their attributes as stored: ``Network.attrs``, ``GoldenCase.attrs``)."""
    if isinstance(v, bytes):
        v = v.decode("utf-8", errors="replace")
    if isinstance(v, str):
        if not json_text:
            return v
        s = v.lstrip()
        if s[:1] in ("{", "["):
            try:
                return json.loads(v)
            except ValueError:
                return v
        return v
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "OSU":
            return [decode_attr(x, json_text=json_text) for x in v.tolist()]
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def decode_attrs(attrs, *, json_text: bool = True) -> dict:
    """Every attribute of an HDF5 object (``obj.attrs``) decoded, as a plain dict."""
    return {k: decode_attr(attrs[k], json_text=json_text) for k in attrs.keys()}


def write_attrs(obj, attrs: dict | None) -> None:
    """Write ``attrs`` onto the HDF5 object ``obj`` through :func:`encode_attr`."""
    for k, v in (attrs or {}).items():
        e = encode_attr(v)
        if e is not None:
            obj.attrs[k] = e

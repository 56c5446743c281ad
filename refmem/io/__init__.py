"""Every file refmem writes, in one module family.

- :mod:`refmem.io.atomic` — the one atomic writer (:func:`atomic_write`; format helpers
  :func:`write_h5`, :func:`write_npz`, :func:`write_png`), the preflight :func:`check_output`
  (called before any computation) and the replacement rule (:func:`file_kind`);
- :mod:`refmem.io.codec` — the one attribute codec (:func:`encode_attr`, :func:`decode_attr`);
- :mod:`refmem.io.schema` — the result schema (:data:`SCHEMA`, :func:`write_result`,
  :func:`read_result`), documented in ``docs/result_format.md``.

This package imports nothing above it (only :mod:`refmem.errors` and :mod:`refmem._version`).
"""

from .atomic import (atomic_write, check_output, file_kind, file_sha256, atomic_h5,
                     release_output, release_outputs, write_h5, write_npz, write_png)
from .codec import decode_attr, decode_attrs, encode_attr, json_text, write_attrs
from .schema import (FORMAT, FORMAT_VERSION, SCHEMA, ResultFile, dataset_meta,
                     provenance_attrs, read_result, write_result)

__all__ = [
    "atomic_write", "check_output", "file_kind", "file_sha256", "atomic_h5", "release_output", "release_outputs",
    "write_h5", "write_npz", "write_png", "decode_attr", "decode_attrs", "encode_attr",
    "json_text", "write_attrs", "FORMAT", "FORMAT_VERSION", "SCHEMA", "ResultFile",
    "dataset_meta", "provenance_attrs", "read_result", "write_result",
]

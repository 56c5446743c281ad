"""Atomic HDF5 result files.

Every result file is first written to ``<name>.partial`` next to the target and renamed at the
end, so a failed run never leaves a half-written output behind. Root attributes always record
``refmem_version``, ``created_utc``, ``numpy_version`` and the configuration as JSON
(``config``); callers add their own (seed, n, …).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from pathlib import Path

import numpy as np

from .errors import DataError


def standard_attrs(config=None, **extra) -> dict:
    """The attributes every result file carries."""
    from . import __version__

    attrs = {
        "refmem_version": __version__,
        "numpy_version": np.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if config is not None:
        attrs["config"] = config.to_json()
    for k, v in extra.items():
        if v is None:
            continue
        attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
    return attrs


@contextlib.contextmanager
def atomic_h5(path):
    """Open ``path.partial`` for writing; rename to ``path`` only if the block succeeds."""
    import h5py

    path = Path(path)
    if path.parent and not path.parent.exists():
        raise DataError(f"output directory does not exist: {path.parent}")
    tmp = path.with_name(path.name + ".partial")
    f = None
    try:
        f = h5py.File(tmp, "w")
        yield f
        f.close()
        f = None
        os.replace(tmp, path)
    finally:
        if f is not None:
            f.close()
        if tmp.exists():
            tmp.unlink()


def write_result(path, datasets: dict, attrs: dict, groups: dict | None = None) -> None:
    """Write datasets (name -> array) and root attributes atomically.

    ``groups`` maps a group path (e.g. ``"layers/03"``) to a dict of datasets.
    """
    with atomic_h5(path) as f:
        for k, v in attrs.items():
            f.attrs[k] = v
        for k, v in datasets.items():
            if v is not None:
                f.create_dataset(k, data=np.asarray(v))
        for gname, dsets in (groups or {}).items():
            g = f.require_group(gname)
            for k, v in dsets.items():
                g.create_dataset(k, data=np.asarray(v))

"""One executor for the package: local worker processes, Dask, and resumable seeded grids.

Many refmem computations are grids of independent *cells* (network × noise target × α ×
repeat in the reproduction of MohammadiRad & Sojodishijani; the population of the g_u
optimizer). They all go through :class:`Executor`:

- ``Executor(workers=1)`` runs in this process, one item after the other (tests, debugging);
- ``Executor()`` / ``Executor(workers=n)`` uses ``n`` local worker processes
  (:class:`concurrent.futures.ProcessPoolExecutor`, default: the CPUs this process may use),
  each pinned to **one** BLAS thread (threadpoolctl, when installed) and one Numba thread, so ``n`` workers
  use ``n`` cores and not ``n × cores`` threads;
- ``Executor(scheduler="tcp://host:8786")`` sends the items to a Dask distributed cluster
  (``pip install "refmem[dask]"``; imported only then). Every Dask worker is pinned to one
  BLAS/Numba thread per worker thread in the same way.

:meth:`Executor.map` preserves the order of the items. The functions must be picklable
top-level functions, and their results must not depend on *where* they run: every random draw
comes from the seed the caller passes in, never from process state.

:func:`run_grid` adds resumability. Every cell has a stable string key; its seed is
``SeedSequence(seed, spawn_key=k)`` with ``k`` derived from a hash of the key alone, so a
cell's random numbers depend neither on the other cells, nor on the order, nor on the
executor. Each finished cell is written atomically as its own small ``.npz`` file (with a
SHA-256 fingerprint of its parameters, so a rerun with changed parameters is refused instead of
mixing two grids)
(``out_dir/cells/<key>.npz``: written to a temporary name, then renamed) by the parent
process as soon as it arrives; a rerun skips the keys whose file exists. A ``kill -9`` thus
loses at most the cells in flight, and no cell is ever stored twice or half.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError, RefmemError

__all__ = ["Executor", "run_grid", "cell_seed", "load_grid", "THREAD_ENV"]

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
"""Environment variables set to 1 in every worker (and so in the processes it starts).

``NUMBA_NUM_THREADS`` is deliberately absent: Numba refuses a change of that variable once its
threads are running, so the worker calls :func:`numba.set_num_threads` instead."""

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,=+-]{0,199}$")


class DaskUnavailableError(RefmemError, ImportError):
    """``scheduler=`` was given but dask.distributed is not installed."""


# ---------------------------------------------------------------------- worker set-up
_LIMITER = None


def _pin_threads(client_pid=None):
    """Pin this process to one BLAS thread and one Numba thread (worker initializer).

    ``client_pid`` is the process of the caller: a Dask worker living in that same process
    (``LocalCluster(processes=False)``) shares the caller's threads and is left alone.
    BLAS pools are limited with threadpoolctl when it is installed (it comes with the
    ``dask`` extra); without it only the environment and Numba are pinned.
    """
    global _LIMITER
    if client_pid is not None and client_pid == os.getpid():
        return
    for name in THREAD_ENV:
        os.environ[name] = "1"
    try:            # first: starting Numba's threading layer may load an OpenMP runtime
        import numba
        numba.set_num_threads(1)
    except (ImportError, ValueError):               # pragma: no cover
        pass
    try:            # then limit every BLAS/OpenMP library loaded so far
        from threadpoolctl import threadpool_limits
        _LIMITER = threadpool_limits(limits=1)      # kept alive: the limit lasts for the process
    except ImportError:                             # optional: the dask extra installs it
        pass


def _default_workers():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                          # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class Executor:
    """Run a picklable function over many items: serially, on local processes, or on Dask.

    Parameters
    ----------
    workers : int, optional
        Local worker processes (default: the CPUs available to this process). ``1`` runs
        in-process and serially. Ignored with ``scheduler``.
    scheduler : str, optional
        Address of a Dask distributed scheduler (``tcp://host:port``); an object with a
        ``scheduler_address`` attribute (a ``LocalCluster``) is accepted too.

    Use as a context manager; :meth:`map` returns the results in the order of the items.
    """

    def __init__(self, workers=None, scheduler=None):
        if workers is not None:
            try:
                w = int(workers)
            except (TypeError, ValueError):
                raise ConfigError(f"workers must be a positive integer, got {workers!r}") from None
            if w < 1 or w != workers:
                raise ConfigError(f"workers must be a positive integer, got {workers!r}")
            workers = w
        self.scheduler = scheduler
        self.workers = _default_workers() if workers is None else workers
        self._pool = None
        self._client = None

    # -------------------------------------------------------------- lifecycle
    @property
    def kind(self) -> str:
        """``"serial"``, ``"processes"`` or ``"dask"``."""
        if self.scheduler is not None:
            return "dask"
        return "serial" if self.workers == 1 else "processes"

    def __enter__(self):
        if self.kind == "dask":
            try:
                from dask.distributed import Client
            except ImportError:
                raise DaskUnavailableError(
                    'scheduler given but dask.distributed is not installed '
                    '(pip install "refmem[dask]")') from None
            address = getattr(self.scheduler, "scheduler_address", self.scheduler)
            try:
                self._client = Client(address, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                raise ConfigError(f"cannot connect to the Dask scheduler {address!r}: {exc}") from None
            self._client.run(_pin_threads, os.getpid())
        elif self.kind == "processes":
            from concurrent.futures import ProcessPoolExecutor
            self._pool = ProcessPoolExecutor(max_workers=self.workers, initializer=_pin_threads,
                                             mp_context=_mp_context())
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _check_open(self):
        if self.kind == "processes" and self._pool is None or \
                self.kind == "dask" and self._client is None:
            raise ConfigError("use the Executor as a context manager: with Executor(...) as ex:")

    # -------------------------------------------------------------- work
    def map(self, fn, items) -> list:
        """``[fn(item) for item in items]``, computed by the workers, order preserved."""
        items = list(items)
        out = [None] * len(items)
        for i, r in self.imap_unordered(fn, items):
            out[i] = r
        return out

    def imap_unordered(self, fn, items):
        """Yield ``(index, fn(items[index]))`` as the results complete (any order)."""
        items = list(items)
        if self.kind == "serial":
            for i, it in enumerate(items):
                yield i, fn(it)
            return
        self._check_open()
        if not items:
            return
        if self.kind == "processes":
            from concurrent.futures import as_completed
            futs = {self._pool.submit(fn, it): i for i, it in enumerate(items)}
            try:
                for f in as_completed(futs):
                    yield futs[f], f.result()
            finally:
                for f in futs:
                    f.cancel()
            return
        from dask.distributed import as_completed
        futs = self._client.map(fn, items, pure=False)
        index = {f.key: i for i, f in enumerate(futs)}
        try:
            for f in as_completed(futs, loop=self._client.loop):
                yield index[f.key], f.result()
        finally:
            self._client.cancel(futs)


# ---------------------------------------------------------------------- seeded grids
def _mp_context():
    """The start method of local workers: the platform's default (fork on Linux), except in a
    process that has already run a parallel Numba kernel on the GNU OpenMP layer — a fork of
    it aborts ("fork() called from a process already using GNU OpenMP") — where workers start
    from a fresh server process (``forkserver``; the calling script then needs the usual
    ``if __name__ == "__main__":`` guard)."""
    import multiprocessing
    try:
        import numba
        layer = numba.threading_layer()
    except (ImportError, ValueError):          # ValueError: no parallel region has run yet
        return None
    if layer == "omp" and "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return None


def _spawn_key(key: str) -> tuple:
    """Four 32-bit words of SHA-256(key): the cell's stable SeedSequence spawn key."""
    h = hashlib.sha256(key.encode("utf-8")).digest()
    return tuple(int.from_bytes(h[4 * i:4 * i + 4], "little") for i in range(4))


def cell_seed(seed: int, key: str) -> np.random.SeedSequence:
    """``SeedSequence(seed, spawn_key=…)`` of the grid cell ``key`` (depends on nothing else)."""
    return np.random.SeedSequence(int(seed), spawn_key=_spawn_key(key))


def _check_key(key):
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ConfigError(f"grid cell key must be a string of letters, digits and _.,=+- "
                          f"(≤ 200 characters, not starting with a symbol), got {key!r}")
    return key


_FINGERPRINT = "_params_sha256"


def _fingerprint(params) -> str:
    """SHA-256 of the cell parameters as canonical JSON (tuples as lists, numbers by repr)."""
    def enc(v):
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, (np.integer, np.floating)):
            return v.item()
        return repr(v)
    text = json.dumps(params, sort_keys=True, default=enc)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _run_cell(task):
    fn, key, params, ss = task
    res = fn(params, ss)
    if not isinstance(res, dict):
        raise DataError(f"grid cell {key}: the cell function must return a dict of arrays, "
                        f"got {type(res).__name__}")
    if _FINGERPRINT in res:
        raise DataError(f"grid cell {key}: the result name {_FINGERPRINT} is reserved")
    return {str(k): np.asarray(v) for k, v in res.items()}


def _write_cell(path: Path, result: dict):
    """Write one cell atomically through the one writer (:func:`refmem.io.write_npz`, kind
    ``grid-cell``: a private temporary next to the cell, fsync, rename)."""
    from .io import write_npz
    write_npz(path, "grid-cell", result)


def _read_cell(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files if k != "refmem_kind"}
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable grid cell file {path}: {exc}") from None


def _grid_manifest(out_dir: Path, seed: int, fn):
    """Create or check ``grid.json`` (the seed and function name of the grid in ``out_dir``)."""
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    want = {"seed": int(seed), "function": name}
    path = out_dir / "grid.json"
    if path.exists():
        try:
            have = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"unreadable grid manifest {path}: {exc}") from None
        if have != want:
            raise DataError(f"{out_dir} holds a different grid ({have}); use another directory "
                            f"or remove it to start over")
        return
    from .io import atomic_write
    atomic_write(path, "grid-manifest", lambda fh: fh.write(json.dumps(want).encode()))


def _normalise_cells(cells):
    pairs = list(cells.items()) if isinstance(cells, dict) else [tuple(c) for c in cells]
    seen = set()
    for k, _ in pairs:
        _check_key(k)
        if k in seen:
            raise ConfigError(f"duplicate grid cell key {k!r}")
        seen.add(k)
    return pairs


def run_grid(fn, cells, out_dir, *, executor, seed, progress=False) -> dict:
    """Evaluate a resumable grid of seeded cells; return ``{key: result}`` in cell order.

    Parameters
    ----------
    fn : callable ``(params, seedseq) -> dict[str, array]``
        Picklable top-level function computing one cell from its parameters and its own
        :class:`numpy.random.SeedSequence` (``cell_seed(seed, key)``); every draw must come
        from that seed.
    cells : dict ``{key: params}`` or sequence of ``(key, params)``
        Stable string keys (letters, digits and ``_.,=+-``) and picklable parameters.
    out_dir : path
        Directory of the grid (created if missing). Holds ``grid.json`` and one
        ``cells/<key>.npz`` per finished cell.
    executor : Executor
        An *open* executor (inside its ``with`` block).
    seed : int
        Grid seed (recorded in ``grid.json``; a directory with another seed or function is
        an error, so two grids never mix).
    progress : bool
        tqdm progress bar over the cells (finished cells of an earlier run count as done).

    Notes
    -----
    Finished cells are written by this process, one atomic file each, as they complete;
    cells already on disk are not recomputed. Killing the run (even ``kill -9``) loses only
    the cells in flight; rerunning completes the grid with results bit-identical to an
    uninterrupted run, since every cell's seed depends only on ``(seed, key)``.
    """
    if not isinstance(executor, Executor):
        raise ConfigError("run_grid needs a refmem.executor.Executor")
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}") from None
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    pairs = _normalise_cells(cells)
    out_dir = Path(out_dir)
    cell_dir = out_dir / "cells"
    cell_dir.mkdir(parents=True, exist_ok=True)
    _grid_manifest(out_dir, seed, fn)
    for stale in cell_dir.glob(".*.tmp*"):      # temporaries of a killed run (refmem.io names
        stale.unlink(missing_ok=True)           # them .CELL.npz.PID-TOKEN.tmp.npz)
    from .io.atomic import clear_stale_lock
    for lock in cell_dir.glob(".*.lock"):       # a killed writer's lock (killed between the
        clear_stale_lock(cell_dir / lock.name[1:-len(".lock")])   # rename and the unlock)

    todo = []
    for k, p in pairs:
        path = cell_dir / f"{k}.npz"
        if not path.exists():
            todo.append((k, p))
            continue
        have = _read_cell(path).get(_FINGERPRINT)
        if have is None or str(have) != _fingerprint(p):
            raise DataError(f"grid cell {k!r} in {out_dir} was computed with other parameters; "
                            f"use another directory or remove the cell file")
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc="grid", unit="cell")
    try:
        tasks = [(fn, k, p, cell_seed(seed, k)) for k, p in todo]
        for i, res in executor.imap_unordered(_run_cell, tasks):
            res[_FINGERPRINT] = np.asarray(_fingerprint(todo[i][1]))
            _write_cell(cell_dir / f"{todo[i][0]}.npz", res)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return load_grid(out_dir, [k for k, _ in pairs])


def load_grid(out_dir, keys=None) -> dict:
    """Read the finished cells of a grid directory (all of them, or ``keys`` in that order)."""
    cell_dir = Path(out_dir) / "cells"
    if not cell_dir.is_dir():
        raise DataError(f"not a grid directory (no cells/): {out_dir}")
    if keys is None:
        keys = sorted(p.stem for p in cell_dir.glob("*.npz") if not p.name.startswith("."))
    out = {}
    for k in keys:
        p = cell_dir / f"{k}.npz"
        if not p.exists():
            raise DataError(f"grid cell {k!r} is missing in {out_dir}")
        res = _read_cell(p)
        res.pop(_FINGERPRINT, None)
        out[k] = res
    return out

"""Reusable float64 buffers for the large matrices of one analytic pass (theory §15).

The covariance of a CNN's early layers is a few GB. Allocating a fresh array for each of
them costs more than the arithmetic on some systems: the operating system maps and zeroes
every page on first touch (measured on the 2-core benchmark machine: 2.1 GB of fresh pages
take 4.7 s to touch, 0.45 GB/s, against 35 GB/s for a copy into memory already touched).
A :class:`Workspace` keeps the large buffers of a pass and hands them out again once
nothing refers to them, so each page is touched once per pass, not once per layer, and not
at all for the second input of a batch; pieces of one region are split and merged as the
layer sizes change. Where the platform has it (Linux), a new region is an anonymous
mapping populated in one system call (``MAP_POPULATE``; on the benchmark machine, a
virtual machine, 2 GB take 0.6–4 s that way depending on whether the host has backed those
pages before, against 4.7 s page by page).

Every layer function that allocates a large matrix takes ``work=`` (a :class:`Workspace`
or None for plain ``numpy.empty``). The numbers do not depend on it: buffers are only ever
handed out uninitialised (``empty``) or zero-filled (``zeros``), exactly like numpy's.
"""

from __future__ import annotations

import mmap
import sys

import numpy as np

__all__ = ["Workspace", "empty", "zeros", "release_cache"]

MIN_BYTES = 32 * 2**20
"""Arrays smaller than this come from ``numpy.empty`` (the C allocator recycles them)."""

_ALIGN = 512
"""Pieces are whole multiples of this many elements (4 KiB pages)."""


def _region(n):
    """A new raw buffer of ``n`` float64 elements, its pages mapped up front where possible."""
    flags = getattr(mmap, "MAP_POPULATE", None)
    if flags is not None and hasattr(mmap, "MAP_ANONYMOUS"):
        try:
            return mmap.mmap(-1, 8 * n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags)
        except (OSError, ValueError):
            pass
    return memoryview(np.empty(n)).cast("B")


_CACHE = []
"""Regions left by finished workspaces made with ``recycle=True`` (the default workspace of
:func:`refmem.propagate`), for the next one in this process: at most the memory of the last
such workspace. :func:`release_cache` returns it to the system."""


def release_cache():
    """Return the memory that finished workspaces left for later passes to the system."""
    _CACHE.clear()


def _piece(raw, off, n):
    """Elements ``off … off+n−1`` of ``raw`` as an array of its own: its ``base`` is the raw
    buffer (not an ndarray), so views of the piece have the piece as their base and the
    piece's reference count tells whether anything still uses it."""
    return np.frombuffer(raw, dtype=np.float64, count=n, offset=8 * off)


class Workspace:
    """A pool of large float64 buffers, reused once no array refers to them.

    The pool holds a few large regions (new ones populated up front) cut into pieces. A
    piece is free when the pool holds the only reference to it: every numpy view keeps its
    base alive, so a piece whose views have all been dropped is free again without any
    explicit release. :meth:`empty` merges neighbouring free pieces, takes the smallest free
    piece that is large enough and splits off the rest, or maps a new region.

    Parameters
    ----------
    min_bytes : int
        Requests below this size are passed to ``numpy.empty``.
    recycle : bool
        When the workspace is dropped, leave its regions whose pieces are all free to the next
        recycling workspace of this process (``_CACHE``, at most this workspace's regions;
        :func:`release_cache` frees them), and take new regions from there before mapping
        any. On a machine where fresh pages are slow to map (measured here: 0.3–2.7 s/GB),
        a second pass then costs what a pass with a kept workspace costs. Default False.
    """

    def __init__(self, min_bytes=MIN_BYTES, recycle=False):
        self.min_bytes = int(min_bytes)
        self.recycle = bool(recycle)
        self._regions = []          # [raw buffer, [[offset, size, piece array], …] by offset]
        self.allocated = 0          # bytes of the regions mapped
        self.reused = 0             # bytes handed out from memory already mapped
        self.recycled = 0           # bytes of regions taken over from finished workspaces

    def _new_region(self, n):
        """A region of at least ``n`` elements: the smallest large enough that a finished
        recycling workspace left (``recycle``), else a new mapping. Returns (raw, size)."""
        if self.recycle:
            best = None
            for k in range(len(_CACHE)):
                if len(_CACHE[k]) >= 8 * n and (best is None
                                                or len(_CACHE[k]) < len(_CACHE[best])):
                    best = k
            if best is not None:
                raw = _CACHE.pop(best)
                self.recycled += len(raw)
                return raw, len(raw) // 8
        self.allocated += 8 * n
        return _region(n), n

    def __del__(self):
        if not getattr(self, "recycle", False):
            return
        try:
            keep = []
            for raw, pieces in self._regions:
                self._coalesce(raw, pieces)
                if all(self._is_free(pieces, k) for k in range(len(pieces))):
                    keep.append(raw)
            self._regions = []               # drops the piece arrays: the raw buffers are free
            if keep:
                cap = sum(len(r) for r in keep)
                pool, total = [], 0
                for r in sorted(keep + _CACHE, key=len, reverse=True):
                    if total + len(r) <= cap:
                        pool.append(r)
                        total += len(r)
                _CACHE[:] = pool
        except Exception:                    # interpreter shutdown: nothing to keep
            pass

    @staticmethod
    def _is_free(pieces, k):
        # references: the list slot and getrefcount's argument
        return sys.getrefcount(pieces[k][2]) <= 2

    def _coalesce(self, raw, pieces):
        k = 0
        while k < len(pieces):
            if self._is_free(pieces, k):
                e = k
                while e + 1 < len(pieces) and self._is_free(pieces, e + 1):
                    e += 1
                if e > k:
                    off = pieces[k][0]
                    n = pieces[e][0] + pieces[e][1] - off
                    pieces[k:e + 1] = [[off, n, _piece(raw, off, n)]]
            k += 1

    def empty(self, shape):
        """An uninitialised C-contiguous float64 array of ``shape`` (a view of a piece)."""
        shape = tuple(int(n) for n in np.atleast_1d(shape)) if np.ndim(shape) else (int(shape),)
        need = int(np.prod(shape))
        if 8 * need < self.min_bytes:
            return np.empty(shape)
        n = -(-need // _ALIGN) * _ALIGN                 # pieces start on page boundaries
        best = None
        for r, (raw, pieces) in enumerate(self._regions):
            self._coalesce(raw, pieces)
            for k in range(len(pieces)):
                if (pieces[k][1] >= n and self._is_free(pieces, k)
                        and (best is None or pieces[k][1] < self._regions[best[0]][1][best[1]][1])):
                    best = (r, k)
        if best is None:
            raw, size = self._new_region(n)
            self._regions.append([raw, [[0, size, _piece(raw, 0, size)]]])
            best = (len(self._regions) - 1, 0)
        else:
            self.reused += 8 * need
        raw, pieces = self._regions[best[0]]
        k = best[1]
        off, size = pieces[k][0], pieces[k][1]
        if size > n:                                   # split: the rest stays free
            pieces[k:k + 1] = [[off, n, _piece(raw, off, n)],
                               [off + n, size - n, _piece(raw, off + n, size - n)]]
        return pieces[k][2][:need].reshape(shape)

    def zeros(self, shape):
        """Like :meth:`empty`, filled with zeros."""
        out = self.empty(shape)
        out[...] = 0.0
        return out


def empty(work, shape):
    """``work.empty(shape)``, or ``numpy.empty(shape)`` when ``work`` is None."""
    return np.empty(shape) if work is None else work.empty(shape)


def zeros(work, shape):
    """``work.zeros(shape)``, or ``numpy.zeros(shape)`` when ``work`` is None."""
    return np.zeros(shape) if work is None else work.zeros(shape)

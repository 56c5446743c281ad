"""The package executor: order, seeding, resumable grids, Dask agreement, kill -9 resume.

The oracles are the serial in-process run (every other execution path must give bit-identical
results) and an uninterrupted run (a killed-and-resumed grid must equal it, cell by cell).
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from refmem.errors import ConfigError, DataError
from refmem.executor import Executor, cell_seed, load_grid, run_grid

ROOT = Path(__file__).resolve().parents[1]


def square(x):
    return x * x


def threads_seen(_):
    import numba
    try:
        from threadpoolctl import threadpool_info
        blas = max((i["num_threads"] for i in threadpool_info()), default=1)
    except ImportError:                 # optional dependency: only the environment is pinned
        blas = 1
    return blas, numba.get_num_threads(), os.environ.get("OMP_NUM_THREADS")


def noisy_cell(params, ss):
    """A cell whose result depends on its seed: a draw, a matrix product and a reduction."""
    rng = np.random.default_rng(ss)
    a = rng.normal(size=(params["n"], params["n"])) * params["scale"]
    return {"draw": a[0], "trace": np.trace(a @ a.T), "key_param": params["n"]}


def grid_cells():
    return {f"n={n},scale={s}": {"n": n, "scale": s} for n in (3, 5) for s in (0.5, 2.0)}


def test_map_preserves_order_serial_and_processes():
    items = list(range(23))
    with Executor(workers=1) as ex:
        assert ex.kind == "serial"
        assert ex.map(square, items) == [i * i for i in items]
    with Executor(workers=2) as ex:
        assert ex.kind == "processes"
        assert ex.map(square, items) == [i * i for i in items]
        assert ex.map(square, []) == []


def test_workers_are_pinned_to_one_thread():
    with Executor(workers=2) as ex:
        for blas, nb, env in ex.map(threads_seen, range(4)):
            assert blas == 1 and nb == 1 and env == "1"


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two"])
def test_bad_workers(bad):
    with pytest.raises(ConfigError):
        Executor(workers=bad)


def test_cell_seed_depends_on_seed_and_key_only():
    a = cell_seed(7, "a").generate_state(4)
    assert np.array_equal(a, cell_seed(7, "a").generate_state(4))
    assert not np.array_equal(a, cell_seed(7, "b").generate_state(4))
    assert not np.array_equal(a, cell_seed(8, "a").generate_state(4))


def test_grid_serial_equals_processes(tmp_path):
    with Executor(workers=1) as ex:
        r1 = run_grid(noisy_cell, grid_cells(), tmp_path / "s", executor=ex, seed=3)
    with Executor(workers=2) as ex:
        r2 = run_grid(noisy_cell, list(grid_cells().items()), tmp_path / "p", executor=ex, seed=3)
    assert list(r1) == list(grid_cells()) == list(r2)
    for k in r1:
        for name in ("draw", "trace", "key_param"):
            assert np.array_equal(r1[k][name], r2[k][name])
    # a cell's draw does not depend on which other cells are in the grid
    with Executor(workers=1) as ex:
        key = "n=5,scale=2.0"
        r3 = run_grid(noisy_cell, {key: {"n": 5, "scale": 2.0}}, tmp_path / "one", executor=ex, seed=3)
    assert np.array_equal(r3[key]["draw"], r1[key]["draw"])


def test_grid_on_dask_localcluster_is_bit_identical(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    omp_before = os.environ.get("OMP_NUM_THREADS")
    with Executor(workers=1) as ex:
        ref = run_grid(noisy_cell, grid_cells(), tmp_path / "local", executor=ex, seed=11)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        with Executor(scheduler=cluster.scheduler_address) as ex:
            assert ex.kind == "dask"
            got = run_grid(noisy_cell, grid_cells(), tmp_path / "dask", executor=ex, seed=11)
            assert ex.map(square, range(7)) == [i * i for i in range(7)]
    # an in-process cluster shares this process's threads: they are not pinned
    assert os.environ.get("OMP_NUM_THREADS") == omp_before
    for k in ref:
        for name in ref[k]:
            assert np.array_equal(ref[k][name], got[k][name])


def test_rerun_skips_finished_cells_and_rejects_other_grids(tmp_path):
    with Executor(workers=1) as ex:
        first = run_grid(noisy_cell, grid_cells(), tmp_path, executor=ex, seed=1)
        files = sorted((tmp_path / "cells").glob("*.npz"))
        mtimes = [f.stat().st_mtime_ns for f in files]
        again = run_grid(noisy_cell, grid_cells(), tmp_path, executor=ex, seed=1)
        assert [f.stat().st_mtime_ns for f in files] == mtimes
        assert all(np.array_equal(first[k]["draw"], again[k]["draw"]) for k in first)
        changed = grid_cells()
        changed["n=3,scale=0.5"] = {"n": 3, "scale": 0.25}
        with pytest.raises(DataError, match="other parameters"):
            run_grid(noisy_cell, changed, tmp_path, executor=ex, seed=1)
        with pytest.raises(DataError, match="different grid"):
            run_grid(noisy_cell, grid_cells(), tmp_path, executor=ex, seed=2)
        with pytest.raises(ConfigError, match="duplicate"):
            run_grid(noisy_cell, [("a", {}), ("a", {})], tmp_path / "d", executor=ex, seed=1)
        with pytest.raises(ConfigError, match="key"):
            run_grid(noisy_cell, {"../x": {}}, tmp_path / "e", executor=ex, seed=1)
    assert set(load_grid(tmp_path)) == set(grid_cells())


def test_processes_executor_outside_with_is_an_error():
    ex = Executor(workers=2)
    with pytest.raises(ConfigError, match="context manager"):
        ex.map(square, [1])


def test_scheduler_without_dask_is_a_one_line_error(monkeypatch):
    import builtins
    from refmem.errors import RefmemError
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("dask"):
            raise ImportError("no dask")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(RefmemError, match=r'pip install "refmem\[dask\]"'):
        with Executor(scheduler="tcp://127.0.0.1:1"):
            pass


CELL_MODULE = textwrap.dedent('''
    import os, time
    import numpy as np

    def slow_cell(params, ss):
        log = os.environ.get("GRIDCELL_LOG")
        if log:
            with open(log, "a") as fh:
                fh.write(params["key"] + "\\n")
        time.sleep(float(os.environ.get("GRIDCELL_SLEEP", "0")))
        rng = np.random.default_rng(ss)
        return {"x": rng.normal(size=3), "i": params["i"]}
''')

RUNNER = textwrap.dedent('''
    import sys
    sys.path[:0] = [{root!r}, {mod!r}]
    from refmem.executor import Executor, run_grid
    from gridcells import slow_cell
    import os
    os.environ["GRIDCELL_SLEEP"] = "{sleep}"
    cells = {{f"c{{i:02d}}": {{"i": i, "key": f"c{{i:02d}}"}} for i in range(12)}}
    with Executor(workers={workers}) as ex:
        run_grid(slow_cell, cells, {out!r}, executor=ex, seed=5)
''')


def _cells(out):
    """Finished cells of a grid directory (not the writer's hidden temporaries and locks)."""
    return {p.stem for p in (out / "cells").glob("*.npz") if not p.name.startswith(".")}


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_mid_grid_then_resume(tmp_path, workers):
    (tmp_path / "gridcells.py").write_text(CELL_MODULE)
    out = tmp_path / "grid"

    def runner(out_dir, sleep):
        return RUNNER.format(root=str(ROOT), mod=str(tmp_path), out=str(out_dir),
                             workers=workers, sleep=sleep)

    # an uninterrupted reference run (no sleep)
    subprocess.run([sys.executable, "-c", runner(tmp_path / "ref", 0.0)], check=True, timeout=120)
    # the run to kill: slow cells, killed with SIGKILL once a few cells are on disk
    proc = subprocess.Popen([sys.executable, "-c", runner(out, 0.15)], start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if len(_cells(out)) >= 3 if (out / "cells").exists() else False:
                break
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)       # the runner and its worker processes
    finally:
        proc.wait(timeout=30)
    done = _cells(out)
    assert 3 <= len(done) < 12
    # resume: exactly the missing cells are computed, once each
    log = tmp_path / "log.txt"
    env = dict(os.environ, GRIDCELL_LOG=str(log))
    subprocess.run([sys.executable, "-c", runner(out, 0.0)], check=True, timeout=120, env=env)
    recomputed = log.read_text().split()
    assert sorted(recomputed) == sorted({f"c{i:02d}" for i in range(12)} - done)
    names = sorted(p.name for p in (out / "cells").iterdir())
    assert names == [f"c{i:02d}.npz" for i in range(12)]       # no temporaries, no duplicates
    ref, got = load_grid(tmp_path / "ref"), load_grid(out)
    assert list(ref) == list(got)
    for k in ref:
        assert np.array_equal(ref[k]["x"], got[k]["x"]) and ref[k]["i"] == got[k]["i"]


FORK_AFTER_OPENMP = """
import sys
sys.path.insert(0, {root!r})
import numpy as np
from refmem.executor import Executor
from refmem.symmetric import mirror_upper

def square(v):
    mirror_upper(np.ones((300, 300)))       # and one in the worker
    return v * v

if __name__ == "__main__":
    mirror_upper(np.ones((300, 300)))       # a parallel Numba region in this process
    with Executor(workers=2) as ex:
        print(sum(ex.map(square, range(10))))
"""


def test_workers_start_after_a_parallel_numba_region(tmp_path):
    """A process that already ran a parallel Numba kernel can still start local workers (a plain
    fork of it would abort under GNU OpenMP; the executor then uses a forkserver)."""
    script = tmp_path / "fork_after_omp.py"
    script.write_text(FORK_AFTER_OPENMP.format(root=str(ROOT)))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == "285"

"""The run pipeline: one sequence, one manifest held in memory and written as it changes; a
resume picks the run's own spec and refuses flags that contradict it."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from bench import pipeline, store
from bench.spec import SpecError, SweepSpec


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    spec = SweepSpec(kernels=("hebbian",), d=(8,), n=(4, 16), seeds=1)
    run = pipeline.start(spec, tmp_path_factory.mktemp("out"), ["test"])
    return run, pipeline.execute(run, report=False)


def test_the_manifest_on_disk_and_in_the_results_is_the_one_held_in_memory(finished):
    run, manifest = finished
    assert manifest is run.manifest and manifest["status"] == "complete" and manifest["cell_ids"] == store.CELL_IDS
    assert store.read_manifest(run.run_dir) == json.loads(json.dumps(manifest))
    table = pq.read_table(run.run_dir / store.RESULTS)
    assert json.loads(table.schema.metadata[b"manifest"]) == json.loads(json.dumps(manifest))
    assert table.num_rows == 2 and manifest["cell_order"] == [c.id for c in run.spec.cells(auto_method="gram64")]
    assert not (run.run_dir / "report.md").exists()  # report=False stops after the merge


def test_a_resume_runs_the_stored_spec_and_recomputes_nothing(finished):
    run, _ = finished
    again = pipeline.resume(run.run_dir, {"seeds": 1})
    assert again.spec == run.spec and len(again.manifest["resumed"]) == 1
    manifest = pipeline.execute(again, report=False)
    assert manifest["compiled_programs"] == run.manifest["compiled_programs"]  # every cell read back


def test_a_resume_refuses_what_it_cannot_honour(finished, tmp_path):
    run, _ = finished
    with pytest.raises(SpecError, match="--d 16 contradicts the run's d=8"):
        pipeline.resume(run.run_dir, {"d": (16,)})
    with pytest.raises(SpecError, match="--preset quick contradicts"):
        pipeline.resume(run.run_dir, {}, preset="quick")
    with pytest.raises(SpecError, match="no such directory"):
        pipeline.resume(tmp_path / "missing", {})
    with pytest.raises(store.StoreError, match="not a run directory"):
        pipeline.resume(tmp_path, {})


@pytest.mark.parametrize("backend,x64,float64_rate,method", [
    ("cpu", True, None, "gram64"),   # not measured on a CPU
    ("gpu", True, 30.0, "gram64"),   # 30 / 240 = 1/8: a data-centre GPU
    ("gpu", True, 3.0, "qr32"),      # 1/80: a consumer GPU
    ("tpu", True, None, "qr32"),
    ("cpu", False, None, "qr32"),
])
def test_auto_method_uses_float64_only_where_it_is_fast(monkeypatch, backend, x64, float64_rate, method):
    from bench import environment

    measured = []

    def rate(dtype="float32", *args, **kwargs):
        measured.append(dtype)
        return {"float32": 240.0, "float64": float64_rate}[dtype]

    monkeypatch.setattr(environment, "matmul_gflops", rate)
    choice = environment.auto_method(float32_gflops=240.0, backend=backend, x64=x64)
    assert choice["auto_method"] == method and choice["auto_method_reason"]
    assert measured == (["float64"] if float64_rate is not None else [])
    assert choice["float64_over_float32"] == (None if float64_rate is None else float64_rate / 240.0)


def test_a_run_records_its_auto_method_and_a_resume_keeps_it(monkeypatch, tmp_path):
    # A device where float64 is slow: the run's pinv cells solve by qr32, the manifest says why,
    # and a resume on a machine that would choose gram64 still finds (and keeps) those cells.
    from bench import environment

    slow = {"auto_method": "qr32", "auto_method_reason": "float64 slow (test)", "float64_over_float32": 0.01}
    monkeypatch.setattr(environment, "auto_method", lambda *args, **kwargs: dict(slow))
    spec = SweepSpec(kernels=("pinv",), d=(8,), n=(4, 16), seeds=1)
    run = pipeline.start(spec, tmp_path, ["test"])
    manifest = pipeline.execute(run, report=False)
    assert {k: manifest[k] for k in slow} == slow
    rows = pq.read_table(run.run_dir / store.RESULTS).to_pylist()
    assert {r["method"] for r in rows} == {"qr32"} and {r["status"] for r in rows} == {"ok"}
    assert manifest["cell_order"] == [c.id for c in spec.cells(auto_method="qr32")]
    monkeypatch.undo()
    again = pipeline.resume(run.run_dir, {})
    resumed = pipeline.execute(again, report=False)
    assert resumed["compiled_programs"] == manifest["compiled_programs"]  # every cell read back, none recomputed
    assert resumed["cell_order"] == manifest["cell_order"]


def test_a_damaged_auto_method_is_refused_in_one_line(finished, tmp_path):
    import shutil

    run, _ = finished
    copy = tmp_path / run.run_dir.name
    shutil.copytree(run.run_dir, copy)
    manifest = json.loads((copy / store.MANIFEST).read_text())
    manifest["auto_method"] = "gram128"
    (copy / store.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(store.StoreError, match="auto_method is 'gram128', not one of"):
        pipeline.execute(pipeline.resume(copy, {}), report=False)


def test_auto_method_on_a_cpu_is_what_it_was_before_it_was_measured():
    # CPU runs keep gram64 (and their cell ids) and spend no start-up time measuring float64.
    import jax

    from bench import environment
    from kernels import default_method

    if jax.default_backend() != "cpu":
        pytest.skip("the CPU's choice")
    choice = environment.auto_method()
    assert choice["auto_method"] == default_method() == "gram64" and choice["float64_over_float32"] is None


LAPACK_PROBE = """
import json
from threadpoolctl import threadpool_info
import numpy
def blas():
    return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}
numpy.ones((2, 2)) @ numpy.ones((2, 2))
before = blas()
from bench import environment
environment.configure_jax()
import jax.numpy as jnp
jnp.linalg.cholesky(jnp.eye(3, dtype=jnp.float64)).block_until_ready()  # jaxlib's LAPACK loaded and used
print(json.dumps({"before": before, "after": blas(), "described": environment.describe()["lapack_threads"]}))
"""


def test_lapack_calls_of_compiled_programs_run_on_one_thread_and_numpy_keeps_its_own():
    # OpenBLAS's worker threads spun beside XLA's (d = 1024, n = 8: 104-133 ms a cell instead of
    # 73-105 ms); a fresh process, as a run starts.
    import subprocess

    from tests.conftest import PYTHON, REPO, run_env

    done = subprocess.run([PYTHON, "-c", LAPACK_PROBE], capture_output=True, text=True, env=run_env(), cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    scipy_blas = {path: n for path, n in probe["after"].items() if "scipy" in path and "numpy" not in path}
    if not scipy_blas:
        assert probe["described"] is None  # a BLAS SciPy shares with NumPy (conda, system): left alone
        pytest.skip("SciPy has no BLAS of its own here")
    assert set(scipy_blas.values()) == {1} and probe["described"] == 1
    for path, threads in probe["before"].items():  # NumPy's own library: as it was
        assert probe["after"][path] == threads


PRECISION_PROBE = """
import json, os
import numpy as np
from bench import environment
environment.configure_jax()
import jax, jax.numpy as jnp
rng = np.random.default_rng(0)
a, b = (rng.standard_normal((512, 512)).astype(np.float32) for _ in range(2))
got = np.asarray(jax.jit(lambda x, y: x @ y)(a, b), np.float64)
ref = a.astype(np.float64) @ b.astype(np.float64)
described = environment.describe()
print(json.dumps({"error": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
                  "precision": described["matmul_precision"], "xla_flags": described["xla_flags"]}))
"""


def _precision_probe(**settings) -> dict:
    """The probe in a fresh process; settings: environment variables, None to unset one."""
    import subprocess

    from tests.conftest import PYTHON, REPO, run_env

    env = run_env(**{k: v for k, v in settings.items() if v is not None})
    for name in (k for k, v in settings.items() if v is None):
        env.pop(name, None)
    done = subprocess.run([PYTHON, "-c", PRECISION_PROBE], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_suite_multiplies_in_true_float32_on_any_device_unless_told_otherwise():
    """JAX's default computes float32 products in TF32 on NVIDIA GPUs (2.9e-4 from float64 on an
    H100) and one bfloat16 pass on TPUs; the suite's runs use kernels.MATMUL_PRECISION, and the
    manifest says which precision and which XLA flags a run had. A user's own choice stands."""
    from bench.environment import GPU_XLA_FLAGS
    from kernels import MATMUL_PRECISION

    ours = _precision_probe(JAX_DEFAULT_MATMUL_PRECISION=None, XLA_FLAGS=None)
    assert ours["precision"] == MATMUL_PRECISION == "highest" and ours["error"] < 1e-5
    assert ours["xla_flags"].split() == list(GPU_XLA_FLAGS)
    theirs = _precision_probe(JAX_DEFAULT_MATMUL_PRECISION="bfloat16",
                              XLA_FLAGS="--xla_gpu_enable_triton_gemm=true --xla_force_host_platform_device_count=2")
    assert theirs["precision"] == "bfloat16"
    assert theirs["xla_flags"] == "--xla_gpu_enable_triton_gemm=true --xla_force_host_platform_device_count=2"


def test_the_fuzzy_store_answers_in_true_float32_unless_told_otherwise(monkeypatch):
    """The store is a library as well as a command: it picks the precision itself, at the time
    it traces, without configure_jax (a user's global choice stands)."""
    import jax
    import numpy as np

    from fuzzy_kv import Database, Embeddings, decode
    from kernels import MATMUL_PRECISION

    words = ["cat", "dog", "animal", "ball", "toy"]
    emb = Embeddings(words, np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32))
    db = Database({"cat": "animal", "dog": "animal"}, embeddings=emb)
    seen = []
    top_k = decode.top_k_cosine
    monkeypatch.setattr(decode, "top_k_cosine", lambda *a, **kw: seen.append(jax.config.jax_default_matmul_precision)
                        or top_k(*a, **kw))
    with jax.default_matmul_precision(None):
        db.answers(["cat"], 2)
    with jax.default_matmul_precision("bfloat16"):
        db.answers(["dog"], 2)
    assert seen == [MATMUL_PRECISION, "bfloat16"]

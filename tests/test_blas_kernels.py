"""OpenBLAS kernels are named from the CPU's flags, before faiss loads its OpenBLAS."""

import os
import subprocess
import sys

from streamnorm.blas_kernels import (
    CORETYPE_VARIABLE,
    choose_openblas_kernels,
    cpu_flags,
    kernels_for,
)


def write_cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel\t\t: 207\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    return path


def test_kernels_follow_the_instruction_sets(tmp_path):
    cases = {
        "fpu sse2 avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl amx_tile": "SkylakeX",
        # AVX-512 without the byte/word and doubleword/quadword extensions is not enough.
        "sse2 avx2 fma avx512f avx512cd": "Haswell",
        "sse2 avx avx2 fma": "Haswell",
        "sse2 sse4_2 avx": None,
    }
    for flags, expected in cases.items():
        environ: dict[str, str] = {}
        assert choose_openblas_kernels(environ, write_cpuinfo(tmp_path, flags)) == expected
        assert environ.get(CORETYPE_VARIABLE) == expected


def test_a_users_choice_is_kept(tmp_path):
    environ = {CORETYPE_VARIABLE: "Zen"}
    cpuinfo = write_cpuinfo(tmp_path, "avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl")
    assert choose_openblas_kernels(environ, cpuinfo) is None
    assert environ == {CORETYPE_VARIABLE: "Zen"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_faiss_loads_the_chosen_kernels():
    expected = kernels_for(cpu_flags())
    # OpenBLAS names the kernels it loads when asked to be verbose.
    environ = {k: v for k, v in os.environ.items() if k != CORETYPE_VARIABLE}
    environ["OPENBLAS_VERBOSE"] = "2"
    script = f"import streamnorm, os, faiss; print(os.environ.get({CORETYPE_VARIABLE!r}))"
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=environ
    )
    loaded = {
        line.split(":", 1)[1].strip()
        for line in completed.stderr.splitlines()
        if line.startswith("Core:")
    }
    assert completed.stdout.strip() == str(expected)
    if expected is not None:
        # numpy's and faiss's OpenBLAS both report, and both run the chosen kernels.
        assert loaded == {expected}, completed.stderr

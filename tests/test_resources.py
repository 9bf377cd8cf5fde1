import pytest

from streamnorm.errors import ConfigError
from streamnorm.resources import model_bytes, parse_bytes, plan_resources, row_bytes

INFO = {
    "n_train": 1_000_000,
    "dim": 256,
    "transformed_dim": 256,
    "output_dim": 257,
    "index": {"kind": "flat"},
}
GIB = 2**30


def test_parse_bytes():
    assert parse_bytes("4GB") == 4 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1000") == 1000
    with pytest.raises(ConfigError, match="4GB or 512MiB"):
        parse_bytes("lots")


def test_model_and_row_sizes_by_hand():
    assert model_bytes(INFO) == 4 * 1_000_000 * 256  # one float32 copy of the training set
    assert model_bytes({**INFO, "index": {"kind": "ivf"}}) == 2 * model_bytes(INFO)
    assert row_bytes(INFO) == 4 * (256 + 512) + 16 * 64 + 8 * 257


def test_no_limit_shares_the_cores():
    plan = plan_resources(INFO, cores=8, workers=4, chunk_rows=8192, chunk_rows_fixed=False)
    assert (plan.chunk_rows, plan.workers, plan.threads) == (8192, 4, 2)


def test_a_limit_shrinks_chunks_then_tasks_in_flight():
    # 1.5 GiB: 0.95 GiB model + 0.29 GiB process leave ~0.26 GiB for the tasks.
    plan = plan_resources(
        INFO,
        cores=2,
        workers=2,
        chunk_rows=65536,
        chunk_rows_fixed=False,
        memory_limit=int(1.5 * GIB),
    )
    budget = int(1.5 * GIB) - 300 * 2**20 - model_bytes(INFO)
    assert plan.workers == 2
    assert plan.chunk_rows == (budget // 2 - 64 * 2**20) // row_bytes(INFO)
    assert plan.chunk_rows < 65536
    # With the chunk size fixed by an existing store, fewer tasks run at once instead.
    fixed = plan_resources(
        INFO,
        cores=2,
        workers=2,
        chunk_rows=30_000,
        chunk_rows_fixed=True,
        memory_limit=int(1.5 * GIB),
    )
    assert (fixed.chunk_rows, fixed.workers, fixed.threads) == (30_000, 1, 2)


def test_a_limit_below_the_model_is_refused():
    with pytest.raises(ConfigError, match="too small"):
        plan_resources(
            INFO, cores=2, workers=2, chunk_rows=8192, chunk_rows_fixed=False, memory_limit=GIB
        )

"""Streamed id checks against a plain in-memory definition."""

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from streamnorm.errors import InputError
from streamnorm.id_column import ID_BLOCK_ROWS, IdColumn, as_unicode, check_unique, hash_ids


def expected_error(ids: list[str]) -> str | None:
    """The message check_unique must give, worked out directly on a Python list."""
    rows: dict[str, list[int]] = {}
    for row, identifier in enumerate(ids):
        rows.setdefault(identifier, []).append(row)
    duplicated = sorted(i for i, found in rows.items() if len(found) > 1)
    if duplicated:
        first, second = rows[duplicated[0]][:2]
        return f"duplicate id {duplicated[0]!r} at rows {first} and {second}"
    if "" in rows:
        return f"empty id at row {rows[''][0]}"
    return None


def outcome(columns: list[IdColumn]) -> str | None:
    try:
        check_unique(columns, "input")
    except InputError as error:
        return str(error).removeprefix("input: ")
    return None


id_lists = st.lists(st.text(alphabet="ab\u00e9\u4e2d", max_size=3), max_size=40)


@settings(max_examples=200, deadline=None)
@given(ids=id_lists, split=st.integers(0, 40))
def test_check_unique_matches_a_direct_definition(ids, split):
    split = min(split, len(ids))
    whole = [IdColumn.from_array(np.array(ids, dtype=str))]
    # The same ids as two columns numbered one after the other give the same verdict.
    parts = [
        IdColumn.from_array(np.array(ids[:split], dtype=str)),
        IdColumn.from_array(np.array(ids[split:], dtype=str)),
    ]
    assert outcome(whole) == expected_error(ids)
    assert outcome(parts) == expected_error(ids)


@given(
    ids=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=20),
    pad=st.integers(1, 9),
)
def test_hash_does_not_depend_on_the_array_width(ids, pad):
    narrow = np.array(ids, dtype=str)
    wide = narrow.astype(f"<U{narrow.dtype.itemsize // 4 + pad}")
    np.testing.assert_array_equal(hash_ids(narrow), hash_ids(wide))


def test_equal_hashes_of_different_ids_are_not_duplicates():
    # Code point 0 inside an id is skipped by the hash, so these two collide on purpose.
    ids = np.array(["ab", "a\x00b", "c"])
    assert hash_ids(ids)[0] == hash_ids(ids)[1]
    check_unique([IdColumn.from_array(ids)], "input")
    with pytest.raises(InputError, match=r"duplicate id 'ab' at rows 0 and 3"):
        check_unique([IdColumn.from_array(np.append(ids, "ab"))], "input")


def test_duplicates_found_across_blocks_of_a_zarr_column(tmp_path):
    n = ID_BLOCK_ROWS + 5_000
    ids = np.array([f"img-{i:07d}" for i in range(n)])
    ids[n - 3] = ids[7]
    column = zarr.create_array(tmp_path / "ids.zarr", shape=(n,), chunks=(4096,), dtype=str)
    column[:] = ids
    lazy = IdColumn.from_strings(column)
    assert list(lazy.read(n - 4, n + 10)) == list(ids[n - 4 :])
    np.testing.assert_array_equal(lazy.load(), ids)
    with pytest.raises(InputError, match=rf"duplicate id 'img-0000007' at rows 7 and {n - 3}"):
        check_unique([lazy], "input")


def test_row_numbers_and_decoding():
    assert list(IdColumn.row_numbers(12).read(9, 20)) == ["9", "10", "11"]
    decoded = as_unicode(np.array(["é".encode(), b"x"], dtype=object))
    assert decoded.tolist() == ["é", "x"] and decoded.dtype.kind == "U"
    assert as_unicode(np.array([b"abc", b"d"])).tolist() == ["abc", "d"]

"""The SQLite backend's float blob: a metrics summary's values as float64 little-endian,
read back exactly, whatever their count."""

from __future__ import annotations

import array
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.collector.storage.sqlite.codec import pack_floats, unpack_floats

_values = st.lists(st.floats(allow_nan=False), max_size=300)


@settings(max_examples=300, deadline=None)
@given(st.lists(_values, min_size=1, max_size=5))
def test_values_pack_to_little_endian_float64_and_back(summaries: list[list[float]]) -> None:
    for values in summaries:
        blob = pack_floats(values)
        expected = array.array("d", values)
        if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
            expected.byteswap()
        assert blob == expected.tobytes()
        assert unpack_floats(blob) == values


def test_more_distinct_counts_than_the_packers_kept_all_pack() -> None:
    for n in range(200):  # past the cache's bound: the oldest are dropped, never wrong
        values = [float(i) * 0.5 for i in range(n)]
        assert unpack_floats(pack_floats(dict.fromkeys(range(n), 0.0).values())) == [0.0] * n
        assert unpack_floats(pack_floats(values)) == values

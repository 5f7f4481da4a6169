import re

from ownllm.ids import new_id


def test_ids_are_unique_and_sort_in_creation_order():
    ids = [new_id("file") for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"file-[0-9a-f]{24}", i) for i in ids)
    times = [i[:-8] for i in ids]  # ids made within one clock tick differ in the random tail
    assert times == sorted(times)

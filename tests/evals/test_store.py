"""Eval items read from JSONL: wrapped or bare objects, blank lines skipped, a bad line
named with the error type the caller gives."""

import pytest

from ownllm.errors import InvalidRequestError
from ownllm.evals.store import item_lines


def test_items_wrapped_or_bare_and_blank_lines_skipped():
    lines = ['{"item": {"q": 1}}\n', "\n", '{"q": 2}\n', '{"item": 3}\n']
    assert list(item_lines(lines, "f.jsonl", ValueError)) == [
        {"item": {"q": 1}},
        {"item": {"q": 2}},
        {"item": {"item": 3}},
    ]


@pytest.mark.parametrize(
    "bad, message",
    [("not json\n", "file-1 line 2 is not JSON"), ("[1]\n", "file-1 line 2 is not a JSON object")],
)
def test_a_bad_line_is_named(bad, message):
    with pytest.raises(InvalidRequestError) as e:
        list(item_lines(['{"q": 1}\n', bad], "file-1", InvalidRequestError))
    assert e.value.message == message

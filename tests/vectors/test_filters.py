import pytest

from ownllm.errors import InvalidRequestError
from ownllm.vectors.filters import check_attributes, parse_filter

DOC = {"team": "sales", "year": 2024, "public": True, "score": 4.5}


@pytest.mark.parametrize(
    "f, expected",
    [
        ({"type": "eq", "key": "team", "value": "sales"}, True),
        ({"type": "eq", "key": "team", "value": "legal"}, False),
        ({"type": "ne", "key": "team", "value": "legal"}, True),
        ({"type": "gt", "key": "year", "value": 2023}, True),
        ({"type": "gte", "key": "year", "value": 2024}, True),
        ({"type": "lt", "key": "year", "value": 2024}, False),
        ({"type": "lte", "key": "score", "value": 4.5}, True),
        ({"type": "gt", "key": "team", "value": 3}, False),  # a string is not above a number
        ({"type": "eq", "key": "public", "value": True}, True),
        ({"type": "eq", "key": "year", "value": "2024"}, False),  # "2024" is not 2024
        ({"type": "in", "key": "team", "value": ["legal", "sales"]}, True),
        ({"type": "nin", "key": "team", "value": ["legal", "sales"]}, False),
        ({"type": "eq", "key": "missing", "value": 1}, False),
        ({"type": "ne", "key": "missing", "value": 1}, True),
        (
            {
                "type": "and",
                "filters": [
                    {"type": "eq", "key": "team", "value": "sales"},
                    {"type": "or", "filters": [
                        {"type": "lt", "key": "year", "value": 2000},
                        {"type": "eq", "key": "public", "value": True},
                    ]},
                ],
            },
            True,
        ),
        ({"type": "or", "filters": [{"type": "eq", "key": "team", "value": "x"}]}, False),
    ],
)  # fmt: skip
def test_filters_match_as_openai_defines_them(f, expected):
    assert parse_filter(f)(DOC) is expected


@pytest.mark.parametrize(
    "f, param",
    [
        ({"type": "like", "key": "a", "value": 1}, "filters.type"),
        ({"type": "eq", "value": 1}, "filters.key"),
        ({"type": "eq", "key": "a"}, "filters.value"),
        ({"type": "in", "key": "a", "value": "x"}, "filters.value"),
        ({"type": "and", "filters": []}, "filters.filters"),
        ({"type": "and", "filters": [{"type": "eq", "key": "a"}]}, "filters.filters[0].value"),
        ("eq", "filters"),
    ],
)
def test_a_bad_filter_is_a_400_naming_where(f, param):
    with pytest.raises(InvalidRequestError) as e:
        parse_filter(f)
    assert e.value.param == param


def test_attributes_limits():
    assert check_attributes({"a": "x", "b": 1, "c": True}) == {"a": "x", "b": 1, "c": True}
    for bad, param in [
        ({f"k{i}": i for i in range(17)}, "attributes"),
        ({"k": "x" * 513}, "attributes.k"),
        ({"k": [1]}, "attributes.k"),
        ({"k" * 65: 1}, "attributes"),
    ]:
        with pytest.raises(InvalidRequestError) as e:
            check_attributes(bad)
        assert e.value.param == param

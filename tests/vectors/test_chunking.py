import pytest

from ownllm.errors import InvalidRequestError
from ownllm.vectors.chunking import AUTO, Chunking, chunk_text, parse_chunking, windows
from tests.vectors.word_embedder import WordEmbedder


def test_windows_overlap_and_end_at_the_text_end():
    c = Chunking(100, 40)
    assert windows(250, c) == [(0, 100), (60, 160), (120, 220), (180, 250)]
    assert windows(100, c) == [(0, 100)]
    assert windows(0, c) == []


def test_chunks_are_whole_tokens_of_the_text_with_their_counts():
    text = " ".join(f"w{i}" for i in range(230))
    chunks = chunk_text(text, WordEmbedder().token_spans(text), Chunking(100, 50))
    assert [n for _, n in chunks] == [100, 100, 100, 80]
    assert chunks[0][0].split()[0] == "w0" and chunks[0][0].split()[-1] == "w99"
    assert chunks[1][0].split()[0] == "w50"  # 50 tokens of overlap
    assert chunks[-1][0].split()[-1] == "w229"


def test_auto_and_static_parse_and_show_as_static():
    assert parse_chunking(None) == AUTO == parse_chunking({"type": "auto"})
    static = {
        "type": "static",
        "static": {"max_chunk_size_tokens": 400, "chunk_overlap_tokens": 200},
    }
    c = parse_chunking(static)
    assert c == Chunking(400, 200) and c.wire() == static


@pytest.mark.parametrize(
    "static, param",
    [
        ({"max_chunk_size_tokens": 99, "chunk_overlap_tokens": 0}, "max_chunk_size_tokens"),
        ({"max_chunk_size_tokens": 4097, "chunk_overlap_tokens": 0}, "max_chunk_size_tokens"),
        ({"max_chunk_size_tokens": 400, "chunk_overlap_tokens": 201}, "chunk_overlap_tokens"),
        ({"max_chunk_size_tokens": 400, "chunk_overlap_tokens": -1}, "chunk_overlap_tokens"),
        ({"max_chunk_size_tokens": 400}, "chunk_overlap_tokens"),
        ({"max_chunk_size_tokens": "400", "chunk_overlap_tokens": 0}, "max_chunk_size_tokens"),
    ],
)
def test_static_limits_are_openais(static, param):
    with pytest.raises(InvalidRequestError) as e:
        parse_chunking({"type": "static", "static": static})
    assert e.value.param == f"chunking_strategy.static.{param}"


def test_unknown_type_is_refused():
    with pytest.raises(InvalidRequestError) as e:
        parse_chunking({"type": "semantic"})
    assert e.value.param == "chunking_strategy.type"

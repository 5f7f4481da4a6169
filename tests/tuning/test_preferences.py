import json

import pytest

from ownllm.models.tokenizer import Tokenizer
from ownllm.models.tool_format import render_conversation
from ownllm.tuning.data import DataError
from ownllm.tuning.preferences import read_pairs, tokenize_pairs
from tests.tuning.conftest import OTHER, PAIRS, REPLY, chat, pair, write_jsonl


def test_bad_lines_are_reported_with_their_numbers_and_reasons(tmp_path):
    good = [json.dumps(p) for p in PAIRS]
    no_output = pair("q", REPLY, OTHER)
    del no_output["non_preferred_output"]
    last_is_assistant = pair("q", REPLY, OTHER)
    last_is_assistant["input"]["messages"].append({"role": "assistant", "content": "x"})
    bad = [
        "{not json",
        json.dumps(chat("q", "a")),
        json.dumps(no_output),
        json.dumps(pair("q", "same", "same")),
        json.dumps(last_is_assistant),
        json.dumps(
            {**pair("q", REPLY, OTHER), "preferred_output": [{"role": "user", "content": "x"}]}
        ),
        json.dumps({**pair("q", REPLY, OTHER), "input": {"messages": [], "tools": []}}),
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", good[:2] + bad + good[2:])
    with pytest.raises(DataError) as e:
        read_pairs(path)
    message = e.value.message
    assert e.value.param == "training_file" and e.value.code == "invalid_file_format"
    assert "7 invalid line(s)" in message
    assert "line 3: invalid JSON" in message
    assert "line 4: a chat example where a preference pair is expected" in message
    assert "line 5: 'non_preferred_output' must be one assistant message" in message
    assert "line 6: 'preferred_output' and 'non_preferred_output' are the same" in message
    assert "line 7: the last of 'input.messages' must be the user's" in message
    assert "line 8: 'preferred_output' must be one assistant message" in message
    assert "line 9: missing 'input.messages'" in message


def test_fewer_than_ten_pairs_is_invalid_n_examples(tmp_path):
    with pytest.raises(DataError) as e:
        read_pairs(write_jsonl(tmp_path / "few.jsonl", PAIRS[:9]))
    assert e.value.code == "invalid_n_examples" and "9 preference pair(s)" in e.value.message


def test_bad_tools_are_named(tmp_path):
    record = pair("q", REPLY, OTHER)
    record["input"]["tools"] = [{"type": "function", "function": {"description": "no name"}}]
    with pytest.raises(DataError) as e:
        read_pairs(write_jsonl(tmp_path / "tools.jsonl", [*PAIRS, record]))
    assert "line 13: input.tools[0].function.name must be" in e.value.message


def test_a_pair_shares_its_prompt_and_masks_only_each_answer(tmp_path, tiny_model_dir):
    tok = Tokenizer.from_dir(tiny_model_dir)
    record = pair("What is up?", REPLY, OTHER, system="Be brief.")
    record["input"]["tools"] = [{"type": "function", "function": {"name": "get_weather"}}]
    path = write_jsonl(tmp_path / "pairs.jsonl", [*PAIRS, record])
    pairs = read_pairs(path)
    last = tokenize_pairs(tok, pairs, max_len=2048).pairs[-1]
    # the prompt as serving renders it, tools and all
    text = render_conversation(tok, record["input"]["messages"], pairs[-1].tools, True)
    assert "get_weather" in text
    prompt = tok.encode_chat_text(text)
    for answer, text in ((last.preferred, REPLY), (last.non_preferred, OTHER)):
        assert answer.input_ids[: len(prompt)] == prompt
        trained = [t for t, m in zip(answer.input_ids, answer.labels_mask) if m]
        assert tok.decode(trained).strip() == text  # the answer and the end-of-turn token
        assert answer.labels_mask[-1] and not any(answer.labels_mask[: len(prompt)])

"""Streaming text: whole characters only, stop strings held back and cut, token bytes."""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from ownllm.engine.detokenizer import IncrementalDetokenizer, StopChecker, TokenTexts
from ownllm.models.tiny import make_tokenizer
from ownllm.models.tokenizer import Tokenizer

TEXTS = [
    "Hello world! How are you today?",
    "caf\u00e9 na\u00efve \u00fcber \u00e9t\u00e9",
    "\u65e5\u672c\u8a9e\u3068\u4e2d\u6587\uff0c\u6c49\u5b57\u3002",
    "emoji \U0001f600\U0001f680 family \U0001f468\u200d\U0001f469\u200d\U0001f467 flag \U0001f1eb\U0001f1f7",
    "mixed: \u00e9\U0001f600\u65e5 a\u0301 \u2603\ufe0f end",
    "  leading spaces,\ttabs\nand newlines\n\n",
]


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory) -> Tokenizer:
    """GPT-2 style byte-level BPE (like SmolLM2): multi-byte characters split into byte tokens."""
    path = tmp_path_factory.mktemp("byte-level")
    make_tokenizer(path)
    return Tokenizer.from_dir(path)


@pytest.fixture(scope="module")
def byte_fallback() -> HFTokenizer:
    """Llama-2 style SentencePiece BPE: unknown characters become <0xNN> byte tokens."""
    base = HFTokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], show_progress=False
    )
    base.train_from_iterator(["Hello world! How are you today? caf\u00e9"] * 20, trainer)
    spec = json.loads(base.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tokenizer = HFTokenizer.from_str(json.dumps(spec))
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return tokenizer


@pytest.fixture(params=["byte_level", "byte_fallback"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def stream(tokenizer, prompt_ids, ids, skip_special_tokens=True) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens)
    deltas = [detok.add(t) for t in ids]
    return [*deltas, detok.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_text_equals_full_decode_and_never_breaks_a_character(tokenizer, text):
    ids = (
        tokenizer.encode(text).ids if isinstance(tokenizer, HFTokenizer) else tokenizer.encode(text)
    )
    assert len(ids) > 1
    deltas = stream(tokenizer, [], ids)
    assert "".join(deltas) == tokenizer.decode(ids)
    assert not any("\ufffd" in d for d in deltas)


def test_multibyte_characters_really_span_tokens(byte_level, byte_fallback):
    """Guard for the test above: the tokenizers do split characters across tokens."""
    for tok, ids in [
        (byte_level, byte_level.encode("\U0001f680\u2603")),
        (byte_fallback, byte_fallback.encode("\U0001f680").ids),
    ]:
        assert any("\ufffd" in tok.decode([t]) for t in ids)


def test_text_after_a_prompt_starts_where_the_prompt_ends(byte_level):
    prompt = byte_level.encode("<|im_start|>assistant\nSure")
    ids = byte_level.encode(", caf\u00e9 \U0001f600!")
    full = byte_level.decode(prompt + ids)
    assert full.startswith("assistant\nSure")
    assert "".join(stream(byte_level, prompt, ids)) == full[len("assistant\nSure") :]


def test_leading_space_of_a_sentencepiece_token_is_kept_after_a_prompt(byte_fallback):
    prompt = byte_fallback.encode("Hello").ids
    ids = byte_fallback.encode("Hello world").ids[len(prompt) :]
    assert "".join(stream(byte_fallback, prompt, ids)) == " world"


def test_special_tokens_are_skipped_or_shown(byte_level):
    end = byte_level.token_to_id("<|im_end|>")
    ids = [*byte_level.encode("Hi"), end]
    assert "".join(stream(byte_level, [], ids)) == "Hi"
    assert "".join(stream(byte_level, [], ids, skip_special_tokens=False)) == "Hi<|im_end|>"


def test_a_character_cut_by_the_end_of_generation_is_dropped(byte_level):
    ids = byte_level.encode("ok \U0001f600")
    assert "\ufffd" in byte_level.decode(ids[:-1])
    assert "".join(stream(byte_level, [], ids[:-1])) == "ok "


# --- stop strings ---------------------------------------------------------------------


def run_stops(stops, pieces) -> tuple[str, bool]:
    checker = StopChecker(tuple(stops))
    emitted = []
    for piece in pieces:
        text, stopped = checker.feed(piece)
        emitted.append(text)
        if stopped:
            return "".join(emitted), True
    return "".join(emitted) + checker.flush(), False


def test_stop_string_split_across_tokens():
    checker = StopChecker(("</answer>",))
    assert checker.feed("42 </") == ("42 ", False)  # "</" could begin the stop: held
    assert checker.feed("ans") == ("", False)
    assert checker.feed("wer> trailing") == ("", True)
    assert checker.feed("more") == ("", True)
    assert checker.stop_string == "</answer>"


def test_held_text_is_released_when_it_cannot_become_a_stop():
    checker = StopChecker(("END",))
    assert checker.feed("The E") == ("The ", False)
    assert checker.feed("ast") == ("East", False)
    assert checker.feed(" EN") == (" ", False)
    assert checker.flush() == "EN"


def test_stop_at_the_very_start():
    assert run_stops(["Hello"], ["Hel", "lo world"]) == ("", True)
    assert run_stops(["\n"], ["\nabc"]) == ("", True)


def test_overlapping_stops_end_at_the_first_completed():
    assert run_stops(["abc", "bcd"], ["xab", "cd"]) == ("x", True)
    assert run_stops(["abcd", "c"], ["abcd"]) == ("ab", True)
    assert run_stops(["aab"], ["a", "a", "a", "b", "z"]) == ("a", True)


def test_no_stops_pass_text_through():
    assert run_stops([], ["a", "b"]) == ("ab", False)
    assert run_stops([""], ["a"]) == ("a", False)


def test_where_tokens_split_the_text_does_not_change_the_output():
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 12)))
        stops = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 3))) for _ in range(2)]
        by_char = run_stops(stops, list(text))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(3, len(text) + 1)))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        assert run_stops(stops, pieces) == by_char, (text, stops, pieces)
        assert run_stops(stops, [text]) == by_char
        out, stopped = by_char
        assert not any(s in out for s in stops)
        assert stopped == any(s in text for s in stops)


# --- token texts for logprobs ---------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_concatenate_to_the_text(byte_level, byte_fallback, text):
    ids = byte_level.encode(text)
    texts = TokenTexts(byte_level)
    assert b"".join(texts.token_bytes(t) for t in ids) == text.encode()

    ids = byte_fallback.encode(text).ids
    texts = TokenTexts(byte_fallback)
    raw = b"".join(texts.token_bytes(t) for t in ids)
    # The SentencePiece decoder drops the space it prepended; token bytes keep it.
    assert raw == b" " + byte_fallback.decode(ids).encode()


def test_token_logprob_carries_text_bytes_and_alternatives(byte_level):
    texts = TokenTexts(byte_level)
    rocket = byte_level.encode("\U0001f680")
    end = byte_level.token_to_id("<|im_end|>")
    lp = texts.logprob(rocket[0], -0.5, top=[(rocket[0], -0.5), (end, -2.0)])
    assert lp.token_id == rocket[0] and lp.logprob == -0.5
    assert bytes(lp.bytes) == texts.token_bytes(rocket[0])
    assert b"".join(texts.token_bytes(t) for t in rocket) == "\U0001f680".encode()
    assert lp.top[1] == (end, "<|im_end|>", -2.0)
    assert texts.token_text(byte_level.encode(" Hello")[0]).startswith(" ")

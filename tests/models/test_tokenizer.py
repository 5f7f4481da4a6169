from ownllm.models.tokenizer import Tokenizer


def test_chat_template_and_stop_tokens(tiny_model_dir):
    tokenizer = Tokenizer.from_dir(tiny_model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    text = tokenizer.apply_chat_template(messages)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer.encode_chat(messages)
    im_end = tokenizer.token_to_id("<|im_end|>")
    assert im_end in ids and im_end in tokenizer.eos_token_ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_round_trip_unicode(tiny_model_dir):
    tokenizer = Tokenizer.from_dir(tiny_model_dir)
    text = "caf\u00e9 \u65e5\u672c\u8a9e \U0001f600 fox"
    assert tokenizer.decode(tokenizer.encode(text)) == text

"""GGUF names and llama.cpp's rotary row order, shared by the GGUF cache and the export."""

import numpy as np
import pytest
import torch

from ownllm.formats.gguf_names import GgufNames, permute_rows

pytest.importorskip("gguf")


def test_names_map_hf_to_gguf_both_weights_and_biases():
    names = GgufNames("llama", num_layers=2, num_heads=4, num_kv_heads=2)
    assert names.gguf_name("model.layers.1.self_attn.q_proj.weight") == "blk.1.attn_q.weight"
    assert names.gguf_name("model.layers.0.self_attn.k_proj.bias") == "blk.0.attn_k.bias"
    assert names.gguf_name("model.embed_tokens.weight") == "token_embd.weight"
    assert names.gguf_name("model.layers.0.no_such.weight") is None


def test_llama_q_and_k_are_permuted_with_their_biases_as_convert_hf_to_gguf_does():
    names = GgufNames("llama", num_layers=1, num_heads=4, num_kv_heads=2)
    assert names.rotary_heads("model.layers.0.self_attn.q_proj.weight") == 4
    assert names.rotary_heads("model.layers.0.self_attn.q_proj.bias") == 4
    assert names.rotary_heads("model.layers.0.self_attn.k_proj.weight") == 2
    assert names.rotary_heads("model.layers.0.self_attn.k_proj.bias") == 2
    assert names.rotary_heads("model.layers.0.self_attn.v_proj.weight") is None
    assert names.rotary_heads("lm_head.weight") is None
    qwen = GgufNames("qwen2", num_layers=1, num_heads=4, num_kv_heads=2)
    assert qwen.rotary_heads("model.layers.0.self_attn.q_proj.weight") is None


def test_permute_rows_interleaves_each_heads_halves_and_inverts_for_numpy_and_torch():
    rows = np.arange(8)  # 2 heads of 4 rows: halves [0 1][2 3] and [4 5][6 7]
    assert permute_rows(rows, 2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    weights = np.random.default_rng(0).standard_normal((8, 3))
    assert np.array_equal(permute_rows(permute_rows(weights, 2), 2, inverse=True), weights)
    tensor = torch.from_numpy(weights)
    assert torch.equal(permute_rows(tensor, 2), torch.from_numpy(permute_rows(weights, 2)))
    assert torch.equal(permute_rows(permute_rows(tensor, 4), 4, inverse=True), tensor)

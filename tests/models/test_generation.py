"""Generation defaults: catalog entry < generation_config.json < [model.generation];
a bad generation_config.json stops the server with one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from ownllm.api.app import build_state
from ownllm.config import GenerationDefaults, load_config
from ownllm.models.catalog import CATALOG, ModelLoadError, ModelSource, resolve_model
from ownllm.models.generation import generation_defaults, read_generation_config


def write_generation_config(model_dir, values) -> None:
    text = values if isinstance(values, str) else json.dumps(values)
    (model_dir / "generation_config.json").write_text(text)


@pytest.fixture
def model_dir(tmp_path, tiny_model_dir):
    """A copy of the tiny model whose generation_config.json a test may write."""
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def test_catalog_model_has_its_recommended_defaults():
    assert CATALOG["smollm2-135m-instruct"].generation == GenerationDefaults(
        temperature=0.0, top_p=0.9
    )


def test_hf_dir_brings_its_own_defaults(model_dir):
    write_generation_config(
        model_dir,
        {
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.8,
            "top_k": 20,
            "min_p": 0.05,
            "repetition_penalty": 1.05,
            "max_new_tokens": 256,  # not a sampling default ownllm takes: ignored
            "eos_token_id": [1, 2],
            "transformers_version": "4.51.0",
        },
    )
    source = resolve_model(str(model_dir), name="tiny")
    assert generation_defaults(source, GenerationDefaults()) == GenerationDefaults(
        temperature=0.7, top_p=0.8, top_k=20, min_p=0.05, repetition_penalty=1.05
    )


def test_a_file_with_only_token_ids_or_none_sets_nothing(model_dir):
    assert read_generation_config(model_dir) == GenerationDefaults()  # tiny ships none
    write_generation_config(model_dir, {"bos_token_id": 1, "eos_token_id": 2, "top_p": None})
    assert read_generation_config(model_dir) == GenerationDefaults()


def test_do_sample_false_is_greedy(model_dir):
    write_generation_config(
        model_dir, {"do_sample": False, "temperature": 0.6, "repetition_penalty": 1.1}
    )
    defaults = read_generation_config(model_dir)
    assert defaults.temperature == 0.0 and defaults.repetition_penalty == 1.1


def test_config_wins_over_file_and_file_over_catalog(tmp_path):
    write_generation_config(tmp_path, {"temperature": 0.7, "top_k": 20})
    catalog = GenerationDefaults(temperature=0.2, top_p=0.9, top_k=50)
    source = ModelSource("m", "hf_dir", tmp_path, catalog)
    configured = GenerationDefaults(temperature=0.0)
    assert generation_defaults(source, configured) == GenerationDefaults(
        temperature=0.0, top_p=0.9, top_k=20
    )


def test_a_gguf_cache_dir_file_is_not_read(tmp_path):
    write_generation_config(tmp_path, {"temperature": "hot"})  # would fail if read
    source = ModelSource("m", "gguf", tmp_path / "m.gguf", GenerationDefaults(top_p=0.9))
    assert generation_defaults(source, GenerationDefaults()) == GenerationDefaults(top_p=0.9)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"temperature": "hot"}', "temperature = 'hot' (from '{path}'): expected float"),
        ('{"temperature": 5}', "temperature = 5 (from '{path}'): must be between 0.0 and 2.0"),
        ('{"top_k": 1.5}', "top_k = 1.5 (from '{path}'): expected int"),
        ('{"top_p": true}', "top_p = True (from '{path}'): expected float"),
        ('{"do_sample": "no"}', "do_sample = 'no' (from '{path}'): expected bool"),
        ('{"temperature": 0.7,', "cannot read '{path}': "),
        ("[0.7]", "'{path}' must hold a JSON object"),
    ],
)
def test_bad_generation_config_is_one_clear_line(model_dir, text, message):
    write_generation_config(model_dir, text)
    with pytest.raises(ModelLoadError) as info:
        read_generation_config(model_dir)
    path = model_dir / "generation_config.json"
    assert str(info.value).startswith(message.format(path=path))
    assert "\n" not in str(info.value)


def test_build_state_layers_config_over_the_models_file(model_dir, tmp_path):
    write_generation_config(model_dir, {"temperature": 0.7, "top_p": 0.8})
    overrides = {
        "model": {"model": str(model_dir), "name": "tiny", "generation": {"top_p": 0.5}},
        "store": {"data_dir": str(tmp_path / "home")},
    }
    state = build_state(load_config(env={}, overrides=overrides))
    try:
        assert state.generation_defaults == GenerationDefaults(temperature=0.7, top_p=0.5)
    finally:
        state.db.close()


def test_serve_stops_on_a_bad_generation_config_with_one_line(model_dir, tmp_path):
    write_generation_config(model_dir, {"top_p": 7})
    result = subprocess.run(
        [sys.executable, "-m", "ownllm", "serve", "--model", str(model_dir)]
        + ["--data-dir", str(tmp_path / "home")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "top_p = 7 (from '" in lines[0], result.stderr
    assert "generation_config.json'): must be between 0.0 and 1.0" in lines[0]

"""Generation defaults: the sampling values a request gets for the fields it leaves out.

Three layers, a later one winning field by field:

1. the catalog entry (the model card's recommendation, `ownllm.models.catalog`);
2. the model directory's `generation_config.json` (Hugging Face's file, as vLLM reads it
   with `--generation-config auto`): `temperature`, `top_p`, `top_k`, `min_p`,
   `repetition_penalty`, and `do_sample: false`, which means greedy (temperature 0);
3. the operator's `[model.generation]` table (`OWNLLM_MODEL_GENERATION_*`).

A value the request sends always wins over all three (`ownllm.api.calls`); what none of
them sets keeps OpenAI's default. The file is checked when the server starts, so a bad
value stops it with one line instead of failing requests later.

Left out: the file's other keys (`max_new_tokens`, `num_beams`, `eos_token_id`, ...).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ownllm.config import ConfigError, GenerationDefaults
from ownllm.models.catalog import ModelLoadError, ModelSource

GENERATION_CONFIG = "generation_config.json"


def read_generation_config(model_dir: Path) -> GenerationDefaults:
    """The sampling defaults in `model_dir/generation_config.json` (none when it is absent)."""
    path = Path(model_dir) / GENERATION_CONFIG
    if not path.is_file():
        return GenerationDefaults()
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"cannot read {str(path)!r}: {e}") from None
    if not isinstance(values, dict):
        raise ModelLoadError(f"{str(path)!r} must hold a JSON object")
    do_sample = values.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise ModelLoadError(f"do_sample = {do_sample!r} (from {str(path)!r}): expected bool")
    try:
        defaults = GenerationDefaults.from_values(values, repr(str(path)))
    except ConfigError as e:
        raise ModelLoadError(str(e)) from None
    if do_sample is False:  # Hugging Face decodes greedily then, whatever the temperature
        return replace(defaults, temperature=0.0)
    return defaults


def generation_defaults(source: ModelSource, configured: GenerationDefaults) -> GenerationDefaults:
    """The served model's defaults: catalog entry < generation_config.json < `configured`.

    Only a Hugging Face directory brings its own file (a GGUF file carries no sampling
    values; its cache holds only the token ids ownllm writes).
    """
    own = read_generation_config(source.path) if source.kind == "hf_dir" else GenerationDefaults()
    return configured.over(own.over(source.generation))

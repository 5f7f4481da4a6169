"""File formats shared by the engine, adapters, tuning and models layers.

`architectures` names the model families every layer accepts,
`safetensors_header` reads a safetensors header without loading a tensor,
`peft` reads, validates and writes PEFT LoRA adapter directories, and
`gguf_names` maps Hugging Face tensor names to GGUF's with llama.cpp's
rotary row order. This package depends only on the standard library, the
project's error types and (lazily) torch, safetensors and gguf, so every
layer can import it.
"""

"""The embedded inference engine (torch), one module per stage:

- `sequence`: a Sequence, one choice of a request (tokens, progress, block table)
- `block_manager`: KV-cache blocks, prefix caching scoped by tenant and adapters
- `adapter_slots`: which adapter set sits in which resident LoRA slot (LRU)
- `host_adapters`: host copies of adapters, read from disk on first use (LRU, locked)
- `scheduler`: the per-step plan {sequence: num_tokens} under a token budget
- `weights`, `rotary`, `model`, `attention`, `lora`: the Llama-family forward with
  multi-LoRA; `weights` is also the trainer's loader, `rotary` its rotary
- `ops`: the forward's operations, in torch or over `cpu_kernels` (+ `csrc/cpu_kernels.c`,
  C kernels for the CPU hot path compiled on first use), chosen once per model
- `model_runner`: plan -> tensors, owns the KV cache, runs the model
- `sampler`, `detokenizer`, `constraints`, `outputs`: tokens -> deltas
- `messages`: the typed requests, deltas, stats and inbox commands crossing into the engine
- `llm_engine`: `LLMEngine.step()` = schedule -> run -> postprocess

The scheduler, block manager, adapter slots, host adapters and messages import
no torch; importing this package imports nothing (import the module you need).
"""

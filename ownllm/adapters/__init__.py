"""LoRA adapters: PEFT storage, the registry, composition and export.

Import the submodules directly (`ownllm.adapters.registry`, `.compose`,
`.export`); this package imports nothing heavy so the CLI stays fast.
"""

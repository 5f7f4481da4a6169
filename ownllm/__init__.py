"""ownllm: own your LLM — serve, fine-tune and govern open models on your own hardware."""

__version__ = "0.1.0"

"""Evals: OpenAI-shaped evals and their runs (store), graders, statistics, the red-team
gate of model aliases, and the unattended train → eval → red-team → promote loop.

Nothing here imports the api layer; the runner that sends each item through the one
inference path lives there (`ownllm.api.eval_runner`).
"""

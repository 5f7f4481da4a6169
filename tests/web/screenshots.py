"""Regenerate docs/screenshots/*.png: the dashboard at 1280×800 against a real server.

    .venv/bin/python -m tests.web.screenshots            # the shipped SmolLM2 model
    .venv/bin/python -m tests.web.screenshots --tiny     # a tiny random model (fast, nonsense)

It trains a small adapter on trivia questions, composes it with a checkpoint (for some
lineage), chats base vs adapter side by side, and photographs each page. Everything shown
is what the server really did; nothing is mocked.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import httpx

from tests.server import Server
from tests.web.browser import QUESTIONS, VIEWPORT, launch, sign_in

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def _jsonl(path: Path, pairs) -> Path:
    system = {"role": "system", "content": "Answer in as few words as possible."}
    rows = [
        {"messages": [system, {"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in pairs
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _wait_job(client: httpx.Client, job_id: str, until) -> dict:
    while True:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(1)


def run(tiny: bool) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ownllm-shots-"))
    args: list[str] = []
    if tiny:
        from ownllm.models.tiny import make_tiny_model

        args = ["--model", str(make_tiny_model(work / "tiny")), "--name", "tiny"]
    server = Server(*args, data_dir=work, env={"OWNLLM_SERVER_RUN_WORKER": "true"})
    try:
        ready = server.wait_ready(timeout=600).json()
        base = ready["model"]
        client = httpx.Client(base_url=server.base_url, timeout=300)
        for question in ("Hello! Who are you?", "Write a haiku about owning your model."):
            client.post(
                "/v1/chat/completions",
                json={
                    "model": base,
                    "messages": [{"role": "user", "content": question}],
                    "max_tokens": 48,
                },
            )
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = launch(playwright)
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.goto(f"{server.base_url}/")
            page.get_by_label("API key").wait_for()
            page.screenshot(path=OUT / "sign-in.png")
            sign_in(page, server.base_url)

            page.goto(f"{server.base_url}/#/tuning")
            for path in (
                _jsonl(work / "valid.jsonl", QUESTIONS[:4]),
                _jsonl(work / "trivia.jsonl", QUESTIONS),
            ):
                page.get_by_label("JSONL file").set_input_files(str(path))
                page.get_by_role("button", name="Upload").click()
                page.locator(".notice").wait_for()
            valid = page.locator("select[name=validation_file] option", has_text="valid.jsonl")
            page.get_by_label("Validation file (optional)").select_option(
                valid.get_attribute("value")
            )
            page.get_by_label("Epochs").fill("2")
            page.get_by_label("Batch size").fill("2")
            page.get_by_label("Suffix").fill("trivia")
            page.get_by_role("button", name="Start fine-tuning").click()
            page.wait_for_function(
                "() => Number(document.getElementById('loss-chart')?.dataset.points) >= 8",
                timeout=600_000,
            )
            page.screenshot(path=OUT / "fine-tuning.png")
            job_id = page.url.split("job=")[1]
            job = _wait_job(client, job_id, lambda j: j["status"] not in ("queued", "running"))
            model = job["fine_tuned_model"]
            checkpoint = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
            client.post(
                "/v1/adapters/compose",
                json={
                    "name": "trivia-blend",
                    "method": "linear",
                    "adapters": [
                        {"id": model, "weight": 0.7},
                        {"id": checkpoint[-1]["fine_tuned_model_checkpoint"], "weight": 0.3},
                    ],
                },
            )

            page.goto(f"{server.base_url}/#/playground?model={model}")
            page.wait_for_function(
                f"() => document.querySelector('select[name=model]').value === {model!r}"
            )
            page.get_by_label("Compare with the base model side by side").check()
            page.get_by_label("Max tokens").fill("48")
            page.get_by_label("Temperature").fill("0")
            page.get_by_role("textbox", name="Message").fill("What is the capital of France?")
            page.get_by_role("button", name="Send").click()
            page.wait_for_function(
                "() => document.querySelectorAll('.msg .stats').length === 2", timeout=300_000
            )
            page.screenshot(path=OUT / "playground.png")

            page.goto(f"{server.base_url}/#/models")
            page.locator("td.lineage").first.wait_for()
            page.screenshot(path=OUT / "models.png")

            page.goto(f"{server.base_url}/#/usage")
            page.get_by_label("Time range").select_option("1h")
            page.locator("#savings-number").wait_for()
            page.wait_for_timeout(1000)
            page.screenshot(path=OUT / "usage.png")
            browser.close()
    finally:
        server.stop()
    print(f"screenshots in {OUT}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="use a tiny random model")
    run(parser.parse_args().tiny)

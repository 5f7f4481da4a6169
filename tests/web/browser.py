"""Headless Chromium for the dashboard tests: Debian's `chromium` driven by Playwright.

Playwright's own browser download is never used (`playwright install` needs the network);
`.ci/run` installs `chromium` with apt when /usr/bin/chromium is missing. Without it the
browser tests skip with the reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("OWNLLM_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE_JS = Path(__file__).with_name("axe.min.js")
VIEWPORT = {"width": 1280, "height": 800}
# how long any wait on the page may take: it only bounds a hang (a loaded machine is slow)
TIMEOUT_MS = 120_000
BLOCKING_IMPACTS = ("serious", "critical")
# a small chat fine-tuning set: 12 short questions and answers
QUESTIONS = [
    ("What is the capital of France?", "Paris."),
    ("What is 2 + 2?", "4."),
    ("Name a primary colour.", "Red."),
    ("Translate 'hello' to Spanish.", "Hola."),
    ("What is H2O?", "Water."),
    ("Who wrote Hamlet?", "William Shakespeare."),
    ("How many days are in a week?", "Seven."),
    ("What planet do we live on?", "Earth."),
    ("At what Celsius temperature does water boil?", "100 degrees."),
    ("What is the opposite of hot?", "Cold."),
    ("What colour is a clear sky?", "Blue."),
    ("How many legs does a spider have?", "Eight."),
]


def launch(playwright):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium chromium-driver")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def new_context(browser, **options):
    """A browser context with the dashboard's viewport and the suite's wait bound."""
    context = browser.new_context(viewport=VIEWPORT, **options)
    context.set_default_timeout(TIMEOUT_MS)
    return context


def sign_in(page, base_url: str, key: str = "sk-any-key-works-in-open-mode") -> None:
    page.goto(f"{base_url}/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#nav:not([hidden])")


def axe_violations(page) -> list[dict]:
    """axe-core's WCAG 2 A/AA violations of serious or critical impact on the current page.
    The page's context must bypass its CSP: axe is injected as an inline script."""
    page.add_script_tag(path=str(AXE_JS))
    result = page.evaluate(
        "() => axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})"
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in BLOCKING_IMPACTS
    ]


def describe(violations: list[dict]) -> str:
    return json.dumps(violations, indent=1)

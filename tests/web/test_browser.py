"""The dashboard in headless Chromium against a real server: sign in, stream a chat, upload
training data, watch a fine-tuning job's loss curve grow, see the usage page count the
requests, move around with the keyboard, and pass axe-core on every page."""

from __future__ import annotations

import io
import json
import re
import tarfile
import time

import httpx
import pytest

from ownllm.backends.scripted import WORDS
from tests.web.browser import QUESTIONS, axe_violations, describe, new_context, sign_in
from tests.web.conftest import HOLD_AT_STEP

# each page, and what it draws once its first data has arrived
PAGES = {
    "playground": "select[name=model] option",  # (its models list only adds adapters)
    "models": "section[aria-labelledby=compose-title] :is(form, p)",
    "tuning": "section[aria-labelledby=jobs-title] tbody tr",
    "usage": "#savings-number",
    "evals": "#eval-compare :is(table, p)",
}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def chat_rows() -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in QUESTIONS
    ]


def send(page, text: str) -> None:
    page.get_by_role("textbox", name="Message").fill(text)
    page.get_by_role("button", name="Send").click()


def test_sign_in_keeps_the_key_in_this_tab_only(server, page):
    sign_in(page, server.base_url, key="sk-my-secret")
    assert page.evaluate("sessionStorage.getItem('ownllm.apiKey')") == "sk-my-secret"
    assert page.evaluate("localStorage.length") == 0
    assert "Tenant @admin" in page.locator("#who-text").text_content()
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API key").wait_for()
    assert page.evaluate("sessionStorage.getItem('ownllm.apiKey')") is None


def test_chat_text_streams_in_as_it_is_generated(scripted_server, page):
    # The server holds each token until the page shows the text before it: a page that
    # drew the answer only when the stream ended would never show the first word.
    base_url, backend = scripted_server
    sign_in(page, base_url)
    page.get_by_label("Max tokens").fill("4")
    send(page, "Tell me a story")
    answer = page.locator(".msg.assistant")
    shown = ""
    for word in WORDS[:3]:
        shown += word
        page.wait_for_function(
            "t => document.querySelector('.msg.assistant .text')?.textContent === t", arg=shown
        )
        assert backend.running  # the stream is still open: the next token waits on us
        assert answer.get_attribute("aria-busy") == "true"
        assert answer.locator(".stats").count() == 0
        backend.gate.release()
    stats = answer.locator(".stats")
    stats.wait_for()
    assert answer.locator(".text").text_content() == "".join(WORDS[:4])
    assert stats.text_content().startswith("4 tokens") and "length" in stats.text_content()
    assert answer.get_attribute("aria-busy") is None


WEATHER_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
CALL_TEXT = '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>'


def test_tool_calls_stream_in_name_first_then_growing_arguments(scripted_server, page):
    """The model's answer is a call in the fallback format, one character a token, each
    held until the test releases it: the page shows the function's name as soon as it is
    known, the arguments as they grow, and the finish reason when the call is complete."""
    from ownllm.backends.base import ModelInfo
    from ownllm.backends.scripted import reply

    base_url, backend = scripted_server
    backend.script = reply(CALL_TEXT)
    backend.model_info = ModelInfo("tiny", 4096, 512, "float32")  # room for the tools block
    sign_in(page, base_url)
    page.get_by_label("Tools (JSON)").fill(json.dumps(WEATHER_TOOLS))
    page.get_by_label("Tool choice").select_option("required")
    page.get_by_label("Max tokens").fill("100")
    send(page, "Weather in Paris?")
    answer = page.locator(".msg.assistant")
    name = answer.locator(".tool-call .tool-name")
    arguments = answer.locator(".tool-call .tool-arguments")
    head = CALL_TEXT.index('{"city"')  # the text up to the arguments
    released = 1  # the first token leaves unasked

    def release_to(num_chars: int) -> None:
        nonlocal released
        backend.gate.release(num_chars - released)
        released = num_chars

    release_to(head + 1)  # the name is known once the arguments have begun
    name.wait_for()
    assert name.text_content() == "get_weather"
    page.wait_for_function("() => document.querySelector('.tool-arguments')?.textContent === '{'")
    for upto in (head + 5, head + 10, head + 14):  # '{"ci', '{"city":"', '{"city":"Pari'
        release_to(upto)
        page.wait_for_function(
            "t => document.querySelector('.tool-arguments')?.textContent === t",
            arg=CALL_TEXT[head:upto],
        )
        assert backend.running and answer.get_attribute("aria-busy") == "true"
        assert answer.locator(".stats").count() == 0
    release_to(len(CALL_TEXT))
    stats = answer.locator(".stats")
    stats.wait_for()
    assert "tool_calls" in stats.text_content()
    assert arguments.text_content() == '{"city":"Paris"}'
    assert answer.locator(".tool-call").count() == 1
    assert answer.locator(".text").text_content() == ""  # a call, not text
    sent = backend.requests[-1]
    assert sent.constraint is not None  # tool_choice "required": a call is forced
    assert answer.get_by_role("group", name="Tool call get_weather").count() == 1


def test_tools_that_are_not_json_are_refused_before_sending(scripted_server, page):
    base_url, backend = scripted_server
    sign_in(page, base_url)
    page.get_by_label("Tools (JSON)").fill("[{not json")
    send(page, "Hi")
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "Tools are not valid JSON" in alert.text_content()
    assert backend.requests == [] and page.locator(".msg").count() == 0


def test_upload_shows_invalid_lines_by_number(server, page, tmp_path):
    good = chat_rows()[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good) + "\n{not json\n" + json.dumps({"messages": []}) + "\n")
    sign_in(page, server.base_url)
    page.goto(f"{server.base_url}/#/tuning")
    page.get_by_label("JSONL file").set_input_files(str(bad))
    page.get_by_role("button", name="Upload").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    text = alert.text_content()
    assert "2 invalid line(s)" in text
    assert re.search(r"Line 2:\s*invalid JSON", text)
    assert re.search(r"Line 3:\s*missing 'messages'", text)


def test_fine_tuning_job_runs_live_and_opens_in_the_playground(
    server, fine_tuning_worker, page, tmp_path
):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    valid = write_jsonl(tmp_path / "valid.jsonl", chat_rows()[:4])
    sign_in(page, server.base_url)
    page.goto(f"{server.base_url}/#/tuning")
    for path in (valid, train):  # the last upload is picked as the training file
        page.get_by_label("JSONL file").set_input_files(path)
        page.get_by_role("button", name="Upload").click()
        page.get_by_text(re.compile(r"12 examples, no problems|4 examples, no problems")).wait_for()
    train_option = page.locator("select[name=training_file] option", has_text="train.jsonl")
    valid_option = page.locator("select[name=validation_file] option", has_text="valid.jsonl")
    page.get_by_label("Training file").select_option(train_option.get_attribute("value"))
    page.get_by_label("Validation file (optional)").select_option(
        valid_option.get_attribute("value")
    )
    page.get_by_label("Epochs").fill("10")  # 120 steps: 12 examples x 10 epochs, batch 1
    page.get_by_label("Batch size").fill("1")
    page.get_by_label("Suffix").fill("trivia")
    page.get_by_role("button", name="Start fine-tuning").click()

    # the worker holds the job after step HOLD_AT_STEP: the page polls and draws it running
    status = page.locator("#job-status")
    chart = page.locator("#loss-chart")
    page.wait_for_function(
        "n => document.getElementById('job-status')?.textContent === 'running'"
        " && document.getElementById('loss-chart')?.dataset.points === String(n)",
        arg=HOLD_AT_STEP,
    )
    assert page.get_by_text(f"{HOLD_AT_STEP} / 120", exact=True).count() == 1
    assert chart.locator("polyline[data-series='training loss']").count() == 1
    fine_tuning_worker.set()  # let it finish; the same chart grows to the whole curve
    page.wait_for_function(
        "() => ['succeeded', 'failed', 'cancelled'].includes("
        "document.getElementById('job-status')?.textContent)",
        timeout=240_000,
    )
    assert status.text_content() == "succeeded", page.locator("#watch-title").evaluate(
        "e => e.parentElement.textContent"
    )
    assert chart.get_attribute("data-points") == "120"
    assert chart.locator("polyline[data-series='training loss']").count() == 1
    assert chart.locator("polyline[data-series='validation loss']").count() == 1
    assert page.locator(".progress").get_attribute("aria-valuenow") == "100"

    model = page.locator("#job-result").text_content()
    assert model.startswith("ft:tiny:@admin:trivia:ftjob-")
    page.get_by_role("link", name="Open in playground").click()
    page.wait_for_function(
        f"() => document.querySelector('select[name=model]').value === {model!r}"
    )
    page.get_by_label("Compare with the base model side by side").check()
    page.get_by_label("Max tokens").fill("8")
    send(page, "What is H2O?")
    page.locator(".pane").nth(1).locator(".msg.assistant .stats").wait_for(timeout=60_000)
    page.locator(".pane").nth(0).locator(".msg.assistant .stats").wait_for(timeout=60_000)
    titles = page.locator(".pane h2").all_text_contents()
    assert titles == [model, "tiny (base)"]

    page.goto(f"{server.base_url}/#/models")
    row = page.locator("tr", has=page.get_by_text(model, exact=True))
    row.wait_for()
    assert "trained on file-" in row.text_content()
    assert "train loss" in row.text_content()


def _import_adapter(server, tiny_model_dir, tmp_path, name: str, seed: int) -> None:
    from tests.adapters.conftest import make_peft_adapter

    folder = make_peft_adapter(tiny_model_dir, tmp_path / name, seed=seed)
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        tar.add(folder, arcname=name)
    response = httpx.post(
        f"{server.base_url}/v1/adapters",
        data={"name": name},
        files={"file": (f"{name}.tar.gz", packed.getvalue())},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def test_models_page_composes_exports_and_deletes(server, page, tiny_model_dir, tmp_path):
    _import_adapter(server, tiny_model_dir, tmp_path, "alpha", seed=1)
    _import_adapter(server, tiny_model_dir, tmp_path, "beta", seed=2)
    sign_in(page, server.base_url)
    page.goto(f"{server.base_url}/#/models")
    page.get_by_label("alpha", exact=True).check()
    page.get_by_label("beta", exact=True).check()
    page.get_by_label("Weight for beta").fill("0.5")
    page.get_by_label("New adapter name").fill("alpha-beta")
    page.get_by_role("button", name="Compose").click()
    row = page.get_by_role("row", name=re.compile(r"^alpha-beta"))
    row.wait_for()
    assert "from alpha + beta; method cat" in row.text_content()

    with page.expect_download() as download:
        row.get_by_role("button", name="Export").click()
    assert download.value.suggested_filename == "alpha-beta.tar.gz"
    with tarfile.open(download.value.path()) as tar:
        assert "alpha-beta/model.safetensors" in tar.getnames()  # the merged model

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete alpha-beta").click()
    page.get_by_text("Deleted alpha-beta.").wait_for()
    # the notice comes first, then the list reloads: wait for the row to go (or time out)
    page.get_by_role("row", name=re.compile(r"^alpha-beta")).wait_for(state="detached")
    models = httpx.get(f"{server.base_url}/v1/models").json()["data"]
    assert "alpha-beta" not in {m["id"] for m in models}


def test_usage_page_counts_the_requests_just_made(server, page):
    sign_in(page, server.base_url)
    page.goto(f"{server.base_url}/#/usage")
    page.locator("#stat-requests").wait_for()
    before = int(page.locator("#stat-requests").text_content().replace(",", ""))
    page.goto(f"{server.base_url}/#/playground")
    page.get_by_label("Max tokens").fill("4")
    for question in ("One?", "Two?"):
        send(page, question)
        page.wait_for_function("() => !document.querySelector('button[type=submit]').disabled")
    page.goto(f"{server.base_url}/#/usage")
    page.wait_for_function(
        f"() => Number(document.getElementById('stat-requests')?.textContent) === {before + 2}"
    )
    base_legend = page.locator(".legend li").filter(has_text=re.compile(r"^tiny$"))
    assert base_legend.count() == 2  # in the tokens chart and the requests chart
    assert page.locator("#savings-number").text_content().strip().lstrip("-−").startswith("$")
    assert page.get_by_role("row", name=re.compile("gpt-4o-mini")).count() == 1


def test_evals_page_compares_base_and_candidate_with_the_items_that_changed(server, page):
    http = httpx.Client(base_url=server.base_url, timeout=60)
    criteria = [{"type": "string_check", "name": "right", "input": "{{sample.output_text}}",
                 "reference": "Paris", "operation": "ilike"}]  # fmt: skip
    r = http.post("/v1/evals", json={"name": "capitals", "testing_criteria": criteria,
                  "data_source_config": {"type": "custom", "item_schema": {"type": "object"}}})  # fmt: skip
    assert r.status_code == 200, r.text
    eval_id = r.json()["id"]
    said = {"base": ["Paris", "Lyon", "Nice", "Rome"], "tuned": ["Paris", "Paris", "Paris", "Rome"]}
    runs = []
    for name, outputs in said.items():  # samples given (jsonl): graded, no model sampled
        items = [{"item": {"q": i}, "sample": {"output_text": o}} for i, o in enumerate(outputs)]
        source = {"type": "jsonl", "source": {"type": "file_content", "content": items}}
        r = http.post(f"/v1/evals/{eval_id}/runs", json={"name": name, "data_source": source})
        assert r.status_code == 200, r.text
        runs.append(r.json()["id"])
    for run_id in runs:  # the server's eval worker grades them
        for _ in range(1200):
            if http.get(f"/v1/evals/{eval_id}/runs/{run_id}").json()["status"] == "completed":
                break
            time.sleep(0.1)

    sign_in(page, server.base_url)
    page.goto(f"{server.base_url}/#/evals?eval={eval_id}")
    table = page.locator("#eval-comparison")
    table.wait_for()
    row = table.get_by_role("row", name=re.compile(r"^right"))
    assert "25.0% (1/4" in row.text_content() and "75.0% (3/4" in row.text_content()
    assert "+50.0 pts" in row.text_content()
    changed = page.locator("#changed-items tbody tr")
    assert changed.count() == 2
    assert "fail Lyon" in changed.first.text_content()
    assert "pass Paris" in changed.first.text_content()


def test_keyboard_alone_signs_in_and_moves_between_pages(server, page):
    page.goto(f"{server.base_url}/")
    page.keyboard.type("sk-typed")  # the key field has focus on load
    page.keyboard.press("Enter")
    page.wait_for_selector("#nav:not([hidden])")
    page.wait_for_function("() => document.activeElement.textContent === 'Playground'")
    assert page.evaluate("document.activeElement.tagName") == "H1"  # focus follows the page
    page.reload()  # still signed in; focus starts at the top of the document
    page.wait_for_selector("#nav:not([hidden])")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Usage & cost":
            break
    else:
        pytest.fail("Tab never reached the Usage & cost link")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # focus is visible
    page.keyboard.press("Enter")
    page.wait_for_function("() => location.hash === '#/usage'")
    page.wait_for_function("() => document.activeElement.tagName === 'H1'")
    assert page.evaluate("document.activeElement.textContent") == "Usage & cost"
    page.goto(f"{server.base_url}/#/playground")
    page.get_by_role("textbox", name="Message").focus()
    page.keyboard.type("Hi")
    page.keyboard.press("Enter")  # Enter sends; Shift+Enter would add a line
    page.locator(".msg.user", has_text="Hi").wait_for()


@pytest.mark.parametrize("name", ["signin", *PAGES])
def test_axe_finds_no_serious_violations(server, browser, name):
    context = new_context(browser, bypass_csp=True)  # axe is injected
    page = context.new_page()
    try:
        if name == "signin":
            page.goto(f"{server.base_url}/")
            page.get_by_label("API key").wait_for()
        else:
            sign_in(page, server.base_url)
            page.goto(f"{server.base_url}/#/{name}")
            page.wait_for_load_state("networkidle")
            page.locator(PAGES[name]).first.wait_for(state="attached")
        violations = axe_violations(page)
        assert not violations, describe(violations)
    finally:
        context.close()

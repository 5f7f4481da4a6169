"""Fine-tuning with tools, end to end on the shipped model: OpenAI's function-calling
fine-tuning format in, an adapter that picks the right one of three tools out.

The tools are a company's own (names that say little to a model that never saw them); 40
examples teach SmolLM2-135M which to call. Held-out requests are asked with
`tool_choice="required"`, so every call is grammar-constrained: the arguments validate
against the tool's schema for the base model and the adapter alike, and what training
changes is which function is picked.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.server import Server
from tests.tuning.conftest import write_jsonl
from tests.tuning.test_openai_flow import WORKER_ENV, run_job


def function(name: str, argument: str, schema: dict) -> dict:
    # short schemas: the tools block is most of each example's ~270 tokens. No other
    # property (as OpenAI's strict tools require): without it a forced call may go on with
    # properties of its own, schema-valid and unbounded (the base model did, to 'length')
    parameters = {"type": "object", "properties": {argument: schema}, "required": [argument],
                  "additionalProperties": False}  # fmt: skip
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


TOOLS = [
    function("orders_v2", "order_id", {"type": "string", "pattern": "^[0-9]{4}$"}),
    function("helpdesk_open", "summary", {"type": "string", "maxLength": 40}),
    function("cb_schedule", "phone", {"type": "string", "pattern": "^[0-9]{7,10}$"}),
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

# (user message, function, its one argument)
TRAINING = [
    ("Where is my order 4417?", "orders_v2", "4417"),
    ("Has order 2093 shipped yet?", "orders_v2", "2093"),
    ("Track my order 8812 please.", "orders_v2", "8812"),
    ("What is the status of order 5530?", "orders_v2", "5530"),
    ("My parcel for order 1204 has not arrived.", "orders_v2", "1204"),
    ("When will order 7781 be delivered?", "orders_v2", "7781"),
    ("Can you check order 3310 for me?", "orders_v2", "3310"),
    ("I ordered a lamp, order number 6402. Where is it?", "orders_v2", "6402"),
    ("Order 9915 still says processing. Why?", "orders_v2", "9915"),
    ("Did my order 2208 leave the warehouse?", "orders_v2", "2208"),
    ("Look up order 4071.", "orders_v2", "4071"),
    ("Is order 1189 on its way?", "orders_v2", "1189"),
    ("I need an update on order 8350.", "orders_v2", "8350"),
    ("My laptop screen keeps flickering.", "helpdesk_open", "laptop screen flickering"),
    ("The app crashes every time I log in.", "helpdesk_open", "app crashes at login"),
    ("I cannot reset my password.", "helpdesk_open", "password reset fails"),
    ("The printer on floor two is jammed.", "helpdesk_open", "printer jammed floor two"),
    ("My email stopped syncing this morning.", "helpdesk_open", "email not syncing"),
    ("The VPN disconnects every few minutes.", "helpdesk_open", "VPN keeps disconnecting"),
    ("I get an error 500 on the billing page.", "helpdesk_open", "error 500 on billing page"),
    ("My keyboard is missing the letter E.", "helpdesk_open", "keyboard key E missing"),
    ("Nothing happens when I press the save button.", "helpdesk_open", "save button does nothing"),
    ("The app keeps logging me out.", "helpdesk_open", "app keeps logging me out"),
    ("The mobile app will not open on my phone.", "helpdesk_open", "mobile app will not open"),
    ("The settings page shows me a blank screen.", "helpdesk_open", "settings page blank"),
    ("Uploading files fails with a timeout.", "helpdesk_open", "file upload timeout"),
    ("Exporting a report gives an empty file.", "helpdesk_open", "report export empty"),
    ("Please call me back at 5551234.", "cb_schedule", "5551234"),
    ("Can someone phone me on 0612345678?", "cb_schedule", "0612345678"),
    ("I would like a callback, my number is 4159872.", "cb_schedule", "4159872"),
    ("Ring me at 2025550143 when you can.", "cb_schedule", "2025550143"),
    ("Have an agent call 7788990.", "cb_schedule", "7788990"),
    ("I prefer to talk. Call 3125557788.", "cb_schedule", "3125557788"),
    ("Phone me back on 6044441.", "cb_schedule", "6044441"),
    ("Could you arrange a call to 9876543?", "cb_schedule", "9876543"),
    ("Call me tomorrow at 0201234567.", "cb_schedule", "0201234567"),
    ("I want someone to ring 5553321.", "cb_schedule", "5553321"),
    ("Please give me a call at 8005550199.", "cb_schedule", "8005550199"),
    ("Schedule a call back to 7145550123.", "cb_schedule", "7145550123"),
    ("Reach me by phone at 3334455.", "cb_schedule", "3334455"),
]
HELD_OUT = [
    ("Where is order 6120?", "orders_v2"),
    ("Has my order 3047 been sent?", "orders_v2"),
    ("Order 5822 is late, can you check it?", "orders_v2"),
    ("What happened to order 9001?", "orders_v2"),
    ("My monitor shows no picture.", "helpdesk_open"),
    ("The login page gives me an error.", "helpdesk_open"),
    ("My headset microphone does not work.", "helpdesk_open"),
    ("Search on the site returns nothing.", "helpdesk_open"),
    ("Please ring me on 5559876.", "cb_schedule"),
    ("Call me back at 2125550000.", "cb_schedule"),
    ("Can an agent phone 6665544?", "cb_schedule"),
    ("I would like a call at 0711223344.", "cb_schedule"),
]
ARGUMENT = {"orders_v2": "order_id", "helpdesk_open": "summary", "cb_schedule": "phone"}


def example(i: int, user: str, name: str, value: str) -> dict:
    arguments = json.dumps({ARGUMENT[name]: value})
    call = {"id": f"call_{i}", "type": "function",
            "function": {"name": name, "arguments": arguments}}  # fmt: skip
    return {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "tool_calls": [call]},
        ],
        "tools": TOOLS,
    }


def picks(client, model: str) -> list[str]:
    """The function each held-out request calls; each call's arguments validated."""
    names = []
    for user, _ in HELD_OUT:
        response = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": user}],
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,  # one call: the grammar ends the answer with it
            temperature=0,
            max_tokens=80,
        )
        (choice,) = response.choices
        assert choice.finish_reason == "tool_calls", choice
        call = choice.message.tool_calls[0].function
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
        names.append(call.name)
    return names


@pytest.mark.slow
def test_the_shipped_model_learns_to_pick_its_tools(tmp_path):
    from openai import OpenAI

    assert len(TRAINING) == 40
    path = write_jsonl(
        tmp_path / "tools.jsonl", [example(i, *row) for i, row in enumerate(TRAINING)]
    )
    server = Server(data_dir=tmp_path, env=WORKER_ENV)
    try:
        server.wait_ready(timeout=300)
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
        base = "smollm2-135m-instruct"
        # two epochs (40 steps of 2) at twice the base rate: ~26k training tokens, two or
        # three minutes on a quiet 2-core box, many times longer on a shared, overloaded one.
        # One epoch picked 11/12 where training runs in bf16 (AVX-512 BF16) but 10/12 in fp32
        # (AVX2 only: `auto` picks fp32); two picked 11/12 in fp32
        job = run_job(client, path, timeout=3600, model=base, suffix="tools", seed=0,
                      hyperparameters={"n_epochs": 2, "batch_size": 2,
                                       "learning_rate_multiplier": 2})  # fmt: skip
        training = {
            "hyperparameters": job.hyperparameters.to_dict(),
            "trained_tokens": job.trained_tokens,
            "seconds": job.finished_at - job.created_at,
        }
        print(json.dumps(training))
        expected = [name for _, name in HELD_OUT]

        def rate(names: list[str], tool: str | None = None) -> float:
            pairs = [(a, b) for a, b in zip(names, expected) if tool in (None, b)]
            return sum(a == b for a, b in pairs) / len(pairs)

        base_picks, tuned_picks = picks(client, base), picks(client, job.fine_tuned_model)
        print(base, base_picks)
        print(job.fine_tuned_model, tuned_picks)
        base_rate, tuned_rate = rate(base_picks), rate(tuned_picks)
        print(json.dumps({"base_rate": base_rate, "fine_tuned_rate": tuned_rate, **training}))
        # the two CPU kinds train in different dtypes, and a greedy pick near a tie can go
        # either way: at least 10 of 12 right, and the callbacks (which the base sends to
        # the helpdesk) learned
        assert tuned_rate >= 10 / 12 and base_rate < tuned_rate
        assert rate(tuned_picks, "cb_schedule") >= 3 / 4 > rate(base_picks, "cb_schedule")
    finally:
        server.stop()

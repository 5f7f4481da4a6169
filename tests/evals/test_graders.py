"""Each grader on one item and sample: string checks, regex, JSON schema, similarity,
label and score models (their asks scripted), and the templates they read."""

from __future__ import annotations

import pytest

from ownllm.errors import InvalidRequestError
from ownllm.evals.graders import check_criteria, grade
from ownllm.evals.templates import render

ITEM = {"answer": "Paris", "meta": {"lang": "fr"}, "tags": ["a", "b"]}


async def one(criterion, output, ask=None, embed=None):
    (checked,) = check_criteria([criterion])
    return await grade(checked, ITEM, {"output_text": output}, ask, embed)


def test_templates_read_items_and_samples():
    context = {"item": ITEM, "sample": {"output_text": "Paris!"}}
    assert render("{{ item.answer }} / {{sample.output_text}}", context) == "Paris / Paris!"
    assert (
        render("{{item.meta.lang}} {{item.tags.1}} {{item.meta}}", context) == 'fr b {"lang": "fr"}'
    )
    assert render("[{{item.missing}}] {{other.x}}", context) == "[] {{other.x}}"


@pytest.mark.parametrize(
    ("operation", "output", "passed"),
    [("eq", "Paris", True), ("eq", "paris", False), ("ne", "Rome", True),
     ("like", "It is Paris.", True), ("like", "it is paris", False), ("ilike", "it is PARIS", True)],
)  # fmt: skip
async def test_string_check(operation, output, passed):
    criterion = {"type": "string_check", "input": "{{sample.output_text}}",
                 "reference": "{{item.answer}}", "operation": operation}  # fmt: skip
    result = await one(criterion, output)
    assert result.passed is passed and result.score == float(passed)


async def test_regex_and_json_schema():
    regex = {
        "type": "regex",
        "input": "{{sample.output_text}}",
        "pattern": "^paris$",
        "ignore_case": True,
    }
    assert (await one(regex, "PARIS")).passed and not (await one(regex, "Paris, France")).passed
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    valid = {"type": "json_schema", "input": "{{sample.output_text}}", "schema": schema}
    assert (await one(valid, '{"city": "Paris"}')).passed
    assert not (await one(valid, '{"town": "Paris"}')).passed
    assert not (await one(valid, "Paris")).passed


async def test_text_similarity_cosine_and_fuzzy():
    async def embed(texts):  # two fixed directions: "Paris"-like and anything else
        return [[1.0, 0.0] if "aris" in t else [0.6, 0.8] for t in texts]

    cosine = {"type": "text_similarity", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}", "pass_threshold": 0.9}  # fmt: skip
    assert (await one(cosine, "paris", embed=embed)).score == pytest.approx(1.0)
    result = await one(cosine, "Rome", embed=embed)
    assert result.score == pytest.approx(0.6) and not result.passed
    fuzzy = {**cosine, "evaluation_metric": "fuzzy_match", "pass_threshold": 0.8}
    assert (await one(fuzzy, "Pariss")).passed and not (await one(fuzzy, "Lyon")).passed


async def test_label_and_score_models_ask_with_a_constraining_format():
    asked = []

    async def ask(model, messages, response_format):
        asked.append((model, messages, response_format))
        return (
            '{"label": "good"}'
            if response_format["json_schema"]["name"] == "label"
            else '{"score": 7}'
        )

    label = {"type": "label_model", "model": "judge", "labels": ["good", "bad"], "passing_labels": ["good"],
             "input": [{"role": "developer", "content": "Rate {{sample.output_text}}"}]}  # fmt: skip
    result = await one(label, "Paris", ask=ask)
    assert result.passed and result.sample["label"] == "good"
    model, messages, fmt = asked[-1]
    assert model == "judge" and messages == [{"role": "system", "content": "Rate Paris"}]
    assert fmt["json_schema"]["schema"]["properties"]["label"]["enum"] == ["good", "bad"]
    score = {"type": "score_model", "model": "judge", "range": [0, 10], "pass_threshold": 8,
             "input": [{"role": "user", "content": "Score {{sample.output_text}}"}]}  # fmt: skip
    result = await one(score, "Paris", ask=ask)
    assert result.score == 7 and not result.passed


@pytest.mark.parametrize(
    ("criterion", "param"),
    [({"type": "text_similarity", "input": "x", "reference": "y"}, "testing_criteria[0].pass_threshold"),
     ({"type": "text_similarity", "input": "x", "reference": "y", "pass_threshold": 0.5,
       "evaluation_metric": "bleu"}, "testing_criteria[0].evaluation_metric"),
     ({"type": "label_model", "model": "m", "input": [{"role": "user", "content": "x"}],
       "labels": ["a"], "passing_labels": ["b"]}, "testing_criteria[0].passing_labels"),
     ({"type": "json_schema", "input": "x", "schema": {"type": 5}}, "testing_criteria[0].schema"),
     ({"type": "score_model", "model": "m", "input": []}, "testing_criteria[0].input")],
)  # fmt: skip
def test_bad_criteria_name_the_field(criterion, param):
    with pytest.raises(InvalidRequestError) as e:
        check_criteria([criterion])
    assert e.value.param == param

"""Typed outputs: types and JSON Schemas to text.format and back, and their plan errors."""

from __future__ import annotations

from typing import Any

import jsonschema
import msgspec
import pytest

from orchestrator.errors import PlanError
from plans import OutputError, OutputMismatch, PlanBuilder, check_plan, output_type_of

from .fixture_types import Forecast, Ticket, Tickets, Totals

SOURCE = "plans/team.toml"
REPORT: dict[str, Any] = {
    "title": "Report",
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2},
        "nights": {"type": "integer", "minimum": 1, "maximum": 30},
        "kind": {"enum": ["city", "beach"]},
        "start": {"type": "string", "format": "date"},
        "stops": {"type": "array", "items": {"$ref": "#/$defs/Stop"}, "maxItems": 3},
    },
    "required": ["city", "nights"],
    "$defs": {
        "Stop": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "cost": {"type": ["number", "null"]}},
            "required": ["name", "cost"],
            "additionalProperties": False,
        }
    },
}


def base() -> dict[str, Any]:
    return {
        "name": "team",
        "settings": {"model": "gpt-5-mini"},
        "agents": [{"name": "planner", "role": "planner"}, {"name": "writer"}],
    }


@pytest.mark.parametrize("declared", [Ticket, Forecast, Totals])
def test_classes_become_strict_object_schemas(declared):
    """A Struct, a dataclass and a TypedDict are sent as strict json_schema objects, every
    property required and no other allowed (what structured outputs' strict mode needs)."""
    output = output_type_of(declared)
    text_format = output.text_format()
    assert ("json_schema", declared.__name__, True) == (
        text_format["type"],
        text_format["name"],
        text_format["strict"],
    )
    schema = text_format["schema"]
    assert "object" == schema["type"]
    assert list(schema["properties"]) == schema["required"]
    assert schema["additionalProperties"] is False


def test_a_typed_answer_decodes_to_the_type():
    """check() returns an instance of the declared type and the JSON text."""
    output = output_type_of(Ticket)
    text = '{"id": 7, "priority": "urgent", "tags": ["billing"]}'
    assert (Ticket(id=7, priority="urgent", tags=["billing"]), text) == output.check(text)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"id": "7", "priority": "low"}', "$.id: expected int, got str"),
        ('{"id": 7}', "object missing required field priority"),
        ('{"id": 7, "priority": "soon"}', "$.priority: invalid enum value 'soon'"),
        ("Ticket 7 is urgent.", "not valid JSON: invalid character (byte 0)"),
        ("", "the answer is empty; expected JSON"),
    ],
)
def test_an_invalid_answer_says_where_and_why(text, error):
    """A mismatch names the place and the reason: the repair turn sends exactly this."""
    with pytest.raises(OutputMismatch) as caught:
        output_type_of(Ticket).check(text)
    assert error == str(caught.value)


def test_a_code_fence_around_the_json_is_tolerated():
    """```json fences, which some models add, are removed before decoding."""
    value, text = output_type_of(Ticket).check('```json\n{"id": 1, "priority": "low"}\n```')
    assert Ticket(id=1, priority="low") == value
    assert '{"id": 1, "priority": "low"}' == text


def test_a_non_object_output_is_wrapped_in_result():
    """The service wants an object at the root: a list is sent as {"result": [...]}."""
    output = output_type_of(Tickets)
    schema = output.text_format()["schema"]
    assert ["result"] == schema["required"]
    value, _ = output.check('{"result": [{"id": 1, "priority": "low", "tags": []}]}')
    assert [Ticket(id=1, priority="low")] == value


def test_a_type_path_imports_the_type():
    """'module:Type' resolves to the class, and decodes to it."""
    output = output_type_of("tests.plans.fixture_types:Forecast")
    assert Forecast("Lisbon", 24.5) == output.check('{"city": "Lisbon", "high_c": 24.5}')[0]


def test_a_json_schema_is_checked_by_msgspec():
    """A plan's schema compiles to msgspec types: every constraint is enforced, and the
    value comes back as plain JSON data."""
    output = output_type_of(REPORT)
    assert "Report" == output.name
    good = (
        '{"city": "Lisbon", "nights": 2, "start": "2026-05-14", '
        '"stops": [{"name": "Belem", "cost": null}]}'
    )
    assert msgspec.json.decode(good) == output.check(good)[0]
    for text, error in [
        ('{"city": "L", "nights": 2}', "$.city: expected str of length >= 2"),
        ('{"city": "Lisbon", "nights": 31}', "$.nights: expected int <= 30"),
        ('{"city": "Lisbon", "nights": 2, "kind": "ski"}', "$.kind: invalid enum value 'ski'"),
        (
            '{"city": "Lisbon", "nights": 2, "start": "May"}',
            "$.start: invalid RFC3339 encoded date",
        ),
        (
            '{"city": "Li", "nights": 1, "stops": [{"name": "a", "cost": 1, "x": 2}]}',
            "$.stops[0]: object contains unknown field x",
        ),
        (
            '{"city": "Li", "nights": 1, "stops": [{"name": "a", "cost": 1}, {"name": "b", '
            '"cost": 1}, {"name": "c", "cost": 1}, {"name": "d", "cost": 1}]}',
            "$.stops: expected array of length <= 3",
        ),
    ]:
        with pytest.raises(OutputMismatch) as caught:
            output.check(text)
        assert error == str(caught.value)


def test_a_schema_strict_mode_cannot_express_is_sent_non_strict():
    """minLength is outside strict mode: the schema goes as given, strict = false; the check
    here is the same."""
    text_format = output_type_of(REPORT).text_format()
    assert text_format["strict"] is False
    assert REPORT["required"] == text_format["schema"]["required"]
    closed = {"type": "object", "properties": {"city": {"type": "string"}}}
    assert output_type_of(closed).text_format()["strict"] is True


def test_the_strict_form_is_a_valid_json_schema_the_answer_meets():
    """The schema sent validates (jsonschema) what the decoder accepts."""
    output = output_type_of(Ticket)
    jsonschema.Draft202012Validator.check_schema(output.schema)
    jsonschema.validate({"id": 1, "priority": "low", "tags": []}, output.schema)


@pytest.mark.parametrize(
    ("schema", "location", "message", "suggestion"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "strng"}}},
            ".properties.a.type",
            "unknown type 'strng'",
            "did you mean 'string'?",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "string", "minLenght": 1}}},
            ".properties.a.minLenght",
            "JSON Schema keyword 'minLenght' is not supported in a plan's output_type",
            "did you mean 'minLength'?",
        ),
        (
            {"type": "object", "properties": {"a": {"allOf": []}}},
            ".properties.a.allOf",
            "JSON Schema keyword 'allOf' is not supported in a plan's output_type",
            "use a type path 'module:Type' for more than this subset",
        ),
        (
            {"type": "object", "properties": {"a": {"$ref": "#/$defs/Stp"}}, "$defs": {"Stop": {}}},
            ".properties.a.$ref",
            "$ref '#/$defs/Stp' names no definition",
            "did you mean 'Stop'?",
        ),
        (
            {"type": "object", "properties": {"a": {}}, "required": ["b"]},
            ".required",
            "required names 'b', which is not among the properties",
            None,
        ),
    ],
)
def test_a_schema_that_cannot_be_checked_is_refused(schema, location, message, suggestion):
    """A schema is never checked more loosely than it reads: what is not understood is an
    error with its place."""
    with pytest.raises(OutputError) as caught:
        output_type_of(schema)
    assert (location, message, suggestion) == (
        caught.value.location,
        caught.value.message,
        caught.value.suggestion,
    )


def test_plan_output_errors_carry_the_field_location():
    """In a plan, output_type problems are plan.output issues located inside the field."""
    data = base()
    data["agents"][0]["output_type"] = "tests.plans.fixture_types:Tiket"
    data["agents"][1]["output_type"] = {"type": "object", "properties": {"n": {"type": "int"}}}
    assert [
        f"error[plan.output]: {SOURCE}: $.agents[0].output_type: "
        "'tests.plans.fixture_types:Tiket' not found "
        "(did you mean 'tests.plans.fixture_types:Ticket'?)",
        f"error[plan.output]: {SOURCE}: $.agents[1].output_type.properties.n.type: "
        "unknown type 'int' (did you mean 'integer'?)",
    ] == [str(issue) for issue in check_plan(data, source=SOURCE).issues]


def test_plan_output_paths_obey_the_module_allow_list():
    """An output type from a module outside allowed_modules is refused, never imported."""
    data = base()
    data["agents"][1]["output_type"] = "os:PathLike"
    issues = check_plan(data, allowed_modules=["tests"]).issues
    assert [("plan.output", "allowed modules: tests")] == [(i.code, i.suggestion) for i in issues]
    data["agents"][1]["output_type"] = "not a path"
    assert ["plan.output"] == [i.code for i in check_plan(data).issues]


def test_the_builder_stores_a_class_by_import_path():
    """output_type=Class is plan data: the class's import path."""
    plan = (
        PlanBuilder("team", goal="g", model="m")
        .planner("planner", output_type=Ticket)
        .worker("writer", output_type={"type": "object", "properties": {}})
        .build()
    )
    assert "tests.plans.fixture_types:Ticket" == plan.agent("planner").output_type


def test_the_builder_refuses_a_class_without_an_import_path():
    """A class defined inside a function cannot be found again on resume: refused at once."""

    class Local(msgspec.Struct):
        a: int

    with pytest.raises(PlanError) as caught:
        PlanBuilder("team", goal="g", model="m").worker("writer", output_type=Local)
    assert "plan.output" == caught.value.issues[0].code

"""The OpenAPI document, made exact: the schemas are pydantic's own, which validate requests.

Litestar derives component schemas itself and loses part of what pydantic enforces: exclusive
minimums, ``additionalProperties: false`` of models that forbid extra fields, and constraints
of optional fields (it puts them beside the ``oneOf`` instead of inside it). A client generated
from such a document, or a fuzzer reading it, would send requests the API then refuses. So, once,
before the first request, every API model's component is replaced by its pydantic JSON Schema
(validation mode for request bodies, serialization mode for responses), and the plan that
``input_data`` may carry is described with the plan contract's own schema. Litestar still
serves the result, at ``/schema/openapi.json``.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from litestar.openapi.spec import OpenAPI, RequestBody
from pydantic import BaseModel

from gateway.problems import FieldProblem, Problem
from gateway.readiness import Readiness
from gateway.reading import Task, TaskEventView, TaskPage
from gateway.rest import CancelRequest, Health
from gateway.submission import TaskRequest
from opspawn_contracts.plan import MAX_PLAN_STEPS, TOOL_NAME_PATTERN, PlanStep

REF_TEMPLATE = "#/components/schemas/{model}"

MODELS: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
    (TaskRequest, "validation"),
    (CancelRequest, "validation"),
    (PlanStep, "validation"),
    (Task, "serialization"),
    (TaskPage, "serialization"),
    (TaskEventView, "serialization"),
    (Problem, "serialization"),
    (FieldProblem, "serialization"),
    (Health, "serialization"),
    (Readiness, "serialization"),
]


def _plan_property() -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_PLAN_STEPS,
        "items": {"$ref": REF_TEMPLATE.format(model=PlanStep.__name__)},
        "description": "What the agent does, step by step.",
    }


def refine(openapi: OpenAPI) -> None:
    """Put pydantic's schemas into ``openapi`` (the app's document, before it is first served)."""
    if openapi.components.schemas is None:
        openapi.components.schemas = {}
    schemas = cast(dict[str, Any], openapi.components.schemas)
    for model, mode in MODELS:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode=mode)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas[TaskRequest.__name__]["properties"]["input_data"]["properties"] = {
        "plan": _plan_property()
    }
    # PlanStep checks its tool name in a validator, which JSON Schema cannot see.
    schemas[PlanStep.__name__]["properties"]["tool"]["pattern"] = TOOL_NAME_PATTERN
    cancel = (openapi.paths or {})["/v1/tasks/{task_id}/cancel"].post
    if cancel is not None and isinstance(cancel.request_body, RequestBody):
        cancel.request_body.required = False

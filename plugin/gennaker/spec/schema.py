"""The JSON Schema of the spec language, for editors (yaml-language-server) and CI."""

from __future__ import annotations

from typing import Any

from gennaker import __version__
from gennaker.spec.models import Pipeline

SCHEMA_ID = "https://gennaker.dev/schema/pipeline.json"


def pipeline_schema() -> dict[str, Any]:
    """Pipeline specs, including the ``template``/``variables`` form and ``$schema``."""
    schema = Pipeline.model_json_schema(by_alias=True, mode="validation")
    props = schema.setdefault("properties", {})
    props["template"] = {"type": "string", "description": "name of a pipeline template in templates/"}
    props["variables"] = {"type": "object", "description": "values for the template's variables"}
    # With a template, stages and other fields may come from it, and application from defaults.yaml.
    schema["required"] = [r for r in schema.get("required", []) if r not in ("stages", "application")]
    # With a template, a stage without 'type' overrides the template's stage of the same id, field by field.
    stage = props["stages"]["items"]
    override = {"type": "object", "required": ["id"], "not": {"required": ["type"]}}
    props["stages"]["items"] = {"anyOf": [stage, override]}
    schema["if"] = {"required": ["template"]}
    schema["else"] = {"required": ["stages"], "properties": {"stages": {"items": stage}}}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = f"gennaker pipeline (gennaker {__version__})"
    return schema

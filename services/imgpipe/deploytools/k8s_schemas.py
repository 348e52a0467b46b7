"""Kubernetes' OpenAPI document (api/openapi-spec/swagger.json) as kubeconform's schema files.

kubeconform normally downloads yannh/kubernetes-json-schema from GitHub, which CI cannot reach. This
writes the same layout from the swagger.json inside the k8s.io/kubernetes Go module, with the same
transformations as openapi2jsonschema's `--kubernetes --stand-alone --strict --expanded`:

- `$ref`s are inlined, so every file stands alone;
- objects that list `properties` get `additionalProperties: false` (strict: unknown fields fail);
- int-or-string fields accept a string or an integer, quantities a string or a number.

Files are named as kubeconform looks them up for `-schema-location DIR -kubernetes-version X -strict`:
`DIR/vX-standalone-strict/<kind><kind suffix>.json`, e.g. `deployment-apps-v1.json`, `service-v1.json`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
REF_PREFIX = "#/definitions/"


def kind_suffix(group: str, version: str) -> str:
    """kubeconform's `{{ .KindSuffix }}`: `-<first label of the group>-<version>`, or `-<version>`."""
    return f"-{group.split('.')[0]}-{version}".lower() if group else f"-{version}".lower()


def schema_file_name(kind: str, group: str, version: str) -> str:
    return f"{kind.lower()}{kind_suffix(group, version)}.json"


class _Expander:
    def __init__(self, definitions: dict[str, Any]) -> None:
        self._definitions = definitions
        self._done: dict[str, Any] = {}

    def definition(self, name: str, stack: tuple[str, ...] = ()) -> Any:
        if name in stack:
            # Only apiextensions' JSONSchemaProps refers to itself; below the first level, anything goes.
            return {}
        if name not in self._done:
            if name == QUANTITY:
                converted: Any = {"oneOf": [{"type": "string"}, {"type": "number"}]}
            else:
                converted = self.convert(self._definitions[name], (*stack, name))
            if stack:  # cache only complete expansions, not ones cut short by a cycle
                return converted
            self._done[name] = converted
        return copy.deepcopy(self._done[name])

    def convert(self, node: Any, stack: tuple[str, ...]) -> Any:
        """One schema node; keywords holding schemas are walked, the rest copied."""
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith(REF_PREFIX):
                raise ValueError(f"unsupported $ref {ref!r}")
            return self.definition(ref.removeprefix(REF_PREFIX), stack)
        if node.get("format") == "int-or-string":
            return dict(INT_OR_STRING)
        converted: dict[str, Any] = {}
        for key, value in node.items():
            if key in _SCHEMA_MAPS:  # property name -> schema
                converted[key] = {name: self.convert(item, stack) for name, item in value.items()}
            elif key in _SCHEMA_LISTS:
                converted[key] = [self.convert(item, stack) for item in value]
            elif key in _SCHEMAS:
                converted[key] = self.convert(value, stack)
            else:
                converted[key] = copy.deepcopy(value)
        if "properties" in converted and "additionalProperties" not in converted:
            converted["additionalProperties"] = False
        return converted


_SCHEMA_MAPS = frozenset({"properties", "patternProperties"})
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf"})
_SCHEMAS = frozenset({"items", "additionalProperties", "not"})


def write_schemas(swagger_path: Path, out_dir: Path) -> int:
    """Write one standalone strict schema per group-version-kind; returns how many were written."""
    document = json.loads(swagger_path.read_text())
    definitions: dict[str, Any] = document["definitions"]
    expander = _Expander(definitions)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            schema = expander.definition(name)
            (out_dir / schema_file_name(gvk["kind"], gvk["group"], gvk["version"])).write_text(
                json.dumps(schema, separators=(",", ":"))
            )
            written += 1
    return written

"""The CEL validation rules of a CRD (`x-kubernetes-validations`), evaluated offline.

The API server rejects a custom resource whose field breaks one of its CRD's CEL rules
(Karpenter's CRDs have 73: a NodePool requirement on `karpenter.sh/nodepool`, an EC2NodeClass
with both a role and an instance profile, a tag under `kubernetes.io/cluster`...). JSON schema
cannot express them, so `problems()` walks the object along the CRD's `openAPIV3Schema` and
evaluates each rule with cel-python, `self` bound to the field the rule sits on.

Kubernetes adds functions to CEL; the ones these CRDs use beyond the standard library are
`find` (its regex library) and `split` (its strings library), provided here with RE2 like the
API server's. Transition rules (those reading `oldSelf`) only run on updates and are skipped.
"""

from __future__ import annotations

import functools
from typing import Any

import celpy
import re2
from celpy import celtypes
from celpy.evaluation import CELFunction


def _find(value: Any, pattern: Any) -> celtypes.StringType:
    """`<string>.find(<regex>)`: the first match, or "" (Kubernetes' CEL regex library)."""
    match = re2.search(str(pattern), str(value))
    return celtypes.StringType(match.group(0) if match else "")


def _split(value: Any, separator: Any) -> celtypes.ListType:
    """`<string>.split(<separator>)` (the CEL strings extension Kubernetes enables)."""
    return celtypes.ListType([celtypes.StringType(part) for part in str(value).split(str(separator))])


_FUNCTIONS: dict[str, CELFunction] = {"find": _find, "split": _split}


@functools.cache
def _program(rule: str) -> celpy.Runner:
    environment = celpy.Environment()
    return environment.program(environment.compile(rule), functions=_FUNCTIONS)


def problems(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """`path: message` for every CEL rule of `schema` (and its sub-schemas) that `value` breaks."""
    found = [
        f"{path or '<root>'}: {rule.get('message') or rule['rule']}"
        for rule in schema.get("x-kubernetes-validations", [])
        if "oldSelf" not in rule["rule"] and not _holds(rule["rule"], value)
    ]
    if isinstance(value, dict):
        properties, additional = schema.get("properties") or {}, schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, additional if isinstance(additional, dict) else None)
            if sub is not None:
                found += problems(item, sub, f"{path}/{key}" if path else key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += problems(item, schema["items"], f"{path}/{index}")
    return found


def _holds(rule: str, value: Any) -> bool:
    result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
    return isinstance(result, celtypes.BoolType) and bool(result)

"""The upstream reference files of the pinned versions (`components/upstream/`), and the two
contracts checked against them.

Mocks accept any Helm value and any custom-resource field; a real cluster does not complain
either: Helm ignores a misspelt value key, and the API server prunes an unknown field of a
custom resource. Both mistakes deploy cleanly and then do nothing. So:

- `chart_defaults(name, version)` reads a pinned chart's default `values.yaml` (with the
  defaults of the subcharts the platform configures merged under their keys, as Helm does),
  and `unknown_value_keys(values, defaults)` lists every key path of our values the chart does
  not have.
- `crd_schema(api_version, kind)` turns the upstream CRD's `openAPIV3Schema` into a strict JSON
  schema (unknown fields rejected) for `jsonschema`.

`components/upstream/README.md` says where each file comes from.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

UPSTREAM_DIR = Path(__file__).resolve().parents[1] / "components" / "upstream"

_VALUES_FILES = {
    ("aws-load-balancer-controller", "1.14.0"): "aws-load-balancer-controller-v2.14.0/chart-values.yaml",
    ("karpenter", "1.11.1"): "karpenter-v1.11.1/chart-values.yaml",
}
"""Charts whose values were committed under their app's version; every other chart's default
values are `<chart>-<chart version>/values.yaml`."""

SUBCHARTS = {
    ("kube-prometheus-stack", "88.2.0"): {
        "grafana": ("grafana", "12.10.4"),
        "kube-state-metrics": ("kube-state-metrics", "8.2.0"),
    },
}
"""Subcharts whose values the platform sets, at the versions the parent's `Chart.yaml` pins
(`dependencies` of kube-prometheus-stack 88.2.0)."""

CRD_FILES = {
    ("karpenter.sh/v1", "NodePool"): "karpenter-v1.11.1/karpenter.sh_nodepools.yaml",
    ("karpenter.k8s.aws/v1", "EC2NodeClass"): "karpenter-v1.11.1/karpenter.k8s.aws_ec2nodeclasses.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "kube-prometheus-stack-88.2.0/crd-servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "kube-prometheus-stack-88.2.0/crd-prometheusrules.yaml",
}
"""The upstream CRD of every custom resource kind the platform declares."""


LABEL_MAPS = frozenset(
    {
        "nodeSelector",
        "labels",
        "annotations",
        "podLabels",
        "podAnnotations",
        "additionalLabels",
        "additionalAnnotations",
    }
)
"""Keys whose value is a map of Kubernetes label or annotation names (the user's, not the chart's):
free-form even where the chart's default has an example (Karpenter's `nodeSelector: {kubernetes.io/os: linux}`)."""


FREE_FORM_VALUES = {"kube-prometheus-stack": ("alertmanager.config",)}
"""Values a chart passes through verbatim as another program's configuration: their keys are that
program's, not the chart's. Alertmanager's is checked by Alertmanager itself instead
(`amtool check-config` on the config as the chart merges it, in tests/alerts)."""


class MissingReference(LookupError):
    """No committed upstream file for a pinned chart or a custom resource kind."""


def chart_name(chart: str) -> str:
    """`oci://public.ecr.aws/karpenter/karpenter` -> `karpenter`; a repository chart keeps its name."""
    return chart.rstrip("/").rsplit("/", 1)[-1]


def values_file(name: str, version: str) -> Path:
    path = UPSTREAM_DIR / _VALUES_FILES.get((name, version), f"{name}-{version}/values.yaml")
    if not path.is_file():
        raise MissingReference(
            f"no default values for chart {name} {version}: commit the chart's values.yaml at that version as "
            f"{path.relative_to(UPSTREAM_DIR.parents[1])} and say where it came from in components/upstream/README.md"
        )
    return path


@functools.cache
def _load_values(name: str, version: str) -> dict[str, Any]:
    return yaml.safe_load(values_file(name, version).read_text()) or {}


def chart_defaults(name: str, version: str) -> dict[str, Any]:
    """A chart's default values, with each configured subchart's defaults under its key
    (the parent's own defaults for that key win, as in Helm)."""
    defaults = copy.deepcopy(_load_values(name, version))
    for key, (sub_name, sub_version) in SUBCHARTS.get((name, version), {}).items():
        defaults[key] = helm_merge(_load_values(sub_name, sub_version), defaults.get(key) or {})
    return defaults


def helm_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base` as Helm merges values: maps deeply, anything else (lists too) replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = (
            helm_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def value_problems(chart: str, version: str, values: dict[str, Any]) -> list[str]:
    """What is wrong with `values` for the pinned chart `chart` (a name or an `oci://` reference)."""
    name = chart_name(chart)
    return unknown_value_keys(values, chart_defaults(name, version), free_form=FREE_FORM_VALUES.get(name, ()))


def unknown_value_keys(
    values: dict[str, Any], defaults: dict[str, Any], prefix: str = "", free_form: tuple[str, ...] = ()
) -> list[str]:
    """Key paths of `values` that the chart's defaults do not have.

    Below a default that is an empty map, a list or null, anything goes: those are free-form
    (`tolerations: []`, `storageSpec: {}`); so are label and annotation maps (`LABEL_MAPS`).
    A map where the chart has a
    scalar (or the reverse) is reported too: the template would not read it as we meant.
    """
    problems = []
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in defaults:
            problems.append(f"{path}: not a value of the chart")
            continue
        default = defaults[key]
        if key in LABEL_MAPS or path in free_form:
            continue
        if isinstance(default, dict) and default:
            if isinstance(value, dict):
                problems.extend(unknown_value_keys(value, default, path, free_form))
            elif value is not None:
                problems.append(f"{path}: the chart expects a map here, got {type(value).__name__}")
        elif isinstance(value, dict) and default not in (None, {}) and not isinstance(default, list):
            problems.append(f"{path}: the chart has a {type(default).__name__} here, not a map")
    return problems


@functools.cache
def crd_openapi_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The `openAPIV3Schema` of `kind` at `api_version`, as the upstream CRD has it."""
    relative = CRD_FILES.get((api_version, kind))
    if relative is None:
        raise MissingReference(
            f"no upstream CRD for {api_version} {kind}: add it under components/upstream/ and to CRD_FILES"
        )
    documents = [d for d in yaml.safe_load_all((UPSTREAM_DIR / relative).read_text()) if d]
    (crd,) = [
        d for d in documents if d.get("kind") == "CustomResourceDefinition" and d["spec"]["names"]["kind"] == kind
    ]
    group, version = api_version.split("/")
    if crd["spec"]["group"] != group:
        raise MissingReference(f"{relative} defines group {crd['spec']['group']}, not {group}")
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served", True)]
    return served["schema"]["openAPIV3Schema"]


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The strict JSON schema of `kind` at `api_version`, from the upstream CRD."""
    schema = strict_schema(crd_openapi_schema(api_version, kind))
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind}
    return schema


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 structural schema as JSON schema, with unknown fields rejected: the API
    server silently prunes fields a CRD does not declare, so a typo would deploy and do nothing.
    `nullable: true` admits null; `x-kubernetes-preserve-unknown-fields` keeps a map open;
    descriptions are dropped. CEL rules (`x-kubernetes-validations`) are `infra.cel_rules`' part."""
    out: dict[str, Any] = {k: v for k, v in schema.items() if k != "description" and not k.startswith("x-kubernetes-")}
    if "properties" in schema:
        out["properties"] = {name: strict_schema(sub) for name, sub in schema["properties"].items()}
    for key in ("items", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = strict_schema(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [strict_schema(sub) for sub in schema[key]]
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict_schema(schema["additionalProperties"])
    elif (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    return out

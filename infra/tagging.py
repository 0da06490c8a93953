"""Tags on every taggable AWS resource, from one place.

A stack transformation adds ``env``, ``stack``, ``owner``, ``managed-by`` and ``component``
(the module of the nearest enclosing platform component, e.g. ``network``) to each AWS
resource whose class accepts ``tags``. Tags a resource sets itself (``Name``, subnet
discovery tags) are kept; the platform's own keys win, so a child cannot mislabel its
environment or owner and break cost allocation.

Why a transformation rather than the provider's ``default_tags``: it can add the per-component
tag, and the tags show up in each resource's inputs, where checks and previews can see them.
"""

from __future__ import annotations

import inspect
from typing import Mapping

import pulumi

TAG_KEYS = ("env", "stack", "owner", "managed-by", "component")


_ACCEPTS_TAGS: dict[type, bool] = {}


def _accepts_tags(resource_class: type) -> bool:
    """Whether the class takes a `tags` argument, inspected once per class. (A dict, not functools.cache:
    mypy checks a class passed to a cached function against Hashable through its instances' `__hash__`.)"""
    if resource_class not in _ACCEPTS_TAGS:
        init = getattr(resource_class, "_internal_init", None)
        _ACCEPTS_TAGS[resource_class] = init is not None and "tags" in inspect.signature(init).parameters
    return _ACCEPTS_TAGS[resource_class]


def platform_tags(*, env: str, stack: str, owner: str) -> dict[str, str]:
    return {"env": env, "stack": stack, "owner": owner, "managed-by": "pulumi"}


def register_platform_tags(base_tags: Mapping[str, str]) -> None:
    """Call once, before any resource is declared."""

    component_by_resource: dict[int, str] = {}

    def component_of(args: pulumi.ResourceTransformationArgs) -> str:
        """The module of the nearest `mlops:` component above this resource (or "stack")."""
        if args.type_.startswith("mlops:"):
            component = args.type_.split(":")[1]
        else:
            parent = args.opts.parent if args.opts else None
            component = component_by_resource.get(id(parent), "stack")
        component_by_resource[id(args.resource)] = component
        return component

    def add_tags(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
        component = component_of(args)
        if not args.type_.startswith("aws:") or not _accepts_tags(type(args.resource)):
            return None
        ours = {**base_tags, "component": component}
        own = args.props.get("tags")
        props = dict(args.props)
        props["tags"] = pulumi.Output.from_input(own or {}).apply(lambda t: {**(t or {}), **ours})
        return pulumi.ResourceTransformationResult(props, args.opts)

    pulumi.runtime.register_stack_transformation(add_tags)

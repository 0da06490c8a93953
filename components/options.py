"""Resource options a component passes on to its children.

Pulumi hands a parent's provider, providers and `protect` down to its children, but not its
`depends_on`: a component told to come after something (`opts=ResourceOptions(depends_on=[...])`)
gives that list to the children that must wait, so the dependency travels in `opts` like every
other resource option, not as a field of the component's Args.
"""

from __future__ import annotations

import pulumi


def dependencies(opts: pulumi.ResourceOptions | None) -> list[pulumi.Resource]:
    """The resources in `opts.depends_on` (a resource or a list of them; none without opts)."""
    if opts is None or opts.depends_on is None:
        return []
    if isinstance(opts.depends_on, pulumi.Resource):
        return [opts.depends_on]
    if isinstance(opts.depends_on, (list, tuple)) and all(isinstance(d, pulumi.Resource) for d in opts.depends_on):
        return list(opts.depends_on)
    raise TypeError(
        f"depends_on of a platform component must be a resource or a list of resources, got {opts.depends_on!r}"
    )

"""Settings read from environment variables that refuse variables they do not know.

pydantic-settings reads the variables that match a field and ignores every other one, even with
`extra="forbid"` (that only covers dotenv files and keyword arguments), so `SERVING_BATCH_SIZ=64`,
a typo, or a variable the platform still sets for a setting the service no longer has, is dropped
without a word and the service runs on a default nobody chose. `StrictEnvSettings` looks at the
environment first: a variable that starts with the class's `env_prefix` and names no field stops
construction with `UnknownSettingError`, which names the variable, the closest setting and all the
settings there are. It is a `SystemExit`, like the services' other startup errors: the process ends
with the message and no traceback.

Kubernetes adds variables of its own to every pod: for each Service in the pod's namespace,
`<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<port>]`, `<NAME>_PORT[_...]` (service links). A Service
whose name starts with a prefix (a model endpoint named `serving-x` has a Service `serving-x-stable`)
would otherwise stop every pod in its namespace; a variable is taken for a service link only when
its Service's `<NAME>_SERVICE_HOST` is there too.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Mapping

from pydantic_settings import BaseSettings

SERVICE_HOST = "_SERVICE_HOST"


class UnknownSettingError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def service_link_variables(environ: Mapping[str, str]) -> set[str]:
    """The variables Kubernetes set for the Services of the pod's namespace (those with a `<NAME>_SERVICE_HOST`)."""
    services = [name[: -len(SERVICE_HOST)] for name in environ if name.endswith(SERVICE_HOST)]
    return {
        name
        for name in environ
        for service in services
        if name in (f"{service}{SERVICE_HOST}", f"{service}_SERVICE_PORT", f"{service}_PORT")
        or name.startswith((f"{service}_SERVICE_PORT_", f"{service}_PORT_"))
    }


def setting_names(settings: type[BaseSettings]) -> list[str]:
    """Every variable a settings class reads: its prefix and each field's name, upper case."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    return sorted(f"{prefix}{field}".upper() for field in settings.model_fields)


def unknown_variables(settings: type[BaseSettings], environ: Mapping[str, str]) -> list[str]:
    """Variables with the class's prefix (in any case, as pydantic-settings matches them) that name no field."""
    prefix = str(settings.model_config.get("env_prefix", "")).upper()
    if not prefix:
        return []
    known, links = set(setting_names(settings)), service_link_variables(environ)
    return sorted(
        name for name in environ if name.upper().startswith(prefix) and name.upper() not in known and name not in links
    )


def check_environment(settings: type[BaseSettings], environ: Mapping[str, str]) -> None:
    """Raise UnknownSettingError for each variable with the prefix that the class does not read."""
    unknown = unknown_variables(settings, environ)
    if not unknown:
        return
    allowed = setting_names(settings)
    problems = []
    for name in unknown:
        close = difflib.get_close_matches(name.upper(), allowed, n=1)
        problems.append(f"{name}" + (f" (did you mean {close[0]}?)" if close else ""))
    prefix = str(settings.model_config.get("env_prefix", ""))
    raise UnknownSettingError(
        f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(problems)}: "
        f"{settings.__name__} reads no such {prefix}* variable; allowed: {', '.join(allowed)}"
    )


class StrictEnvSettings(BaseSettings):
    """BaseSettings that refuses unknown variables with its `env_prefix` (see the module docstring)."""

    def __init__(self, **values: Any) -> None:
        check_environment(type(self), os.environ)
        super().__init__(**values)

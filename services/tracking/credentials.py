"""Credentials of the tracking server: where each comes from, how strong it must be, and how
database credentials get into a URI.

Every secret is read when it is needed (never cached across runs), so a `migrate` Job always
uses the RDS master password as it is now, whatever rotation happened since the last run.
Strength is judged by zxcvbn (Dropbox's estimator), not a blocklist: repeats, keyboard walks,
dictionary words and their l33t variants all score low however long they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import quote

from pydantic import SecretStr

MIN_LENGTH = 16
MIN_SCORE = 4
"""zxcvbn's top score: at least 10^10 guesses (its `guesses_log10` >= 10)."""
PLACEHOLDERS = ("{user}", "{password}")


class StartupError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"tracking: {message}")


@dataclass(frozen=True)
class DatabaseLogin:
    username: str
    password: str


def fetch_secret(arn: str, region: str | None) -> str:
    """The secret's current value, from Secrets Manager with the pod's own role (no cache)."""
    import boto3

    return boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=arn)["SecretString"]


def resolve(direct: SecretStr | None, arn: str | None, region: str | None) -> str | None:
    """A secret given directly (local runs) or by Secrets Manager ARN (the platform)."""
    if direct is not None:
        return direct.get_secret_value()
    if arn:
        return fetch_secret(arn, region)
    return None


def require_strong(what: str, password: str | None, *, setting: str, context: Sequence[str] = ()) -> str:
    """`password` if zxcvbn scores it 4 of 4 and it has 16+ characters; otherwise a StartupError
    naming `what` and the `setting` that supplies it. `context` (user names, "mlflow") counts as
    known to an attacker."""
    from zxcvbn import zxcvbn

    if not password:
        raise StartupError(f"no {what}: set {setting}")
    if len(password) < MIN_LENGTH:
        raise StartupError(f"the {what} is shorter than {MIN_LENGTH} characters; generate one (the platform does)")
    result = zxcvbn(password[:100], user_inputs=["mlflow", "tracking", *context])
    if result["score"] < MIN_SCORE:
        hint = result["feedback"].get("warning") or "too predictable"
        raise StartupError(
            f"the {what} is weak ({hint}: zxcvbn score {result['score']} of 4, {MIN_SCORE} required); generate one "
            "(the platform does)"
        )
    return password


def has_placeholders(uri: str) -> bool:
    return all(p in uri for p in PLACEHOLDERS)


def with_login(uri: str, login: DatabaseLogin | None) -> str:
    """`uri` with `{user}`/`{password}` replaced by the URL-encoded login; as is without placeholders."""
    if not has_placeholders(uri):
        return uri
    if login is None:
        raise StartupError("the database URI has {user}/{password} placeholders but no credentials were given")
    return uri.replace("{user}", quote(login.username, safe="")).replace("{password}", quote(login.password, safe=""))


def master_login(secret_arn: str | None, region: str | None) -> DatabaseLogin:
    """The RDS master credentials as they are now (RDS rotates the password every 7 days)."""
    if not secret_arn:
        raise StartupError(
            "the database URI has placeholders: set TRACKING_DATABASE_SECRET_ARN (the RDS master secret) for migrate"
        )
    value = json.loads(fetch_secret(secret_arn, region))
    return DatabaseLogin(value["username"], value["password"])

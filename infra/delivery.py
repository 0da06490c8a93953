"""What the delivery workflows ask of the repository (README: Delivery).

- `images`: each service image to build, at its version. A service's version is the default
  of the setting that selects its image (`tracking.imageTag`, `endpoints[].imageTag`), so the
  tag CI builds is the tag a stack runs unless its stack file pins another; an image no setting
  selects yet (training) takes the version its Dockerfile's build line names.
- `stacks BEFORE AFTER`: the stacks a push to main must deploy. Shared code deploys every stack;
  a stack file deploys its own stack, unless all that changed in it is recorded image digests
  (they were read from the registry, so `pulumi up` would change nothing).
- `push`: copy each scanned OCI layout, byte for byte (`skopeo copy --preserve-digests`), to the
  stack's registry, read the digest back from the registry, and record it under
  `imageDigests.<repository>.<tag>` in the stack file, where the program reads it
  (infra/images.py). Registry tags are immutable: a tag already there is not pushed again,
  and the digest recorded is the one the registry holds.

Run as `python -m infra.delivery COMMAND`; output is JSON (or one line) for the workflow to read.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from infra.profiles import profile_defaults
from infra.settings import (
    _IMAGE_TAG,
    CONFIG_NAMESPACE,
    EndpointSettings,
    PlatformSettings,
    SettingsError,
    load_settings,
)
from infra.stackfile import REPO_ROOT, StackFileError, load_stack_config, load_stack_file, stack_names

SERVICE_VERSIONS: dict[str, tuple[str, Callable[[], str]]] = {
    "tracking": ("tracking.imageTag", lambda: profile_defaults("dev")["tracking"]["imageTag"]),
    "serving": ("endpoints[].imageTag", lambda: EndpointSettings.model_fields["image_tag"].default),
}
"""Service directory (and registry repository) -> the setting that selects its image, and that setting's default."""

DEPLOYED_PATHS = ("infra/", "components/", "services/", "policy/", "Pulumi.yaml", "requirements.lock", "pyproject.toml")
"""A change under any of these can change what every stack deploys."""
DIGESTS_KEY = f"{CONFIG_NAMESPACE}:imageDigests"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class DeliveryError(RuntimeError):
    """A delivery step cannot go on; the message says what to fix."""


def dockerfile_version(root: Path, service: str) -> str | None:
    """The version in the Dockerfile's documented build line (`docker build ... -t <service>:<version> .`)."""
    match = re.search(
        rf"\s-t {re.escape(service)}:({_IMAGE_TAG[1:-1]})\s", (root / "services" / service / "Dockerfile").read_text()
    )
    return match[1] if match else None


def images(root: Path = REPO_ROOT) -> list[dict[str, str]]:
    """Every service image (a directory of services/ with a Dockerfile), its version and where that is set.

    The version is the default of the setting that selects the image (`SERVICE_VERSIONS`); an image no
    setting selects yet (training) takes the one its Dockerfile's build line names. Neither stops the build."""
    found = []
    for dockerfile in sorted((root / "services").glob("*/Dockerfile")):
        service = dockerfile.parent.name
        if service in SERVICE_VERSIONS:
            key, get = SERVICE_VERSIONS[service]
            found.append({"service": service, "version": get(), "setting": key})
        elif (version := dockerfile_version(root, service)) is not None:
            found.append({"service": service, "version": version, "setting": f"services/{service}/Dockerfile"})
        else:
            raise DeliveryError(
                f"services/{service}/Dockerfile has no version: name it in its build line "
                f"(`-t {service}:<version>`), or add {service!r} to infra.delivery.SERVICE_VERSIONS"
            )
    return found


# -- which stacks a push deploys ------------------------------------------------------------------
def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def _without_digests(text: str | None) -> Any:
    document = yaml.safe_load(text) if text else None
    if isinstance(document, dict) and isinstance(document.get("config"), dict):
        document = {**document, "config": {k: v for k, v in document["config"].items() if k != DIGESTS_KEY}}
    return document


def stacks_to_deploy(root: Path, before: str | None, after: str) -> list[str]:
    """Stacks whose deployment a push from `before` to `after` can change (all of them without a `before`)."""
    every = stack_names(root)
    if not before or set(before) == {"0"}:
        return every
    changed = _git(root, "diff", "--name-only", before, after).split()
    if any(path.startswith(DEPLOYED_PATHS) for path in changed):
        return every
    stacks = []
    for path in changed:
        if not (path.startswith("stacks/Pulumi.") and path.endswith(".yaml")):
            continue
        stack = path[len("stacks/Pulumi.") : -len(".yaml")]
        old = (
            subprocess.run(["git", "show", f"{before}:{path}"], cwd=root, capture_output=True, text=True).stdout or None
        )
        new = (
            subprocess.run(["git", "show", f"{after}:{path}"], cwd=root, capture_output=True, text=True).stdout or None
        )
        if new is not None and _without_digests(old) != _without_digests(new):
            stacks.append(stack)
    return [s for s in every if s in stacks]


# -- recording a digest in a stack file -----------------------------------------------------------
def _round_trip_yaml():
    from ruamel.yaml import YAML

    handler = YAML()  # round-trip: comments, key order and flow style kept
    handler.preserve_quotes = True
    handler.indent(mapping=2, sequence=4, offset=2)
    handler.width = 4096
    return handler


def settings_of(stack_file: Path, root: Path = REPO_ROOT) -> PlatformSettings:
    config = load_stack_file(stack_file, root)
    return load_settings(config.namespace(CONFIG_NAMESPACE), stack=config.stack, region=config.values.get("aws:region"))


def record_digest(stack_file: Path, repository: str, tag: str, digest: str, root: Path = REPO_ROOT) -> bool:
    """Set `imageDigests.<repository>.<tag>` in a stack file, keeping everything else as written.

    The result is validated as the program would read it before the file is written: a bad
    digest or a repository the stack does not have raises `SettingsError` and changes nothing.
    Returns whether the file changed."""
    handler = _round_trip_yaml()
    text = stack_file.read_text(encoding="utf-8")
    document = handler.load(text)
    config = document.setdefault("config", {})
    digests = config.setdefault(DIGESTS_KEY, {})
    tags = digests.setdefault(repository, {})
    if tags.get(tag) == digest:
        return False
    tags[tag] = digest
    out = io.StringIO()
    handler.dump(document, out)
    with tempfile.TemporaryDirectory() as scratch:
        candidate = Path(scratch) / stack_file.name
        candidate.write_text(out.getvalue(), encoding="utf-8")
        settings_of(candidate, root)  # raises SettingsError naming the key
    stack_file.write_text(out.getvalue(), encoding="utf-8")
    return True


# -- pushing with skopeo --------------------------------------------------------------------------
def layout_digest(layout: Path) -> str:
    """The digest of the one manifest (or index) an OCI layout holds: what the registry will name it by."""
    try:
        manifests = json.loads((layout / "index.json").read_text())["manifests"]
    except (OSError, ValueError, KeyError) as exc:
        raise DeliveryError(f"{layout}: not an OCI image layout ({exc})") from None
    if len(manifests) != 1:
        raise DeliveryError(f"{layout}: holds {len(manifests)} manifests; build one image (or one index) per layout")
    return manifests[0]["digest"]


@dataclass(frozen=True)
class Skopeo:
    """The registry as skopeo sees it, with the credentials `docker login` (amazon-ecr-login) left."""

    tls_verify: bool = True

    def _tls(self, flag: str) -> list[str]:
        return [] if self.tls_verify else [f"{flag}=false"]

    def digest(self, reference: str) -> str | None:
        """The digest the registry holds for `host/repository:tag`, or None when it has no such tag."""
        result = subprocess.run(
            ["skopeo", "inspect", "--raw", *self._tls("--tls-verify"), f"docker://{reference}"], capture_output=True
        )
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip()
            if "manifest unknown" in message.lower() or "not found" in message.lower():
                return None
            raise DeliveryError(
                f"cannot read {reference} from the registry: "
                f"{message.splitlines()[-1] if message else result.returncode}"
            )
        return "sha256:" + hashlib.sha256(result.stdout).hexdigest()

    def copy(self, layout: Path, reference: str) -> None:
        command = [
            "skopeo",
            "copy",
            "--all",
            "--preserve-digests",
            *self._tls("--dest-tls-verify"),
            f"oci:{layout}",
            f"docker://{reference}",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise DeliveryError(f"pushing {reference} failed: {result.stderr.strip()}")


def push_image(skopeo: Skopeo, layout: Path, reference: str) -> tuple[str, bool, str]:
    """Push `layout` as `reference` unless the tag exists; `(digest the registry holds, pushed, note)`."""
    built = layout_digest(layout)
    existing = skopeo.digest(reference)
    if existing is not None:
        if existing == built:
            return existing, False, "already in the registry"
        return (
            existing,
            False,
            (
                f"the registry already holds another image under this tag ({existing}); tags are immutable there, "
                f"so this build ({built}) was not pushed: bump the version to deliver it"
            ),
        )
    skopeo.copy(layout, reference)
    pushed = skopeo.digest(reference)
    if pushed != built:
        raise DeliveryError(f"{reference}: the registry holds {pushed} after the push, not the scanned {built}")
    return pushed, True, "pushed"


def push(stack: str, images_dir: Path, registry: str, skopeo: Skopeo, root: Path = REPO_ROOT) -> list[dict[str, Any]]:
    """Push every built image the stack's registry has a repository for, and record each digest in its stack file."""
    stack_file = root / "stacks" / f"Pulumi.{stack}.yaml"
    settings = settings_of(stack_file, root)
    results = []
    for manifest in sorted(images_dir.glob("*/image.json")):
        image = json.loads(manifest.read_text())
        service, tag = image["service"], image["version"]
        if service not in settings.registry.repositories:
            results.append(
                {"service": service, "tag": tag, "pushed": False, "note": f"stack {stack} has no {service} repository"}
            )
            continue
        reference = f"{registry}/{settings.name_prefix}/{service}:{tag}"
        digest, pushed, note = push_image(skopeo, manifest.parent / "oci", reference)
        recorded = record_digest(stack_file, service, tag, digest, root)
        results.append(
            {
                "service": service,
                "tag": tag,
                "reference": f"{reference}@{digest}",
                "pushed": pushed,
                "recorded": recorded,
                "note": note,
            }
        )
    return results


def _summary(stack: str, results: list[dict[str, Any]]) -> str:
    lines = [f"### Images for stack `{stack}`", "", "| image | pushed | note |", "| --- | --- | --- |"]
    lines += [
        f"| `{r.get('reference', r['service'] + ':' + r['tag'])}` | {'yes' if r['pushed'] else 'no'} | {r['note']} |"
        for r in results
    ]
    return "\n".join(lines) + "\n"


# -- command line -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.delivery", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("images", help="the images to build, with versions (JSON)")
    region = commands.add_parser("region", help="the stack's aws:region (one line)")
    region.add_argument("stack")
    stacks = commands.add_parser("stacks", help="the stacks a push from BEFORE to AFTER deploys (JSON list)")
    stacks.add_argument("before", nargs="?", default="")
    stacks.add_argument("after", nargs="?", default="HEAD")
    pusher = commands.add_parser("push", help="push built images to a stack's registry and record their digests")
    pusher.add_argument("--stack", required=True)
    pusher.add_argument(
        "--images", required=True, type=Path, help="directory of <service>/image.json and <service>/oci"
    )
    pusher.add_argument(
        "--registry", required=True, help="registry host, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com"
    )
    pusher.add_argument("--no-tls-verify", action="store_true", help="a plain-HTTP registry on loopback (tests)")
    args = parser.parse_args(argv)
    try:
        if args.command == "images":
            print(json.dumps(images()))
        elif args.command == "region":
            stack_region = load_stack_config(args.stack, REPO_ROOT).values.get("aws:region")
            if not stack_region:
                raise DeliveryError(f"stacks/Pulumi.{args.stack}.yaml sets no aws:region")
            print(stack_region)
        elif args.command == "stacks":
            print(json.dumps(stacks_to_deploy(REPO_ROOT, args.before, args.after)))
        else:
            load_stack_config(args.stack, REPO_ROOT)  # a clear error for a stack without a file
            results = push(
                args.stack, args.images, args.registry, Skopeo(tls_verify=not args.no_tls_verify), root=REPO_ROOT
            )
            print(json.dumps(results, indent=1))
            if os.environ.get("GITHUB_STEP_SUMMARY"):
                with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as fh:
                    fh.write(_summary(args.stack, results))
    except (DeliveryError, SettingsError, StackFileError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        print(f"error: {detail}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (SettingsError, StackFileError)) else EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

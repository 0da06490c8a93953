#!/usr/bin/env bash
# Set up everything the platform needs on a fresh machine. Safe to re-run: it only
# reinstalls when requirements.lock or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Python 3.11 or newer is required (found $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.setup-stamp
wanted=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
  echo "setup: installing pinned Python packages (requirements.lock); takes ~2 minutes the first time"
  # pip warns "... is neither a file nor a directory" for each local package location in the user's pip
  # configuration (find-links, a file:// index) that does not exist on this machine; those lines are
  # dropped, every other line pip prints is kept.
  quiet_pip() { .venv/bin/python -m pip "$@" 2>&1 | { grep -v "is neither a file nor a directory" || true; }; }
  quiet_pip install --quiet --upgrade pip
  quiet_pip install --quiet -r requirements.lock
  quiet_pip install --quiet --no-deps -e .   # the `mlops` command
  echo "$wanted" > "$stamp"
fi

# checkov, the Kubernetes scanner tests/unit/test_checkov.py runs on the rendered manifests, in a
# venv of its own (its dependency tree conflicts with requirements.lock); reinstalled when its lock changes.
checkov_stamp=.venv-checkov/.setup-stamp
checkov_wanted=$(sha256sum requirements-checkov.lock | cut -c1-16)
if [ "$(cat "$checkov_stamp" 2>/dev/null || true)" != "$checkov_wanted" ]; then
  echo "setup: installing checkov into .venv-checkov (requirements-checkov.lock); ~20 seconds"
  [ -x .venv-checkov/bin/python ] || "$PYTHON" -m venv .venv-checkov
  .venv-checkov/bin/python -m pip install --quiet -r requirements-checkov.lock 2>&1 | { grep -v "is neither a file nor a directory" || true; }
  echo "$checkov_wanted" > "$checkov_stamp"
fi

# System tools some tests and the local demo run for real (see README, "What runs where").
missing=()
while read -r binary package; do
  [ -z "$binary" ] || [[ "$binary" == \#* ]] && continue
  command -v "$binary" >/dev/null 2>&1 || missing+=("$package")
done < scripts/system-packages.txt
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "setup: apt-get install ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: please install these Debian packages (as root): ${missing[*]}" >&2
    exit 1
  fi
fi
echo "setup: ready"

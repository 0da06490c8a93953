#!/usr/bin/env bash
# Build the one pull-request comment of a change: what changes, rule findings, Kubernetes objects
# and cost, for every stack the change touches (README: Delivery).
#
#   scripts/pr-review.sh BASE_REF [OUT_DIR]
#
# Inventories and the cost section come from scripts/cost-review.sh (PREVIEW=offline or pulumi,
# as there); then `check` and `render` run on each head inventory. Writes OUT_DIR/comment.md
# (default: build/review) and OUT_DIR/exit-code: 0, or 1 when a stack has an unwaived finding or
# an invalid Kubernetes object. Exits 0 once the comment is written, so the workflow posts it
# before it fails on that exit code; exits non-zero only when the comment could not be built.
set -euo pipefail
cd "$(dirname "$0")/.."
base_ref=${1:?usage: scripts/pr-review.sh BASE_REF [OUT_DIR]}
out=${2:-build/review}
python=${PYTHON:-.venv/bin/python}
case "$python" in /*) ;; *) python="$PWD/$python" ;; esac

rm -rf "$out" && mkdir -p "$out/checks" "$out/render" && out=$(cd "$out" && pwd)
PYTHON="$python" scripts/cost-review.sh "$base_ref" "$out/cost"

for inventory in "$out"/cost/head/*.json; do
  [ -e "$inventory" ] || continue
  stack=$(basename "$inventory" .json)
  echo "pr-review: $stack: check and render"
  rc=0; "$python" -m infra.cli check --inventory "$inventory" --format json > "$out/checks/$stack.json" || rc=$?
  [ "$rc" -le 1 ] || { echo "pr-review: check failed on $stack (exit $rc)" >&2; exit "$rc"; }
  rc=0; "$python" -m infra.cli render --inventory "$inventory" > "$out/render/$stack.txt" 2>&1 || rc=$?
  [ "$rc" -le 1 ] || { cat "$out/render/$stack.txt" >&2; echo "pr-review: render failed on $stack (exit $rc)" >&2; exit "$rc"; }
  echo "$rc" > "$out/render/$stack.rc"
done
rc=0; "$python" -m infra.review "$out" || rc=$?
[ "$rc" -le 1 ] || exit "$rc"
echo "$rc" > "$out/exit-code"
echo "pr-review: comment written to $out/comment.md (exit code $rc)"

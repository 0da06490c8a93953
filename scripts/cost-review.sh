#!/usr/bin/env bash
# Build the cost comment of a change: inventories of the base ref and of the working tree,
# for every stack the change touches, priced and diffed.
#
#   scripts/cost-review.sh BASE_REF [OUT_DIR]
#
# PREVIEW=offline (default) builds inventories with the offline preview (no credentials);
# PREVIEW=pulumi runs the real `pulumi preview --json` (Pulumi CLI, backend login and AWS
# credentials needed). The comment is written to OUT_DIR/comment.md (default: build/cost).
set -euo pipefail
cd "$(dirname "$0")/.."
base_ref=${1:?usage: scripts/cost-review.sh BASE_REF [OUT_DIR]}
out=${2:-build/cost}
python=${PYTHON:-.venv/bin/python}
case "$python" in /*) ;; *) python="$PWD/$python" ;; esac
mode=${PREVIEW:-offline}

changed=$(git diff --name-only "$base_ref" -- . ; git ls-files --others --exclude-standard)
stacks=()
if grep -qE '^(infra|components)/|^Pulumi\.yaml$|^requirements\.lock$' <<<"$changed"; then
  for f in stacks/Pulumi.*.yaml; do s=${f#stacks/Pulumi.}; stacks+=("${s%.yaml}"); done   # shared code: every stack
else
  while read -r f; do
    case "$f" in
      stacks/Pulumi.*.yaml) s=${f#stacks/Pulumi.}; [ -f "$f" ] && stacks+=("${s%.yaml}") ;;
      stacks/usage/*.yaml) s=${f#stacks/usage/}; [ -f "stacks/Pulumi.${s%.yaml}.yaml" ] && stacks+=("${s%.yaml}") ;;
    esac
  done <<<"$changed"
fi
mapfile -t stacks < <(printf '%s\n' "${stacks[@]}" | sort -u | sed '/^$/d')
rm -rf "$out" && mkdir -p "$out/base" "$out/head" && out=$(cd "$out" && pwd)
if [ ${#stacks[@]} -eq 0 ]; then
  echo "cost-review: no stack is affected by changes since $base_ref"
  printf '<!-- mlops-platform cost comment -->\nNo stack is affected by this change.\n' > "$out/comment.md"
  exit 0
fi
echo "cost-review: stacks affected since $base_ref: ${stacks[*]}"

base_tree=$(mktemp -d)
trap 'git worktree remove --force "$base_tree" >/dev/null 2>&1 || rm -rf "$base_tree"' EXIT
git worktree add --quiet --detach "$base_tree" "$base_ref"
# a real preview runs the program with the interpreter Pulumi.yaml names (.venv), which the base tree lacks
[ "$mode" != pulumi ] || [ ! -d .venv ] || ln -s "$PWD/.venv" "$base_tree/.venv"

inventory() {  # inventory TREE STACK FILE
  local tree=$1 stack=$2 file=$3
  [ -f "$tree/stacks/Pulumi.$stack.yaml" ] || return 0   # the stack is new in the change
  if [ "$mode" = pulumi ]; then
    (cd "$tree" && pulumi preview --stack "$stack" --json) > "$file"
  else
    (cd "$tree" && "$python" -m infra.cli preview --stack "$stack" --counts-only --json "$file" >/dev/null)
  fi
}
for stack in "${stacks[@]}"; do
  echo "cost-review: $stack: base"; inventory "$base_tree" "$stack" "$out/base/$stack.json"
  echo "cost-review: $stack: head"; inventory "$PWD" "$stack" "$out/head/$stack.json"
done
"$python" -m infra.cli cost-comment "$out/base" "$out/head" --output "$out/comment.md"
echo "cost-review: comment written to $out/comment.md"

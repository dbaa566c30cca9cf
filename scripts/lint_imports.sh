#!/usr/bin/env bash
# import-linter's contracts (pyproject.toml [tool.importlinter]) on the package as setup.py installs it.
# Plain `lint-imports` in the repo cannot see them: sim/, policies/ and real/ only become robostack.sim, ... once
# setup.py maps them, so this copies the tree into that layout in a temporary folder and lints that.
# Usage: bash scripts/lint_imports.sh [lint-imports options]; LINT_IMPORTS=path picks the executable
# (default: .venv's).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LINT_IMPORTS="${LINT_IMPORTS:-$ROOT/.venv/bin/lint-imports}"
LAYOUT="$(mktemp -d)"
trap 'rm -rf "$LAYOUT"' EXIT
cp -r "$ROOT/robostack" "$LAYOUT/robostack"
for name in sim policies real; do
  cp -r "$ROOT/$name" "$LAYOUT/robostack/$name"
done
find "$LAYOUT" -name __pycache__ -type d -prune -exec rm -rf {} +
cd "$LAYOUT"
PYTHONPATH="$LAYOUT" "$LINT_IMPORTS" "$ROOT/pyproject.toml" --no-cache "$@"

#!/usr/bin/env bash
# Creates the project-local virtualenv (.venv) with libtorch (PyPI torch wheel) and the real assets
# the tests and the main job use. Idempotent: does nothing when the stamp matches requirements.txt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
req="$root/scripts/requirements.txt"
stamp="$venv/.vlp-setup-stamp"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
start=$(date +%s)
echo "vlp setup: creating $venv (torch 2.13.0 wheel, about 4.7 GB, once)" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
"$venv/bin/python" - <<'PY'
import torch
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
PY
echo "$want" > "$stamp"
echo "vlp setup: done in $(( $(date +%s) - start )) s" >&2

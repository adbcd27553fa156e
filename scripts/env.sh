# shellcheck shell=bash
# Source this file (`source scripts/env.sh`) to build with plain cargo: it points torch-sys at the
# project's virtualenv. It never sets LD_LIBRARY_PATH; binaries carry an rpath to libtorch.
_vlp_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$_vlp_root/.venv"
case ":$PATH:" in *":$VIRTUAL_ENV/bin:"*) ;; *) export PATH="$VIRTUAL_ENV/bin:$PATH" ;; esac
export LIBTORCH_USE_PYTORCH=1
unset _vlp_root

#!/usr/bin/env bash
# Run `python -m wsdjax.train` as N processes on this machine (jax.distributed on
# 127.0.0.1), each with K fake CPU devices:
#   launch/local.sh N CONFIG WORKDIR [--devices K] [--config.a.b=value ...]
# See launch/local.py for the options. PYTHON picks the interpreter (default: .venv's).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
exec "$PYTHON" "$here/local.py" "$@"

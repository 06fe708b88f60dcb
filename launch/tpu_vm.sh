#!/usr/bin/env bash
# Cloud TPU VM lifecycle for wsdjax: create, setup, run, logs, stop, delete.
#   launch/tpu_vm.sh --name NAME --zone ZONE [--dry-run] SUBCOMMAND [options]
# See launch/tpu_vm.py (or --help) for the sub-commands. Needs python3 and gcloud.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/tpu_vm.py" "$@"

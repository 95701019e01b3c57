#!/usr/bin/env bash
# The test command (`make test` and CI): the whole suite with a per-test timeout, so a hung Ray worker fails the run.
set -uo pipefail
cd "$(dirname "$0")/.."
export TOKENIZERS_PARALLELISM=false VLLM_ENABLE_V1_MULTIPROCESSING=0
.venv/bin/python -m pytest -q --timeout 900 -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"

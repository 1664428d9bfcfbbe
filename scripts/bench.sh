#!/usr/bin/env bash
# make bench: measure qscope against this machine's own limits and write
# docs/BENCH.md (see the table's header for what is measured and how).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-models/debdoc-19m-f16.gguf}
text=${TEXT:-data/wikitext-2-test.txt}
mkdir -p docs
./qscope bench -m "$model" -f "$text" -o docs/BENCH.md "$@"
echo "bench: wrote docs/BENCH.md"

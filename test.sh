#!/usr/bin/env bash
# Installs what is missing, builds Harpoon Meter and runs every test with ctest.
set -euo pipefail
cd "$(dirname "$0")"
bash engine/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure "$@"

#!/usr/bin/env bash
# Fetch the wheels of benchmarks/device/wheels.txt into .whl/ (git-ignored) for the lent GPU
# machine, which cannot reach PyPI: CPython 3.12, manylinux x86-64, no dependencies resolved
# (wheels.txt names each one). Run here, in the repository root, before the device run.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir -p .whl
grep -v '^#' benchmarks/device/wheels.txt | grep . | while read -r pin; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d .whl "$pin"
done
ls -1 .whl
du -sh .whl

#!/usr/bin/env bash
# Cross-compile tests/native/neon_driver.cpp for aarch64 into the directory $1:
#   scalar.cpp and the driver for baseline armv8-a, neon.cpp twice (baseline -> neon_table(),
#   armv8.2-a+dotprod -> neon_dotprod_table()), linked statically so qemu-aarch64 needs no
#   sysroot. The flags match CMakeLists.txt (-ffp-contract=off: no fused multiply-adds).
# Usage: tests/native/build_neon.sh OUT_DIR   (CXX_AARCH64 overrides the compiler)
set -euo pipefail

out=${1:?usage: build_neon.sh OUT_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cxx=${CXX_AARCH64:-aarch64-linux-gnu-g++}
flags=(-O2 -std=c++17 -ffp-contract=off -Wall -Wextra -I"$root/csrc")

mkdir -p "$out"
"$cxx" "${flags[@]}" -march=armv8-a -c "$root/csrc/kernels/scalar.cpp" -o "$out/scalar.o" &
"$cxx" "${flags[@]}" -march=armv8-a -c "$root/csrc/kernels/neon.cpp" -o "$out/neon.o" &
"$cxx" "${flags[@]}" -march=armv8.2-a+dotprod -DTRITLM_NEON_DOTPROD=1 \
  -c "$root/csrc/kernels/neon.cpp" -o "$out/neon_dotprod.o" &
"$cxx" "${flags[@]}" -march=armv8-a -c "$here/neon_driver.cpp" -o "$out/neon_driver.o" &
status=0
for job in $(jobs -p); do wait "$job" || status=1; done
[ "$status" -eq 0 ] || { echo "build_neon.sh: compilation failed" >&2; exit 1; }
"$cxx" -static -o "$out/neon_driver" "$out/neon_driver.o" "$out/scalar.o" "$out/neon.o" "$out/neon_dotprod.o"
echo "$out/neon_driver"

#!/usr/bin/env bash
# Builds scripts/onednn3_bn.cpp (oneDNN forward with the fused flags, and backward) as
# $PEERS/onednn3_bn_ext, against the oneDNN that shared/peers/setup.sh installs (run that first).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
P=${PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/bnorm-peers}
D="$P/onednn32"
INC="$D/onednn_devel_cpu_gomp-2023.2.0.data/data/include"; LIB="$D/onednn_cpu_gomp-2023.2.0.data/data/lib"
[ -d "$INC" ] || { echo "no oneDNN in $P: run shared/peers/setup.sh first" >&2; exit 1; }
g++ -O2 -std=c++17 -I"$INC" -o "$P/onednn3_bn_ext" "$HERE/onednn3_bn.cpp" -L"$LIB" -ldnnl -Wl,-rpath,"$LIB"
echo "built $P/onednn3_bn_ext"

#!/usr/bin/env bash
# The whole GPU check, in one command, on a machine with an NVIDIA GPU:
#
#     benchmarks/gpu_check.sh OUT_DIR [--wheels DIR] [GPU_PY_OPTION ...]
#
# 1. Installs mireg, editable, into the Python that runs it ($PYTHON, default python3): from PyPI
#    with its test dependencies; with --wheels DIR, from the wheels in DIR and no index at all (an
#    offline machine whose Python already has torch: DIR holds what it lacks, and may hold a wheel of
#    mireg itself for a Python whose setuptools cannot install it editable).
# 2. Runs every CUDA test (`pytest -m cuda`): OUT_DIR/cuda-tests.log and OUT_DIR/cuda-tests.xml.
# 3. Runs benchmarks/gpu.py (any further options go to it): OUT_DIR/gpu.json and OUT_DIR/gpu.log.
#
# Exits non-zero if a step failed; the later steps run all the same, so one call gives every answer.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ $# -lt 1 ]; then
    echo "usage: benchmarks/gpu_check.sh OUT_DIR [--wheels DIR] [GPU_PY_OPTION ...]" >&2
    exit 2
fi
out=$1
shift
wheels=
if [ "${1:-}" = "--wheels" ]; then
    wheels=$2
    shift 2
fi
mkdir -p "$out"
status=0

echo "== install"
if [ -n "$wheels" ]; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile "$wheels"/*.whl || exit 1
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-build-isolation -e . ||
        "$PYTHON" -c "from importlib.metadata import version; version('mireg')" || exit 1
else
    "$PYTHON" -m pip install --quiet -e ".[dev]" || exit 1
fi
"$PYTHON" -m mireg --version || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true

echo "== pytest -m cuda"
per_test=()
if "$PYTHON" -c "import pytest_timeout" 2>/dev/null; then
    per_test=(--timeout=240) # pytest-timeout, where installed, registers itself
fi
"$PYTHON" -m pytest -m cuda -q -rs "${per_test[@]}" --junitxml="$out/cuda-tests.xml" 2>&1 |
    tee "$out/cuda-tests.log" || status=1

echo "== benchmarks/gpu.py"
PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/gpu.py -o "$out/gpu.json" "$@" 2>"$out/gpu.log" >/dev/null || status=1
"$PYTHON" - "$out/gpu.json" <<'EOF' || status=1
import json, sys

report = json.load(open(sys.argv[1]))
print(json.dumps(report["machine"]))
for row in report.get("steps", []):
    if "error" in row:
        print("ERROR", row["command"], row["error"])
    else:
        how = f"{row['precision']}{' compiled' if row['compile'] else ''}"
        print(f"{row['method']:>9} {how:<14} {row['ms_per_step']:8.1f} ms/step {row['peak_mem_mb'] / 1024:6.2f} GB")
for section in ("profiles", "data", "curve"):
    for row in report.get(section, []):
        print(section, json.dumps(row)[:1500])
for goal in report["goals"]:
    print("GOAL", goal)
EOF
exit $status

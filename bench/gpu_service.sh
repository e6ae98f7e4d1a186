#!/usr/bin/env bash
# A job through the whole service on a GPU worker: `trainq up` on its embedded default with no CPU worker and a
# worker per GPU (`--gpus auto`), a digits MLP submitted to pool gpu and waited for, then its events (the worker
# says which device it trained on) and its ONNX export. Run from the repository root where a GPU is:
#
#     bash bench/gpu_service.sh [PORT]
#
# DEVICE=cpu GPUS=none runs the same path on a CPU worker (how this script is checked where no GPU is).
set -u
root=$(pwd)
port=${1:-8765}
device=${DEVICE:-gpu}
pool=$([ "$device" = gpu ] && echo gpu || echo cpu)
workers=$([ "$device" = gpu ] && echo 0 || echo 1)
folder=$(mktemp -d)
cd "$folder" || exit 1
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$root"
python3 -m trainq.cli up --port "$port" --workers "$workers" --gpus "${GPUS:-auto}" > up.log 2>&1 &
up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null' EXIT
for _ in $(seq 120); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/api/v1/health', timeout=1)" \
        2>/dev/null && break
    sleep 0.5
done
cat up.log
python3 - "$root/examples/digits-mlp.yaml" "$pool" "$device" > spec.yaml <<'EOF'
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))
spec["name"] = f"digits-mlp-on-{sys.argv[3]}"
spec["resources"] = {**spec.get("resources", {}), "pool": sys.argv[2], "device": sys.argv[3]}
print(yaml.safe_dump(spec))
EOF
export TRAINQ_SERVICE_URL=http://127.0.0.1:$port
job=$(python3 -m trainq.cli submit spec.yaml) || { echo "FAIL submit"; exit 1; }
echo "submitted $job"
state=unknown
for _ in $(seq 240); do
    state=$(python3 -m trainq.cli status "$job" 2>&1 | grep -E '^status |^Error') || true
    case "$state" in *succeeded*|*failed*|*cancelled*|Error*) break ;; esac
    sleep 0.5
done
python3 -m trainq.cli status "$job"
python3 -m trainq.cli logs "$job"
python3 -m trainq.cli export "$job" --onnx model.onnx && ls -l model.onnx
echo "--- the service's and workers' log, last lines"
tail -n 40 up.log
case "$state" in *succeeded*) echo "PASS a job through the service on a $device worker" ;;
                 *) echo "FAIL the job ended as: $state"; exit 1 ;; esac

#!/usr/bin/env bash
# The GPU path, checked in one go on a CUDA machine that has PyTorch but not this project's other
# dependencies and no network (how the project's GPU sessions reach one). Writes logs and JSON to $OUT.
#
# Needs, beside the checkout (each made here, on the CPU machine):
#   .whl/            wheels of the dependencies the GPU machine lacks, for its Python (pip download)
#   data/pairs/toy/  the toy pair with its quick GT (left there by `python -m bench.serving`)
#   twin-smol/       SmolLM2's files without its weights (`python -m bench.twin --out twin-smol`)
#
#   OUT=gpu-out scripts/gpu_check.sh                 # all three steps
#   STEPS=smol SMOL_ARGS="--prompts 4 --rounds 3" scripts/gpu_check.sh
#   STEPS=tests TESTS="tests/chat/test_chat_engine.py -k gpu" scripts/gpu_check.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
STEPS=" ${STEPS:-tests smol toy} "
SMOL_ARGS=${SMOL_ARGS:-"--prompts 6 --rounds 4 --max-tokens 16 --long-tokens 48"}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
SECONDS=0

# Installed beside the machine's own packages (its python3 is itself a virtual environment, so a nested
# one would not see its torch); PYTHONPATH puts these first.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gl-site .whl/*.whl 2>&1 | tail -3
export PYTHONPATH=/tmp/gl-site:$PWD
PY=$(python3 -c 'import sys; print(sys.executable)')
printf '#!%s\nfrom app.cli import main\nmain()\n' "$PY" > "$(dirname "$PY")/gradlift"
chmod +x "$(dirname "$PY")/gradlift"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())"
  nproc; } 2>&1 | tee "$OUT/machine.txt"
echo "setup done at ${SECONDS}s"

quiet() { grep --line-buffered -v "Loading weights\|Writing model shards\|FutureWarning\|warnings.warn"; }

# 1. Tests: the CUDA ones run (engine answers as on the CPU, an upgrade equals the CPU's), the rest of
#    these files must still pass on a GPU machine.
TESTS=${TESTS:-"tests/models/test_device.py tests/chat/test_chat_engine.py tests/models/test_pair_pipeline.py"}
# shellcheck disable=SC2086  # TESTS is a list of pytest arguments
[[ $STEPS == *" tests "* ]] && GRADLIFT_TEST_PAIRS=data/pairs OMP_NUM_THREADS=4 timeout 200 $PY -m pytest -q -p no:cacheprovider -rs \
  $TESTS 2>&1 \
  | quiet | tee "$OUT/pytest.log" | tail -15
echo "tests done at ${SECONDS}s"

# 2. Serving speed on SmolLM2's shapes (stand-in weights), every side on the GPU.
[[ $STEPS == *" smol "* ]] && timeout 300 $PY -m bench.serving --pair smol --device cuda --random-llm twin-smol \
  --data-dir /tmp/gl-data $SMOL_ARGS --port 8766 --out "$OUT/serving-smol-cuda.json" 2>&1 \
  | quiet | tee "$OUT/serving-smol.log" | tail -22
echo "smol bench done at ${SECONDS}s"

# 3. The toy pair on the GPU (launch-bound: a 4-layer, 128-wide model).
[[ $STEPS == *" toy "* ]] && timeout 120 $PY -m bench.serving --pair toy --device cuda --data-dir data --port 8767 --prompts 10 --rounds 5 \
  --out "$OUT/serving-toy-cuda.json" 2>&1 | quiet | tee "$OUT/serving-toy.log" | tail -22
echo "toy bench done at ${SECONDS}s"

# On the device machine, after the wheel parts are in /tmp/wheelparts (docs/NOTES.md):
#   ROUNDS=2 VARIANTS="8x4s:::gpu:2:1000,8x4s:::gpu" bash scripts/device/run_variants.sh
# carrying .gpu/extra. The ResNet-50 benchmark of the working tree, with
# nvidia-smi dmon alongside; report, JSON and dmon log come back in $OUT.
# EXTRA="--modes unary,stream" adds InferStream points (one frame in flight per stream).
# GIL_PROBE=1: who holds the GIL in the host and one front-end during each daemon point
# (scripts/device/gil_probe.py). Needs EXTRA=--daemon-metrics and py-spy in .gpu/extra/whl.
# GIL_PROBE_ARGS=--native: native frames too, thread by thread (slows the sampled processes).
# The host's metrics port is 9400 + the number of front-ends: HOST_PORT (default 9404, for 4).
source scripts/device/setup.sh
export PYTHONPATH=/tmp/site:$PWD/daemon:$PWD/clients
nvidia-smi dmon -s u -d 1 -o T > $OUT/dmon.txt & DM=$!
# CPU by process every 3 s, and each process's total at the end (scripts/device/proc_cpu.py).
python3 scripts/device/proc_cpu.py --out $OUT/proc-cpu.txt & PC=$!
if [ -n "${GIL_PROBE:-}" ]; then
  # py-spy gets a target of its own: pip skips bin/ in a target that already has one.
  [ -x /tmp/pyspy/bin/py-spy ] || python3 -m pip install -q --no-index --no-deps --target /tmp/pyspy .gpu/extra/whl/py_spy*.whl
  export PATH=/tmp/pyspy/bin:$PATH
  python3 scripts/device/gil_probe.py --out $OUT/gil --host-port ${HOST_PORT:-9404} ${GIL_PROBE_ARGS:-} > $OUT/gil-probe.log 2>&1 & GP=$!; fi
python3 scripts/gpu_bench.py $BENCH --out /tmp/out-v --rounds ${ROUNDS:-1} --variants "$VARIANTS" ${EXTRA:-} 2>&1 \
  | grep -E "gpu_bench\]" | grep -E "daemon|ceiling|MISS|PASS" | grep -v "^|"
kill $DM $PC ${GP:-}
cp /tmp/out-v/gpu-resnet50.json /tmp/out-v/gpu-resnet50.md $OUT/

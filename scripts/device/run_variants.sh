# On the device machine, after the wheel parts are in /tmp/wheelparts (docs/NOTES.md):
#   ROUNDS=2 VARIANTS="8x4s:::gpu:2:1000,8x4s:::gpu" bash scripts/device/run_variants.sh
# carrying .gpu/part-05 and .gpu/extra. The ResNet-50 benchmark of the working tree, with
# nvidia-smi dmon alongside; report, JSON and dmon log come back in $OUT.
source scripts/device/setup.sh
export PYTHONPATH=/tmp/site:$PWD/daemon:$PWD/clients
nvidia-smi dmon -s u -d 1 -o T > $OUT/dmon.txt & DM=$!
python3 scripts/gpu_bench.py $BENCH --out /tmp/out-v --rounds ${ROUNDS:-1} --variants "$VARIANTS" ${EXTRA:-} 2>&1 \
  | grep -E "gpu_bench\]" | grep -E "daemon|ceiling|MISS|PASS" | grep -v "^|"
kill $DM
cp /tmp/out-v/gpu-resnet50.json /tmp/out-v/gpu-resnet50.md $OUT/

# Same-call A/B of an older commit against the working tree, on the device machine.
# Here first: mkdir .oldtree && git archive REV daemon clients scripts | tar -x -C .oldtree
# (.oldtree is git-ignored through .git/info/exclude; carry it with .gpu/part-05 and .gpu/extra).
#   OLD_VARIANTS="8x4s:::gpu" NEW_VARIANTS="8x4s:::gpu" bash scripts/device/run_ab.sh
# With EXTRA=--daemon-metrics, one front-end (9400) and the inference host (9404) are watched.
source scripts/device/setup.sh
mkdir -p $OUT/old $OUT/new
for side in old new; do
  if [ $side = old ]; then T=$PWD/.oldtree; V=$OLD_VARIANTS; else T=$PWD; V=$NEW_VARIANTS; fi
  (export PYTHONPATH=/tmp/site:$T/daemon:$T/clients
   python3 scripts/watch_stages.py http://127.0.0.1:9400/metrics http://127.0.0.1:9404/metrics > $OUT/stages-$side.txt 2>&1 & W=$!
   python3 $T/scripts/gpu_bench.py $BENCH --out /tmp/out-$side --variants "$V" ${EXTRA:-} 2>&1 \
     | grep -E "gpu_bench\]" | grep -E "daemon|ceiling|MISS|PASS" | grep -v "^|"
   kill $W; cp /tmp/out-$side/gpu-resnet50.json $OUT/$side/)
done

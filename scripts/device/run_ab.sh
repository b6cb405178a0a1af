# Same-call A/B of an older commit against the working tree, on the device machine, in
# alternating rounds (old, new, old, new, ...) so that drift on the lease hits both sides.
# Here first: mkdir .oldtree && git archive REV daemon clients scripts | tar -x -C .oldtree
# (.oldtree is git-ignored through .git/info/exclude; carry it with .gpu/part-05 and .gpu/extra).
#   ROUNDS=3 OLD_VARIANTS="6x6s:::gpu" NEW_VARIANTS="6x6s:::gpu" bash scripts/device/run_ab.sh
# STAGES=1 with EXTRA=--daemon-metrics: one front-end (9400) and the inference host
# (HOST_PORT, default 9404 = 4 front-ends) are watched (scripts/watch_stages.py).
source scripts/device/setup.sh
for r in $(seq 1 ${ROUNDS:-1}); do
  for side in old new; do
    if [ $side = old ]; then T=$PWD/.oldtree; V=$OLD_VARIANTS; else T=$PWD; V=$NEW_VARIANTS; fi
    mkdir -p $OUT/$side
    (export PYTHONPATH=/tmp/site:$T/daemon:$T/clients
     if [ -n "${STAGES:-}" ]; then
       python3 scripts/watch_stages.py http://127.0.0.1:9400/metrics http://127.0.0.1:${HOST_PORT:-9404}/metrics \
         > $OUT/stages-$side-$r.txt 2>&1 & W=$!; fi
     python3 $T/scripts/gpu_bench.py $BENCH --out /tmp/out-$side-$r --variants "$V" ${EXTRA:-} 2>&1 \
       | grep -E "gpu_bench\]" | grep -E "daemon|ceiling|MISS|PASS" | grep -v "^|" | sed "s/^/[$side#$r] /"
     [ -n "${W:-}" ] && kill $W
     cp /tmp/out-$side-$r/gpu-resnet50.json $OUT/$side/gpu-resnet50-$r.json)
  done
done

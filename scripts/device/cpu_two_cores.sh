# The CPU targets of issue 4 on the device host's CPUs, which have no hypervisor steal to speak of
# (the 2-vCPU dev box had up to 26% a point in session 14). The daemon, its in-process ceiling and
# the echo server share 2 cores (SERVER_CPUS, default 0-1); the load generator runs on CLIENT_CPUS
# (default 2-7), as kiosk clients on other machines would, or on the same 2 cores as on the dev box
# (CLIENT_CPUS=0-1). The GPU is not used.
#   NAME=cpu-a bash scripts/device/cpu_two_cores.sh --models faces,imagenet --concurrency 8 --mode unary
# carrying .gpu/extra, after the wheel parts are in /tmp/wheelparts (docs/NOTES.md).
# Report, JSON and plots come back in $OUT. CONFIGS="--config a.toml --config b.toml" compares configs.
source scripts/device/setup.sh >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/daemon:$PWD/clients
SERVER_CPUS=${SERVER_CPUS:-0-1}
CLIENT_CPUS=${CLIENT_CPUS:-2-7}
# The daemon gives ONNX Runtime one intra-op thread per CPU of its mask where the mask is narrower
# than the machine (backends/onnxruntime/loader.py intra_op_threads): ORT's default would pin
# threads to all 16 cores. Printed here as a check.
echo "intra-op threads on CPUs $SERVER_CPUS: $(taskset -c $SERVER_CPUS python3 -c \
  'from edgeinfer.backends.onnxruntime.loader import intra_op_threads; print(intra_op_threads())')"
python3 -m edgeinfer.cli bench ${CONFIGS:---config configs/dev.toml --label dev} --loop uvloop --server-cpus $SERVER_CPUS \
  --client-cpus $CLIENT_CPUS --duration 3 --warmup 0.5 --rounds ${ROUNDS:-12} --out $OUT --name ${NAME:-cpu} \
  --title "${TITLE:-edgeinfer CPU benchmark on a device host, daemon on CPUs $SERVER_CPUS, clients on $CLIENT_CPUS}" \
  "$@" 2>&1 | grep -E "PASS|MISS|Error|error|Traceback|json:" | tail -20

# Device machine set-up, sourced by the other scripts here: installs the GPU wheels once (the
# parts must already be in /tmp/wheelparts, see docs/NOTES.md), links the assets, sets $BENCH.
if [ ! -d /tmp/site/onnxruntime ] || [ ! -d /tmp/site/grpc_health ]; then
  # The parts carried by this call join those the earlier calls left: 32 MiB each, one a call, so
  # that a part and the tracked tree (~21 MB) stay under the 64 MiB a call carries; the call that
  # installs carries .gpu/extra (31 MB) and no part.
  mkdir -p /tmp/wheelparts && cp .gpu/part-*/* /tmp/wheelparts/ 2>/dev/null
  bash /tmp/wheelparts/join-and-install.sh >/dev/null 2>&1
  python3 -m pip install -q --no-index --no-deps --target /tmp/site $(ls .gpu/extra/whl/*.whl | grep -v py_spy)
fi
export PYTHONUNBUFFERED=1
mkdir -p /tmp/assets assets && cp -r .gpu/extra/models .gpu/extra/media /tmp/assets/ && ln -sfn /tmp/assets/models assets/models && ln -sfn /tmp/assets/media assets/media
BENCH="--assets /tmp/assets --skip kernel,iobinding,diagnose --duration 10 --warmup 3 --loop uvloop --ceiling-batch 8,16 --ceiling-pools 8"

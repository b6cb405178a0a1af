"""Print, once a second, each endpoint's mean latency per stage and mean batch size.

Usage: python3 scripts/watch_stages.py http://127.0.0.1:9400/metrics http://127.0.0.1:9404/metrics

For a running daemon, e.g. a shared-inference one during a benchmark: the
front-ends' stages are per request, the inference process's per front-end
call (see edgeinfer/shared_inference/host.py). Means are over the last
second's new samples (differences of the histograms' _sum and _count), so a
line shows the load of that second. Endpoints that do not answer are skipped.
"""
from __future__ import annotations

import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def totals(url: str) -> dict:
    """{(metric, stage): (sum, count)} summed over models, or {} when the endpoint does not answer."""
    try:
        text = urllib.request.urlopen(url, timeout=1).read().decode()
    except OSError:
        return {}
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        if fam.name not in ("edgeinfer_request_latency_seconds", "edgeinfer_batch_size"):
            continue
        for s in fam.samples:
            key = (fam.name, s.labels.get("stage", ""))
            total, count = out.get(key, (0.0, 0.0))
            if s.name.endswith("_sum"):
                out[key] = (total + s.value, count)
            elif s.name.endswith("_count"):
                out[key] = (total, count + s.value)
    return out


def main(urls: list[str]) -> None:
    last = {u: {} for u in urls}
    while True:
        parts = []
        for u in urls:
            now = totals(u)
            if not now:
                last[u] = {}
                continue
            fields = []
            for (name, stage), (total, count) in sorted(now.items()):
                t0, c0 = last[u].get((name, stage), (0.0, 0.0))
                if count > c0:
                    mean = (total - t0) / (count - c0)
                    fields.append(f"batch {mean:.1f}" if name == "edgeinfer_batch_size"
                                  else f"{stage} {mean * 1e3:.2f}ms")
            last[u] = now
            if fields:
                parts.append(f"{u.split('//')[-1].split('/')[0]}: " + ", ".join(fields))
        if parts:
            print(time.strftime("%H:%M:%S"), " | ".join(parts), flush=True)
        time.sleep(1.0)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])

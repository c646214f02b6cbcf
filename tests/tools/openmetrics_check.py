"""Validates an OpenMetrics exposition with the Prometheus project's own
parser (prometheus_client from PyPI) and prints, as JSON, every histogram
series with its count, sum and the p50/p99 read off its buckets (the
upper bound of the bucket that holds the quantile, as weir reports them)
and the exemplars the parser read off its buckets.

Reads the exposition on stdin; exits non-zero, with the parser's message,
when the text is not valid OpenMetrics.
"""

import json
import math
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def quantile(buckets, count, q):
    if count == 0:
        return 0.0
    rank = max(1, math.ceil(count * q))
    for bound, cumulative in buckets:
        if cumulative >= rank:
            return bound
    return math.inf


def main():
    text = sys.stdin.read()
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser's own words are the point
        print(f"invalid OpenMetrics: {e}", file=sys.stderr)
        sys.exit(1)
    out = []
    for fam in families:
        if fam.type != "histogram":
            continue
        series = {}
        for s in fam.samples:
            labels = {k: v for k, v in s.labels.items() if k != "le"}
            key = json.dumps(labels, sort_keys=True)
            h = series.setdefault(key, {"labels": labels, "buckets": []})
            if s.name.endswith("_bucket"):
                h["buckets"].append((float(s.labels["le"]), s.value))
                if s.exemplar is not None:
                    h.setdefault("exemplars", []).append({
                        "le": float(s.labels["le"]),
                        "labels": s.exemplar.labels,
                        "value": s.exemplar.value,
                    })
            elif s.name.endswith("_count"):
                h["count"] = s.value
            elif s.name.endswith("_sum"):
                h["sum"] = s.value
        for h in series.values():
            buckets = sorted(h.pop("buckets"))
            values = [c for _, c in buckets]
            if values != sorted(values):
                print(f"{fam.name} {h['labels']}: buckets decrease", file=sys.stderr)
                sys.exit(1)
            if buckets[-1][1] != h["count"]:
                print(f"{fam.name} {h['labels']}: +Inf != count", file=sys.stderr)
                sys.exit(1)
            h["family"] = fam.name
            h["p50"] = quantile(buckets, h["count"], 0.5)
            h["p99"] = quantile(buckets, h["count"], 0.99)
            out.append(h)
    print(json.dumps(out))


main()

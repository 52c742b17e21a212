#!/usr/bin/env bash
# Measures 4k random write and read at QD1 and QD32 with fio's nbd engine,
# against `ballast demo` and, in the same run, against
# `qemu-nbd --cache=writethrough` serving a file on the same disk (one
# durable copy: the single-node limit). Prints a Markdown table.
#
#   scripts/perf-table.sh [RUNTIME_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=${1:-20}
size=1G
work=$(mktemp -d "${TMPDIR:-/var/tmp}/ballast-perf.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

make -s build
./bin/ballast demo --data "$work/rack" --size 2GiB --nbd 127.0.0.1:10899 --port 7499 >"$work/demo.log" 2>&1 &
pids+=($!)
truncate -s 2G "$work/base.img"
qemu-nbd --cache=writethrough -f raw -x base -b 127.0.0.1 -p 10898 --persistent "$work/base.img" &
pids+=($!)
for i in $(seq 100); do
  nbdinfo nbd://127.0.0.1:10899/demo >/dev/null 2>&1 && nbdinfo nbd://127.0.0.1:10898/base >/dev/null 2>&1 && break
  sleep 0.3
done

run() { # target uri rw qd
  fio --name=t --ioengine=nbd --uri="$2" --rw="$3" --bs=4k --iodepth="$4" \
      --size=$size --time_based --runtime="$runtime" --ramp_time=2 \
      --output-format=json >"$work/$1-$3-$4.json"
}
for target in base:nbd://127.0.0.1:10898/base ballast:nbd://127.0.0.1:10899/demo; do
  name=${target%%:*}; uri=${target#*:}
  # Fill the region first so reads hit data, not holes.
  fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --size=$size >/dev/null
  for rw in randwrite randread; do
    for qd in 1 32; do run "$name" "$uri" "$rw" "$qd"; done
  done
done

python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
def stats(name, rw, qd):
    text = open(f"{work}/{name}-{rw}-{qd}.json").read()
    # fio's nbd engine may print notices before the JSON document.
    j = json.loads(text[text.index("{"):])["jobs"][0]
    side = j["write" if "write" in rw else "read"]
    pct = side["clat_ns"].get("percentile", {})
    return side["iops"], pct.get("50.000000", 0) / 1000, pct.get("99.000000", 0) / 1000
print("| workload | qemu-nbd writethrough IOPS | Ballast IOPS | ratio | qemu-nbd p50 / p99 µs | Ballast p50 / p99 µs |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for rw in ("randwrite", "randread"):
    for qd in (1, 32):
        b = stats("base", rw, qd); s = stats("ballast", rw, qd)
        print(f"| 4k {rw} QD{qd} | {b[0]:.0f} | {s[0]:.0f} | {s[0]/b[0]:.2f}× | {b[1]:.0f} / {b[2]:.0f} | {s[1]:.0f} / {s[2]:.0f} |")
PY

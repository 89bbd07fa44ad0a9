#!/usr/bin/env bash
# Draws PNG plots and a markdown table from uhmm-bench's JSON.
#   scripts/plot-bench.sh results.json [out-dir]
# out-dir defaults to the JSON's folder. Writes:
#   migrate.png  migration bandwidth as a ratio to memcpy, by size, 2 MiB blocks vs 4 KiB pages
#   faults.png   fault rates: random faults and the fault storm, by threads
#   table.md     every row: measure, figure, floor, ratio, with the machine
# Needs jq and gnuplot (Debian: jq gnuplot-nox; scripts/setup.sh installs them).
set -euo pipefail

[ "$#" -ge 1 ] || { sed -n '2,8s/^# \{0,1\}//p' "$0" >&2; exit 2; }
json=$1
out=${2:-$(dirname "$json")}
for tool in jq gnuplot; do
  command -v "$tool" >/dev/null || { echo "plot-bench.sh: $tool is missing (run scripts/setup.sh)" >&2; exit 1; }
done
jq -e '.results | length > 0' "$json" >/dev/null || { echo "plot-bench.sh: $json has no results" >&2; exit 1; }
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

machine=$(jq -r '.machine | "\(.cpu), \(.cpus) cpus, Linux \(.kernel), \(.backend) backend, load \(.load_average)"' "$json")

# One data file per group: "x value ratio".
series() {  # group -> file
  jq -r --arg g "$1" '.results[] | select(.group == $g) | "\(.x) \(.value) \(.ratio)"' "$json" > "$2"
}
series "to device, 2 MiB blocks" "$tmp/dev2m"
series "to host, 2 MiB blocks" "$tmp/host2m"
series "to device, 4 KiB pages" "$tmp/dev4k"
series "to host, 4 KiB pages" "$tmp/host4k"
series "random faults" "$tmp/random"
series "storm, distinct pages" "$tmp/distinct"
series "storm, shared pages" "$tmp/shared"

gnuplot <<GNUPLOT
set terminal pngcairo size 900,560 noenhanced font ",10"
set key top left
set grid

set output "$out/migrate.png"
set title "Migration bandwidth / memcpy of the same bytes (same run)\n$machine"
set logscale x 2
set xlabel "bytes migrated"
set ylabel "ratio to memcpy GB/s"
set format x "%.0b%B"
set yrange [0:*]
plot "$tmp/dev2m" using 1:3 with linespoints title "to device, 2 MiB blocks", \
     "$tmp/host2m" using 1:3 with linespoints title "to host, 2 MiB blocks", \
     "$tmp/dev4k" using 1:3 with linespoints title "to device, 4 KiB pages", \
     "$tmp/host4k" using 1:3 with linespoints title "to host, 4 KiB pages", \
     0.8 with lines dashtype 2 title "target 0.8x (2 MiB, >= 64 MiB)"

set output "$out/faults.png"
set title "CPU faults on device pages, pages brought back per second\n$machine"
unset logscale x
set format x "%g"
set xlabel "threads"
set ylabel "pages/s"
set xtics 1
plot "$tmp/random" using 1:2 with linespoints title "random 4 KiB faults", \
     "$tmp/distinct" using 1:2 with linespoints title "storm, distinct pages", \
     "$tmp/shared" using 1:2 with linespoints title "storm, shared pages"
GNUPLOT

{
  echo "Machine: $machine"
  echo
  echo "| measure | figure | floor (same run) | ratio |"
  echo "| --- | ---: | --- | ---: |"
  jq -r '.results[] | "| \(.measure) | \(.value * 100 | round / 100) \(.unit) | \(.floor) \(.floor_value * 100 | round / 100) \(.unit) | \(.ratio * 1000 | round / 1000) |"' "$json"
} > "$out/table.md"
echo "plot-bench.sh: wrote $out/migrate.png, $out/faults.png, $out/table.md"

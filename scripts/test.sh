#!/usr/bin/env bash
# Installs what is missing, builds with warnings as errors and runs every test.
#   scripts/test.sh                    build/          plain RelWithDebInfo
#   scripts/test.sh --sanitize=address build-asan/     UHMM_SANITIZE="address;undefined"
#   scripts/test.sh --sanitize=thread  build-tsan/     UHMM_SANITIZE=thread
#   scripts/test.sh --checked          build-checked/  UHMM_EXPENSIVE_CHECKS=ON
#   scripts/test.sh --fault-mode=signal build/         the plain tests again, UHMM_FAULT_MODE=signal
#   scripts/test.sh --all              the five above in turn (what CI runs)
# Per-test timeouts are set by the tests themselves. With --all every
# configuration runs even after one fails; the exit code is non-zero if any did.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

usage() {
  sed -n '2,10s/^# \{0,1\}//p' "$0" >&2
  exit 2
}

configs=()
for arg in "$@"; do
  case "$arg" in
    --sanitize=address) configs+=(address) ;;
    --sanitize=thread) configs+=(thread) ;;
    --checked) configs+=(checked) ;;
    --fault-mode=signal) configs+=(signal) ;;
    --all) configs+=(plain signal address thread checked) ;;
    -h | --help) usage ;;
    *) echo "test.sh: unknown option '$arg'" >&2; usage ;;
  esac
done
[ "${#configs[@]}" -gt 0 ] || configs=(plain)

"$root/scripts/setup.sh"

# Sanitizer reports stop the test that made them (halt_on_error), so ctest names it.
# handle_sigbus=0: a page that cannot come back from its device raises a real
# SIGBUS (UFFDIO_POISON), and a test checks that the process dies of it.
asan_options=halt_on_error=1:abort_on_error=0:detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:handle_sigbus=0
ubsan_options=halt_on_error=1:print_stacktrace=1:handle_sigbus=0
tsan_options=halt_on_error=1:second_deadlock_stack=1:handle_sigbus=0
tsan_supp=$root/tests/tsan.supp
if [ -f "$tsan_supp" ]; then
  # A suppression hides a report for good: each one must say why, in a
  # comment on the line above it.
  if ! awk '/^[[:space:]]*$/ { prev = ""; next }
            /^[[:space:]]*#/ { prev = "#"; next }
            prev != "#" { printf "tests/tsan.supp:%d: no reason above: %s\n", NR, $0; bad = 1 }
            { prev = "" }
            END { exit bad }' "$tsan_supp" >&2; then
    echo "test.sh: every suppression in tests/tsan.supp needs a '# why' comment on the line above" >&2
    exit 1
  fi
  tsan_options+=:suppressions=$tsan_supp
fi

# Benchmarks measure nothing useful under sanitizers or expensive checks, so
# those builds leave them out (and save CI time); tests, samples and tools stay.
# The CUDA and HIP plugins (nvcc / hipcc) are compiled by the plain build only:
# sanitizer builds turn them off (driver/gpu/CMakeLists.txt, AUTO under
# UHMM_SANITIZE) and the checked build passes UHMM_CUDA=OFF UHMM_HIP=OFF. No
# GPU runs in CI, so the other builds would only compile them again.
run_config() {
  local config=$1 dir args=(-DUHMM_WERROR=ON) wrap=()
  case "$config" in
    plain)
      dir=build
      # CMake's default generator, as users and packagers build (the others use Ninja).
      export UHMM_GENERATOR=default
      ;;
    address)
      dir=build-asan
      # -O1 and asserts on: UBSan makes -O2 builds compile about 4x slower
      # than plain ones, -O1 about 2.4x, and -O1 is what ASan recommends.
      args+=("-DUHMM_SANITIZE=address;undefined" -DUHMM_BUILD_BENCH=OFF "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g")
      export ASAN_OPTIONS=$asan_options UBSAN_OPTIONS=$ubsan_options
      ;;
    thread)
      dir=build-tsan
      args+=(-DUHMM_SANITIZE=thread -DUHMM_BUILD_BENCH=OFF)
      export TSAN_OPTIONS=$tsan_options
      # gcc 12's TSan aborts ("unexpected memory mapping") on kernels with more
      # mmap randomisation than it knows; without ASLR it always runs. The build
      # is wrapped too because test discovery runs the instrumented binaries.
      if setarch "$(uname -m)" -R true 2>/dev/null; then
        wrap=(setarch "$(uname -m)" -R)
      fi
      ;;
    checked)
      dir=build-checked
      # GPU plugins only in the plain build (see below).
      args+=(-DUHMM_EXPENSIVE_CHECKS=ON -DUHMM_BUILD_BENCH=OFF -DUHMM_CUDA=OFF -DUHMM_HIP=OFF)
      ;;
    signal)
      # The plain build (up to date after the plain pass: no rebuild), every
      # context on the SIGSEGV + mprotect fault path.
      dir=build
      export UHMM_FAULT_MODE=signal
      ;;
  esac
  echo "==== test.sh: $config ($dir) ===="
  "${wrap[@]}" "$root/scripts/build.sh" "$dir" "${args[@]}" || return 1
  if ! "${wrap[@]}" ctest --test-dir "$dir" --output-on-failure -j2; then
    keep_failures "$config" "$dir"
    return 1
  fi
}

# A failed configuration's failing tests and the end of what each printed, kept
# for the summary at the end (CI shows only the tail of a long log; the signal
# pass reruns the plain build's ctest and would overwrite its logs).
failure_logs=$(mktemp -d)
trap 'rm -rf "$failure_logs"' EXIT
keep_failures() {
  local config=$1 dir=$2 tmp=$2/Testing/Temporary
  [ -f "$tmp/LastTestsFailed.log" ] || return 0
  {
    echo "---- $config: failed tests ----"
    cat "$tmp/LastTestsFailed.log"
    cut -d: -f2- "$tmp/LastTestsFailed.log" | while read -r name; do
      echo "---- $config: the last lines $name printed ----"
      # LastTest.log: one section per test, from "N/M Testing: NAME" to its end time.
      awk -v name="$name" 'index($0, "Testing: " name) && $0 == substr($0, 1, index($0, "Testing: ") + 8) name { on = 1 }
                           on { print }
                           on && index($0, "\"" name "\" end time") { exit }' "$tmp/LastTest.log" | tail -n 60
    done
  } >"$failure_logs/$config.log" 2>&1
}

failed=()
for config in "${configs[@]}"; do
  start=$SECONDS
  # A subshell keeps one configuration's sanitizer options out of the next.
  if (run_config "$config"); then
    echo "==== test.sh: $config ok in $((SECONDS - start)) s ===="
  else
    echo "==== test.sh: $config FAILED after $((SECONDS - start)) s ====" >&2
    failed+=("$config")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  cat "$failure_logs"/*.log >&2 2>/dev/null || true
  echo "test.sh: failed: ${failed[*]} (of ${configs[*]})" >&2
  exit 1
fi
echo "test.sh: all configurations ok: ${configs[*]}"

#!/usr/bin/env bash
# Runs one libFuzzer target: fuzz_one.sh BINARY NAME SECONDS SOURCE_DIR WORK_DIR
# SECONDS 0 replays SOURCE_DIR/corpus/NAME and SOURCE_DIR/regressions/NAME once each;
# otherwise fuzzes for SECONDS from them, writing new inputs to WORK_DIR/corpus/NAME and
# a crashing input to WORK_DIR/crash/NAME/. Prints "fuzz NAME: execs/s, execs, crashes"
# (also appended to WORK_DIR/log/summary) and exits non-zero when the target crashed (or libFuzzer failed).
set -uo pipefail
bin="$1" name="$2" secs="$3" src="$4" work="$5"
seeds=()
for d in "$src/corpus/$name" "$src/regressions/$name"; do
    [ -d "$d" ] && seeds+=("$d")
done
mkdir -p "$work/corpus/$name" "$work/crash/$name" "$work/log"
log="$work/log/$name.log"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
if [ "$secs" = 0 ]; then
    "$bin" -runs=0 "${seeds[@]}" >"$log" 2>&1
    rc=$?
    [ $rc = 0 ] || { cat "$log"; echo "fuzz $name: replay of the corpus and regressions FAILED"; }
    exit $rc
fi
# CORRAL_FUZZ_SEED fixes libFuzzer's random seed (./tests/run.sh sets 1, so a suite run
# explores the same inputs each time); unset, every run explores new ones.
seedopt=()
[ -n "${CORRAL_FUZZ_SEED:-}" ] && seedopt=(-seed="$CORRAL_FUZZ_SEED")
"$bin" "${seedopt[@]}" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/crash/$name/" "$work/corpus/$name" "${seeds[@]}" >"$log" 2>&1
rc=$?
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
crashes=0
if [ $rc != 0 ]; then
    # libFuzzer stops at the first crash; the count is of the inputs kept so far.
    tail -n 60 "$log"
    ls "$work/crash/$name/"
    crashes=$(find "$work/crash/$name" -type f | wc -l)
fi
printf 'fuzz %-12s %8s execs/s %10s execs %s crashes\n' "$name" "${rate:-?}" "${execs:-?}" \
    "$crashes" | tee -a "$work/log/summary"
exit $rc

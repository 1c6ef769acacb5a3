#!/usr/bin/env bash
# Fuzzes each target in turn, one libFuzzer process at a time, and prints
# how many inputs each one ran.
#
#   fuzz/campaign.sh SECONDS [TARGET...]      (default: every target)
#
# A crash stops libFuzzer; the input is kept in fuzz/artifacts/<target>/
# and the target is restarted for the rest of its time, so a campaign is
# not cut short by one bug. Replay kept inputs with
# `cargo test --test it fuzz_regressions::` once copied to tests/fuzz_regressions/.
set -u
cd "$(dirname "$0")"
seconds=${1:?usage: campaign.sh SECONDS [TARGET...]}
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frame method properties field_table connection_before_login connection_after_login)
fi

cargo +nightly fuzz build -s none --debug-assertions || exit 1
mkdir -p logs
for target in "${targets[@]}"; do
    case $target in
        connection_*) max_len=16384 ;;
        field_table) max_len=16384 ;;
        *) max_len=4096 ;;
    esac
    mkdir -p "corpus/$target" "artifacts/$target"
    log="logs/campaign-$target.log"
    : >"$log"
    deadline=$((SECONDS + seconds))
    total=0
    crashes=0
    while [ $SECONDS -lt $deadline ]; do
        left=$((deadline - SECONDS))
        run_log=$(mktemp)
        # The decoders run on tokio worker threads in the broker: give the
        # fuzzer's main thread the same 2 MiB stack.
        (ulimit -s 2048; exec cargo +nightly fuzz run -s none --debug-assertions "$target" \
            "corpus/$target" "seeds/$target" -- \
            -max_total_time=$left -max_len=$max_len -timeout=30 \
            -rss_limit_mb=2048 -dict=amqp.dict -print_final_stats=1 \
            -artifact_prefix="artifacts/$target/") >"$run_log" 2>&1
        status=$?
        cat "$run_log" >>"$log"
        # The final stats; after a crash that skipped them, the last status line.
        runs=$(grep -a 'stat::number_of_executed_units' "$run_log" | tail -n 1 | awk '{print $2}')
        if [ -z "$runs" ]; then
            runs=$(grep -ao '^#[0-9]*' "$run_log" | tail -n 1 | tr -d '#')
        fi
        rm -f "$run_log"
        total=$((total + ${runs:-0}))
        if [ $status -ne 0 ]; then
            crashes=$((crashes + 1))
            if [ "${runs:-0}" -eq 0 ]; then
                echo "$target: libFuzzer failed at once; see fuzz/$log" >&2
                break
            fi
        fi
    done
    echo "$target: $total executions in ${seconds}s, $crashes crash(es); artifacts in fuzz/artifacts/$target/"
done

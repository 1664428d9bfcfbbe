#!/usr/bin/env bash
# Run each test binary, print one line per binary, fail if any failed.
# A skipped test fails the run too: every file a test needs is in the
# repository and scripts/deps.sh installs every tool, so a skip means
# something is missing. Only the sanitizer build (QSCOPE_ASAN=1) skips, on
# purpose, the few tests that would take minutes under it.
set -u
# OpenMP threads that spin while waiting make BLAS calls 30-50x slower when
# the cores are shared with another process (CI machines often are); the
# suite asserts no speed, so it sleeps instead. Benchmarks keep the default.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
fail=0; n=0; skips=0
for t in "$@"; do
	n=$((n + 1))
	start=$(date +%s%N)
	out=$("$t" 2>&1); rc=$?
	ms=$(( ($(date +%s%N) - start) / 1000000 ))
	# cmocka's summary line: "[  SKIPPED ] N test(s), listed below:"
	s=$(printf '%s\n' "$out" | sed -n 's/^\[  SKIPPED \] \([0-9][0-9]*\) test(s).*/\1/p' | head -n 1)
	s=${s:-0}
	skips=$((skips + s))
	if [ "$rc" -eq 0 ]; then
		note=""; [ "$s" -gt 0 ] && note="  ($s skipped)"
		printf 'PASS  %-40s %6d ms%s\n' "$(basename "$t")" "$ms" "$note"
	else
		printf 'FAIL  %s\n' "$(basename "$t")"
		printf '%s\n' "$out" | tail -40
		fail=$((fail + 1))
	fi
	if [ "$s" -gt 0 ] && [ "${QSCOPE_ASAN:-}" != 1 ]; then
		printf '%s\n' "$out" | grep -A3 'SKIPPED\|skipped' | head -20
	fi
done
echo "tests: $((n - fail))/$n binaries passed, $skips tests skipped"
[ "$fail" -eq 0 ] || exit 1
if [ "$skips" -gt 0 ] && [ "${QSCOPE_ASAN:-}" != 1 ]; then
	echo "tests: a skipped test counts as a failure outside make asan (see above)"
	exit 1
fi

#!/usr/bin/env bash
# The long fuzz run (see tests/fuzz/__init__.py): 20 000 examples per cheap target, random seeds,
# failures kept in .hypothesis/ and replayed first next time. Run from anywhere:
#     bench/fuzz_long.sh                                  # full long profile
#     TIDELOG_FUZZ_MAX_EXAMPLES=5000 bench/fuzz_long.sh   # time-boxed: N examples per target
#     bench/fuzz_long.sh tests/fuzz/test_fuzz_records.py  # one target module
# With two or more cores it runs the modules in two parallel pytest processes.
set -euo pipefail
cd "$(dirname "$0")/.."
export TIDELOG_FUZZ_PROFILE=long
if [ "$#" -gt 0 ]; then
    exec python -m pytest -q -p no:cacheprovider "$@"
fi
python -m pytest -q -p no:cacheprovider \
    tests/fuzz/test_fuzz_records.py tests/fuzz/test_fuzz_storage.py tests/fuzz/test_fuzz_frames.py &
first=$!
status=0
python -m pytest -q -p no:cacheprovider \
    tests/fuzz/test_fuzz_messages.py tests/fuzz/test_fuzz_metadata.py tests/fuzz/test_fuzz_regressions.py || status=$?
wait "$first" || status=$?
exit "$status"

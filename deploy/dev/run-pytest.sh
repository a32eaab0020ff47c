#!/usr/bin/env bash
# Run pytest and report its exit code 5 ("no tests collected") as what it is:
# neither a pass nor an ordinary failure, but a broken test selection.
set -uo pipefail
"$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: this is not a pass; check the test paths and the -k/-m selection." >&2
fi
exit "$rc"

#!/usr/bin/env bash
# Make sure PostgreSQL answers at BACKA_TEST_PG_URL for the tests that name it:
# start the local cluster when installed but stopped, else say what to do.
set -uo pipefail
cd "$(dirname "$0")/../.."
url=${BACKA_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/test}
py=${PY:-.venv/bin/python}
wait="$py deploy/dev/wait_service.py postgres $url"

if $wait --timeout 3 --quiet; then exit 0; fi

if ! $py deploy/dev/wait_service.py is-local "$url"; then
  echo "PostgreSQL does not answer at $url; start it there or point BACKA_TEST_PG_URL at one that runs." >&2
  exit 1
fi

if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql)" ]; then
  echo "==> PostgreSQL is not answering at $url: starting the local cluster"
  for version in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
  done
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> PostgreSQL is not installed: installing it with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null ||
    { echo "Installing PostgreSQL with apt-get failed; install postgresql yourself and run make again." >&2; exit 1; }
  for version in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
  done
else
  echo "PostgreSQL is not reachable at $url and not installed here: install it (sudo apt-get install postgresql) or set BACKA_TEST_PG_URL to a running one." >&2
  exit 1
fi
if $wait --timeout 60; then exit 0; fi
echo "PostgreSQL was started but does not answer at $url after 60 s; see /var/log/postgresql/ for why." >&2
exit 1

#!/usr/bin/env bash
# Make sure RabbitMQ answers at BACKA_AMQP_URL: start a local one that is
# installed but stopped, install it with apt-get when root and it is missing,
# otherwise stop with one sentence saying what to do.
set -uo pipefail
cd "$(dirname "$0")/../.."
url=${BACKA_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
py=${PY:-.venv/bin/python}
wait="$py deploy/dev/wait_service.py amqp $url"

if $wait --timeout 3 --quiet; then exit 0; fi

if ! $py deploy/dev/wait_service.py is-local "$url"; then
  echo "RabbitMQ does not answer at $url; start it there or point BACKA_AMQP_URL at one that runs." >&2
  exit 1
fi

if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> RabbitMQ is not installed: installing it with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >/dev/null ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >/dev/null; } ||
      { echo "Installing RabbitMQ with apt-get failed; install rabbitmq-server yourself and run make again." >&2; exit 1; }
  else
    echo "RabbitMQ is not installed and not reachable at $url: install it (sudo apt-get install rabbitmq-server) or set BACKA_AMQP_URL to a running one." >&2
    exit 1
  fi
fi

echo "==> RabbitMQ is not answering at $url: starting the local server"
PATH=$PATH:/usr/sbin rabbitmq-server -detached >/dev/null 2>&1 || true
if $wait --timeout 90; then exit 0; fi
echo "RabbitMQ was started but does not answer at $url after 90 s; see /var/log/rabbitmq/ for why." >&2
exit 1

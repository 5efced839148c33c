#!/usr/bin/env bash
# Make sure the Redis and PostgreSQL that the service tests use answer; start them if they do not. The console's
# browser test drives Debian's Chromium (Playwright never downloads a browser here): install it when missing.
set -euo pipefail
redis_ok() { (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null; }
pg_ok() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v chromium >/dev/null; then
  apt-get update -qq && apt-get install -y -qq chromium
fi
if ! redis_ok; then
  command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
  redis-server --daemonize yes --port 6379 --save '' --appendonly no
fi
if ! pg_ok; then
  if ! command -v pg_ctlcluster >/dev/null; then apt-get update -qq && apt-get install -y -qq postgresql; fi
  (service postgresql start || pg_ctlcluster --skip-systemctl-redirect 15 main start) >/dev/null 2>&1 || true
fi
for _ in $(seq 30); do redis_ok && pg_ok && exit 0; sleep 1; done
echo "Redis or PostgreSQL did not answer on 127.0.0.1 (6379, 5432)" >&2
exit 1

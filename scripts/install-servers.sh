#!/usr/bin/env bash
# Install the servers the tests start on their own free ports: beanstalkd, gearmand
# (and the gearman CLI, for interop tests) and memcached, from Debian, when missing.
# PostgreSQL, MariaDB, Redis and RabbitMQ are expected to be running already.
set -euo pipefail
need=()
command -v beanstalkd >/dev/null || need+=(beanstalkd)
command -v gearmand >/dev/null || [ -x /usr/sbin/gearmand ] || need+=(gearman-job-server)
command -v gearman >/dev/null || need+=(gearman-tools)
command -v memcached >/dev/null || need+=(memcached)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing ${need[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

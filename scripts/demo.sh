#!/usr/bin/env bash
# The main job, end to end: services up, binaries built, the database
# initialised, a worker running in the background, the guide's example
# tenant `theo` provisioned, and its status shown. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services-up.sh
cargo build --locked -p provision-worker -p provision-cli
bin=target/debug
state=target/demo
mkdir -p "$state"

"$bin/provision" init

if [ -f "$state/worker.pid" ] && kill -0 "$(cat "$state/worker.pid")" 2>/dev/null; then
  echo "A worker is already running (pid $(cat "$state/worker.pid"))."
else
  # Deletions (`provision delete-tenant`) write their backups here.
  PROVISION_BACKUP_DIR=${PROVISION_BACKUP_DIR:-$PWD/$state/backups} \
    nohup "$bin/provision-worker" >"$state/worker.log" 2>&1 &
  echo $! >"$state/worker.pid"
  echo "Started provision-worker (pid $!), logging to $state/worker.log."
fi

# The guide's example, with the password fed on standard input rather than
# on the command line.
printf '%s\n' "${THEO_ADMIN_PASSWORD:-secure_password_123}" |
  "$bin/provision" create-tenant \
    --schema-name theo \
    --tenant-name "Theo Stam" \
    --domain theo.newconcierge.app \
    --admin-email theo@example.com \
    --admin-password-stdin \
    --trial-days 30 \
    --wait
echo
"$bin/provision" status --schema-name theo
echo
echo "The worker keeps running: stop it with kill \$(cat $state/worker.pid)."

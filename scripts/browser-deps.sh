#!/usr/bin/env bash
# Headless Chromium and its WebDriver (/usr/bin/chromium,
# /usr/bin/chromedriver) for the dashboard's browser tests: installed from
# Debian's packages when missing. Needs root for that.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
echo "browser-deps: installing chromium and chromium-driver" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || {
  echo "browser-deps: chromium or chromedriver is still missing" >&2
  exit 1
}

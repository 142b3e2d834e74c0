#!/usr/bin/env bash
# The platform model's virtualenv (tests/platform/requirements.txt, pinned),
# made from PyPI under target/ and made again only when the requirements
# change. Prints the path of its python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/platform-venv
requirements=tests/platform/requirements.txt
stamp="$venv/.requirements"
if ! [ -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$stamp"; then
  echo "platform-venv: installing $requirements into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
  cp "$requirements" "$stamp"
fi
echo "$PWD/$venv/bin/python"

#!/usr/bin/env bash
# The platform model's virtualenv (tests/platform/requirements.txt, pinned),
# made from PyPI under target/ and made again only when the requirements
# change, with this project's Python client (clients/python) installed in
# it, editable, as the platform installs it. Prints the path of its python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/platform-venv
requirements=tests/platform/requirements.txt
stamp="$venv/.requirements"
# Made again when the pins change, or for a client whose packaging changed.
want=$(cat "$requirements" clients/python/pyproject.toml)
if ! [ -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "platform-venv: installing $requirements into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -e clients/python >&2
  printf '%s' "$want" >"$stamp"
fi
echo "$PWD/$venv/bin/python"

#!/usr/bin/env bash
# Writes migrations/tenant/platform-model.json, the tenant migration set built
# into the binaries: the platform model's migrations as `import-migrations`
# reads them (the same export.py, in the model's own Django), taken on an
# empty database so it also holds the SQL of the platform's public tenant
# tables. Run it after changing tests/platform/; a test fails while the file
# and the model disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services-up.sh
python=$(scripts/platform-venv.sh)
admin=${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db="export_platform_model_$$"
psql "$admin" -qc "CREATE DATABASE $db"
trap 'psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
out=$(mktemp)
DATABASE_URL="${admin%/*}/$db" \
PROVISION_EXPORT_OUT="$out" \
PROVISION_CATALOG_SQL="$(cat shared/src/migration_set/catalog.sql)" \
  "$python" tests/platform/manage.py shell -c "$(cat shared/src/migration_set/export.py)" >/dev/null
"$python" - "$out" migrations/tenant/platform-model.json <<'PY'
import json, sys
document = json.load(open(sys.argv[1]))
if document.get("refused"):
    sys.exit("export refused: " + document["refused"])
with open(sys.argv[2], "w", encoding="utf-8") as f:
    json.dump(document, f, ensure_ascii=False, indent=1, sort_keys=True)
    f.write("\n")
PY
rm -f "$out"
echo "wrote migrations/tenant/platform-model.json"

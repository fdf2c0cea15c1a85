#!/usr/bin/env bash
# Compress the dashboard's page (daemon/src/dashboard/assets/{index.html,app.js,app.css})
# into the .gz files narund serves (compiled in: 7.7 KB instead of 22 KB of narund).
# Reproducible: `gzip -9n` stores no name and no time, so the same source gives the same
# bytes. Run it after editing an asset; `cargo test -p narund --features gateway --lib
# dashboard` fails while a .gz is stale.
set -euo pipefail
cd "$(dirname "$0")/../daemon/src/dashboard/assets"
for f in index.html app.js app.css; do
    gzip -9n -c "$f" >"$f.gz"
done
ls -l ./*.gz

#!/usr/bin/env bash
# The project's test command: the whole suite on SQLite (embedded, nothing to set up), then the
# same suite on PostgreSQL when TEST_DATABASE_URL is set.
set -euo pipefail
cd "$(dirname "$0")/.."

env -u TEST_DATABASE_URL cargo test --locked

if [ -n "${TEST_DATABASE_URL:-}" ]; then
  echo "== PostgreSQL suite (TEST_DATABASE_URL is set; each test gets a database of its own)"
  cargo test --locked --features postgres
else
  echo "== PostgreSQL suite skipped: set TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"
fi

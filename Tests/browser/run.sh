#!/usr/bin/env bash
# The real-browser tests alone: headless Chromium through Selenium against the debug build
# (.build/debug/parley, or $PARLEY_BIN). `swift test` runs them too (BrowserTests.swift).
# Extra arguments go to pytest (e.g. -k restart).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
scripts/install-test-deps
exec python3 -m pytest -q Tests/browser "$@"

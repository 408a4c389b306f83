#!/usr/bin/env bash
# Real-browser tests of Parley's web client: headless Chromium through Selenium against the
# debug build (.build/debug/parley, or $PARLEY_BIN). Installs what is missing, then runs
#   python3 -m pytest -q Tests/browser
# from the repository root. Extra arguments go to pytest (e.g. -k restart).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if ((${#missing[@]})); then
    echo "run.sh: installing ${missing[*]}" >&2
    sudo=()
    [[ "$(id -u)" == 0 ]] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# Nothing is fetched when the pinned versions are already there.
pip_install=(python3 -m pip install -q --disable-pip-version-check -r Tests/browser/requirements.txt)
if ! "${pip_install[@]}" 2>/tmp/parley-browser-pip.err; then
    if grep -q externally-managed /tmp/parley-browser-pip.err; then
        "${pip_install[@]}" --break-system-packages
    else
        cat /tmp/parley-browser-pip.err >&2
        exit 1
    fi
fi

exec python3 -m pytest -q Tests/browser "$@"

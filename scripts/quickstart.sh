#!/usr/bin/env bash
# The README's two commands, each one setting up what it needs on a fresh Debian 12 machine:
#   scripts/quickstart.sh demo   install the package (and its C runtime) and run the demo on `sim`
#   scripts/quickstart.sh test   install everything the tests need and run the whole test suite
# Idempotent: a second run only checks. Python lives in .venv (override with TINYBRIDGE_VENV).
set -euo pipefail
caller_dir=$PWD  # the demo writes its results here, as the README says
cd "$(dirname "$0")/.."
what=${1:-}
case "$what" in demo|test) ;; *) echo "usage: $0 demo|test [pytest args...]" >&2; exit 2 ;; esac
shift

venv=${TINYBRIDGE_VENV:-.venv}
# torch must be exactly this CPU build; any other version pulls gigabytes of CUDA packages.
torch_pin="torch==2.13.0"

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    echo "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

python_setup() {
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3-venv; fi
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
}

case "$what" in
demo)
    apt_install gcc libc6-dev python3-dev
    python_setup
    "$venv/bin/python" -m pip install -q -e .
    exec "$venv/bin/tinybridge" demo --out "$caller_dir" "$@"
    ;;
test)
    apt_install gcc libc6-dev python3-dev gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm dataset-fashion-mnist
    python_setup
    "$venv/bin/python" -m pip install -q "$torch_pin"
    "$venv/bin/python" -m pip install -q -e ".[test]"
    set +e
    "$venv/bin/python" -m pytest -q "$@"
    rc=$?
    set -e
    # pytest's 5 = no tests collected: never a silent pass
    [ $rc -eq 5 ] && echo "error: pytest collected no tests" >&2 && exit 1
    exit $rc
    ;;
esac

#!/bin/sh
# Installs PlatformIO's core package "tool-scons" from PyPI's SCons, so that `pio run` for the
# offline envs of platformio.ini (qemu_m7, disco_f746ng, native) never asks PlatformIO's registry.
#
#   scripts/seed-tool-scons.sh [PYTHON]
#
# PYTHON: the interpreter that has platformio (default: $PYTHON, else python3). Honors
# PLATFORMIO_CORE_DIR (default ~/.platformio). Idempotent: does nothing when the version PlatformIO
# wants is already there. The SCons it installs is, in order: the one PYTHON already has, if it is
# the right version (`pip install -e .[test]` installs it: fully offline), else `pip install scons`.
set -eu
PY=${1:-${PYTHON:-python3}}

# PlatformIO names the SCons it wants as a packed semver: "~4.41101.0" = SCons 4.11.1
# (MAJOR . MAJOR MINOR:2 PATCH:2 . 0). Read that, and where the core keeps its packages.
eval "$("$PY" - <<'EOF'
import os, re
from platformio.dependencies import get_core_dependencies
from platformio.project.config import ProjectConfig
spec = get_core_dependencies()["tool-scons"]
pkg = re.sub(r"^[^0-9]+", "", spec)
major, packed, _ = pkg.split(".")
packed = packed[len(major):].rjust(4, "0")
print("PKG_VERSION=%s" % pkg)
print("SCONS_VERSION=%s.%d.%d" % (major, int(packed[:2]), int(packed[2:])))
print("DEST='%s'" % os.path.join(ProjectConfig.get_instance().get("platformio", "packages_dir"), "tool-scons"))
EOF
)"

if [ -f "$DEST/.piopm" ] && grep -q "\"version\": \"$PKG_VERSION\"" "$DEST/.piopm" && [ -f "$DEST/scons.py" ]; then
    echo "tool-scons $PKG_VERSION (SCons $SCONS_VERSION) already in $DEST"
    exit 0
fi

TMP="$DEST.seeding.$$"
rm -rf "$TMP"
mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT

HAVE=$("$PY" -c 'import SCons, os; print(SCons.__version__ + " " + os.path.dirname(SCons.__file__))' 2>/dev/null || true)
if [ "${HAVE%% *}" = "$SCONS_VERSION" ]; then
    cp -R "${HAVE#* }" "$TMP/SCons"
    find "$TMP/SCons" -name __pycache__ -prune -exec rm -rf {} +
    FROM="the installed SCons"
else
    "$PY" -m pip install --quiet --no-deps --no-compile --target "$TMP" "scons==$SCONS_VERSION"
    rm -rf "$TMP/bin"
    FROM="pip"
fi

# PlatformIO runs <tool-scons>/scons.py with its own interpreter
cat > "$TMP/scons.py" <<'EOF'
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from SCons.Script import main  # noqa: E402

if __name__ == "__main__":
    main()
EOF

cat > "$TMP/package.json" <<EOF
{
  "name": "tool-scons",
  "version": "$PKG_VERSION",
  "description": "SCons $SCONS_VERSION from PyPI, seeded by tinybridge's scripts/seed-tool-scons.sh",
  "system": "*"
}
EOF

# The install record. Its owner must be "platformio": PlatformIO matches core packages by owner,
# and goes to the registry for one it does not recognise.
cat > "$TMP/.piopm" <<EOF
{"type": "tool", "name": "tool-scons", "version": "$PKG_VERSION", "spec": {"owner": "platformio", "id": null, "name": "tool-scons", "requirements": null, "uri": null}}
EOF

rm -rf "$DEST"
mv "$TMP" "$DEST"
trap - EXIT
echo "tool-scons $PKG_VERSION (SCons $SCONS_VERSION, from $FROM) -> $DEST"

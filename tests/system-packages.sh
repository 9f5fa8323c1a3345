#!/usr/bin/env bash
# The system packages some tests need, for `make test`: says which are missing and what it
# installs BEFORE installing anything; installs only as root with apt-get (Debian-like systems),
# and never with NO_INSTALL=1. Whatever it does not install, it names with the tests that will
# skip for want of it (each such test skips and says why). It never fails the build.
#
#   tests/system-packages.sh [systemd] [postgresql] [chromium]    (default: all three)
set -u
CHROMIUM=${ORCHD_CHROMIUM:-/usr/bin/chromium}

pg_reachable() {
    [ -n "${ORCHD_TEST_PG:-}" ] && return 0
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && return 0
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

packages=() skipped=()
for want in "${@:-systemd postgresql chromium}"; do
    for what in $want; do
        case $what in
        systemd)
            command -v systemd-analyze >/dev/null 2>&1 ||
                { packages+=(systemd); skipped+=("the unit-file tests (systemd-analyze)"); } ;;
        postgresql)
            pg_reachable ||
                { packages+=(postgresql); skipped+=("the PostgreSQL tests (no server on 127.0.0.1:5432, no \$ORCHD_TEST_PG, no server binaries)"); } ;;
        chromium)
            [ -x "$CHROMIUM" ] ||
                { packages+=(chromium); skipped+=("the console's browser tests ($CHROMIUM)"); } ;;
        *) echo "system-packages.sh: unknown package $what" >&2; exit 2 ;;
        esac
    done
done
[ ${#packages[@]} -eq 0 ] && exit 0

say_skipped() {
    echo "system packages: $1; not installing ${packages[*]}, so these tests will skip:"
    printf '  - %s\n' "${skipped[@]}"
    echo "  (to run them: apt-get install ${packages[*]}, as root)"
}
if [ -n "${NO_INSTALL:-}" ]; then say_skipped "NO_INSTALL is set"; exit 0; fi
if [ "$(id -u)" != 0 ]; then say_skipped "not root"; exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then say_skipped "no apt-get here"; exit 0; fi

echo "system packages: installing ${packages[*]} with apt-get, as root (missing here; NO_INSTALL=1 skips this)"
if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null; then
    echo "system packages: installed ${packages[*]}"
else
    say_skipped "apt-get failed"
fi
exit 0

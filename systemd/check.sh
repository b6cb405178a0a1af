#!/usr/bin/env bash
# `make systemd-check`: the units as systemd itself reads them.
#   - systemd-analyze verify on every unit (templates through an instance),
#     failing on any complaint about them, warnings included (an unknown key
#     is only a warning to systemd, and the unit then runs without it);
#   - systemd-analyze security --offline=true on every unit, failing where the
#     overall exposure is above MAX_EXPOSURE (2.5);
#   - systemd-sysusers into an empty root: the file applies and creates every
#     group the units name.
# Needs systemd-analyze >= 250 (--offline); Debian: apt-get install systemd.
# Neither root nor a running systemd is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXPOSURE=${MAX_EXPOSURE:-2.5}

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-check: systemd-analyze not found (Debian/Ubuntu: apt-get install systemd)" >&2
    exit 2
fi
version=$(systemd-analyze --version | awk 'NR == 1 { print $2 }')
if [ "${version%%[!0-9]*}" -lt 250 ]; then
    echo "systemd-check: systemd-analyze $version has no security --offline (needs >= 250)" >&2
    exit 2
fi
echo "systemd-check: systemd-analyze $version"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# verify wants every ExecStart= binary to exist: the units run from the venv
# install.sh makes, so point them at a stand-in, in copies.
mkdir -p "$tmp/bin" "$tmp/units"
printf '#!/bin/sh\nexit 0\n' > "$tmp/bin/edgeinfer"
chmod 755 "$tmp/bin/edgeinfer"
units=()
for f in systemd/*.service; do
    name=$(basename "$f")
    sed "s#/opt/edgeinfer/venv/bin/edgeinfer#$tmp/bin/edgeinfer#g" "$f" > "$tmp/units/$name"
    case $name in
        *@.service)
            # A template is loaded through an instance of it.
            ln -s "$name" "$tmp/units/${name%@.service}@0.service"
            units+=("$tmp/units/${name%@.service}@0.service") ;;
        *) units+=("$tmp/units/$name") ;;
    esac
done

failed=0
echo "systemd-check: systemd-analyze verify ${units[*]##*/}"
set +e
out=$(systemd-analyze verify "${units[@]}" 2>&1)
rc=$?
set -e
# Only lines about these units count; verify also loads the host's units.
ours=$(printf '%s\n' "$out" | grep -F -e "$tmp/" -e "edgeinfer" || true)
if [ "$rc" != 0 ] || [ -n "$ours" ]; then
    printf '%s\n' "$out" | sed "s#$tmp/units/#systemd/#g; s#$tmp/bin/#/opt/edgeinfer/venv/bin/#g"
    echo "systemd-check: FAIL verify (exit $rc)"
    failed=1
else
    echo "systemd-check: verify OK (no complaints)"
fi

for unit in "${units[@]}"; do
    name=${unit##*/}
    report=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) || true
    exposure=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    if [ -z "$exposure" ]; then
        printf '%s\n' "$report"
        echo "systemd-check: FAIL security $name: no exposure figure"
        failed=1
    elif awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e > m) }'; then
        printf '%s\n' "$report" | grep '✗' || true
        echo "systemd-check: FAIL security $name: exposure $exposure > $MAX_EXPOSURE"
        failed=1
    else
        echo "systemd-check: security $name: exposure $exposure (max $MAX_EXPOSURE)"
    fi
done

# sysusers: apply to an empty root, then every group named must be there.
mkdir -p "$tmp/root/etc"
if ! systemd-sysusers --root="$tmp/root" "$PWD/systemd/edgeinfer.sysusers.conf" > "$tmp/sysusers.log" 2>&1; then
    cat "$tmp/sysusers.log"
    echo "systemd-check: FAIL systemd-sysusers"
    failed=1
else
    missing=0
    for group in $(sed -n 's/^\(SupplementaryGroups\|Group\)=//p' systemd/*.service | tr ' ' '\n' | sort -u); do
        if ! grep -q "^$group:" "$tmp/root/etc/group"; then
            echo "systemd-check: FAIL sysusers does not create group $group, which a unit names"
            missing=1
        fi
    done
    if [ "$missing" = 0 ]; then
        echo "systemd-check: sysusers creates every group the units name"
    else
        failed=1
    fi
fi

if [ "$failed" != 0 ]; then
    exit 1
fi
echo "systemd-check: OK"

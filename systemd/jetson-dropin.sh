#!/bin/sh
# Print the device drop-in for the edgeinfer units on this Jetson:
#   systemd/jetson-dropin.sh [DEV_DIR [PROC_DEVICES]]   (defaults /dev, /proc/devices)
# scripts/install.sh writes its output to <unit>.d/50-jetson-devices.conf.
#
# From systemd/jetson-devices.conf it keeps the lines whose node exists here
# (a path that does not exist logs a warning at every start) or whose driver is
# in /proc/devices; then it adds, for every nv* GPU/DLA/NvSci node found, the
# driver behind it as char-NAME (covering every node that driver has, whatever
# this L4T release calls them), or the path itself for a misc device (char-misc
# would also open /dev/kvm, /dev/fuse, ...).
set -eu
DEV=${1:-/dev}
DEV=${DEV%/}
PROC_DEVICES=${2:-/proc/devices}
CONF=$(dirname "$0")/jetson-devices.conf

# char_major_name MAJOR: the character driver registered for MAJOR, if any.
char_major_name() {
    awk -v m="$1" '/^Character devices:/ { c = 1; next } /^Block devices:/ { c = 0 }
                   c && $1 == m { print $2; exit }' "$PROC_DEVICES"
}
# char_driver_present NAME
char_driver_present() {
    awk -v n="$1" '/^Character devices:/ { c = 1; next } /^Block devices:/ { c = 0 }
                   c && $2 == n { found = 1 } END { exit !found }' "$PROC_DEVICES"
}

echo "# Written by scripts/install.sh (systemd/jetson-dropin.sh) from this Jetson's"
echo "# device nodes; see systemd/jetson-devices.conf in the source for why."
echo "[Service]"
{
    sed -n 's/^DeviceAllow=//p' "$CONF" | while read -r spec access; do
        case $spec in
            char-*) if char_driver_present "${spec#char-}"; then echo "DeviceAllow=$spec $access"; fi ;;
            /dev/*) if [ -c "$DEV${spec#/dev}" ]; then echo "DeviceAllow=$spec $access"; fi ;;
        esac
    done
    for node in "$DEV"/nvhost-* "$DEV"/nvgpu/*/* "$DEV"/nvmap "$DEV"/host1x-fence "$DEV"/nvsciipc "$DEV"/nvdla*; do
        [ -c "$node" ] || continue
        major=$((0x$(stat -L -c %t "$node")))
        name=$(char_major_name "$major")
        if [ -z "$name" ] || [ "$name" = misc ]; then
            echo "DeviceAllow=/dev${node#"$DEV"} rw"
        else
            echo "DeviceAllow=char-$name rw"
        fi
    done
} | sort -u

#!/bin/sh
# Install edgeinfer as a systemd service, on a Jetson (JetPack 6) or on a
# datacenter/desktop GPU or CPU host. Run as root from a checkout:
#
#   sudo scripts/install.sh [--prefix DIR] [--python PY] [--dry-run] [--no-start]
#
# What it does, in order (--dry-run prints the same steps and changes nothing):
#   1. a venv in PREFIX/venv (default /opt/edgeinfer/venv) with this checkout
#      installed, extras [daemon] plus [gpu] where nvidia-smi or a Jetson is
#      found. On a Jetson the venv sees the system site-packages: TensorRT's
#      Python bindings come from JetPack (python3-libnvinfer), not from pip.
#   2. the units into /etc/systemd/system (paths rewritten to PREFIX),
#      sysusers.d/tmpfiles.d files into /usr/lib, then systemd-sysusers and
#      systemd-tmpfiles --create (the edgeinfer user, its groups, directories).
#   3. /etc/edgeinfer/edgeinfer.toml from configs/jetson-orin.toml (Jetson) or
#      configs/datacenter.toml, only where no config exists yet; every example
#      config and the docs go to /usr/share/doc/edgeinfer.
#   4. device set-up the sandbox cannot do itself: nvidia-uvm loaded at boot
#      (dGPU); on a Jetson a DeviceAllow= drop-in for its nvgpu/nvmap/host1x
#      nodes (systemd/jetson-dropin.sh).
#   5. systemctl daemon-reload, a restart of edgeinfer units already running
#      (not with --no-start), and the next steps.
#
# Running it again upgrades in place: the venv is reused, the config is kept.
# pip honours the usual PIP_INDEX_URL / PIP_FIND_LINKS for offline hosts.
set -eu

PREFIX=/opt/edgeinfer
PYTHON=${PYTHON:-}
DRY_RUN=0
START=1

UNIT_DIR=/etc/systemd/system
SYSUSERS_FILE=/usr/lib/sysusers.d/edgeinfer.conf
TMPFILES_FILE=/usr/lib/tmpfiles.d/edgeinfer.conf
CONF_DIR=/etc/edgeinfer
DOC_DIR=/usr/share/doc/edgeinfer
MODULES_FILE=/etc/modules-load.d/edgeinfer.conf
# The path the units in systemd/ are written for; --prefix rewrites it.
UNIT_PREFIX=/opt/edgeinfer

SRC=$(cd "$(dirname "$0")/.." && pwd)

usage() {
    cat <<EOF
usage: $0 [--prefix DIR] [--python PY] [--dry-run] [--no-start]

  --prefix DIR   install root; the venv goes to DIR/venv (default $PREFIX)
  --python PY    interpreter for the venv, Python >= 3.10 (default: /usr/bin/python3,
                 which on a Jetson is the one JetPack's TensorRT is built for)
  --dry-run      print what would be done, change nothing (root not needed)
  --no-start     do not restart edgeinfer units that are running
EOF
}

die() { echo "install.sh: $*" >&2; exit 1; }
note() { echo "install.sh: $*"; }
warn() { echo "install.sh: warning: $*" >&2; }

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#--prefix=}; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#--python=}; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --no-start) START=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

# The prefix ends up in unit files: absolute, and nothing systemd or sed would
# read as syntax (% is a unit specifier, whitespace splits ExecStart=).
case $PREFIX in
    /*) ;;
    *) die "--prefix must be an absolute path, got '$PREFIX'" ;;
esac
case $PREFIX in
    *[[:space:]%#\\\"\']*) die "--prefix must not contain whitespace, %, #, quotes or backslashes" ;;
esac
PREFIX=${PREFIX%/}
# ProtectHome=yes hides these from the daemon.
case $PREFIX/ in
    /home/*|/root/*|/run/user/*) die "--prefix $PREFIX is under a home directory, which the units' ProtectHome= hides" ;;
esac
VENV=$PREFIX/venv

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (or with --dry-run to see what it would do)"
fi

# run CMD...: run it, or with --dry-run print it.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "+ $*"
    else
        "$@"
    fi
}

# put FILE MODE [WHAT] < content: write stdin to FILE; with --dry-run say so,
# showing the content unless WHAT names where it comes from.
put() {
    if [ "$DRY_RUN" = 1 ]; then
        if [ $# -ge 3 ]; then
            echo "+ write $1 (mode $2) from $3"
            cat > /dev/null
        else
            echo "+ write $1 (mode $2):"
            sed 's/^/|   /'
        fi
    else
        mkdir -p "$(dirname "$1")"
        tmp=$(mktemp "$1.XXXXXX")
        cat > "$tmp"
        chmod "$2" "$tmp"
        mv -f "$tmp" "$1"
    fi
}

# --- Platform ------------------------------------------------------------
JETSON=0
[ -f /etc/nv_tegra_release ] && JETSON=1
GPU=0
if [ "$JETSON" = 1 ] || command -v nvidia-smi >/dev/null 2>&1; then
    GPU=1
fi
# The system Python by default, not whatever python3 comes first on root's
# PATH (a pyenv or conda one under /root is unreadable to the service user).
if [ -z "$PYTHON" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON; install Python >= 3.10 or pass --python"
# under_home PATH: is PATH's real location somewhere ProtectHome= hides?
under_home() {
    case $("$1" -c 'import os, sys; print(os.path.realpath(sys.executable))' 2>/dev/null)/ in
        /home/*|/root/*|/run/user/*) return 0 ;;
    esac
    return 1
}
under_home "$PYTHON" \
    && die "$PYTHON lives under a home directory, which the service user cannot reach (ProtectHome=); pass --python /usr/bin/python3"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); edgeinfer needs Python >= 3.10"
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$DRY_RUN" = 1 ]; then
        warn "$PYTHON cannot create venvs; install the python3-venv package first"
    else
        die "$PYTHON cannot create venvs; install the python3-venv package"
    fi
fi

if [ "$JETSON" = 1 ]; then
    note "Jetson: $(head -n 1 /etc/nv_tegra_release | sed 's/^# *//')"
elif [ "$GPU" = 1 ]; then
    note "NVIDIA GPU host: $(nvidia-smi -L 2>/dev/null | head -n 1 || echo 'nvidia-smi found')"
else
    note "no NVIDIA GPU found: installing for the CPU (ONNX Runtime)"
fi

# --- 1. venv ---------------------------------------------------------------
VENV_ARGS=
[ "$JETSON" = 1 ] && VENV_ARGS=--system-site-packages
if [ -x "$VENV/bin/python" ] && [ "$JETSON" = 1 ] \
   && grep -qi '^include-system-site-packages *= *false' "$VENV/pyvenv.cfg" 2>/dev/null; then
    # A venv without the system site-packages cannot see JetPack's TensorRT.
    note "$VENV does not see the system site-packages: recreating it"
    run rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    run mkdir -p "$PREFIX"
    # shellcheck disable=SC2086  # VENV_ARGS is one flag or nothing
    run "$PYTHON" -m venv $VENV_ARGS "$VENV"
fi
if [ "$DRY_RUN" = 0 ] && under_home "$VENV/bin/python"; then
    die "$VENV was made from a Python under a home directory, which the service user cannot reach: remove it and run again"
fi
EXTRAS=daemon
[ "$GPU" = 1 ] && EXTRAS=daemon,gpu
# A newer pip is nice to have, not needed: an offline host goes on with its own.
run "$VENV/bin/python" -m pip install --quiet --upgrade pip || warn "could not upgrade pip; using the venv's own"
run "$VENV/bin/python" -m pip install --upgrade "$SRC[$EXTRAS]"
if [ "$DRY_RUN" = 0 ] && [ "$JETSON" = 1 ]; then
    if trt=$("$VENV/bin/python" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null); then
        note "TensorRT $trt (JetPack) is visible in the venv"
    else
        warn "the venv cannot import tensorrt: install JetPack's bindings (apt install python3-libnvinfer); until then models run on ONNX Runtime"
    fi
    note "ONNX Runtime from PyPI is CPU-only on aarch64: TensorRT serves the GPU here"
fi

# --- 2. units, user, directories ----------------------------------------------
rewrite=
[ "$PREFIX" = "$UNIT_PREFIX" ] || rewrite=" ($UNIT_PREFIX/venv/ -> $PREFIX/venv/)"
for unit in "$SRC"/systemd/*.service; do
    name=$(basename "$unit")
    sed "s#$UNIT_PREFIX/venv/#$PREFIX/venv/#g" "$unit" | put "$UNIT_DIR/$name" 0644 "systemd/$name$rewrite"
done
put "$SYSUSERS_FILE" 0644 systemd/edgeinfer.sysusers.conf < "$SRC/systemd/edgeinfer.sysusers.conf"
put "$TMPFILES_FILE" 0644 systemd/edgeinfer.tmpfiles.conf < "$SRC/systemd/edgeinfer.tmpfiles.conf"
run systemd-sysusers "$SYSUSERS_FILE"
run systemd-tmpfiles --create "$TMPFILES_FILE"

# --- 3. config, docs -----------------------------------------------------------
if [ "$JETSON" = 1 ]; then EXAMPLE=configs/jetson-orin.toml; else EXAMPLE=configs/datacenter.toml; fi
NEW_CONFIG=0
run install -d -m 0755 "$CONF_DIR"
if [ -e "$CONF_DIR/edgeinfer.toml" ]; then
    note "keeping $CONF_DIR/edgeinfer.toml"
else
    NEW_CONFIG=1
    # Readable by the daemon (group edgeinfer), not by everyone.
    run install -m 0640 -o root -g edgeinfer "$SRC/$EXAMPLE" "$CONF_DIR/edgeinfer.toml"
fi
run install -d -m 0755 "$DOC_DIR" "$DOC_DIR/examples"
run install -m 0644 "$SRC/README.md" "$DOC_DIR/README.md"
for doc in "$SRC"/docs/*.md; do
    [ -e "$doc" ] && run install -m 0644 "$doc" "$DOC_DIR/$(basename "$doc")"
done
for example in "$SRC"/configs/*.toml; do
    run install -m 0644 "$example" "$DOC_DIR/examples/$(basename "$example")"
done

# --- 4. devices ------------------------------------------------------------------
if [ "$GPU" = 1 ] && [ "$JETSON" = 0 ]; then
    # DeviceAllow=char-nvidia-uvm resolves when a unit starts, from
    # /proc/devices: the module has to be loaded by then. CUDA would load it on
    # first use through the setuid nvidia-modprobe, which the sandbox forbids.
    printf '%s\n' "# edgeinfer's units can use nvidia-uvm only if it is loaded before they start." \
        nvidia-uvm | put "$MODULES_FILE" 0644
    run modprobe nvidia-uvm || warn "modprobe nvidia-uvm failed; CUDA will not work in the units until it loads"
fi

if [ "$JETSON" = 1 ]; then
    # The units list only dGPU and camera drivers; a Jetson's nvgpu/nvmap/host1x
    # nodes come from this drop-in, made from the nodes that exist here.
    dropin=$(sh "$SRC/systemd/jetson-dropin.sh")
    for unit in "$SRC"/systemd/*.service; do
        name=$(basename "$unit")
        printf '%s\n' "$dropin" | put "$UNIT_DIR/$name.d/50-jetson-devices.conf" 0644
    done
fi

# --- 5. systemd ------------------------------------------------------------------
if [ -d /run/systemd/system ] || [ "$DRY_RUN" = 1 ]; then
    run systemctl daemon-reload
    if [ "$START" = 1 ]; then
        # Only units already running: a fresh install has no models yet.
        run systemctl try-restart 'edgeinfer.service' 'edgeinfer@*.service'
    fi
else
    warn "systemd is not running here: units installed, nothing reloaded or started"
fi

cat <<EOF

edgeinfer is installed: $VENV/bin/edgeinfer, units in $UNIT_DIR, docs in $DOC_DIR.
Next steps:
EOF
if [ "$NEW_CONFIG" = 1 ]; then
    echo "  - $CONF_DIR/edgeinfer.toml is a copy of $EXAMPLE: edit it for this host"
fi
cat <<EOF
  - put the ONNX models it names in /var/lib/edgeinfer/models (calibration
    images in /var/lib/edgeinfer/calibration), readable by user edgeinfer
  - check it:   runuser -u edgeinfer -- $VENV/bin/edgeinfer check-config $CONF_DIR/edgeinfer.toml
  - prebuild engines before every start (optional): systemctl enable edgeinfer-build
  - start it:   systemctl enable --now edgeinfer
    or one daemon per GPU: $CONF_DIR/gpu0.toml, gpu1.toml, ... ([server] device
    and ports per GPU), then systemctl enable --now edgeinfer@0 edgeinfer@1
  - watch it:   journalctl -u edgeinfer -f      (docs: $DOC_DIR/operations.md)
EOF

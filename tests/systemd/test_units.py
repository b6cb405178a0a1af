"""The systemd units, sysusers/tmpfiles files and install script in systemd/ and scripts/.

What `make systemd-check` does (systemd-analyze verify and security, sysusers into an
empty root), plus the promises the files make to each other and to the daemon, read
from the files themselves: every group a unit names is created, reload validates and
then signals, the stop timeout covers the drain, the hardening block is the same in
every unit, and every hardening directive left out says why. Tests that need systemd's
tools skip with the reason where they are absent (Debian: apt-get install systemd).
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
INSTALL = ROOT / "scripts" / "install.sh"
UNITS = sorted(p.name for p in SYSTEMD.glob("*.service"))
SERVING = ["edgeinfer.service", "edgeinfer@.service"]
BUILD = ["edgeinfer-build.service", "edgeinfer-build@.service"]
VENV_EDGEINFER = "/opt/edgeinfer/venv/bin/edgeinfer"
MAX_EXPOSURE = 2.5
# The supervisor of [server] processes > 1 gives each of its two process groups
# (front-ends, then the inference host) grace + 10 s before killing stragglers.
SUPERVISOR_SLACK_S = 10.0

ANALYZE = shutil.which("systemd-analyze")


def _analyze_version() -> int:
    if not ANALYZE:
        return 0
    out = subprocess.run([ANALYZE, "--version"], capture_output=True, text=True).stdout
    m = re.match(r"systemd (\d+)", out)
    return int(m.group(1)) if m else 0


needs_analyze = pytest.mark.skipif(
    _analyze_version() < 250,
    reason="needs systemd-analyze >= 250 (security --offline); Debian: apt-get install systemd")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; comments dropped, repeated keys kept."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{line!r} outside a section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    return parse_unit((SYSTEMD / name).read_text())


def one(name: str, section: str, key: str) -> str:
    values = unit(name)[section].get(key)
    assert values and len(values) == 1, f"{name}: [{section}] {key}= should be set once, got {values}"
    return values[0]


def timespan_s(value: str) -> float:
    """A systemd time span ("60", "1min 30s", "2h") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "ms": 1e-3}
    total = 0.0
    for number, suffix in re.findall(r"([\d.]+)\s*([a-z]*)", value):
        total += float(number) * units[suffix]
    return total


def default_grace_period_s() -> float:
    """[server] grace_period_s's default, from the daemon's config dataclasses (10 s if not found)."""
    try:
        import edgeinfer.config as config
    except Exception:  # noqa: BLE001 - the daemon's dependencies are not needed here
        return 10.0
    for obj in vars(config).values():
        if isinstance(obj, type) and dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                if f.name == "grace_period_s" and f.default is not dataclasses.MISSING:
                    return float(f.default)
    return 10.0


def sysusers_lines() -> list[list[str]]:
    lines = []
    for raw in (SYSTEMD / "edgeinfer.sysusers.conf").read_text().splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            lines.append(raw.split())
    return lines


# --- What the files promise each other and the daemon ------------------------------


def test_every_unit_is_there():
    assert set(UNITS) == set(SERVING + BUILD)


def test_sysusers_creates_every_group_and_user_the_units_name():
    created_groups, created_users, memberships = set(), set(), set()
    for fields in sysusers_lines():
        kind, name = fields[0], fields[1]
        if kind == "g":
            created_groups.add(name)
        elif kind == "u":
            created_users.add(name)
            created_groups.add(name)  # `u NAME -` creates the group NAME too
        elif kind == "m":
            memberships.add((name, fields[2]))
            created_groups.add(fields[2])
    for name in UNITS:
        service = unit(name)["Service"]
        assert one(name, "Service", "User") in created_users
        assert one(name, "Service", "Group") in created_groups
        groups = " ".join(service.get("SupplementaryGroups", [])).split()
        assert groups, f"{name}: no SupplementaryGroups (the GPU/camera nodes need video/render)"
        missing = [g for g in groups if g not in created_groups]
        assert not missing, (f"{name} names groups {missing} that edgeinfer.sysusers.conf does not create: "
                             f"the unit would fail with 216/GROUP where they are absent")
        for g in groups:
            assert (one(name, "Service", "User"), g) in memberships


def test_serving_units_notify_and_reload_by_signal_after_validating():
    for name in SERVING:
        service = unit(name)["Service"]
        # notify-reload needs systemd >= 253; Debian 12 has 252, JetPack 6 249.
        assert one(name, "Service", "Type") == "notify"
        assert one(name, "Service", "NotifyAccess") == "main"
        assert timespan_s(one(name, "Service", "WatchdogSec")) == 30
        reload = service.get("ExecReload", [])
        assert len(reload) == 2, reload
        assert reload[0].startswith(f"{VENV_EDGEINFER} check-config "), reload
        assert reload[1] == "/bin/kill -HUP $MAINPID", reload
        # The config that reload validates is the one the daemon serves.
        serve = one(name, "Service", "ExecStart")
        assert serve.startswith(f"{VENV_EDGEINFER} serve --config ")
        config = serve.split("--config ", 1)[1]
        assert reload[0].endswith(config)
        assert f"{VENV_EDGEINFER} check-config {config}" in service["ExecStartPre"]
        assert "SIGHUP" in one(name, "Service", "RestartForceExitStatus").split()
        assert one(name, "Service", "Restart") == "on-failure"
        assert one(name, "Service", "KillMode") == "mixed"
        assert int(one(name, "Unit", "StartLimitBurst")) >= 1
        assert timespan_s(one(name, "Unit", "StartLimitIntervalSec")) > 0


def test_stop_timeout_covers_the_drain():
    grace = default_grace_period_s()
    # Two process groups, each allowed grace + slack by the supervisor, plus a margin.
    needed = 2 * (grace + SUPERVISOR_SLACK_S) + 10
    for name in SERVING:
        stop = timespan_s(one(name, "Service", "TimeoutStopSec"))
        assert stop >= needed, f"{name}: TimeoutStopSec={stop:g}s < {needed:g}s (grace {grace:g}s)"
        assert stop >= grace + 5, f"{name}: TimeoutStopSec below the grace period + margin"


def test_the_directories_are_shared_and_the_cache_survives():
    for name in UNITS:
        service = unit(name)["Service"]
        for key in ("ConfigurationDirectory", "StateDirectory", "CacheDirectory", "LogsDirectory",
                    "RuntimeDirectory"):
            assert service.get(key) == ["edgeinfer"], f"{name}: {key}"
        assert one(name, "Service", "RuntimeDirectoryPreserve") == "yes"
    tmpfiles = (SYSTEMD / "edgeinfer.tmpfiles.conf").read_text()
    cache = [line.split() for line in tmpfiles.splitlines() if line.startswith("d /var/cache/edgeinfer ")]
    assert cache and cache[0][-1] == "-", "tmpfiles must never age out the engine cache"


def test_template_instance_picks_its_config_and_gpu():
    name = "edgeinfer@.service"
    config = "/etc/edgeinfer/gpu%i.toml"
    assert one(name, "Service", "ExecStart") == f"{VENV_EDGEINFER} serve --config {config}"
    assert "EDGEINFER_DEVICE=%i" in unit(name)["Service"]["Environment"]
    assert "edgeinfer-build@%i.service" in " ".join(unit(name)["Unit"]["After"])
    # The scheme is documented where an operator reads it.
    head = (SYSTEMD / name).read_text().split("[Unit]")[0]
    assert "gpuN.toml" in head and "[server] device = N" in head


def test_build_units_run_once_before_the_daemon():
    for name, daemon in (("edgeinfer-build.service", "edgeinfer.service"),
                         ("edgeinfer-build@.service", "edgeinfer@%i.service")):
        assert one(name, "Service", "Type") == "oneshot"
        assert one(name, "Service", "ExecStart").startswith(f"{VENV_EDGEINFER} build --config ")
        assert daemon in one(name, "Unit", "Before").split()
        assert one(name, "Install", "WantedBy") == daemon
        assert timespan_s(one(name, "Service", "TimeoutStartSec")) >= 3600
        assert one(name, "Service", "PrivateNetwork") == "yes"
    assert "edgeinfer-build.service" in " ".join(unit("edgeinfer.service")["Unit"]["After"])


def _shared_block(name: str) -> str:
    text = (SYSTEMD / name).read_text()
    start = text.index("# --- Shared by every edgeinfer unit")
    return text[start:text.index("\n[Install]")]


def test_hardening_block_is_the_same_in_every_unit():
    reference = _shared_block("edgeinfer.service")
    for name in UNITS:
        assert _shared_block(name) == reference, (
            f"{name}: the block from '# --- Shared by every edgeinfer unit' to [Install] differs from "
            f"edgeinfer.service's; copy it over")


def test_hardening_keeps_gpu_and_camera_access():
    service = unit("edgeinfer.service")["Service"]
    assert one("edgeinfer.service", "Service", "DevicePolicy") == "closed"
    allowed = {v.split()[0] for v in service["DeviceAllow"]}
    assert {"char-nvidia", "char-nvidiactl", "char-nvidia-frontend", "char-nvidia-uvm",
            "char-video4linux"} <= allowed
    # No globs: systemd fnmatch()es the names, char-nvidia* would take nvswitch/nvlink.
    assert not [a for a in allowed if "*" in a or "?" in a]
    # Jetson paths live in the drop-in install.sh writes on Jetsons only.
    assert not [a for a in allowed if a.startswith("/dev/")]
    jetson = parse_unit((SYSTEMD / "jetson-devices.conf").read_text())["Service"]["DeviceAllow"]
    assert "/dev/nvmap rw" in jetson and "/dev/nvgpu/igpu0/ctrl rw" in jetson
    for key in ("PrivateDevices", "MemoryDenyWriteExecute", "ProcSubset", "IPAddressDeny", "PrivateNetwork"):
        assert key not in service, f"{key} would cut the daemon off from its GPU, JIT or clients"
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged"]
    assert one("edgeinfer.service", "Service", "SystemCallErrorNumber") == "EPERM"


def test_every_directive_left_out_says_why():
    text = (SYSTEMD / "edgeinfer.service").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    service = unit("edgeinfer.service")["Service"]
    for key in ("PrivateNetwork", "IPAddressDeny", "PrivateDevices", "MemoryDenyWriteExecute",
                "ProcSubset", "RootDirectory", "DynamicUser", "AF_NETLINK", "AF_UNIX", "@resources",
                "SupplementaryGroups", "Type=notify-reload"):
        assert key in comments, f"edgeinfer.service does not say why {key} is as it is"
    assert one("edgeinfer.service", "Service", "PrivateUsers") == "yes"
    assert "ProtectProc" in service and "PrivateUsers" in service


def test_documentation_points_at_the_installed_docs():
    for name in UNITS:
        docs = unit(name)["Unit"]["Documentation"]
        assert "file:///usr/share/doc/edgeinfer/operations.md" in " ".join(docs)
    script = INSTALL.read_text()
    assert "DOC_DIR=/usr/share/doc/edgeinfer" in script and '"$SRC"/docs/*.md' in script


def test_install_script_rewrites_the_path_the_units_use():
    assert "UNIT_PREFIX=/opt/edgeinfer\n" in INSTALL.read_text()
    for name in UNITS:
        for line in (SYSTEMD / name).read_text().splitlines():
            if line.startswith("Exec") and "edgeinfer " in line and "check-config" not in line:
                assert VENV_EDGEINFER in line, line


# --- systemd's own tools ------------------------------------------------------------


@pytest.fixture(scope="module")
def runnable_units(tmp_path_factory) -> list[Path]:
    """Copies of the units pointing at a stand-in executable (verify wants ExecStart to exist);
    templates through an instance."""
    tmp = tmp_path_factory.mktemp("units")
    stand_in = tmp / "bin" / "edgeinfer"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    paths = []
    for name in UNITS:
        (tmp / name).write_text((SYSTEMD / name).read_text().replace(VENV_EDGEINFER, str(stand_in)))
        if name.endswith("@.service"):
            instance = tmp / name.replace("@.service", "@0.service")
            instance.symlink_to(name)
            paths.append(instance)
        else:
            paths.append(tmp / name)
    return paths


@needs_analyze
def test_systemd_analyze_verify_has_no_complaint(runnable_units):
    r = subprocess.run([ANALYZE, "verify", *map(str, runnable_units)], capture_output=True, text=True)
    output = r.stdout + r.stderr
    ours = [line for line in output.splitlines()
            if str(runnable_units[0].parent) in line or "edgeinfer" in line]
    assert r.returncode == 0 and not ours, output


@needs_analyze
@pytest.mark.parametrize("index", range(len(UNITS)), ids=UNITS)
def test_security_exposure_at_most_2_5(runnable_units, index):
    path = runnable_units[index]
    r = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(path)],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    exposure = float(m.group(1))
    print(f"{path.name}: exposure {exposure}")
    exposed = [line for line in r.stdout.splitlines() if line.startswith("✗")]
    assert exposure <= MAX_EXPOSURE, f"{path.name}: exposure {exposure} > {MAX_EXPOSURE}\n" + "\n".join(exposed)


@pytest.mark.skipif(not shutil.which("systemd-sysusers"), reason="systemd-sysusers absent")
def test_sysusers_applies_to_an_empty_root(tmp_path):
    (tmp_path / "etc").mkdir()
    r = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "edgeinfer.sysusers.conf")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    groups = {line.split(":")[0]: line.split(":")[3].split(",")
              for line in (tmp_path / "etc" / "group").read_text().splitlines()}
    for g in ("video", "render"):
        assert "edgeinfer" in groups[g]
    assert "edgeinfer" in groups
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert re.search(r"^edgeinfer:x:\d+:\d+:[^:]*:/var/lib/edgeinfer:", passwd, re.M), passwd


@pytest.mark.skipif(not shutil.which("systemd-tmpfiles"), reason="systemd-tmpfiles absent")
def test_tmpfiles_applies_to_an_empty_root(tmp_path):
    # Owners resolve through this host's user database: root stands in for edgeinfer.
    conf = tmp_path / "edgeinfer.conf"
    conf.write_text((SYSTEMD / "edgeinfer.tmpfiles.conf").read_text().replace("edgeinfer edgeinfer", "root root"))
    root = tmp_path / "root"
    root.mkdir()
    r = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", str(conf)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for d in ("run/edgeinfer", "var/lib/edgeinfer/models", "var/lib/edgeinfer/calibration", "var/cache/edgeinfer"):
        assert (root / d).is_dir(), d
        assert oct((root / d).stat().st_mode & 0o777) == "0o750", d


@needs_analyze
def test_make_systemd_check_passes():
    r = subprocess.run(["bash", str(SYSTEMD / "check.sh")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "systemd-check: OK" in r.stdout


@needs_analyze
def test_systemd_check_catches_what_it_is_for(tmp_path):
    """A misspelt key, a unit without its syscall filter, a group sysusers forgets: each fails the check."""
    copy = tmp_path / "systemd"
    shutil.copytree(SYSTEMD, copy, symlinks=True)
    service = copy / "edgeinfer.service"
    service.write_text(service.read_text().replace("WatchdogSec=30\n", "WatchdogSec=30\nWatchdogSecs=30\n"))
    template = copy / "edgeinfer@.service"
    template.write_text(re.sub(r"^SystemCallFilter=.*\n", "", template.read_text(), flags=re.M)
                        .replace("PrivateUsers=yes", "PrivateUsers=no"))
    sysusers = copy / "edgeinfer.sysusers.conf"
    sysusers.write_text(re.sub(r"^(g|m edgeinfer) render.*\n", "", sysusers.read_text(), flags=re.M))
    r = subprocess.run(["bash", str(copy / "check.sh")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Unknown key" in r.stdout and "FAIL verify" in r.stdout
    assert re.search(r"FAIL security edgeinfer@0\.service: exposure [\d.]+ > 2\.5", r.stdout), r.stdout
    assert "does not create group render" in r.stdout


# --- install.sh --------------------------------------------------------------------


def _install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(INSTALL), *args], capture_output=True, text=True)


def test_install_dry_run_shows_every_step_and_changes_nothing(tmp_path):
    prefix = tmp_path / "opt-edgeinfer"
    r = _install("--dry-run", "--no-start", "--prefix", str(prefix))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert f"-m venv" in out and f"{prefix}/venv" in out
    assert re.search(rf"{re.escape(str(prefix))}/venv/bin/python -m pip install --upgrade {re.escape(str(ROOT))}\[daemon",
                     out), out
    for name in UNITS:
        assert f"write /etc/systemd/system/{name} (mode 0644) from systemd/{name} " \
               f"(/opt/edgeinfer/venv/ -> {prefix}/venv/)" in out
    assert "write /usr/lib/sysusers.d/edgeinfer.conf" in out
    assert "write /usr/lib/tmpfiles.d/edgeinfer.conf" in out
    assert "+ systemd-sysusers /usr/lib/sysusers.d/edgeinfer.conf" in out
    assert "+ systemd-tmpfiles --create /usr/lib/tmpfiles.d/edgeinfer.conf" in out
    assert "/usr/share/doc/edgeinfer/README.md" in out
    assert "+ systemctl daemon-reload" in out
    assert "try-restart" not in out  # --no-start
    assert "systemctl enable --now edgeinfer" in out  # the next steps
    assert not prefix.exists()


def test_install_picks_extras_and_example_config_for_the_platform():
    r = _install("--dry-run")
    assert r.returncode == 0, r.stderr
    jetson = Path("/etc/nv_tegra_release").exists()
    gpu = jetson or shutil.which("nvidia-smi") is not None
    assert ("[daemon,gpu]" in r.stdout) == gpu
    if not Path("/etc/edgeinfer/edgeinfer.toml").exists():
        example = "configs/jetson-orin.toml" if jetson else "configs/datacenter.toml"
        assert f"{example} /etc/edgeinfer/edgeinfer.toml" in r.stdout
    assert "try-restart" in r.stdout


@pytest.mark.parametrize("prefix, why", [
    ("relative/path", "absolute"),
    ("/opt/edge infer", "whitespace"),
    ("/opt/edge%i", "%"),
    ("/home/someone/edgeinfer", "home directory"),
    ("/root/edgeinfer", "home directory"),
])
def test_install_refuses_a_prefix_the_units_cannot_use(prefix, why):
    r = _install("--dry-run", "--prefix", prefix)
    assert r.returncode == 1 and why in r.stderr, r.stderr


def test_install_needs_root_unless_dry_run():
    if os.geteuid() == 0:
        pytest.skip("running as root")
    r = _install("--no-start")
    assert r.returncode == 1 and "run as root" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of fake Jetson device nodes needs root")
def test_jetson_dropin_keeps_existing_nodes_and_adds_their_drivers(tmp_path):
    dev = tmp_path / "dev"
    (dev / "nvgpu" / "igpu0").mkdir(parents=True)
    nodes = {"nvmap": (10, 62), "nvhost-ctrl-gpu": (505, 1), "nvgpu/igpu0/ctrl": (505, 10),
             "host1x-fence": (506, 0), "nvhost-ctrl-nvdla0": (507, 0)}
    for path, (major, minor) in nodes.items():
        os.mknod(dev / path, 0o600 | 0o020000, os.makedev(major, minor))
    devices = tmp_path / "devices"
    devices.write_text("Character devices:\n 10 misc\n226 drm\n505 17000000.gpu\n506 host1x-fence\n"
                       "507 nvhost-nvdla\n\nBlock devices:\n505 notachar\n")
    r = subprocess.run(["sh", str(SYSTEMD / "jetson-dropin.sh"), str(dev), str(devices)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = set(r.stdout.splitlines())
    assert "[Service]" in lines
    # Listed in jetson-devices.conf and present: kept; listed and absent: dropped.
    assert {"DeviceAllow=/dev/nvmap rw", "DeviceAllow=/dev/nvhost-ctrl-gpu rw",
            "DeviceAllow=/dev/nvgpu/igpu0/ctrl rw", "DeviceAllow=/dev/host1x-fence rw",
            "DeviceAllow=char-drm rw"} <= lines
    assert "DeviceAllow=/dev/nvhost-gpu rw" not in lines
    # The drivers behind the nodes found, by name; misc by path only.
    assert {"DeviceAllow=char-17000000.gpu rw", "DeviceAllow=char-host1x-fence rw",
            "DeviceAllow=char-nvhost-nvdla rw"} <= lines
    assert "DeviceAllow=char-misc rw" not in lines
    assert parse_unit(r.stdout)["Service"]["DeviceAllow"]

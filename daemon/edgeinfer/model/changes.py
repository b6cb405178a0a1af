"""What a config reload changes: per model (added, removed, updated, unchanged) and per setting.

Pure comparisons of two validated configs; the daemon (process/daemon.py)
applies them. A model is updated when anything in its [[models]] table
differs (every path already resolved to an absolute one) or when its ONNX
file's content does (same path, new bytes: a sha256 of each).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping, Optional

from edgeinfer.config import Config, ModelConfig

ADDED, REMOVED, UPDATED, UNCHANGED, FAILED = "added", "removed", "updated", "unchanged", "failed"

# [server] keys a reload applies at once; every other change of [server], [metrics] or [cache]
# is reported as needing a restart and not applied. `device` reaches the models: each model's
# device is resolved from it, so a changed [server] device updates the models that follow it.
LIVE_SERVER_KEYS = ("grace_period_s", "watchdog_stall_s", "ready", "device")
# [tls] files and [auth] tokens a reload applies (Daemon.reload_security) while TLS, and role
# checks, were on at start and stay on; turning either on or off takes a restart.
LIVE_TLS_KEYS = ("cert", "key", "client_ca")
LIVE_AUTH_KEYS = ("tokens", "open_health", "open_reflection")


def _live(table: str, key: str, old: Config, new: Config) -> bool:
    if table == "server":
        return key in LIVE_SERVER_KEYS
    tls_stays = old.tls.enabled and new.tls.enabled
    roles_stay = old.roles_checked and new.roles_checked
    if table == "tls":
        return tls_stays and (key in LIVE_TLS_KEYS or (key == "subject_roles" and roles_stay))
    if table == "auth":
        return key in LIVE_AUTH_KEYS and roles_stay
    return False


@dataclass
class ModelChange:
    name: str
    action: str  # ADDED, REMOVED, UPDATED, UNCHANGED or FAILED
    detail: str = ""
    error: str = ""


@dataclass
class ReloadOutcome:
    accepted: bool
    config_path: str = ""
    error: str = ""
    models: list[ModelChange] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)
    processes: int = 1

    def summary(self) -> str:
        if not self.accepted:
            return f"reload refused: {self.error}"
        counts: dict[str, int] = {}
        for c in self.models:
            counts[c.action] = counts.get(c.action, 0) + 1
        text = ", ".join(f"{n} {a}" for a, n in counts.items()) or "no models"
        if self.needs_restart:
            text += f"; needs restart (not applied): {', '.join(self.needs_restart)}"
        return f"reloaded {self.config_path}: {text}"


def _differences(old, new, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two dataclass instances."""
    out = []
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            out += _differences(a, b, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def model_detail(old: ModelConfig, new: ModelConfig) -> str:
    """Which keys of a model's table changed, e.g. "version 1 -> 2, onnx"."""
    parts = []
    for key in _differences(old, new):
        if key in ("version", "device"):
            parts.append(f"{key} {getattr(old, key)} -> {getattr(new, key)}")
        else:
            parts.append(key)
    return ", ".join(parts)


def plan_models(old: Mapping[str, ModelConfig], old_digests: Mapping[str, Optional[str]],
                new: Config, new_digests: Mapping[str, Optional[str]]) -> list[ModelChange]:
    """One ModelChange per model of either config, in the new config's order, removed ones last.

    old_digests / new_digests: the ONNX file's sha256 per model (None: unknown, e.g. a model that
    failed before its file was read, which counts as changed content)."""
    changes = []
    for m in new.models:
        before = old.get(m.name)
        if before is None:
            changes.append(ModelChange(m.name, ADDED))
            continue
        detail = model_detail(before, m)
        digest_old, digest_new = old_digests.get(m.name), new_digests.get(m.name)
        if digest_old is None or digest_old != digest_new:
            detail = ", ".join(filter(None, [detail, "onnx file content"]))
        changes.append(ModelChange(m.name, UPDATED if detail else UNCHANGED, detail))
    names = {m.name for m in new.models}
    changes += [ModelChange(name, REMOVED) for name in old if name not in names]
    return changes


def settings_needing_restart(old: Config, new: Config) -> list[str]:
    """The changed keys of every table a reload does not apply ([server] apart from its live keys,
    [metrics], [cache], ...), as "[table] key". Models and streams are applied, not listed."""
    out = []
    tables = [f.name for f in dataclasses.fields(old) if dataclasses.is_dataclass(getattr(old, f.name))]
    for table in tables:
        for key in _differences(getattr(old, table), getattr(new, table)):
            if _live(table, key, old, new):
                continue
            out.append(f"[{table}] {key}")
    return out


def apply_live_settings(running: Config, new: Config) -> Config:
    """The config the daemon runs after a reload: the new models, the running [server] / [metrics] /
    [cache] with the live [server] keys taken from the new file."""
    server = dataclasses.replace(running.server, **{k: getattr(new.server, k) for k in LIVE_SERVER_KEYS})
    tls, auth = running.tls, running.auth
    if running.tls.enabled and new.tls.enabled:
        tls = dataclasses.replace(running.tls, **{k: getattr(new.tls, k) for k in LIVE_TLS_KEYS})
    if running.roles_checked and new.roles_checked:
        tls = dataclasses.replace(tls, subject_roles=dict(new.tls.subject_roles))
        auth = dataclasses.replace(running.auth, **{k: getattr(new.auth, k) for k in LIVE_AUTH_KEYS})
    return dataclasses.replace(running, server=server, tls=tls, auth=auth, models=list(new.models), source=new.source)

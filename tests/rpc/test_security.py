"""TLS, mutual TLS, bearer tokens and roles, with real certificates made here (`edgeinfer certs`'s code)
and real daemons."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from edgeinfer_client import Client, ClientError


def _token_entry(name, token, roles):
    from edgeinfer.rpc.auth import hash_token

    return {"name": name, "sha256": hash_token(token), "roles": roles}


INFER_TOKEN = "infer-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from edgeinfer.rpc.certs import make_site

    out = tmp_path_factory.mktemp("site")
    make_site(out, "shop", ["localhost", "127.0.0.1"], ["kiosk-1", "stranger"])
    other = tmp_path_factory.mktemp("other-site")
    make_site(other, "elsewhere", ["localhost", "127.0.0.1"], ["kiosk-1"])
    return out, other


def _config(trivial_onnx, tmp_path, tls, auth=None):
    from edgeinfer.config import parse_config

    return parse_config({
        "server": {"workers": 2},
        "cache": {"dir": str(tmp_path)},
        "tls": tls, "auth": auth or {},
        "models": [{"name": "trivial", "onnx": str(trivial_onnx), "backends": ["onnxruntime"],
                    "postprocess": {"task": "raw"},
                    "onnxruntime": {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1}}],
    })


def _infer(c: Client):
    return c.infer("trivial", tensors={"x": np.zeros((1, 64), np.float32)})


@pytest.fixture(scope="module")
def tls_daemon(start_daemon, trivial_onnx, site, tmp_path_factory):
    out, _ = site
    config = _config(trivial_onnx, tmp_path_factory.mktemp("tls"),
                     {"cert": str(out / "server.pem"), "key": str(out / "server.key")},
                     {"tokens": [_token_entry("kiosk", INFER_TOKEN, ["infer"]),
                                 _token_entry("ops", ADMIN_TOKEN, ["infer", "admin"])]})
    return start_daemon(config)


@pytest.fixture(scope="module")
def mtls_daemon(start_daemon, trivial_onnx, site, tmp_path_factory):
    out, _ = site
    return start_daemon(_config(trivial_onnx, tmp_path_factory.mktemp("mtls"),
                                {"cert": str(out / "server.pem"), "key": str(out / "server.key"),
                                 "client_ca": str(out / "ca.pem"), "require_client_cert": True,
                                 "subject_roles": {"kiosk-1": ["infer"]}},
                                {"tokens": [_token_entry("ops", ADMIN_TOKEN, ["infer", "admin"])]}))


def _code(fn) -> str:
    with pytest.raises(ClientError) as info:
        fn()
    return info.value.code


def test_tls_works_with_a_token(tls_daemon, site):
    out, _ = site
    with Client(tls_daemon.address, timeout=20, tls={"ca": out / "ca.pem"}, token=INFER_TOKEN) as c:
        assert _infer(c).outputs["y"][0, 0] == 1.0
        assert [m.name for m in c.list_models()] == ["trivial"]
        frames = list(c.stream("trivial", [], timeout=5))  # the stream service passes the same checks
        assert frames == []


def test_plain_text_client_is_refused(tls_daemon):
    with Client(tls_daemon.address, timeout=5, token=INFER_TOKEN) as c:
        assert _code(lambda: _infer(c)) == "UNAVAILABLE"


def test_client_not_trusting_the_server_is_refused(tls_daemon, site):
    _, other = site
    with Client(tls_daemon.address, timeout=5, tls={"ca": other / "ca.pem"}, token=INFER_TOKEN) as c:
        assert _code(lambda: _infer(c)) == "UNAVAILABLE"


def test_missing_or_wrong_token_is_unauthenticated(tls_daemon, site):
    out, _ = site
    tls = {"ca": out / "ca.pem"}
    with Client(tls_daemon.address, timeout=5, tls=tls) as c:
        assert _code(lambda: _infer(c)) == "UNAUTHENTICATED"  # Infer: registered with gRPC's core
        assert _code(c.list_models) == "UNAUTHENTICATED"
        assert c.health() in ("SERVING", "NOT_SERVING")  # health stays open ([auth] open_health)
    with Client(tls_daemon.address, timeout=5, tls=tls, token="not-a-token") as c:
        with pytest.raises(ClientError) as info:
            _infer(c)
        assert info.value.code == "UNAUTHENTICATED" and "not valid" in info.value.message


def test_admin_methods_need_the_admin_role(tls_daemon, site):
    """Admin methods (edgeinfer.v1.Admin, and any method the role table does not name) need admin."""
    from edgeinfer_proto.edgeinfer.v1.admin_pb2 import ReloadRequest

    out, _ = site
    creds = grpc.ssl_channel_credentials((out / "ca.pem").read_bytes())
    with grpc.secure_channel(tls_daemon.address, creds) as ch:
        for method in ("/edgeinfer.v1.Admin/Reload", "/edgeinfer.v1.Whatever/Do"):
            call = ch.unary_unary(method)
            with pytest.raises(grpc.RpcError) as info:
                call(b"", timeout=5, metadata=(("authorization", f"Bearer {INFER_TOKEN}"),))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
            assert "'admin' role" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                call(b"", timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The admin token passes the check: Reload answers (this in-process daemon has no file to
        # re-read, which its answer says), and a method no service has is UNIMPLEMENTED.
        reload = ch.unary_unary("/edgeinfer.v1.Admin/Reload")
        with pytest.raises(grpc.RpcError) as info:
            reload(ReloadRequest().SerializeToString(), timeout=10, metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no config file" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            ch.unary_unary("/edgeinfer.v1.Whatever/Do")(b"", timeout=5,
                                                       metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_certificate_subject_grants_roles(mtls_daemon, site):
    out, other = site
    with Client(mtls_daemon.address, timeout=5,
                tls={"ca": out / "ca.pem", "cert": out / "kiosk-1.pem", "key": out / "kiosk-1.key"}) as c:
        assert _infer(c).outputs["y"].shape == (1, 64)
        assert list(c.stream("trivial", [], timeout=5)) == []
    stranger = {"ca": out / "ca.pem", "cert": out / "stranger.pem", "key": out / "stranger.key"}
    with Client(mtls_daemon.address, timeout=5, tls=stranger) as c:
        assert _code(lambda: _infer(c)) == "UNAUTHENTICATED"  # a valid certificate no role names
    with Client(mtls_daemon.address, timeout=5, tls=stranger, token=ADMIN_TOKEN) as c:
        assert _infer(c)  # a token grants its roles over mutual TLS too


def test_mtls_refuses_a_client_without_a_valid_certificate(mtls_daemon, site):
    out, other = site
    with Client(mtls_daemon.address, timeout=5, tls={"ca": out / "ca.pem"}) as c:
        assert _code(lambda: _infer(c)) == "UNAVAILABLE"
    with Client(mtls_daemon.address, timeout=5,
                tls={"ca": out / "ca.pem", "cert": other / "kiosk-1.pem", "key": other / "kiosk-1.key"}) as c:
        assert _code(lambda: _infer(c)) == "UNAVAILABLE"  # signed by another site's CA
    with Client(mtls_daemon.address, timeout=5,
                tls={"ca": out / "ca.pem", "cert": out / "kiosk-1.pem", "key": out / "kiosk-1.key"}) as c:
        assert _infer(c).outputs["y"][0, 0] == 1.0


def test_reload_serves_new_certificates(start_daemon, trivial_onnx, tmp_path):
    from edgeinfer.rpc.certs import make_site

    first, second = tmp_path / "first", tmp_path / "second"
    make_site(first, "a", ["127.0.0.1"], [])
    make_site(second, "b", ["127.0.0.1"], [])
    tls = {"cert": str(first / "server.pem"), "key": str(first / "server.key")}
    d = start_daemon(_config(trivial_onnx, tmp_path / "cache", tls))
    with Client(d.address, timeout=5, tls={"ca": first / "ca.pem"}) as c:
        assert _infer(c)
    d.daemon.reload_security(_config(trivial_onnx, tmp_path / "cache",
                                     {"cert": str(second / "server.pem"), "key": str(second / "server.key")}))
    with Client(d.address, timeout=5, tls={"ca": second / "ca.pem"}) as c:
        assert _infer(c)
    with Client(d.address, timeout=5, tls={"ca": first / "ca.pem"}) as c:
        assert _code(lambda: _infer(c)) == "UNAVAILABLE"


def test_security_config_is_validated(tmp_path):
    from edgeinfer.config import parse_config
    from edgeinfer.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[tls\] key: cert and key go together"):
        parse_config({"tls": {"cert": "a.pem"}}, check_files=False)
    with pytest.raises(ConfigError, match=r"\[tls\] cert: file not found"):
        parse_config({"tls": {"cert": "a.pem", "key": "a.key"}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"subject_roles: mapping certificate subjects needs require_client_cert"):
        parse_config({"tls": {"cert": "a", "key": "b", "client_ca": "c", "subject_roles": {"k": ["infer"]}}},
                     check_files=False)
    with pytest.raises(ConfigError, match=r"require_client_cert needs the CA"):
        parse_config({"tls": {"cert": "a", "key": "b", "require_client_cert": True}}, check_files=False)
    with pytest.raises(ConfigError, match=r"sha256: expected 64 hex digits"):
        parse_config({"auth": {"tokens": [{"name": "x", "sha256": "abc"}]}})
    with pytest.raises(ConfigError, match=r"roles: expected a non-empty list"):
        parse_config({"auth": {"tokens": [{"name": "x", "sha256": "0" * 64, "roles": ["root"]}]}})


def test_role_table():
    from edgeinfer.config import AuthConfig
    from edgeinfer.rpc.auth import OPEN, required_role

    auth = AuthConfig()
    assert required_role("/edgeinfer.v1.Inference/Infer", auth) == "infer"
    assert required_role("/edgeinfer.v1.Admin/Reload", auth) == "admin"
    assert required_role("/inference.GRPCInferenceService/ModelInfer", auth) == "infer"
    assert required_role("/inference.GRPCInferenceService/RepositoryModelLoad", auth) == "admin"
    assert required_role("/inference.GRPCInferenceService/ServerLive", auth) == OPEN
    assert required_role("/grpc.health.v1.Health/Check", auth) == OPEN
    assert required_role("/grpc.health.v1.Health/Check", AuthConfig(open_health=False)) == "infer"
    assert required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", auth) == OPEN
    assert required_role("/some.New/Method", auth) == "admin"


def test_plain_text_on_a_public_address_is_warned_about():
    from edgeinfer.process.daemon import _loopback

    assert _loopback("127.0.0.1:50051") and _loopback("[::1]:1") and _loopback("localhost:1")
    assert _loopback("unix:/run/edgeinfer.sock")
    assert not _loopback("0.0.0.0:50051") and not _loopback(":50051") and not _loopback("10.0.0.7:1")


def test_config_reload_applies_new_certificates_and_tokens(start_daemon, trivial_onnx, tmp_path):
    """A reload (SIGHUP or Admin.Reload) re-reads the TLS files and takes the new tokens; a TLS file
    that cannot be read refuses the reload and the running credentials stay."""
    import asyncio
    import shutil

    from edgeinfer.config import load_config
    from edgeinfer.rpc.certs import make_site

    first, second, live = tmp_path / "first", tmp_path / "second", tmp_path / "live"
    make_site(first, "a", ["127.0.0.1"], [])
    make_site(second, "b", ["127.0.0.1"], [])
    shutil.copytree(first, live)
    config = tmp_path / "edgeinfer.toml"

    def write(token: str) -> None:
        config.write_text(
            f'[server]\nworkers = 2\n[metrics]\nenabled = false\n[cache]\ndir = "{tmp_path / "cache"}"\n'
            f'[tls]\ncert = "{live / "server.pem"}"\nkey = "{live / "server.key"}"\n'
            f'[[auth.tokens]]\nname = "k"\nsha256 = "{_token_entry("k", token, ["infer"])["sha256"]}"\n'
            f'[[models]]\nname = "trivial"\nonnx = "{trivial_onnx}"\nbackends = ["onnxruntime"]\n'
            f'[models.postprocess]\ntask = "raw"\n[models.onnxruntime]\nproviders = ["CPUExecutionProvider"]\n')

    def as_test_daemon(cfg):
        cfg.server.listen, cfg.metrics.enabled = "127.0.0.1:0", False
        return cfg

    write(INFER_TOKEN)
    d = start_daemon(load_config(config), config_path=str(config), config_overrides=as_test_daemon)

    def reload():
        return asyncio.run_coroutine_threadsafe(d.daemon.reload(), d.loop).result(30)

    with Client(d.address, timeout=5, tls={"ca": first / "ca.pem"}, token=INFER_TOKEN) as c:
        assert _infer(c)
    for name in ("server.pem", "server.key"):
        shutil.copy(second / name, live / name)
    write(ADMIN_TOKEN)
    outcome = reload()
    assert outcome.accepted, outcome.summary()
    assert not any("[tls]" in s or "[auth]" in s for s in outcome.needs_restart), outcome.needs_restart
    with Client(d.address, timeout=5, tls={"ca": second / "ca.pem"}, token=ADMIN_TOKEN) as c:
        assert _infer(c)
    with Client(d.address, timeout=5, tls={"ca": second / "ca.pem"}, token=INFER_TOKEN) as c:
        assert _code(lambda: _infer(c)) == "UNAUTHENTICATED"  # the old token is gone
    (live / "server.key").unlink()
    outcome = reload()
    assert not outcome.accepted and "[tls] key" in outcome.error
    with Client(d.address, timeout=5, tls={"ca": second / "ca.pem"}, token=ADMIN_TOKEN) as c:
        assert _infer(c)  # the credentials served so far stay

"""ConfluentSchemaRegistry with basic auth and a private CA, against a real HTTP server on a real socket."""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ripplerec.config import Settings
from ripplerec.schemas import AvroCodec, SchemaError, UnknownSchemaError
from ripplerec.schemas.registry import ConfluentSchemaRegistry

USER, PASSWORD = "ripple", "p@ss:w0rd/ü"
EVENT = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "view", "value": None,
         "ts": 874_724_710_000, "context": {}}


class _Registry(http.server.BaseHTTPRequestHandler):
    """The two calls the client makes, behind basic auth; schemas live on the server object."""

    def log_message(self, *args: Any) -> None:  # keep pytest's output clean
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.server.seen_auth.append(self.headers.get("Authorization"))  # type: ignore[attr-defined]
        if self.headers.get("Authorization") == expected:
            return True
        self._reply(401, {"error_code": 401, "message": "Unauthorized"})
        return False

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if not self._authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        schemas: dict[str, int] = self.server.schemas  # type: ignore[attr-defined]
        schema_id = schemas.setdefault(body["schema"], len(schemas) + 1)
        self._reply(200, {"id": schema_id})

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        schemas: dict[str, int] = self.server.schemas  # type: ignore[attr-defined]
        wanted = int(self.path.rsplit("/", 1)[-1])
        for text, schema_id in schemas.items():
            if schema_id == wanted:
                self._reply(200, {"schema": text})
                return
        self._reply(404, {"error_code": 40403, "message": "Schema not found"})


def _serve(context: ssl.SSLContext | None = None) -> Iterator[tuple[str, http.server.HTTPServer]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    server.schemas = {}  # type: ignore[attr-defined]
    server.seen_auth = []  # type: ignore[attr-defined]
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if context else 'http'}://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def registry_server() -> Iterator[tuple[str, http.server.HTTPServer]]:
    yield from _serve()


def test_without_credentials_the_registry_refuses_and_says_so(registry_server) -> None:
    url, _ = registry_server
    registry = ConfluentSchemaRegistry(url)
    with pytest.raises(SchemaError, match="401"):
        AvroCodec(registry)
    # a refused lookup is not an unknown id (that would dead-letter valid messages): it may be retried
    with pytest.raises(SchemaError, match="401") as info:
        registry.lookup(1)
    assert not isinstance(info.value, UnknownSchemaError)


def test_basic_auth_registers_and_resolves(registry_server) -> None:
    url, server = registry_server
    writer = AvroCodec(ConfluentSchemaRegistry(url, auth=(USER, PASSWORD)))
    data = writer.encode("BehaviorEvent", EVENT)
    reader = AvroCodec(ConfluentSchemaRegistry(url, auth=(USER, PASSWORD)))
    assert reader.decode("BehaviorEvent", data)["user_id"] == "u1"
    fresh = ConfluentSchemaRegistry(url, auth=(USER, PASSWORD))
    assert fresh.lookup(writer.schema_id("BehaviorEvent"))["name"] == "BehaviorEvent"
    with pytest.raises(UnknownSchemaError, match="does not know"):
        fresh.lookup(10_000)  # a 404: the id is unknown


def test_credentials_in_the_url_are_used_and_never_shown(registry_server) -> None:
    url, server = registry_server
    quoted = "p%40ss%3Aw0rd%2F%C3%BC"  # PASSWORD, percent-encoded as a URL needs it
    registry = ConfluentSchemaRegistry(url.replace("http://", f"http://{USER}:{quoted}@") + "/")
    assert registry.url == url
    codec = AvroCodec(registry)
    assert codec.schema_id("BehaviorEvent") >= 1
    for text in (repr(registry), registry.url):
        assert PASSWORD not in text and quoted not in text
    unreachable = ConfluentSchemaRegistry(f"http://{USER}:{quoted}@127.0.0.1:9/", timeout_s=2)
    with pytest.raises(SchemaError) as info:
        unreachable.lookup(1)
    assert quoted not in str(info.value) and PASSWORD not in str(info.value) and USER not in str(info.value)


def test_explicit_auth_wins_over_the_url(registry_server) -> None:
    url, _ = registry_server
    registry = ConfluentSchemaRegistry(url.replace("http://", "http://someone:wrong@"), auth=(USER, PASSWORD))
    AvroCodec(registry)


def test_from_settings_reads_username_and_password(registry_server) -> None:
    from pydantic import SecretStr

    url, _ = registry_server
    settings = Settings(schema_registry_url=url, schema_registry_username=USER,
                        schema_registry_password=SecretStr(PASSWORD))
    codec = AvroCodec.from_settings(settings)
    assert isinstance(codec.registry, ConfluentSchemaRegistry)
    assert codec.decode("BehaviorEvent", codec.encode("BehaviorEvent", EVENT))["item_id"] == "i1"
    assert PASSWORD not in repr(settings)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)  # noqa: S603,S607


@pytest.fixture
def tls_files(tmp_path: Path) -> Path:
    """A private CA and a server certificate for 127.0.0.1 signed by it."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a CA")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ripple test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=tmp_path)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=tmp_path)
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem", cwd=tmp_path)
    return tmp_path


def test_tls_with_a_private_ca(tls_files: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files / "server.pem", tls_files / "server.key")
    for url, _ in _serve(context):
        with pytest.raises(SchemaError, match="unreachable"):  # the system's CAs do not know ours
            ConfluentSchemaRegistry(url, auth=(USER, PASSWORD), timeout_s=5).lookup(1)
        registry = ConfluentSchemaRegistry(url, auth=(USER, PASSWORD), ca_file=tls_files / "ca.pem", timeout_s=5)
        codec = AvroCodec(registry)
        assert codec.decode("BehaviorEvent", codec.encode("BehaviorEvent", EVENT))["user_id"] == "u1"
        settings = Settings(schema_registry_url=url.replace("https://", f"https://{USER}:p%40ss%3Aw0rd%2F%C3%BC@"),
                            schema_registry_ca_file=tls_files / "ca.pem")
        assert AvroCodec.from_settings(settings).schema_id("BehaviorEvent") == codec.schema_id("BehaviorEvent")

"""The HTTPS branch of DNS pinning: the socket goes to the checked address, TLS still verifies the host name.

A TLS server on 127.0.0.1 with a throwaway certificate made here stands in for `api.pinned.test`, a name that
does not exist: only the custom-host policy's (test) resolver knows it (docs/security.md).
"""

from __future__ import annotations

import datetime
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests.adapters
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import Flask

from tests.conftest import GATEWAY_KEY

NAME = "api.pinned.test"


def certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """Write a fresh self-signed certificate for DNS name `name` and its key; return both paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TLSServer:
    """A loopback HTTPS server answering every GET with 200 JSON; it keeps the SNI names and Host headers it saw."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.server_names: list[str | None] = []
        self.hosts: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server name)
                owner.hosts.append(self.headers.get("Host"))
                data = json.dumps({"object": "list", "data": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.sni_callback = lambda _sock, name, _ctx: owner.server_names.append(name)  # type: ignore[assignment]
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    return {name: certificate(tmp_path, name) for name in (NAME, "other.test", "impostor")}


@pytest.fixture
def serve(certs: dict[str, tuple[Path, Path]]) -> Iterator[Callable[[str], TLSServer]]:
    servers: list[TLSServer] = []

    def start(presented: str) -> TLSServer:
        servers.append(TLSServer(*certs[presented]))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


def gateway(app_factory: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, trusted: Path,
            lookups: list[str]) -> Flask:
    """Return an app that trusts `trusted` only and resolves every name to 127.0.0.1, noting each lookup."""
    monkeypatch.setattr(requests.adapters, "DEFAULT_CA_BUNDLE_PATH", str(trusted))

    def resolver(host: str, port: int, *_: Any) -> list:
        lookups.append(host)
        return [(2, 1, 6, "", ("127.0.0.1", port))]
    app = app_factory(custom_hosts_allow=("127.0.0.0/8",))
    app.extensions["portico"].policy._resolver = resolver
    return app


def models(app: Flask, port: int) -> Any:
    return app.test_client().get("/v1/models", headers={
        "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "openai", "Authorization": "Bearer sk-x",
        "x-portkey-custom-host": f"https://{NAME}:{port}/v1"})


def test_https_goes_to_the_pinned_address_and_verifies_the_host_name(
        app_factory: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch,
        certs: dict[str, tuple[Path, Path]], serve: Callable[[str], TLSServer]) -> None:
    server, lookups = serve(NAME), []
    app = gateway(app_factory, monkeypatch, certs[NAME][0], lookups)
    for _ in range(2):
        res = models(app, server.port)
        assert res.status_code == 200, res.get_data(as_text=True)
    # The name exists only for the policy's resolver, so the socket went to the address it checked; TLS sent
    # the name (SNI), the certificate for it passed, and the Host header names it too.
    assert lookups == [NAME]
    assert server.server_names[0] == NAME
    assert server.hosts == [f"{NAME}:{server.port}"] * 2


@pytest.mark.parametrize(("presented", "trusted"), [
    ("other.test", "other.test"),  # a trusted certificate, but for another name
    ("impostor", NAME),  # a certificate for some other name that nothing vouches for
])
def test_a_certificate_that_does_not_fit_the_host_name_fails(
        app_factory: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, certs: dict[str, tuple[Path, Path]],
        serve: Callable[[str], TLSServer], presented: str, trusted: str) -> None:
    server = serve(presented)
    res = models(gateway(app_factory, monkeypatch, certs[trusted][0], []), server.port)
    assert res.status_code == 502, res.get_data(as_text=True)
    message = res.get_json()["message"]
    assert message.startswith(f"Could not get an answer from upstream host {NAME}: "), message
    assert "SSL" in message or "TLS" in message, message
    assert server.hosts == []  # no request was sent over the unverified connection

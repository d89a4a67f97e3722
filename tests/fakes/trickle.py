"""A loopback server that answers slowly on purpose: a few bytes at once, then one byte every interval."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import threading
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes.net import free_port


def http_answer(body: bytes = b"{}", content_type: str = "application/json", pad: int = 0) -> bytes:
    """Return a whole HTTP/1.1 answer; `pad` adds a header of that many bytes (a longer trickle)."""
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            + (f"X-Pad: {'a' * pad}\r\n" if pad else "") + "Connection: close\r\n\r\n")
    return head.encode() + body


class Trickler:
    """Answer every connection with `answer`: its first `fast` bytes at once, the rest one per `interval_s`.

    `read_request` makes it read an HTTP request (head and Content-Length body) first; without it, it only
    waits for the client's first bytes (a TLS ClientHello) and starts answering. `tls` wraps each connection.
    """

    def __init__(self, answer: bytes, *, interval_s: float = 0.25, fast: int = 0, read_request: bool = True,
                 tls: ssl.SSLContext | None = None) -> None:
        self.answer, self.interval_s, self.fast = answer, interval_s, fast
        self.read_request, self.tls = read_request, tls
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.connections = 0
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Trickler:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(2)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            if self.read_request:
                _read_request(conn)
            else:
                conn.recv(65536)
            conn.sendall(self.answer[:self.fast])
            for index in range(self.fast, len(self.answer)):
                if self._stop.wait(self.interval_s):
                    return
                conn.sendall(self.answer[index:index + 1])
        except OSError:
            pass  # the client gave up: that is the point
        finally:
            conn.close()


def _read_request(conn: socket.socket) -> None:
    """Read one HTTP request: its head, then as many body bytes as Content-Length says."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


def self_signed_server(directory: str) -> tuple[ssl.SSLContext, str]:
    """Return a server TLS context for 127.0.0.1 with a fresh self-signed certificate, and that certificate's path."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as out:
        out.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path

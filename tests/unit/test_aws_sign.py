"""AWS SigV4 signing of bedrock calls (app.providers.aws): vectors, tokens, file bodies, errors, what is sent."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import io
import json
import tempfile
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import botocore.auth
import pytest
from botocore.credentials import Credentials
from flask import Flask

from app.errors import BadRequest
from app.http.body import Body
from app.pipeline.upstream import prepare
from app.providers import aws
from tests.conftest import gw_headers
from tests.fakes import fake_bedrock
from tests.fakes.provider import FakeProvider

ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0"
ENCODED_ARN = ("arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
               "us.anthropic.claude-3-5-sonnet-20240620-v1%3A0")
HOST = "bedrock-runtime.us-east-1.amazonaws.com"
URL = f"https://{HOST}/model/{ENCODED_ARN}/converse"
BODY = b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}'
OPTIONS = {"aws_region": "us-east-1", "aws_access_key_id": "AKIDEXAMPLE",
           "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
# BODY posted to URL at 2024-05-01T12:00:00Z with OPTIONS (the signature is also recomputed independently
# of botocore in test_bedrock_signature_is_the_documented_algorithm).
GOLDEN = ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240501/us-east-1/bedrock/aws4_request, "
          "SignedHeaders=content-type;host;x-amz-date, "
          "Signature=677b06ed394a1b9c77cc393817592b1575be685646fbc25f368c8112c679e0c1")


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime.datetime], None]:
    """Return a function that fixes the time botocore signs with."""
    def freeze(moment: datetime.datetime) -> None:
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: moment)
    return freeze


def signed(url: str = URL, body: Any = BODY, headers: dict[str, str] | None = None,
           options: dict[str, str] | None = None) -> Any:
    prepared = prepare("POST", url, {"Content-Type": "application/json", **(headers or {})},
                       None if body is None else _body(body), False)
    aws.sign(prepared, options or OPTIONS)
    return prepared


def _body(body: Any) -> Body:
    if isinstance(body, bytes):
        return Body(body)
    return Body(file=body, size=len(body.getvalue()) if isinstance(body, io.BytesIO) else 0)


def reference_signature(method: str, url_path: str, headers: dict[str, str], body: bytes, secret: str,
                        stamp: str, region: str, service: str) -> str:
    """The SigV4 algorithm as AWS documents it, written out independently of botocore."""
    canonical_uri = quote(url_path, safe="/~")  # non-S3 services: the sent (already encoded) path, encoded again
    names = sorted(headers)
    canonical = "\n".join([method, canonical_uri, "", "".join(f"{n}:{headers[n].strip()}\n" for n in names),
                           ";".join(names), hashlib.sha256(body).hexdigest()])
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret}".encode()
    for part in (stamp[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_published_aws_test_suite_vector(frozen) -> None:
    # "get-vanilla" from the AWS Signature Version 4 test suite.
    frozen(datetime.datetime(2015, 8, 30, 12, 36, 0))
    prepared = prepare("GET", "https://example.amazonaws.com/", {}, None, False)
    aws.sign_request(prepared, Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                     "us-east-1", "service")
    assert prepared.headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    assert prepared.headers["X-Amz-Date"] == "20150830T123600Z"


def test_bedrock_signature_is_the_documented_algorithm(frozen) -> None:
    frozen(datetime.datetime(2024, 5, 1, 12, 0, 0))
    prepared = signed()
    expected = reference_signature(
        "POST", f"/model/{ENCODED_ARN}/converse",
        {"content-type": "application/json", "host": HOST, "x-amz-date": "20240501T120000Z"}, BODY,
        OPTIONS["aws_secret_access_key"], "20240501T120000Z", "us-east-1", "bedrock")
    assert prepared.headers["Authorization"] == GOLDEN
    assert GOLDEN.endswith("Signature=" + expected)
    assert prepared.headers["X-Amz-Date"] == "20240501T120000Z"
    assert prepared.headers["Host"] == HOST
    assert "%253A" not in prepared.url  # encoded once on the wire; the second encoding is the signer's alone


def test_the_encoded_arn_path_is_sent_as_signed() -> None:
    # requests' requote_uri (in prepare) must leave the percent-encoded model id exactly as built.
    prepared = signed()
    assert prepared.url == URL
    assert prepared.body == BODY


def test_session_token_is_sent_and_signed(frozen) -> None:
    frozen(datetime.datetime(2024, 5, 1, 12, 0, 0))
    prepared = signed(options={**OPTIONS, "aws_session_token": "TOKEN-abc/123=="})
    assert prepared.headers["X-Amz-Security-Token"] == "TOKEN-abc/123=="
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token," in prepared.headers["Authorization"]


class ReadSpy(io.BytesIO):
    """A file body that records how it is read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int | None] = []

    def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        self.reads.append(size)
        return super().read(size)


def test_file_body_is_hashed_in_pieces_and_rewound(frozen) -> None:
    frozen(datetime.datetime(2024, 5, 1, 12, 0, 0))
    data = BODY[:-2] + b',"pad":"' + b"x" * (3 << 20) + b'"}'
    spy = ReadSpy(data)
    from_file = signed(body=spy)
    from_bytes = signed(body=data)
    assert from_file.headers["Authorization"] == from_bytes.headers["Authorization"]
    assert from_file.body is spy and spy.tell() == 0  # rewound: the send reads it from the start
    assert spy.reads and all(size is not None and 0 < size <= 1 << 20 for size in spy.reads)


def test_spooled_temporary_file_body_signs_like_its_bytes(frozen) -> None:
    frozen(datetime.datetime(2024, 5, 1, 12, 0, 0))
    with tempfile.TemporaryFile() as file:
        file.write(BODY)
        file.flush()
        prepared = prepare("POST", URL, {"Content-Type": "application/json"}, Body(file=file, size=len(BODY)), False)
        aws.sign(prepared, OPTIONS)
        assert prepared.headers["Authorization"] == signed().headers["Authorization"]
        assert prepared.headers["Content-Length"] == str(len(BODY))


def test_stale_client_signing_headers_are_replaced(frozen) -> None:
    frozen(datetime.datetime(2024, 5, 1, 12, 0, 0))
    prepared = signed(headers={"Authorization": "AWS4-HMAC-SHA256 Credential=OLD", "X-Amz-Date": "20000101T000000Z",
                               "X-Amz-Security-Token": "old-token", "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert prepared.headers["Authorization"] == signed().headers["Authorization"]
    assert prepared.headers["X-Amz-Date"] == "20240501T120000Z"
    assert "X-Amz-Security-Token" not in prepared.headers
    assert "X-Amz-Content-SHA256" not in prepared.headers


def test_only_host_content_type_and_aws_headers_are_signed() -> None:
    prepared = signed(headers={"User-Agent": "x", "Accept": "application/json", "X-Trace": "1",
                               "X-Amzn-Bedrock-GuardrailIdentifier": "gr-1", "X-Amzn-Trace-Id": "Root=1"})
    assert ("SignedHeaders=content-type;host;x-amz-date;x-amzn-bedrock-guardrailidentifier,"
            in prepared.headers["Authorization"])
    assert prepared.headers["User-Agent"] == "x"  # sent, unsigned


def test_host_header_keeps_a_non_default_port() -> None:
    assert aws.host_of("http://127.0.0.1:8080/model/m/converse") == "127.0.0.1:8080"
    assert aws.host_of("https://Bedrock-Runtime.us-east-1.amazonaws.com:443/x") == HOST
    assert aws.host_of("http://[::1]:9000/x") == "[::1]:9000"


@pytest.mark.parametrize(("options", "named"), [
    ({"aws_region": "us-east-1", "aws_secret_access_key": "TOP-SECRET-VALUE"}, ["x-portkey-aws-access-key-id"]),
    ({"aws_region": "us-east-1", "aws_access_key_id": "AKIDEXAMPLE"}, ["x-portkey-aws-secret-access-key"]),
    ({"aws_region": "us-east-1"}, ["x-portkey-aws-access-key-id", "x-portkey-aws-secret-access-key"]),
    ({**OPTIONS, "aws_region": ""}, ["x-portkey-aws-region"]),
])
def test_missing_credentials_are_a_400_naming_the_headers(options: dict[str, str], named: list[str]) -> None:
    prepared = prepare("POST", URL, {}, Body(BODY), False)
    with pytest.raises(BadRequest) as caught:
        aws.sign(prepared, options)
    assert caught.value.status == 400
    assert all(header in caught.value.message for header in named)
    for secret in ("TOP-SECRET-VALUE", OPTIONS["aws_secret_access_key"]):
        assert secret not in caught.value.message
    assert "Authorization" not in prepared.headers


# ----- the proxy route signs too: through the app to the fake, which verifies with botocore


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


def bedrock_headers(fake: FakeProvider, **extra: str) -> dict[str, str]:
    return gw_headers(x_portkey_provider="bedrock", x_portkey_custom_host=fake.url, x_portkey_aws_region="us-east-1",
                      x_portkey_aws_access_key_id=fake_bedrock.ACCESS_KEY,
                      x_portkey_aws_secret_access_key=fake_bedrock.SECRET_KEY, **extra)


def test_proxy_call_to_bedrock_is_signed(client, fake: FakeProvider) -> None:
    # The gateway refuses encoded slashes in proxy paths, so an ARN goes by the unified route only.
    model = "us.anthropic.claude-3-5-sonnet-20240620-v1%3A0"
    body = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    res = client.post(f"/v1/model/{model}/converse", data=json.dumps(body),
                      headers={**bedrock_headers(fake), "Content-Type": "application/json"})
    assert res.status_code == 200, res.get_data(as_text=True)
    assert res.get_json()["output"]["message"]["content"] == [{"text": fake_bedrock.BEDROCK_TEXT}]
    sent = fake.requests[0]
    assert sent.path == f"/model/{model}/converse"
    assert sent.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={fake_bedrock.ACCESS_KEY}/")
    assert fake_bedrock.SECRET_KEY not in json.dumps(sent.headers)


def test_spooled_proxy_body_is_signed(app_factory: Callable[..., Flask], fake: FakeProvider) -> None:
    client = app_factory(spool_memory_bytes=1024).test_client()
    body = {"messages": [{"role": "user", "content": [{"text": "hi " * 4000}]}]}  # over the 1 KiB: a temp file
    res = client.post("/v1/model/amazon.nova-lite-v1%3A0/converse", data=json.dumps(body),
                      headers={**bedrock_headers(fake), "Content-Type": "application/json"})
    assert res.status_code == 200, res.get_data(as_text=True)
    assert fake.requests[0].json() == body


def test_temporary_credentials_need_their_session_token(client, fake: FakeProvider) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
    headers = gw_headers(x_portkey_provider="bedrock", x_portkey_custom_host=fake.url, x_portkey_aws_region="eu-west-3",
                         x_portkey_aws_access_key_id=fake_bedrock.TEMP_ACCESS_KEY,
                         x_portkey_aws_secret_access_key=fake_bedrock.TEMP_SECRET_KEY)
    headers["Content-Type"] = "application/json"
    without = client.post("/v1/model/m/converse", data=body, headers=headers)
    assert without.status_code == 403
    assert without.headers["x-amzn-ErrorType"].startswith("UnrecognizedClientException")
    with_token = client.post("/v1/model/m/converse", data=body,
                             headers={**headers, "x-portkey-aws-session-token": fake_bedrock.SESSION_TOKEN})
    assert with_token.status_code == 200, with_token.get_data(as_text=True)


def test_wrong_secret_is_refused_by_the_fake_as_aws_does(client, fake: FakeProvider) -> None:
    headers = {**bedrock_headers(fake), "x-portkey-aws-secret-access-key": "not-the-secret",
               "Content-Type": "application/json"}
    res = client.post("/v1/model/m/converse", data=b'{"messages":[]}', headers=headers)
    assert res.status_code == 403
    assert res.get_json() == {"message": fake_bedrock.SIGNATURE_MISMATCH}
    assert res.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException")


def test_missing_credentials_on_the_proxy_are_a_400_before_any_call(client, fake: FakeProvider) -> None:
    headers = gw_headers(x_portkey_provider="bedrock", x_portkey_custom_host=fake.url, x_portkey_aws_region="us-east-1",
                         x_portkey_aws_secret_access_key="TOP-SECRET-VALUE")
    res = client.post("/v1/model/m/converse", data=b"{}", headers={**headers, "Content-Type": "application/json"})
    assert res.status_code == 400
    assert "x-portkey-aws-access-key-id" in res.get_json()["message"]
    assert "TOP-SECRET-VALUE" not in res.get_data(as_text=True)
    assert fake.requests == []


def test_a_bedrock_api_key_goes_as_a_bearer_token_instead_of_a_signature(client, fake: FakeProvider) -> None:
    headers = gw_headers(x_portkey_provider="bedrock", x_portkey_custom_host=fake.url, x_portkey_aws_region="us-east-1",
                         authorization=f"Bearer {fake_bedrock.API_KEY}")
    body = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    res = client.post("/v1/model/amazon.nova-lite-v1%3A0/converse", data=json.dumps(body),
                      headers={**headers, "Content-Type": "application/json"})
    assert res.status_code == 200, res.get_data(as_text=True)
    sent = fake.requests[0].headers
    assert sent["authorization"] == f"Bearer {fake_bedrock.API_KEY}" and "x-amz-date" not in sent


def test_aws_keys_win_over_an_api_key_and_a_client_signature_is_not_a_key() -> None:
    prepared = prepare("POST", URL, {}, Body(BODY), False)
    aws.authorize(prepared, OPTIONS, "some-api-key")
    assert prepared.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
    stale = prepare("POST", URL, {}, Body(BODY), False)
    with pytest.raises(BadRequest, match="Bedrock API key"):
        aws.authorize(stale, {"aws_region": "us-east-1"}, "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/x")

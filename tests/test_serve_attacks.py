"""The server under attack: schema fuzzing (no 5xx), slow and stalled clients, hostile names and multipart tricks,
and the optional API key. (benchmarks/serve_soak.py is the 5-minute, 32-client soak.)"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import schemathesis
from conftest import run_cli, untrained_bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from processes import start_serving, stop
from schemathesis import GenerationMode
from test_serve import RED, start_server

import imgclf
from imgclf.serve.app import create_app
from imgclf.serve.uploads import Limits

LIMITS = Limits(max_bytes=200_000, max_pixels=1_000_000, max_files=3, timeout_s=2.0)
KEY = "correct-horse-battery-staple-42"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny fastnet bundle: what the HTTP layer does does not depend on how good the model is."""
    return untrained_bundle(tmp_path_factory.mktemp("attacks"))


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[str]:
    url, uvicorn_server, thread = start_server(create_app(imgclf.load(bundle, runtime="torch"), "attacks", "torch",
                                                          LIMITS, max_wait_ms=1))
    yield url
    uvicorn_server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def keyed(bundle: Path) -> Iterator[str]:
    url, uvicorn_server, thread = start_server(create_app(imgclf.load(bundle, runtime="torch"), "keyed", "torch",
                                                          LIMITS, api_key=KEY))
    yield url
    uvicorn_server.should_exit = True
    thread.join(10)


CASES_PER_OPERATION = 100


@pytest.mark.slow
def test_schema_fuzzing_never_gets_a_server_error(server: str) -> None:
    """Schemathesis generates requests from the app's own OpenAPI schema, valid and not; none may get a 5xx."""
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    calls: list[tuple[str, int]] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]

        @given(case=st.sampled_from(modes).flatmap(operation.as_strategy))  # requests that fit the schema, and not
        @settings(max_examples=CASES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        def call(case: schemathesis.Case) -> None:
            response = case.call(timeout=30)
            calls.append((f"{case.method} {case.operation.path}", response.status_code))
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
            if response.status_code >= 400:
                assert response.json()["status"] == response.status_code  # every refusal is the one JSON shape

        call()
    assert {label for label, _ in calls} == {"POST /v1/predict", "POST /v1/explain", "GET /v1/model", "POST /v1/reload", "GET /healthz",
                                                "GET /metrics"}
    assert sum(label == "POST /v1/predict" for label, _ in calls) >= CASES_PER_OPERATION // 2
    assert {status for _, status in calls} >= {200, 400, 422}


def post(url: str, **request: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", timeout=30, **request)  # type: ignore[arg-type]


def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def drip(url: str, until: threading.Event | None = None) -> str:
    """POST an upload of 1,000 promised bytes one byte every 0.25 s, until the server answers (or ``until`` is set,
    or a minute passes): the reply read, empty if none came."""
    with raw_connection(url) as connection:
        connection.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                           b"Content-Length: 1000\r\n\r\n")
        reply = b""
        for byte in RED[:2] * 120:  # a JPEG's first bytes, then never its end
            if until is not None and until.is_set():
                break
            try:
                connection.sendall(bytes([byte]))
                chunk = connection.recv(4096) if select_ready(connection) else b""
            except OSError:
                break
            reply += chunk
            if b"}" in reply:
                break
            time.sleep(0.25)
        return reply.decode(errors="replace")


def test_slow_drip_uploads_and_stalled_clients_do_not_stall_others(bundle: Path, server: str) -> None:
    """Ordered by events, not timed: on a server whose upload timeout is a minute, ten requests are answered while
    stalled clients hold connections and a dripping upload is still unfinished (a server that waited on them would
    answer nothing until the drip stops, which it does only once the ten are answered); with the 2 s timeout, the
    drip itself is then cut with a 408."""
    patient_limits = Limits(max_bytes=LIMITS.max_bytes, max_pixels=LIMITS.max_pixels, max_files=3, timeout_s=60.0)
    patient, uvicorn_server, thread = start_server(create_app(imgclf.load(bundle, runtime="torch"), "patient", "torch",
                                                              patient_limits, max_wait_ms=1))
    stalled = [raw_connection(patient) for _ in range(20)]  # slowloris: headers that never end, bodies never sent
    for number, connection in enumerate(stalled):
        connection.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n" if number % 2 else
                           b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\nab")
    unread = [raw_connection(patient) for _ in range(10)]  # slow readers: ask, never read the answer
    for connection in unread:
        connection.sendall(b"GET /v1/model HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
    answered = threading.Event()
    with ThreadPoolExecutor(4) as pool:
        dripping = pool.submit(drip, patient, answered)
        answers = [post(patient, content=RED, headers={"content-type": "image/jpeg"}) for _ in range(10)]
        assert all(answer.status_code == 200 for answer in answers)
        assert not dripping.done()  # the ten were answered while the drip was still uploading
        answered.set()
        assert dripping.result(timeout=30) == ""  # and it had no answer yet: nothing was cut short
    assert drip(server).startswith("HTTP/1.1 408")  # a drip past the 2 s timeout is cut
    for connection in stalled + unread:
        connection.close()
    assert httpx.get(f"{patient}/healthz").status_code == 200 and httpx.get(f"{server}/healthz").status_code == 200
    uvicorn_server.should_exit = True
    thread.join(10)


def select_ready(connection: socket.socket) -> bool:
    import select

    return bool(select.select([connection], [], [], 0)[0])


HOSTILE_NAMES = ["../../etc/passwd", "..\\..\\windows\\win.ini", "a" * 5000 + ".jpg", "<script>alert(1)</script>.jpg",
                 "\u202egpj.exe", "name\twith\ttabs.jpg", "nul\u0000byte.jpg", "quote\".jpg", "emoji-\U0001f4a5.jpg",
                 "", "; rm -rf ~.jpg", "%00%2e%2e%2f.jpg"]


def named_part(name: str) -> bytes:
    """A multipart body with one image whose file name is ``name``, written raw (as a hostile client would)."""
    return (b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + name.encode("utf-8", "surrogatepass")
            + b'"\r\nContent-Type: image/jpeg\r\n\r\n' + RED + b"\r\n--b--\r\n")


def test_hostile_file_names_are_echoed_as_plain_data(server: str) -> None:
    """A part's file name is only ever data: echoed back (JSON-escaped), never used as a path, never a 5xx."""
    statuses = {}
    for name in HOSTILE_NAMES:
        answer = post(server, content=named_part(name), headers={"content-type": "multipart/form-data; boundary=b"})
        statuses[name[:20]] = answer.status_code
        if answer.status_code == 200:
            echoed = answer.json()["predictions"][0]["name"]
            assert isinstance(echoed, str)
            if name and not set(name) & set('"\0\t'):
                assert echoed == name, (name[:40], echoed[:40])
        else:  # a header past the multipart parser's limits
            assert 400 <= answer.status_code < 500 and answer.json()["status"] == answer.status_code, name[:40]
    assert list(statuses.values()).count(200) >= len(HOSTILE_NAMES) - 2, statuses
    assert httpx.get(f"{server}/healthz").status_code == 200


def multipart(boundary: str, parts: list[str]) -> bytes:
    return ("".join(f"--{boundary}\r\n{part}\r\n" for part in parts) + f"--{boundary}--\r\n").encode()


IMAGE_PART = 'Content-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
MULTIPART_TRICKS = {
    "no boundary": (b"--x\r\n\r\n", "multipart/form-data"),
    "boundary never used": (b"just bytes, no parts", "multipart/form-data; boundary=zzz"),
    "no closing boundary": (b"--b\r\n" + IMAGE_PART.encode() + RED, "multipart/form-data; boundary=b"),
    "part without headers": (multipart("b", ["\r\nbare"]), "multipart/form-data; boundary=b"),
    "many empty fields": (multipart("b", ['Content-Disposition: form-data; name="f"\r\n\r\n'] * 2000),
                          "multipart/form-data; boundary=b"),
    "many files": (b"".join(f"--b\r\n{IMAGE_PART}".encode() + RED + b"\r\n" for _ in range(40)) + b"--b--\r\n",
                   "multipart/form-data; boundary=b"),
    "huge part header": (multipart("b", ['Content-Disposition: form-data; name="file"; filename="' + "x" * 100_000 +
                                         '"\r\n\r\nabc']), "multipart/form-data; boundary=b"),
    "boundary in the data": (multipart("b", [IMAGE_PART + "--b"]), "multipart/form-data; boundary=b"),
    "nested multipart": (multipart("b", ['Content-Disposition: form-data; name="file"; filename="n"\r\n'
                                         'Content-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\n\r\nx\r\n--c--']),
                         "multipart/form-data; boundary=b"),
    "charset and junk parameters": (RED, "image/jpeg; charset=utf-8; x=\"y\""),
}


@pytest.mark.parametrize("trick", MULTIPART_TRICKS)
def test_multipart_tricks_get_a_4xx_or_an_answer_never_a_5xx(server: str, trick: str) -> None:
    body, kind = MULTIPART_TRICKS[trick]
    answer = post(server, content=body, headers={"content-type": kind})
    assert answer.status_code < 500, (trick, answer.text[:300])
    assert ("predictions" if answer.status_code == 200 else "error") in answer.json(), (trick, answer.text[:300])
    assert post(server, content=RED, headers={"content-type": "image/jpeg"}).status_code == 200


def test_api_key_is_required_on_the_api_and_metrics_but_not_health(keyed: str) -> None:
    image = {"content": RED, "headers": {"content-type": "image/jpeg"}}
    refused = post(keyed, **image)
    assert refused.status_code == 401 and "API key" in refused.json()["error"]
    assert refused.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(f"{keyed}/v1/predict", content=RED, headers={"content-type": "image/jpeg",
                                                                     "authorization": f"Bearer {KEY[:-1]}x"})
    assert wrong.status_code == 401
    for header in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
        assert httpx.post(f"{keyed}/v1/predict", content=RED, headers={"content-type": "image/jpeg", **header}
                          ).status_code == 200
        assert httpx.get(f"{keyed}/metrics", headers=header).status_code == 200
    assert httpx.get(f"{keyed}/v1/model").status_code == 401 and httpx.get(f"{keyed}/metrics").status_code == 401
    assert httpx.get(f"{keyed}/healthz").status_code == 200 and httpx.get(f"{keyed}/").status_code == 200


@pytest.mark.subprocess
def test_cli_serve_takes_the_api_key_from_the_environment(bundle: Path) -> None:
    short = run_cli("serve", str(bundle), "--api-key", "short")
    assert short.returncode == 2 and "--api-key is too short" in short.stderr
    process, url = start_serving(bundle, env={"IMGCLF_API_KEY": KEY})
    try:
        assert post(url, content=RED, headers={"content-type": "image/jpeg"}).status_code == 401
        assert post(url, content=RED, headers={"content-type": "image/jpeg", "x-api-key": KEY}).status_code == 200
    finally:
        stop(process, signal.SIGTERM, timeout_s=30)

"""HTTP-01 answers (consul_lb/acme/challenges.py and the runtime's HTTP server): a token
published in Consul KV is answered by every load balancer, from a watched copy or, just
after it was published, from Consul itself within a bounded rate; nothing but a
well-formed key authorization for that very token is ever answered."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest
from consul_lb.acme.challenges import DIRECT_BURST, Challenges
from consul_lb.acme.store import Store
from consul_lb.consul.client import ConsulClient
from consul_lb.consul.config import ConsulConfig
from consul_lb.consul.watch import Outage, WatchTiming
from consul_lb.observe.endpoints import Observer, Sources, start_server
from consul_lb.observe.metrics import Figures

from tests.unit.fake_consul_kv import FakeConsulKV
from tests.unit.local_haproxy import free_port
from tests.unit.test_runner import eventually

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
THUMBPRINT = "nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ"
KEY_AUTHORIZATION = f"{TOKEN}.{THUMBPRINT}"
PREFIX = "consul-lb/acme/challenges/"


@pytest.fixture
def consul() -> Iterator[FakeConsulKV]:
    fake = FakeConsulKV()
    yield fake
    fake.close()


@pytest.fixture
def board(consul: FakeConsulKV) -> Iterator[Challenges]:
    host, port = consul.address.split(":")
    client = ConsulClient(ConsulConfig(host, int(port)))
    store = Store(client, "consul-lb/acme/", "tls/certs/")
    found = Challenges(client, store, Outage(consul.address), WatchTiming(wait=1.0))
    found.start()
    yield found
    found.stop()


def test_a_published_token_is_answered_from_the_watched_copy(
    consul: FakeConsulKV, board: Challenges
) -> None:
    consul.put_key(PREFIX + TOKEN, KEY_AUTHORIZATION)
    eventually(lambda: TOKEN in board.tokens, what="the watch to see the token")
    reads = consul.requests[f"/v1/kv/{PREFIX}{TOKEN}"]
    assert [board.answer(TOKEN) for _ in range(50)] == [KEY_AUTHORIZATION] * 50
    assert consul.requests[f"/v1/kv/{PREFIX}{TOKEN}"] == reads  # no read of Consul


def test_a_token_the_copy_lacks_is_read_from_consul_within_a_bound(
    consul: FakeConsulKV, board: Challenges
) -> None:
    # As the ACME server validates a token a moment after it was published, from several
    # places at once: each load balancer reads it from Consul...
    with board.lock:
        board.tokens = {}
    consul.kv[PREFIX + TOKEN] = (KEY_AUTHORIZATION.encode(), consul.kv_index)  # unseen
    assert board.answer(TOKEN) == KEY_AUTHORIZATION
    # ...but a flood of unknown tokens cannot turn into a flood of reads.
    unknown = "A" * 43
    answers = [board.answer(unknown) for _ in range(200)]
    assert answers == [None] * 200
    assert consul.requests[f"/v1/kv/{PREFIX}{unknown}"] <= DIRECT_BURST + 2


@pytest.mark.parametrize(
    ("token", "value"),
    [
        (TOKEN, f"{'B' * 43}.{THUMBPRINT}"),  # another token's key authorization
        (TOKEN, f"{TOKEN}.{THUMBPRINT}\nSet-Cookie: x=1"),
        (TOKEN, f"{TOKEN}.<script>"),
        (TOKEN, ""),
        ("short", f"short.{THUMBPRINT}"),
        ("../../_consul_lb/state", f"x.{THUMBPRINT}"),
    ],
)
def test_only_a_well_formed_key_authorization_of_that_token_is_answered(
    consul: FakeConsulKV, board: Challenges, token: str, value: str
) -> None:
    consul.put_key(PREFIX + token, value)
    consul.put_key(PREFIX + "marker-token-0123456789", f"marker-token-0123456789.{THUMBPRINT}")
    eventually(lambda: "marker-token-0123456789" in board.tokens, what="the watch")
    assert board.answer(token) is None


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_the_runtime_server_answers_challenges_and_nothing_else_under_the_path(
    tmp_path: Path,
) -> None:
    answers = {TOKEN: KEY_AUTHORIZATION}
    state = {"secret": "state"}
    sources = Sources(
        figures=lambda: Figures("seamless"),
        state=lambda: state,
        config_file=tmp_path / "haproxy.cfg",
        secrets=lambda: [],
        acme_challenge=answers.get,
    )
    port = free_port()
    server = start_server(Observer(sources), port)
    try:
        assert get(port, f"/.well-known/acme-challenge/{TOKEN}") == (
            200,
            KEY_AUTHORIZATION.encode(),
        )
        for path in (
            "/.well-known/acme-challenge/unknown-token-0123456789",
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/../../_consul_lb/state",
            "/.well-known/acme-challenge/%2e%2e/metrics",
        ):
            status, body = get(port, path)
            assert status == 404 and b"secret" not in body, path
    finally:
        server.shutdown()
        server.server_close()

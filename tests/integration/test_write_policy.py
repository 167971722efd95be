"""The shared HTTP policy for writes, over loopback: what may have been executed is "outcome
unknown", what certainly was not stays "unavailable", and reads keep their old mapping."""

from __future__ import annotations

import socket
from decimal import Decimal

import pytest

from bot.errors import ProviderOutcomeUnknown, ProviderRateLimited, ProviderUnavailable
from integrations.http import ProviderHttp, encode_json
from integrations.sandbox.stripe_server import StripeSandboxServer
from tests.support.fakeserver import FakeProviderServer, Fault
from tests.support.providers import KEYS
from tests.support.writes import WRITE_POLICY, world


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_write_that_never_connected_is_unavailable_not_unknown() -> None:
    """Connection refused means the request was never sent: nothing can have happened, so the
    write is `ProviderUnavailable`, not an unknown outcome."""
    http = ProviderHttp("stripe", base_url=f"http://127.0.0.1:{closed_port()}", headers={},
                        policy=WRITE_POLICY)  # fmt: skip
    try:
        with pytest.raises(ProviderUnavailable) as caught:
            await http.send("POST", "v1/refunds", form=[("charge", "ch_1")],
                            idempotency_key="bt:R:refund", write=True)  # fmt: skip
        assert not isinstance(caught.value, ProviderOutcomeUnknown)
        assert http.calls == WRITE_POLICY.max_attempts  # retried: the key makes it safe
    finally:
        await http.aclose()


async def test_a_write_must_carry_a_key() -> None:
    """A write without an idempotency key is refused before anything is sent."""
    http = ProviderHttp("stripe", base_url="http://127.0.0.1:9", headers={}, policy=WRITE_POLICY)
    try:
        with pytest.raises(ValueError, match="idempotency key"):
            await http.send("POST", "v1/refunds", form={"charge": "ch_1"}, write=True)
        assert http.calls == 0
    finally:
        await http.aclose()


async def test_an_uncertain_attempt_makes_later_429s_unknown() -> None:
    """One attempt timed out (it may have run), the retries were rate limited: unknown, since
    the first may have refunded."""
    router = StripeSandboxServer(world(), api_key=KEYS["stripe"])
    async with FakeProviderServer(router) as server:
        server.add_fault(Fault("hang", path="/v1/refunds", times=1))
        server.fail(429, path="/v1/refunds", times=None)
        http = ProviderHttp("stripe", base_url=server.url, headers={}, policy=WRITE_POLICY)
        try:
            with pytest.raises(ProviderOutcomeUnknown, match="rate limiting"):
                await http.send("POST", "v1/refunds", form=[("charge", "ch_1")],
                                idempotency_key="bt:R:refund", write=True)  # fmt: skip
        finally:
            await http.aclose()


async def test_reads_keep_their_mapping() -> None:
    """A read that keeps failing is still unavailable or rate limited, never "unknown"."""
    router = StripeSandboxServer(world(), api_key=KEYS["stripe"])
    async with FakeProviderServer(router) as server:
        http = ProviderHttp("stripe", base_url=server.url, headers={}, policy=WRITE_POLICY)
        try:
            server.fail(500, times=None)
            with pytest.raises(ProviderUnavailable) as caught:
                await http.request("GET", "v1/charges")
            assert not isinstance(caught.value, ProviderOutcomeUnknown)
            server.clear_faults()
            server.fail(429, times=None)
            with pytest.raises(ProviderRateLimited):
                await http.request("GET", "v1/charges")
        finally:
            await http.aclose()


def test_json_bodies_carry_exact_decimal_amounts() -> None:
    """Decimal amounts go out as exact JSON numbers; one a float would change is refused."""
    assert encode_json({"a": Decimal("25.50"), "b": Decimal("4000"), "c": 1}) == (
        b'{"a":25.5,"b":4000,"c":1}'
    )
    with pytest.raises(ValueError, match="exactly"):
        encode_json({"a": Decimal("0.1000000000000000000001")})

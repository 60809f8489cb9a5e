"""The broker identities of deploy/mosquitto/acl, on a real Mosquitto: a private broker on a
free port with authentication on, a password file made by mosquitto_passwd and the repository's
own ACL file. A gateway logs in with its site id and may publish only its site's telemetry and
read only its site's config and commands; the platform's user reads every site's telemetry and
writes config and commands; anonymous clients and wrong passwords are refused at CONNECT.

Every wait is on an event with a timeout; "not delivered" is proven with a barrier: a message
the same publisher sends next, which the broker delivers in order, arrives first."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.contract import uplink_filter
from tests.fix_broker_auth import (
    ACCEPTED,
    NOT_AUTHORIZED,
    Broker,
    Client,
    auth_broker,
    mosquitto_tools,
)

pytestmark = pytest.mark.services

ACL = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "acl"
ROOT = "sobriety/v1"
PLATFORM = "sobriety-ingest"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """mosquitto with authentication on and deploy/mosquitto/acl, on a free port."""
    _binary, tool = mosquitto_tools()
    directory = tmp_path_factory.mktemp("acl-broker")
    passwords = {PLATFORM: uuid.uuid4().hex, "lyon": uuid.uuid4().hex, "villeurbanne": "v-pw"}
    passwd = directory / "passwd"
    for n, (user, password) in enumerate(passwords.items()):
        create = ["-c"] if n == 0 else []
        subprocess.run([tool, *create, "-b", str(passwd), user, password], check=True)
    with auth_broker(directory, passwd, ACL) as running:
        running.passwords.update(passwords)
        yield running


@pytest.fixture
def clients(broker: Broker) -> Iterator[dict[str, Client]]:
    """The platform's user (subscribed to every site's telemetry) and the gateway of lyon."""
    platform = Client(broker, PLATFORM, broker.passwords[PLATFORM])
    lyon = Client(broker, "lyon", broker.passwords["lyon"])
    try:
        assert platform.connected() == 0
        assert lyon.connected() == 0
        # The ingest's own filter, as a plain and as a shared subscription: both granted.
        assert platform.subscribe(uplink_filter(ROOT), f"$share/ingest/{uplink_filter(ROOT)}") == [
            1,
            1,
        ]
        yield {"platform": platform, "lyon": lyon}
    finally:
        platform.close()
        lyon.close()


def test_a_gateway_publishes_its_own_sites_telemetry_and_no_other(
    clients: dict[str, Client],
) -> None:
    platform, lyon = clients["platform"], clients["lyon"]
    own, other = f"{ROOT}/lyon/lum-1/up", f"{ROOT}/villeurbanne/lum-1/up"
    assert lyon.publish(own, b'{"power": 21.4}') in ACCEPTED
    platform.received(own, b'{"power": 21.4}')
    assert lyon.publish(other, b'{"power": 99}') == NOT_AUTHORIZED
    assert lyon.publish(own, b"barrier") in ACCEPTED  # same publisher, delivered in order
    platform.received(own, b"barrier")
    assert platform.never_received(other)
    # Nor the platform's topics: a gateway cannot pose as the service.
    assert lyon.publish(f"{ROOT}/villeurbanne/lum-1/config", b"{}") == NOT_AUTHORIZED
    assert lyon.publish(f"{ROOT}/lyon/lum-1/config", b"{}") == NOT_AUTHORIZED


def test_a_gateway_reads_its_own_sites_config_and_commands_only(
    clients: dict[str, Client],
) -> None:
    platform, lyon = clients["platform"], clients["lyon"]
    sites = ("lyon", "villeurbanne")
    for site in sites:  # the platform may write config (retained) and cmd for every site
        assert (
            platform.publish(f"{ROOT}/{site}/lum-1/config", site.encode(), retain=True) in ACCEPTED
        )
    codes = lyon.subscribe(*(f"{ROOT}/{s}/+/{ch}" for ch in ("config", "cmd") for s in sites))
    # Its own site's filters are granted. Mosquitto 2.0 grants the others too and checks read
    # access on every delivery (another broker may refuse them in the SUBACK: either is fine,
    # what matters is that nothing of villeurbanne's arrives).
    assert codes[0] == codes[2] == 1
    assert codes[1] in (1, NOT_AUTHORIZED)
    assert codes[3] in (1, NOT_AUTHORIZED)
    lyon.received(f"{ROOT}/lyon/lum-1/config", b"lyon")  # the retained config
    for site in sites:
        assert platform.publish(f"{ROOT}/{site}/lum-1/cmd", b"boost") in ACCEPTED
    assert platform.publish(f"{ROOT}/lyon/lum-1/cmd", b"barrier") in ACCEPTED
    lyon.received(f"{ROOT}/lyon/lum-1/cmd", b"boost")
    lyon.received(f"{ROOT}/lyon/lum-1/cmd", b"barrier")
    assert lyon.never_received(f"{ROOT}/villeurbanne/lum-1/config")
    assert lyon.never_received(f"{ROOT}/villeurbanne/lum-1/cmd")
    for site in sites:  # clear the retained configs
        assert platform.publish(f"{ROOT}/{site}/lum-1/config", b"", retain=True) in ACCEPTED


def test_a_gateway_reads_no_other_sites_telemetry(
    broker: Broker, clients: dict[str, Client]
) -> None:
    lyon = clients["lyon"]
    villeurbanne = Client(broker, "villeurbanne", broker.passwords["villeurbanne"])
    try:
        assert villeurbanne.connected() == 0
        assert lyon.subscribe(f"{ROOT}/+/+/up")[0] in (1, NOT_AUTHORIZED)
        assert villeurbanne.publish(f"{ROOT}/villeurbanne/lum-1/up", b"theirs") in ACCEPTED
        assert lyon.publish(f"{ROOT}/lyon/lum-1/up", b"ours") in ACCEPTED
        clients["platform"].received(f"{ROOT}/villeurbanne/lum-1/up", b"theirs")
        assert lyon.never_received(f"{ROOT}/villeurbanne/lum-1/up")
    finally:
        villeurbanne.close()


def test_anonymous_clients_and_wrong_passwords_are_refused_at_connect(broker: Broker) -> None:
    """Mosquitto 2.0 answers every refused CONNECT with 135 Not authorized (not 134)."""
    for user, password in (
        (None, None),
        ("lyon", "not-the-password"),
        ("nobody", "x"),
        (PLATFORM, broker.passwords["lyon"]),
    ):
        client = Client(broker, user, password)
        try:
            assert client.connected() == NOT_AUTHORIZED, (user, password)
        finally:
            client.close()

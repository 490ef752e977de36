"""TLS and credentials of a paho client (no broker needed)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge.mqtt import TLSConfig, configure_client, parse_broker_url, tls_context
from paho.mqtt.enums import CallbackAPIVersion


@pytest.fixture
def client() -> Iterator[mqtt.Client]:
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    yield c
    c.reinitialise()  # closes paho's socket pair now, not at gc time


def test_mqtts_verifies_the_chain_and_the_host_name(client: mqtt.Client) -> None:
    configure_client(client, parse_broker_url("mqtts://u:pw@h"))
    ctx = tls_context(TLSConfig())
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert not tls_context(TLSConfig(insecure=True)).check_hostname


def test_tls_options_with_a_plaintext_url_are_refused(client: mqtt.Client) -> None:
    with pytest.raises(ValueError, match="mqtts://"):
        configure_client(client, parse_broker_url("mqtt://h"), TLSConfig(ca_file="ca.pem"))


def test_a_key_needs_a_certificate() -> None:
    with pytest.raises(ValueError, match="needs a client certificate"):
        TLSConfig(key_file="k.pem").check()


def test_a_missing_ca_file_fails_at_configuration(client: mqtt.Client) -> None:
    with pytest.raises(FileNotFoundError):
        configure_client(client, parse_broker_url("mqtts://h"), TLSConfig(ca_file="/nonexistent"))

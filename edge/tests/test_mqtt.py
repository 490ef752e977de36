from __future__ import annotations

import pytest
from fieldline_edge.mqtt import BrokerURL, PublishError, check_publish, parse_broker_url
from paho.mqtt.client import MQTTMessageInfo
from paho.mqtt.enums import MQTTErrorCode


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1", BrokerURL("127.0.0.1", 1883)),
        ("mqtt://broker.local:1884", BrokerURL("broker.local", 1884)),
        ("mqtts://broker.example.com", BrokerURL("broker.example.com", 8883, tls=True)),
        ("mqtts://h:9999/", BrokerURL("h", 9999, tls=True)),
        ("mqtt://user:p%40ss@h:1", BrokerURL("h", 1, False, "user", "p@ss")),
        ("mqtt://user@h", BrokerURL("h", 1883, False, "user", None)),
        ("mqtt://[::1]:1883", BrokerURL("::1", 1883)),
    ],
)
def test_parse_broker_url(url: str, expected: BrokerURL) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h", "must start with mqtt:// or mqtts://"),
        ("h:1883", "must start with mqtt://"),
        ("mqtt://", "has no host"),
        ("mqtt://h:99999", "invalid port"),
        ("mqtt://h:0", "invalid port"),
        ("mqtt://h:abc", "invalid port"),
        ("mqtt://h/topic", "must not have a path"),
        ("mqtt://h?x=1", "must not have a path"),
    ],
)
def test_parse_broker_url_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_broker_url(url)


def test_broker_url_never_shows_password() -> None:
    url = parse_broker_url("mqtt://alice:s3cret@h:1883")
    assert "s3cret" not in str(url)
    assert "s3cret" not in repr(url)
    assert str(url) == "mqtt://alice:***@h:1883"


def test_check_publish() -> None:
    ok = MQTTMessageInfo(1)
    ok.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
    assert check_publish(ok, "t", 1) is ok

    queued = MQTTMessageInfo(2)
    queued.rc = MQTTErrorCode.MQTT_ERR_NO_CONN
    assert check_publish(queued, "t", 1) is queued
    assert queued.rc == MQTTErrorCode.MQTT_ERR_SUCCESS  # sent after reconnect

    lost = MQTTMessageInfo(3)
    lost.rc = MQTTErrorCode.MQTT_ERR_NO_CONN
    with pytest.raises(PublishError, match="on t failed"):
        check_publish(lost, "t", 0)  # QoS 0 is not kept while disconnected

    full = MQTTMessageInfo(4)
    full.rc = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
    with pytest.raises(PublishError) as exc_info:
        check_publish(full, "t", 1)
    assert exc_info.value.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE

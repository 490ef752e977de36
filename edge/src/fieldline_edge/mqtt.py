"""The agent's MQTT connection: broker URLs and a paho client with birth and last will.

Delivery: status and telemetry are published with QoS 1 (at least once). While
the connection is down paho keeps QoS 1 messages in memory and resends them after
reconnecting, with DUP set for those already sent (MQTT 3.1.1 §4.4); nothing is
kept across a restart of the process (the agent's spool does that, see spool.py).

MQTT 3.1.1 and 5 are both spoken; reconnects back off exponentially with jitter,
so a fleet that lost its broker does not reconnect in lockstep.

Unit of parallelism: one :class:`Connection` is one paho client with one network
thread (``loop_start``); any number of device publishers may share it.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
import urllib.parse
from typing import Callable, NamedTuple, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

#: Seconds between PINGREQs when idle; the broker declares the client dead (and
#: publishes its last will) after 1.5 times this without traffic (MQTT 3.1.1 §3.1.2.10).
KEEPALIVE_S = 30
#: First and longest wait between reconnect attempts; doubled after each failure,
#: then a random point in its upper half is taken ("equal jitter").
RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 60
PROTOCOLS = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}
#: How long :meth:`Connection.connect` waits for the broker's CONNACK.
CONNECT_TIMEOUT_S = 10.0
#: QoS 1 messages on the wire awaiting PUBACK at once (paho's default is 20).
MAX_INFLIGHT_MESSAGES = 20
#: QoS 1 messages paho keeps in memory (in flight plus queued); 0 means unlimited.
MAX_QUEUED_MESSAGES = 0
STATUS_QOS = 1
TELEMETRY_QOS = 1
DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883

_SCHEMES = {"mqtt": False, "mqtts": True}


class MqttError(Exception):
    """Base class of this module's errors.

    ``MqttError`` ─┬─ ``ConnectError``: the broker cannot be reached or refused us.
                   └─ ``PublishError``: paho did not accept a message for delivery.
    """


class ConnectError(MqttError):
    pass


class PublishError(MqttError):
    def __init__(self, topic: str, rc: int) -> None:
        super().__init__(f"publish on {topic} failed: {mqtt.error_string(rc)}")
        self.topic = topic
        self.rc = rc


class BrokerURL(NamedTuple):
    """A parsed ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...`` URL."""

    host: str
    port: int
    tls: bool = False
    username: Optional[str] = None
    password: Optional[str] = None

    def __str__(self) -> str:
        auth = ""
        if self.username is not None:
            auth = urllib.parse.quote(self.username, safe="")
            auth += ":***@" if self.password is not None else "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{host}:{self.port}"

    def __repr__(self) -> str:  # never show the password
        return f"BrokerURL({str(self)!r})"


def parse_broker_url(url: str) -> BrokerURL:
    """Parse a broker URL; raise ``ValueError`` with a one-line reason if it is not one.

    ``mqtt://`` defaults to port 1883, ``mqtts://`` (TLS; CA certificates from
    :class:`TLSConfig`, else the system's) to 8883. User and password may be percent-encoded.
    """
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
    tls = _SCHEMES[parts.scheme]
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {url!r} must not have a path, query or fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"broker URL {url!r} has an invalid port") from None
    if port == 0:
        raise ValueError(f"broker URL {url!r} has an invalid port")
    username = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return BrokerURL(
        host=parts.hostname,
        port=port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
        tls=tls,
        username=username,
        password=password,
    )


class TLSConfig(NamedTuple):
    """TLS material for an ``mqtts://`` broker; ``None`` fields use the defaults.

    ``ca_file``: the CA certificates (PEM) the broker's certificate must chain
    to; default: the system's. ``cert_file``/``key_file``: a client certificate
    and its key (PEM) for brokers that require one (``key_file`` may be omitted
    if ``cert_file`` holds the key too). ``insecure`` skips the check that the
    certificate names the host we connected to (the chain is still verified):
    only for a broker reached by an address its certificate does not list.
    """

    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    insecure: bool = False

    def check(self) -> "TLSConfig":
        """Return ``self``; raise ``ValueError`` if a key has no certificate."""
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("a client key file needs a client certificate file")
        return self


def configure_client(
    client: mqtt.Client, broker: BrokerURL, tls: Optional[TLSConfig] = None
) -> mqtt.Client:
    """Give ``client`` the broker's user and password and, for ``mqtts://``, TLS.

    Raises ``ValueError`` for TLS options with an ``mqtt://`` URL: a client
    asked to use a CA must never fall back to plaintext without saying so.
    """
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if tls is not None and not broker.tls:
        raise ValueError(f"TLS options given for {broker}: use an mqtts:// broker URL")
    if broker.tls:
        client.tls_set_context(tls_context((tls or TLSConfig()).check()))
    return client


def tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """A client context that verifies the broker's chain (and its name unless ``insecure``).

    Raises ``OSError``/``ssl.SSLError`` if a file cannot be read.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure:
        context.check_hostname = False
    context.sslsocket_class = _ClosingSSLSocket
    return context


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the handshake fails.

    paho (2.2) drops the socket of a failed handshake (an unknown CA, a refused
    client certificate) without closing it: it leaks until garbage collection,
    once per reconnect attempt.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def check_publish(info: mqtt.MQTTMessageInfo, topic: str, qos: int) -> mqtt.MQTTMessageInfo:
    """Return ``info`` if paho accepted the message for delivery, else raise :class:`PublishError`.

    A QoS > 0 message published while disconnected is accepted: paho queues it
    and sends it after reconnecting. paho leaves ``rc`` at ``MQTT_ERR_NO_CONN``
    for such a message, which makes ``is_published()`` raise even after its
    PUBACK arrived, so ``rc`` is reset to success here.
    """
    rc = info.rc
    if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
        return info
    if rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0:
        log.debug("not connected: %s (mid %d) queued until reconnect", topic, info.mid)
        info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        return info
    raise PublishError(topic, rc)


def reconnect_delay_s(
    failures: int,
    rng: random.Random,
    min_s: int = RECONNECT_MIN_DELAY_S,
    max_s: int = RECONNECT_MAX_DELAY_S,
) -> int:
    """Seconds to wait after ``failures`` consecutive failed attempts (>= 1).

    Whole seconds, because that is what paho's reconnect timer takes.
    """
    cap = min(max_s, min_s * 2 ** min(max(failures - 1, 0), 30))
    return rng.randint(max(min_s, cap // 2), cap)


class Message(NamedTuple):
    """A message to publish later: a last will, or a birth built at connect time."""

    topic: str
    payload: bytes
    qos: int = STATUS_QOS
    retain: bool = True


class Connection:
    """One paho client (MQTT 3.1.1 or 5) with a last will, birth messages and reconnect backoff.

    Births are ``(topic, payload factory)`` pairs published retained with QoS 1
    from ``on_connect``, so after every reconnect the broker again holds
    ``online`` (the last will may have replaced it meanwhile). :meth:`close`
    disconnects cleanly, so the broker discards the will.

    ``on_published(mid, ok)`` is called from paho's network thread for every
    PUBACK; ``ok`` is False when an MQTT 5 broker acknowledged with a failure
    reason code (e.g. not authorized). ``on_connected()`` is called after each
    successful CONNACK, after the births.
    """

    def __init__(
        self,
        broker: BrokerURL,
        client_id: str,
        *,
        will: Optional[Message] = None,
        tls: Optional[TLSConfig] = None,
        max_inflight: int = MAX_INFLIGHT_MESSAGES,
        max_queued: int = MAX_QUEUED_MESSAGES,
        protocol: str = "3.1.1",
        keepalive_s: int = KEEPALIVE_S,
        on_published: Optional[Callable[[int, bool], None]] = None,
        on_connected: Optional[Callable[[], None]] = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"MQTT protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}"
            )
        self.broker = broker
        self.client_id = client_id
        self.protocol = protocol
        self.keepalive_s = keepalive_s
        self.on_published = on_published
        self.on_connected = on_connected
        self._failures = 0
        self._rng = random.Random()
        self._births: list[tuple[str, Callable[[], bytes]]] = []
        self._connected = threading.Event()
        self._refused: Optional[str] = None
        self._started = False
        self._closing = False
        if protocol == "5":
            # MQTT 5 has clean_start (given at connect) instead of clean_session.
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
            )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                clean_session=True,
            )
        paho_log = logging.getLogger("paho.mqtt")
        # Only when debugging: paho 2.2 logs an ERROR from its network thread on
        # every clean disconnect ("Client is not connected"), which is noise.
        if paho_log.isEnabledFor(logging.DEBUG):
            client.enable_logger(paho_log)
        configure_client(client, broker, tls)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.reconnect_delay_set(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S)
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(max_queued)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        self.client = client

    def add_birth(self, topic: str, payload: Callable[[], bytes]) -> None:
        """Publish ``payload()`` retained with QoS 1 on ``topic`` after every connect."""
        self._births.append((topic, payload))
        if self._connected.is_set():
            self._publish_birth(topic, payload)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Start the network thread and connect in the background, retrying forever."""
        self.client.connect_async(self.broker.host, self.broker.port, self.keepalive_s)
        self.client.loop_start()
        self._started = True

    def connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Connect now and wait for CONNACK; raise :class:`ConnectError` if that fails.

        Once connected, the network thread reconnects by itself with backoff.
        """
        try:
            self.client.connect(self.broker.host, self.broker.port, self.keepalive_s)
        except (OSError, ValueError) as exc:  # refused, unresolvable, TLS, timeout
            raise ConnectError(f"cannot connect to {self.broker}: {exc}") from None
        self.client.loop_start()
        self._started = True
        if not self.wait_connected(timeout_s):
            reason = self._refused or f"no CONNACK within {timeout_s:g} s"
            self.close()
            raise ConnectError(f"cannot connect to {self.broker}: {reason}")

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected; ``False`` if the broker refused us or time ran out."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            # Short waits so that a refusal (bad credentials) ends the wait early.
            if self._connected.wait(min(0.05, max(remaining, 0.0))):
                return True
            if self._refused is not None or remaining <= 0:
                return False

    def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        """Hand a message to paho; raise :class:`PublishError` if it was not accepted."""
        return check_publish(self.client.publish(topic, payload, qos, retain), topic, qos)

    def close(self) -> None:
        """Disconnect cleanly (the broker drops the last will) and stop the network thread."""
        self._closing = True
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()
            self._started = False
        self._connected.clear()
        # paho closes its wake-up socket pair only in Client.__del__; when the client
        # is collected in a reference cycle the sockets may be finalized first and
        # raise ResourceWarning. reinitialise() closes every socket now.
        self.client.reinitialise(self.client_id)

    # ------------------------------------------------------------------ callbacks

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        if reason_code.is_failure:
            self._refused = f"broker refused the connection: {reason_code}"
            log.error("%s: %s", self.broker, self._refused)
            return
        self._refused = None
        self._failures = 0
        self.client.reconnect_delay_set(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S)
        log.info("connected to %s as %s (MQTT %s)", self.broker, self.client_id, self.protocol)
        self._connected.set()
        for topic, payload in list(self._births):
            self._publish_birth(topic, payload)
        if self.on_connected is not None:
            self.on_connected()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if not self._closing:
            delay = self._back_off()
            if was_connected:
                log.warning(
                    "lost connection to %s (%s); reconnecting in %d s",
                    self.broker,
                    reason_code,
                    delay,
                )
            elif self._refused is None:
                # Closed before CONNACK: e.g. a broker that wants a client
                # certificate ends the TLS session after the handshake.
                log.warning(
                    "connection to %s closed before it was accepted (%s); retrying in %d s",
                    self.broker,
                    reason_code,
                    delay,
                )

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        # paho swallows the OSError here; the next attempt follows the backoff.
        delay = self._back_off()
        log.warning("cannot reach %s; retrying in %d s", self.broker, delay)

    def _back_off(self) -> int:
        # paho calls this before it waits for the next attempt; its own timer
        # doubles without jitter, so set the next wait exactly.
        self._failures += 1
        delay = reconnect_delay_s(self._failures, self._rng)
        self.client.reconnect_delay_set(delay, delay)
        return delay

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        if self.on_published is not None:
            self.on_published(mid, not reason_code.is_failure)

    def _publish_birth(self, topic: str, payload: Callable[[], bytes]) -> None:
        try:
            self.publish(topic, payload(), STATUS_QOS, retain=True)
        except PublishError as exc:
            log.error("birth message: %s", exc)

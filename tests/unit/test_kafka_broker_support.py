"""The test broker's pure helpers (the broker itself is exercised in tests/integration)."""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kafka import KafkaConsumer, KafkaProducer

from tests.support.kafka_broker import (
    SECURED_PROTOCOLS,
    BrokerPorts,
    KafkaBroker,
    KafkaBrokerError,
    SecuredListener,
    SecuredProtocol,
    _free_ports,
    new_cluster_id,
    scram_credential_argument,
    server_properties,
)
from tests.support.tls import make_server_tls
from waxhouse.settings import load_settings

PORTS = BrokerPorts(
    broker=9092, controller=9093, sasl_plaintext=9094, sasl_ssl=9095, proxied=9096, proxy=9097
)
PASSWORD = "pw-" + "7" * 29


def parse(text: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")]
    props = {key: value for key, value in pairs}
    assert len(props) == len(pairs), "a key set twice"
    return props


def listeners(value: str) -> dict[str, str]:
    return dict(item.split("://") for item in value.split(","))


def test_cluster_ids_are_16_byte_ids_that_never_look_like_an_option() -> None:
    ids = [new_cluster_id() for _ in range(5_000)]  # ~1 in 64 raw draws starts with "-"
    assert all(not i.startswith("-") and len(i) == 22 for i in ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)


def test_every_listener_binds_loopback_and_proxied_is_advertised_at_the_proxy(
    tmp_path: Path,
) -> None:
    props = parse(server_properties(PORTS, tmp_path / "data", keystore=tmp_path / "k.pem"))

    assert listeners(props["listeners"]) == {
        "PLAINTEXT": "127.0.0.1:9092",
        "CONTROLLER": "127.0.0.1:9093",
        "SASL_PLAINTEXT": "127.0.0.1:9094",
        "SASL_SSL": "127.0.0.1:9095",
        "PROXIED": "127.0.0.1:9096",
    }
    assert listeners(props["advertised.listeners"]) == {
        "PLAINTEXT": "127.0.0.1:9092",
        "SASL_PLAINTEXT": "127.0.0.1:9094",
        "SASL_SSL": "127.0.0.1:9095",
        "PROXIED": "127.0.0.1:9097",  # where the test's proxy listens, not the broker
    }
    assert dict(p.split(":") for p in props["listener.security.protocol.map"].split(",")) == {
        "PLAINTEXT": "PLAINTEXT",
        "CONTROLLER": "PLAINTEXT",
        "SASL_PLAINTEXT": "SASL_PLAINTEXT",
        "SASL_SSL": "SASL_SSL",
        "PROXIED": "PLAINTEXT",
    }
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["log.dirs"] == str(tmp_path / "data")


def test_sasl_listeners_take_scram_sha_512_and_tls_comes_from_the_pem_keystore(
    tmp_path: Path,
) -> None:
    props = parse(server_properties(PORTS, tmp_path / "data", keystore=tmp_path / "k.pem"))

    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    scram_module = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    for listener in ("sasl_plaintext", "sasl_ssl"):
        assert props[f"listener.name.{listener}.scram-sha-512.sasl.jaas.config"] == scram_module
    assert props["listener.name.sasl_ssl.ssl.keystore.type"] == "PEM"
    assert props["listener.name.sasl_ssl.ssl.keystore.location"] == str(tmp_path / "k.pem")
    assert props["listener.name.sasl_ssl.ssl.client.auth"] == "none"
    assert not [key for key in props if "password" in key]  # none needed, none written


def test_the_scram_user_is_stored_salted_in_the_storage_tools_syntax() -> None:
    salt = bytes(range(16))
    argument = scram_credential_argument("alice", PASSWORD, salt)

    found = re.fullmatch(
        r'SCRAM-SHA-512=\[name=alice,iterations=4096,salt="([^"]+)",saltedpassword="([^"]+)"\]',
        argument,
    )
    assert found, argument
    assert base64.b64decode(found.group(1)) == salt
    assert len(base64.b64decode(found.group(2))) == 64  # a SHA-512 output
    assert PASSWORD not in argument
    assert scram_credential_argument("alice", PASSWORD, bytes(16)) != argument
    assert scram_credential_argument("alice", PASSWORD + "x", salt) != argument


def test_free_ports_are_six_distinct_ports() -> None:
    ports = _free_ports()
    values = [
        ports.broker,
        ports.controller,
        ports.sasl_plaintext,
        ports.sasl_ssl,
        ports.proxied,
        ports.proxy,
    ]
    assert len(set(values)) == 6 and all(0 < port < 65536 for port in values)


def test_a_broker_with_its_own_properties_has_no_secured_listeners() -> None:
    broker = KafkaBroker(properties=lambda ports, data_dir: "")
    assert not broker.secured
    with pytest.raises(KafkaBrokerError, match="no secured or proxied listeners"):
        _ = broker.sasl_bootstrap_servers
    with pytest.raises(KafkaBrokerError, match="no secured or proxied listeners"):
        _ = broker.proxied_bootstrap_servers


def test_two_brokers_get_different_passwords_that_no_repr_shows() -> None:
    first, second = KafkaBroker(), KafkaBroker()
    assert first.secured and first.sasl_password != second.sasl_password
    assert len(first.sasl_password) >= 32
    listener = SecuredListener("SASL_SSL", "127.0.0.1:1", "u", first.sasl_password, Path("/ca"))
    assert first.sasl_password not in repr(listener)


@pytest.mark.parametrize("protocol", SECURED_PROTOCOLS)
def test_a_listeners_client_settings_are_the_clients_own_names(protocol: SecuredProtocol) -> None:
    listener = SecuredListener(protocol, "127.0.0.1:1", "u", PASSWORD, Path("/tmp/ca.pem"))
    options = listener.kafka_python_options()

    for client in (KafkaProducer, KafkaConsumer):
        assert set(options) <= set(client.DEFAULT_CONFIG)
    assert options["security_protocol"] == protocol
    assert ("ssl_cafile" in options) == (protocol == "SASL_SSL")
    assert listener.kafka_python_options(password="wrong")["sasl_plain_password"] == "wrong"
    config = listener.confluent_config()
    assert config["security.protocol"] == protocol
    assert config["sasl.password"] == PASSWORD
    assert ("ssl.ca.location" in config) == (protocol == "SASL_SSL")
    # The flow reads exactly these settings back as the same kafka-python options.
    settings = load_settings(listener.flow_env())
    assert settings.kafka_bootstrap_servers == "127.0.0.1:1"
    assert settings.kafka_security.client_options() == options
    assert PASSWORD not in repr(settings)


def test_the_server_certificate_is_signed_by_the_ca_for_loopback_names(tmp_path: Path) -> None:
    files = make_server_tls(tmp_path / "tls")

    ca = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
    pem = files.keystore.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    server, chained_ca = x509.load_pem_x509_certificates(pem)
    assert chained_ca == ca
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    key = serialization.load_pem_private_key(pem, password=None)
    assert key.public_key() == server.public_key()
    assert files.keystore.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("server_name", ["127.0.0.1", "localhost"])
def test_a_client_trusting_the_ca_completes_a_verified_handshake(
    tmp_path: Path, server_name: str
) -> None:
    files = make_server_tls(tmp_path / "tls")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.keystore)
    client_context = ssl.create_default_context(cafile=str(files.ca_file))  # checks the name

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            conn, _ = listener.accept()
            with server_context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(tls.recv(5))

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            tls.sendall(b"hello")
            assert tls.recv(5) == b"hello"
        server.join(10)


def test_a_client_that_trusts_another_ca_refuses_the_certificate(tmp_path: Path) -> None:
    files = make_server_tls(tmp_path / "tls")
    other = make_server_tls(tmp_path / "other")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.keystore)
    client_context = ssl.create_default_context(cafile=str(other.ca_file))

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn, contextlib.suppress(ssl.SSLError, OSError):  # the client hangs up
                server_context.wrap_socket(conn, server_side=True)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            client_context.wrap_socket(raw, server_hostname="127.0.0.1")
        server.join(10)

#!/usr/bin/env python3
"""Make a local CA and one certificate per node, for TLS tests and local clusters.

    .venv/bin/python scripts/make_certs.py --out certs --host 127.0.0.1 --host localhost n1 n2 n3

writes certs/ca.pem (+ ca.key), and certs/<node>.pem + certs/<node>.key for every node. Each node
certificate is valid for every --host (as DNS name or IP SAN) and for both server and client auth
(a node is a TLS client when it dials its peers). Then in cluster.yaml:

    tls:
      ca: ./certs/ca.pem
      cert: {n1: ./certs/n1.pem, n2: ./certs/n2.pem, n3: ./certs/n3.pem}
      key:  {n1: ./certs/n1.key, n2: ./certs/n2.key, n3: ./certs/n3.key}

For testing only: keys are written unencrypted (mode 0600); in production use your own PKI.
Needs the ``cryptography`` package (in the test extra: ./scripts/setup.sh installs it).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: Key) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def make_ca(cn: str, days: int) -> tuple[Key, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_node_cert(
    ca_key: Key, ca: x509.Certificate, node: str, hosts: list[str], days: int
) -> tuple[Key, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    start, end = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(node))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("nodes", nargs="+", help="node ids, e.g. n1 n2 n3")
    ap.add_argument("--out", default="certs", help="output directory (default ./certs)")
    ap.add_argument(
        "--host",
        action="append",
        help="host name or IP each certificate is valid for (repeat; default 127.0.0.1)",
    )
    ap.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    ap.add_argument("--ca-name", default="raftstate local CA")
    args = ap.parse_args(argv)
    hosts = args.host or ["127.0.0.1"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca = make_ca(args.ca_name, args.days)
    _write_key(out / "ca.key", ca_key)
    _write_cert(out / "ca.pem", ca)
    for node in args.nodes:
        key, cert = make_node_cert(ca_key, ca, node, hosts, args.days)
        _write_key(out / f"{node}.key", key)
        _write_cert(out / f"{node}.pem", cert)
    print(f"wrote {out}/ca.pem and a certificate + key per node ({', '.join(args.nodes)}) for {hosts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

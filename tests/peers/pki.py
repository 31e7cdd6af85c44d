"""Client certificates for the mTLS tests, made with `cryptography`.

  python pki.py --dir DIR --client NAME... [--rogue NAME...]
writes DIR/ca.pem (the agents' CA), DIR/NAME.pem and DIR/NAME.key for each client (CN=NAME, URI SAN
spiffe://test/agent/NAME), and DIR/rogue-NAME.pem/.key issued by a CA the gateway does not trust.
Prints READY 0 when done.
"""

import argparse
import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn):
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_client(ca, ca_key, cn):
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://test/agent/{cn}")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def write(directory, stem, cert, key=None):
    with open(os.path.join(directory, stem + ".pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        with open(os.path.join(directory, stem + ".key"), "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--client", action="append", default=[])
    ap.add_argument("--rogue", action="append", default=[])
    args = ap.parse_args()
    ca, ca_key = make_ca("portcullis test agents ca")
    write(args.dir, "ca", ca)
    for cn in args.client:
        write(args.dir, cn, *make_client(ca, ca_key, cn))
    rogue, rogue_key = make_ca("portcullis test agents ca")
    for cn in args.rogue:
        write(args.dir, "rogue-" + cn, *make_client(rogue, rogue_key, cn))
    print("READY 0", flush=True)


if __name__ == "__main__":
    main()

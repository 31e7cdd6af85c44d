"""A test identity provider: a JWKS over HTTPS and a loopback control port that mints tokens.

Tokens are signed with PyJWT and keys made with `cryptography` (software we did not write), so the
gateway's verifier is checked against an independent implementation of RFC 7515/7517/7519.

  python idp.py --dir DIR
prints `READY <control port>`. The JWKS listener (HTTPS, certificate issued by a CA written to
DIR/ca.pem for 127.0.0.1) serves GET /jwks. The control port (plain HTTP, loopback) answers:
  GET  /info                  {"jwks_port", "ca", "fingerprint"}
  POST /mint   {"kid", "claims", "header"?, "forge"?}   -> {"token"}
       forge: "none" (unsigned), "hs256-public" (HMAC keyed with the RSA public key PEM),
              "stranger" (signed by a key that is not in the JWKS, under the given kid)
  POST /rotate {"kid", "alg"}  add a new signing key to the JWKS
  POST /down, POST /up          make GET /jwks fail with 503, or serve again
  GET  /hits                  {"hits": GET /jwks requests so far}
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ALG_OF = {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}


def new_key(alg):
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


def public_jwk(kid, alg, key):
    algo = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[alg]
    jwk = json.loads(algo.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": alg})
    return jwk


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tls_files(directory):
    """A CA and a server certificate for 127.0.0.1 issued by it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portcullis test idp ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {n: os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem")}
    with open(paths["ca.pem"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert.pem"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key.pem"], "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return paths, fingerprint


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.keys = {}  # kid -> (alg, private key)
        self.down = False
        self.hits = 0
        for kid, alg in (("r1", "RS256"), ("e1", "ES256"), ("d1", "EdDSA")):
            self.keys[kid] = (alg, new_key(alg))

    def jwks(self):
        with self.lock:
            return {"keys": [public_jwk(k, a, key) for k, (a, key) in self.keys.items()]}

    def mint(self, req):
        kid = req.get("kid", "r1")
        claims = req["claims"]
        header = dict(req.get("header", {}))
        forge = req.get("forge")
        with self.lock:
            alg, key = self.keys.get(kid, (req.get("alg", "RS256"), None))
            rsa_key = self.keys["r1"][1]
        if forge == "none":
            head = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
            return f"{head}.{b64(json.dumps(claims).encode())}."
        if forge == "hs256-public":
            pem = rsa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
            signing_input = f"{head}.{b64(json.dumps(claims).encode())}"
            sig = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
            return f"{signing_input}.{b64(sig)}"
        if forge == "stranger" or key is None:
            key = new_key(alg)
        header.setdefault("kid", kid)
        return jwt.encode(claims, key, algorithm=alg, headers=header)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()
    state = State()
    paths, fingerprint = tls_files(args.dir)

    class Jwks(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            with state.lock:
                state.hits += 1
                down = state.down
            if self.path != "/jwks" or down:
                self.send_response(503 if down else 404)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            body = json.dumps(state.jwks()).encode()
            self.send_response(200)
            self.send_header("content-type", "application/jwk-set+json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    jwks_srv = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(paths["cert.pem"], paths["key.pem"])
    jwks_srv.socket = ctx.wrap_socket(jwks_srv.socket, server_side=True)
    threading.Thread(target=jwks_srv.serve_forever, daemon=True).start()

    class Control(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, obj):
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/info":
                self.reply(
                    {"jwks_port": jwks_srv.server_address[1], "ca": paths["ca.pem"], "fingerprint": fingerprint}
                )
            elif self.path == "/hits":
                with state.lock:
                    self.reply({"hits": state.hits})
            else:
                self.send_error(404)

        def do_POST(self):
            n = int(self.headers.get("content-length", "0"))
            req = json.loads(self.rfile.read(n) or b"{}")
            if self.path == "/mint":
                self.reply({"token": state.mint(req)})
            elif self.path == "/rotate":
                with state.lock:
                    state.keys[req["kid"]] = (req["alg"], new_key(req["alg"]))
                self.reply({"kids": list(state.keys)})
            elif self.path in ("/down", "/up"):
                with state.lock:
                    state.down = self.path == "/down"
                self.reply({"down": state.down})
            else:
                self.send_error(404)

    control = ThreadingHTTPServer(("127.0.0.1", 0), Control)
    print(f"READY {control.server_address[1]}", flush=True)
    control.serve_forever()


if __name__ == "__main__":
    main()

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
  POST /exchange {"client_id", "client_secret", "refuse"?, "expires_in"?}   configure the token endpoint
  POST /document {"body", "status"?, "location"?}   what GET /doc on the HTTPS listener answers (tests fetch
                                                   OpenAPI documents over verified TLS from it)
  GET  /exchanges             {"exchanges": token exchanges answered so far (issued or refused)}

The HTTPS listener also serves POST /token: OAuth 2.0 Token Exchange (RFC 8693). The client authenticates
with HTTP Basic (RFC 6749 §2.3.1); the subject token must be an access token this IdP signed and that has
not expired (verified with PyJWT against the JWKS keys). The issued token is a JWT for the requested
`resource` (as `aud`), with the subject's `sub` and an `act` claim naming the client (RFC 8693 §4.1).
A refusal echoes the subject token in `error_description`, as a careless server might, so tests can
check that the gateway never passes it on.
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
import time
import urllib.parse
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
        self.exchange = {"client_id": None, "client_secret": None, "refuse": False, "expires_in": 300}
        self.exchanges = 0
        self.document = {"body": "", "status": 404, "location": None}
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
            if self.path == "/doc":
                with state.lock:
                    doc = dict(state.document)
                body = doc["body"].encode()
                self.send_response(doc["status"])
                if doc.get("location"):
                    self.send_header("location", doc["location"])
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
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

        def send_json(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("cache-control", "no-store")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("content-length", "0"))
            raw = self.rfile.read(n)
            if self.path != "/token":
                return self.send_json(404, {"error": "not_found"})
            form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode(), keep_blank_values=True).items()}
            with state.lock:
                state.exchanges += 1
                cfg = dict(state.exchange)
            auth = self.headers.get("authorization", "")
            try:
                cid, secret = base64.b64decode(auth.split(" ", 1)[1]).decode().split(":", 1)
                cid, secret = urllib.parse.unquote(cid), urllib.parse.unquote(secret)
            except Exception:
                cid, secret = None, None
            if cfg["client_id"] is None or cid != cfg["client_id"] or secret != cfg["client_secret"]:
                return self.send_json(401, {"error": "invalid_client"})
            if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange":
                return self.send_json(400, {"error": "unsupported_grant_type"})
            subject = form.get("subject_token", "")
            if cfg["refuse"]:
                return self.send_json(
                    400, {"error": "invalid_grant", "error_description": f"refused subject token {subject}"}
                )
            try:
                kid = jwt.get_unverified_header(subject).get("kid")
                with state.lock:
                    alg, key = state.keys[kid]
                claims = jwt.decode(
                    subject, key.public_key(), algorithms=[alg], options={"verify_aud": False}
                )
            except Exception as e:
                return self.send_json(400, {"error": "invalid_grant", "error_description": type(e).__name__})
            now = int(time.time())
            issued = {
                "iss": "https://idp.test/token-exchange",
                "sub": claims.get("sub"),
                "aud": form.get("resource") or form.get("audience"),
                "act": {"sub": cid},
                "iat": now,
                "exp": now + int(cfg["expires_in"]),
                "jti": b64(os.urandom(12)),
            }
            with state.lock:
                signing = state.keys["r1"][1]
            token = jwt.encode(issued, signing, algorithm="RS256", headers={"kid": "r1"})
            self.send_json(
                200,
                {
                    "access_token": token,
                    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                    "token_type": "Bearer",
                    "expires_in": int(cfg["expires_in"]),
                },
            )

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
            elif self.path == "/exchanges":
                with state.lock:
                    self.reply({"exchanges": state.exchanges})
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
            elif self.path == "/document":
                with state.lock:
                    state.document = {"body": req["body"], "status": req.get("status", 200), "location": req.get("location")}
                self.reply({"ok": True})
            elif self.path == "/exchange":
                with state.lock:
                    state.exchange.update(req)
                self.reply(state.exchange)
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

//! Verifying JWT bearer tokens from an external identity provider against its JSON Web Key Set.
//!
//! Pure: the appliance fetches and caches the JWKS and passes it in with `now`; this module parses keys,
//! checks one token and names the agent it speaks for. Only asymmetric algorithms are accepted (RS256,
//! ES256, EdDSA over Ed25519), each only with a key of its own type, so `alg: none` and the classic
//! "HS256 keyed with the RSA public key" confusion fail before any signature is computed. The signature
//! is checked before any claim is trusted; the claims then must name the configured issuer, an audience
//! that is this gateway's resource URI (RFC 8707), and a validity window around `now` (with a bounded
//! leeway for clock skew).

use std::fmt;

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

/// Longest token accepted, so a huge header costs no decoding.
pub const TOKEN_BYTES_MAX: usize = 8 << 10;
/// Largest clock skew an issuer may be configured to tolerate.
pub const LEEWAY_MAX_S: u64 = 300;

/// A signature algorithm the gateway accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    pub fn parse(name: &str) -> Option<Alg> {
        match name {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            "EdDSA" | "Ed25519" => Some(Alg::EdDsa),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    pub const ALL: [Alg; 3] = [Alg::Rs256, Alg::Es256, Alg::EdDsa];
}

#[derive(Clone, PartialEq, Eq)]
enum KeyMaterial {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point `04 || x || y`.
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl KeyMaterial {
    fn alg(&self) -> Alg {
        match self {
            KeyMaterial::Rsa { .. } => Alg::Rs256,
            KeyMaterial::P256(_) => Alg::Es256,
            KeyMaterial::Ed25519(_) => Alg::EdDsa,
        }
    }
}

/// One verification key of a JWKS.
#[derive(Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    key: KeyMaterial,
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("alg", &self.key.alg())
            .finish()
    }
}

/// The verification keys of one issuer, as its JWKS endpoint last listed them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Jwks {
    keys: Vec<Jwk>,
    /// Keys of the document this gateway cannot use (other key types, encryption keys, bad members).
    pub skipped: usize,
}

/// Why a JWKS document was refused as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksError {
    NotJson(String),
    /// No `keys` array at the top level.
    NoKeys,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::NotJson(e) => write!(f, "JWKS is not JSON: {e}"),
            JwksError::NoKeys => f.write_str("JWKS has no `keys` array"),
        }
    }
}

impl std::error::Error for JwksError {}

impl Jwks {
    /// Parse a JWKS document (RFC 7517). Keys the gateway cannot verify with are skipped and counted,
    /// not fatal: an identity provider may list encryption or symmetric keys beside its signing keys.
    pub fn parse(bytes: &[u8]) -> Result<Jwks, JwksError> {
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| JwksError::NotJson(e.to_string()))?;
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NoKeys)?;
        let mut jwks = Jwks::default();
        for k in list {
            match parse_jwk(k) {
                Some(jwk) => jwks.keys.push(jwk),
                None => jwks.skipped += 1,
            }
        }
        Ok(jwks)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref())
    }

    /// The key a token names: by `kid`; without one, the only key that fits the algorithm.
    fn select(&self, kid: Option<&str>, alg: Alg) -> Result<&Jwk, JwtError> {
        match kid {
            Some(kid) => {
                let k = self
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or(JwtError::UnknownKey)?;
                if k.key.alg() == alg {
                    Ok(k)
                } else {
                    Err(JwtError::KeyMismatch)
                }
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.key.alg() == alg);
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Ok(k),
                    (None, _) => Err(JwtError::UnknownKey),
                    (Some(_), Some(_)) => Err(JwtError::Malformed("no kid and several keys fit")),
                }
            }
        }
    }
}

fn parse_jwk(k: &Value) -> Option<Jwk> {
    let s = |name: &str| k.get(name).and_then(Value::as_str);
    if let Some(u) = s("use") {
        if u != "sig" {
            return None;
        }
    }
    let key = match s("kty")? {
        "RSA" => {
            let n = strip_zeros(b64url(s("n")?)?);
            let e = strip_zeros(b64url(s("e")?)?);
            // Below 2048 bits is refused by the verifier anyway; refusing here keeps the key out.
            if n.len() < 256 || n.len() > 1024 || e.is_empty() || e.len() > 8 {
                return None;
            }
            KeyMaterial::Rsa { n, e }
        }
        "EC" if s("crv")? == "P-256" => {
            let (x, y) = (b64url(s("x")?)?, b64url(s("y")?)?);
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            KeyMaterial::P256(point)
        }
        "OKP" if s("crv")? == "Ed25519" => {
            let x = b64url(s("x")?)?;
            if x.len() != 32 {
                return None;
            }
            KeyMaterial::Ed25519(x)
        }
        _ => return None,
    };
    // A key that declares an algorithm is used only with that one.
    if let Some(alg) = s("alg") {
        if Alg::parse(alg) != Some(key.alg()) {
            return None;
        }
    }
    Some(Jwk {
        kid: s("kid").map(str::to_owned),
        key,
    })
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let lead = v.iter().take_while(|b| **b == 0).count();
    v.drain(..lead);
    v
}

/// Strict unpadded base64url (RFC 7515 §2): other alphabets, padding and stray bits are refused.
pub fn b64url(s: &str) -> Option<Vec<u8>> {
    crate::base64::url_strict(s)
}

// ------------------------------------------------------------------ tokens

/// What a token must satisfy for one configured issuer.
#[derive(Clone, Debug)]
pub struct Issuer {
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values: this gateway's resource URI(s). A token must name at least one.
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, at most `LEEWAY_MAX_S`.
    pub leeway_s: u64,
    /// The claim whose string value is the registered agent's name (`sub`, `client_id`, `azp`, ...).
    pub agent_claim: String,
}

/// Why a token was refused. All of these are `unauthenticated` on the wire; the code goes to logs and
/// metrics so an operator can tell a clock problem from an attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtError {
    TooLarge,
    Malformed(&'static str),
    /// `alg` is not one this issuer accepts (`none`, HMAC, unknown, or not configured).
    Algorithm,
    /// A `crit` header extension, which this verifier does not implement.
    CriticalHeader,
    /// No key of the JWKS has the token's `kid` (the caller may refresh the JWKS and try again).
    UnknownKey,
    /// The `kid` names a key of another type than `alg` needs.
    KeyMismatch,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    NoExpiry,
    Expired,
    NotYetValid,
    /// Issued in the future (beyond the leeway).
    IssuedInFuture,
    /// The agent claim is missing or not a non-empty string.
    NoAgentClaim,
}

impl JwtError {
    pub const fn code(self) -> &'static str {
        match self {
            JwtError::TooLarge => "token_too_large",
            JwtError::Malformed(_) => "token_malformed",
            JwtError::Algorithm => "token_algorithm",
            JwtError::CriticalHeader => "token_crit",
            JwtError::UnknownKey => "token_unknown_key",
            JwtError::KeyMismatch => "token_key_mismatch",
            JwtError::BadSignature => "token_bad_signature",
            JwtError::WrongIssuer => "token_wrong_issuer",
            JwtError::WrongAudience => "token_wrong_audience",
            JwtError::NoExpiry => "token_no_expiry",
            JwtError::Expired => "token_expired",
            JwtError::NotYetValid => "token_not_yet_valid",
            JwtError::IssuedInFuture => "token_issued_in_future",
            JwtError::NoAgentClaim => "token_no_agent_claim",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed(why) => write!(f, "{}: {why}", self.code()),
            _ => f.write_str(self.code()),
        }
    }
}

impl std::error::Error for JwtError {}

/// Whether a bearer token has the shape of a JWS compact serialisation (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
        && token.starts_with("eyJ")
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn decode_json(part: &str, what: &'static str) -> Result<Map<String, Value>, JwtError> {
    let bytes = b64url(part).ok_or(JwtError::Malformed(what))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed(what)),
    }
}

fn split(token: &str) -> Result<(&str, &str, &str), JwtError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => Ok((h, p, s)),
        _ => Err(JwtError::Malformed("not three parts")),
    }
}

/// The `iss` a token claims, unverified: only to choose which issuer's keys verify it.
pub fn claimed_issuer(token: &str) -> Result<String, JwtError> {
    let (_, payload, _) = split(token)?;
    decode_json(payload, "payload")?
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(JwtError::WrongIssuer)
}

/// A NumericDate (RFC 7519 §2): seconds, possibly fractional; `None` when the claim is absent.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
            _ => Err(JwtError::Malformed(name)),
        },
    }
}

/// Verify `token` for `issuer` with `jwks` at `now_s` (Unix seconds); the agent name it carries.
pub fn verify(token: &str, issuer: &Issuer, jwks: &Jwks, now_s: u64) -> Result<String, JwtError> {
    let (h, p, s) = split(token)?;
    let header = decode_json(h, "header")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Alg::parse)
        .filter(|a| issuer.algorithms.contains(a))
        .ok_or(JwtError::Algorithm)?;
    if header.contains_key("crit") {
        return Err(JwtError::CriticalHeader);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(JwtError::Malformed("kid")),
    };
    let key = jwks.select(kid, alg)?;
    let sig = b64url(s).ok_or(JwtError::Malformed("signature"))?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    let good = match &key.key {
        KeyMaterial::Rsa { n, e } => RsaPublicKeyComponents { n, e }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, &sig)
            .is_ok(),
        KeyMaterial::P256(point) => {
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(signed, &sig)
                .is_ok()
        }
        KeyMaterial::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x)
            .verify(signed, &sig)
            .is_ok(),
    };
    if !good {
        return Err(JwtError::BadSignature);
    }

    let claims = decode_json(p, "payload")?;
    if claims.get("iss").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
        return Err(JwtError::WrongIssuer);
    }
    let leeway = issuer.leeway_s.min(LEEWAY_MAX_S);
    let exp = numeric_date(&claims, "exp")?.ok_or(JwtError::NoExpiry)?;
    if now_s >= exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")? {
        if now_s.saturating_add(leeway) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(iat) = numeric_date(&claims, "iat")? {
        if now_s.saturating_add(leeway) < iat {
            return Err(JwtError::IssuedInFuture);
        }
    }
    let audience_ok = |a: &Value| {
        a.as_str()
            .is_some_and(|a| issuer.audiences.iter().any(|mine| mine == a))
    };
    let aud_fits = match claims.get("aud") {
        Some(Value::Array(list)) => list.iter().any(audience_ok),
        Some(a) => audience_ok(a),
        None => false,
    };
    if !aud_fits {
        return Err(JwtError::WrongAudience);
    }
    match claims.get(&issuer.agent_claim) {
        Some(Value::String(agent)) if !agent.is_empty() && agent.len() <= 256 => Ok(agent.clone()),
        _ => Err(JwtError::NoAgentClaim),
    }
}

// ------------------------------------------------------------------ client certificates

/// Which name of a verified client certificate is the agent's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertName {
    /// The subject's common name (`CN=billing-bot`).
    CommonName,
    /// The first URI subject alternative name starting with the prefix, without it
    /// (`spiffe://corp/agent/` + `billing-bot`).
    UriSan { prefix: String },
    /// The first DNS subject alternative name.
    DnsSan,
}

/// The agent a client certificate names under `rule`, or `None` when it carries no such name. The
/// certificate has already been verified by the TLS handshake against the configured client CAs; this
/// only reads it (a minimal DER walk over the fields it needs).
pub fn certificate_agent(der: &[u8], rule: &CertName) -> Option<String> {
    let (_, mut r) = to_validity(der)?;
    let subject = r.expect(der::SEQUENCE)?;
    r.expect(der::SEQUENCE)?; // subject public key info
    let name = match rule {
        CertName::CommonName => common_name(subject),
        CertName::UriSan { prefix } => san(&mut r, 0x86)
            .into_iter()
            .find_map(|u| u.strip_prefix(prefix.as_str()).map(str::to_owned)),
        CertName::DnsSan => san(&mut r, 0x82).into_iter().next(),
    }?;
    (!name.is_empty() && name.len() <= 256 && !name.chars().any(char::is_control)).then_some(name)
}

/// When a certificate stops being valid (`notAfter`), in seconds since the Unix epoch; `None` when the
/// DER does not parse. For the health document's certificate expiry.
pub fn certificate_not_after(der: &[u8]) -> Option<u64> {
    let (validity, _) = to_validity(der)?;
    let mut validity = der::Reader::new(validity);
    validity.any()?; // notBefore
    let (tag, t) = validity.any()?;
    let digits = std::str::from_utf8(t).ok()?.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // UTCTime (YYMMDDHHMMSS; years 50..99 are 19xx, RFC 5280 4.1.2.5.1) or GeneralizedTime (YYYY…).
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: u64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| rest[i..i + 2].parse::<u64>().ok();
    let (month, day, h, m, s) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day)? * 86_400 + h * 3600 + m * 60 + s)
}

/// A certificate's `validity` contents, and a reader at the field after it (the subject).
fn to_validity(der: &[u8]) -> Option<(&[u8], der::Reader<'_>)> {
    let cert = der::Reader::new(der).expect(der::SEQUENCE)?;
    let tbs = der::Reader::new(cert).expect(der::SEQUENCE)?;
    let mut r = der::Reader::new(tbs);
    if r.peek() == Some(0xA0) {
        r.any()?; // version
    }
    r.expect(der::INTEGER)?; // serial
    r.expect(der::SEQUENCE)?; // signature algorithm
    r.expect(der::SEQUENCE)?; // issuer
    let validity = r.expect(der::SEQUENCE)?;
    Some((validity, r))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm); `None` before 1970.
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// The subject's first common name.
fn common_name(subject: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let mut rdns = der::Reader::new(subject);
    while let Some((tag, set)) = rdns.any() {
        if tag != der::SET {
            continue;
        }
        let mut atvs = der::Reader::new(set);
        while let Some(atv) = atvs.expect(der::SEQUENCE) {
            let mut a = der::Reader::new(atv);
            if a.expect(der::OID)? == CN {
                let (tag, value) = a.any()?;
                // UTF8String, PrintableString, IA5String.
                if matches!(tag, 0x0C | 0x13 | 0x16) {
                    return std::str::from_utf8(value).ok().map(str::to_owned);
                }
            }
        }
    }
    None
}

/// The subject alternative names with context tag `tag` (0x82 DNS, 0x86 URI), from the extensions.
fn san(r: &mut der::Reader<'_>, tag: u8) -> Vec<String> {
    const SAN: &[u8] = &[0x55, 0x1D, 0x11];
    let mut out = Vec::new();
    while let Some((t, body)) = r.any() {
        if t != 0xA3 {
            continue;
        }
        let Some(exts) = der::Reader::new(body).expect(der::SEQUENCE) else {
            return out;
        };
        let mut exts = der::Reader::new(exts);
        while let Some(ext) = exts.expect(der::SEQUENCE) {
            let mut e = der::Reader::new(ext);
            if e.expect(der::OID) != Some(SAN) {
                continue;
            }
            if e.peek() == Some(der::BOOLEAN) {
                e.any();
            }
            let Some(names) = e
                .expect(der::OCTET_STRING)
                .and_then(|v| der::Reader::new(v).expect(der::SEQUENCE))
            else {
                continue;
            };
            let mut names = der::Reader::new(names);
            while let Some((t, v)) = names.any() {
                if t == tag {
                    if let Ok(s) = std::str::from_utf8(v) {
                        out.push(s.to_owned());
                    }
                }
            }
        }
    }
    out
}

/// Just enough DER to walk a certificate: tag, definite length, contents.
mod der {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;

    pub struct Reader<'a> {
        rest: &'a [u8],
    }

    impl<'a> Reader<'a> {
        pub fn new(bytes: &'a [u8]) -> Reader<'a> {
            Reader { rest: bytes }
        }

        pub fn peek(&self) -> Option<u8> {
            self.rest.first().copied()
        }

        /// The next element: its tag and contents.
        pub fn any(&mut self) -> Option<(u8, &'a [u8])> {
            let (&tag, rest) = self.rest.split_first()?;
            // Multi-byte tags do not occur in the fields read here.
            if tag & 0x1F == 0x1F {
                return None;
            }
            let (&first, mut rest) = rest.split_first()?;
            let len = if first < 0x80 {
                usize::from(first)
            } else {
                let n = usize::from(first & 0x7F);
                if n == 0 || n > 4 || rest.len() < n {
                    return None;
                }
                let (len_bytes, after) = rest.split_at(n);
                rest = after;
                len_bytes
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
            };
            if rest.len() < len {
                return None;
            }
            let (body, after) = rest.split_at(len);
            self.rest = after;
            Some((tag, body))
        }

        /// The next element's contents if it has tag `tag`.
        pub fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
            match self.any()? {
                (t, body) if t == tag => Some(body),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests;

#![allow(clippy::unwrap_used)]

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::json;

use super::*;

/// A 2048-bit RSA key (PKCS#1 DER) for these tests only, made with `openssl genpkey`: ring cannot generate RSA.
const RSA_DER: &[u8] = include_bytes!("test-rsa-2048.der");
const NOW: u64 = 1_800_000_000;

fn enc(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut acc = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            acc |= u32::from(*b) << (16 - 8 * i);
        }
        for i in 0..=chunk.len() {
            out.push(A[((acc >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Three signing keys and the JWKS that lists them.
struct Idp {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    ed: Ed25519KeyPair,
    rng: SystemRandom,
}

impl Idp {
    fn new() -> Idp {
        let rng = SystemRandom::new();
        let ec_alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let ec_doc = EcdsaKeyPair::generate_pkcs8(ec_alg, &rng).unwrap();
        let ed_doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Idp {
            rsa: RsaKeyPair::from_der(RSA_DER).unwrap(),
            ec: EcdsaKeyPair::from_pkcs8(ec_alg, ec_doc.as_ref(), &rng).unwrap(),
            ed: Ed25519KeyPair::from_pkcs8(ed_doc.as_ref()).unwrap(),
            rng,
        }
    }

    fn jwks_json(&self) -> Value {
        let rsa: RsaPublicKeyComponents<Vec<u8>> = self.rsa.public().into();
        let point = self.ec.public_key().as_ref();
        json!({"keys": [
            {"kty": "RSA", "kid": "r1", "use": "sig", "alg": "RS256",
             "n": enc(&rsa.n), "e": enc(&rsa.e)},
            {"kty": "EC", "kid": "e1", "crv": "P-256",
             "x": enc(&point[1..33]), "y": enc(&point[33..65])},
            {"kty": "OKP", "kid": "d1", "crv": "Ed25519", "x": enc(self.ed.public_key().as_ref())},
            {"kty": "oct", "kid": "h1", "k": enc(b"shared secret")},
        ]})
    }

    fn jwks(&self) -> Jwks {
        Jwks::parse(self.jwks_json().to_string().as_bytes()).unwrap()
    }

    fn sign(&self, header: Value, claims: Value) -> String {
        let input = format!(
            "{}.{}",
            enc(header.to_string().as_bytes()),
            enc(claims.to_string().as_bytes())
        );
        let sig = match header["alg"].as_str().unwrap() {
            "RS256" => {
                let mut sig = vec![0; self.rsa.public().modulus_len()];
                self.rsa
                    .sign(
                        &signature::RSA_PKCS1_SHA256,
                        &self.rng,
                        input.as_bytes(),
                        &mut sig,
                    )
                    .unwrap();
                sig
            }
            "ES256" => self
                .ec
                .sign(&self.rng, input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            "EdDSA" => self.ed.sign(input.as_bytes()).as_ref().to_vec(),
            "HS256" => {
                let key = ring::hmac::Key::new(
                    ring::hmac::HMAC_SHA256,
                    header["k"].as_str().unwrap().as_bytes(),
                );
                ring::hmac::sign(&key, input.as_bytes()).as_ref().to_vec()
            }
            _ => Vec::new(),
        };
        format!("{input}.{}", enc(&sig))
    }
}

fn issuer() -> Issuer {
    Issuer {
        issuer: "https://idp.test".into(),
        audiences: vec!["https://gw.test/mcp".into()],
        algorithms: Alg::ALL.to_vec(),
        leeway_s: 30,
        agent_claim: "sub".into(),
    }
}

fn claims() -> Value {
    json!({"iss": "https://idp.test", "aud": "https://gw.test/mcp", "sub": "billing-bot",
           "exp": NOW + 300, "nbf": NOW - 10, "iat": NOW - 10})
}

fn check(idp: &Idp, header: Value, claims: Value) -> Result<String, JwtError> {
    verify(&idp.sign(header, claims), &issuer(), &idp.jwks(), NOW)
}

#[test]
fn each_algorithm_admits_with_its_key() {
    let idp = Idp::new();
    for (alg, kid) in [("RS256", "r1"), ("ES256", "e1"), ("EdDSA", "d1")] {
        let got = check(
            &idp,
            json!({"alg": alg, "kid": kid, "typ": "JWT"}),
            claims(),
        );
        assert_eq!(got.as_deref(), Ok("billing-bot"), "{alg}");
    }
    assert_eq!(idp.jwks().len(), 3);
    assert_eq!(
        idp.jwks().skipped,
        1,
        "the symmetric key is not a verification key"
    );
}

#[test]
fn without_kid_the_one_fitting_key_is_used() {
    let idp = Idp::new();
    assert_eq!(
        check(&idp, json!({"alg": "EdDSA"}), claims()).as_deref(),
        Ok("billing-bot")
    );
}

#[test]
fn algorithm_games_are_refused() {
    let idp = Idp::new();
    let t = idp.sign(json!({"alg": "none", "kid": "r1"}), claims());
    let unsigned = format!("{}.", t.rsplit_once('.').unwrap().0);
    assert_eq!(
        verify(&unsigned, &issuer(), &idp.jwks(), NOW),
        Err(JwtError::Algorithm)
    );
    // HS256 keyed with the RSA public key's bytes: never computed, the algorithm is not accepted.
    let n = idp.jwks_json()["keys"][0]["n"].as_str().unwrap().to_owned();
    assert_eq!(
        check(&idp, json!({"alg": "HS256", "kid": "r1", "k": n}), claims()),
        Err(JwtError::Algorithm)
    );
    // An algorithm the issuer is not configured for.
    let mut only_rsa = issuer();
    only_rsa.algorithms = vec![Alg::Rs256];
    let t = idp.sign(json!({"alg": "EdDSA", "kid": "d1"}), claims());
    assert_eq!(
        verify(&t, &only_rsa, &idp.jwks(), NOW),
        Err(JwtError::Algorithm)
    );
    // ES256 signature presented as the RSA key's.
    assert_eq!(
        check(&idp, json!({"alg": "ES256", "kid": "r1"}), claims()),
        Err(JwtError::KeyMismatch)
    );
    assert_eq!(
        check(
            &idp,
            json!({"alg": "RS256", "kid": "r1", "crit": ["exp"]}),
            claims()
        ),
        Err(JwtError::CriticalHeader)
    );
}

#[test]
fn signatures_are_checked_before_claims() {
    let idp = Idp::new();
    let t = idp.sign(json!({"alg": "ES256", "kid": "e1"}), claims());
    // Swap in other claims under the same signature.
    let (h, rest) = t.split_once('.').unwrap();
    let (_, s) = rest.split_once('.').unwrap();
    let mut forged = claims();
    forged["sub"] = json!("admin");
    let forged = format!("{h}.{}.{s}", enc(forged.to_string().as_bytes()));
    assert_eq!(
        verify(&forged, &issuer(), &idp.jwks(), NOW),
        Err(JwtError::BadSignature)
    );
    // Another identity provider's key under a known kid.
    let other = Idp::new();
    let t = other.sign(json!({"alg": "EdDSA", "kid": "d1"}), claims());
    assert_eq!(
        verify(&t, &issuer(), &idp.jwks(), NOW),
        Err(JwtError::BadSignature)
    );
    assert_eq!(
        check(&idp, json!({"alg": "EdDSA", "kid": "rotated"}), claims()),
        Err(JwtError::UnknownKey)
    );
}

#[test]
fn claims_bound_issuer_audience_and_time() {
    let idp = Idp::new();
    let h = || json!({"alg": "EdDSA", "kid": "d1"});
    let with = |k: &str, v: Value| {
        let mut c = claims();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        c
    };
    let cases = [
        (
            with("iss", json!("https://evil.test")),
            JwtError::WrongIssuer,
        ),
        (
            with("aud", json!("https://other.test/mcp")),
            JwtError::WrongAudience,
        ),
        (with("aud", json!(["a", "b"])), JwtError::WrongAudience),
        (with("aud", Value::Null), JwtError::WrongAudience),
        (with("exp", Value::Null), JwtError::NoExpiry),
        (with("exp", json!(NOW - 31)), JwtError::Expired),
        (with("nbf", json!(NOW + 31)), JwtError::NotYetValid),
        (with("iat", json!(NOW + 3600)), JwtError::IssuedInFuture),
        (with("exp", json!("tomorrow")), JwtError::Malformed("exp")),
        (with("sub", json!(42)), JwtError::NoAgentClaim),
        (with("sub", json!("")), JwtError::NoAgentClaim),
    ];
    for (c, want) in cases {
        assert_eq!(check(&idp, h(), c.clone()), Err(want), "{c}");
    }
    // Inside the leeway, and an audience list naming this gateway among others.
    assert!(check(&idp, h(), with("exp", json!(NOW - 29))).is_ok());
    assert!(check(&idp, h(), with("nbf", json!(NOW + 29))).is_ok());
    assert!(check(&idp, h(), with("aud", json!(["x", "https://gw.test/mcp"]))).is_ok());
    // A configured leeway above the bound is clamped.
    let mut lax = issuer();
    lax.leeway_s = 86_400;
    let t = idp.sign(h(), with("exp", json!(NOW - 301)));
    assert_eq!(verify(&t, &lax, &idp.jwks(), NOW), Err(JwtError::Expired));
}

#[test]
fn malformed_tokens_are_refused_without_panicking() {
    let idp = Idp::new();
    let jwks = idp.jwks();
    let big = format!("eyJ{}", "A".repeat(TOKEN_BYTES_MAX));
    for t in [
        "",
        ".",
        "..",
        "a.b",
        "a.b.c.d",
        "eyJ.eyJ.",
        "!!!.???.***",
        big.as_str(),
        "eyJhbGciOiJFZERTQSJ9.W10.AA", // payload is an array
    ] {
        assert!(verify(t, &issuer(), &jwks, NOW).is_err(), "{t}");
    }
    assert_eq!(verify(&big, &issuer(), &jwks, NOW), Err(JwtError::TooLarge));
}

#[test]
fn base64url_is_strict() {
    assert_eq!(b64url("").unwrap(), b"");
    assert_eq!(b64url("Zm9v").unwrap(), b"foo");
    assert_eq!(b64url("Zm8").unwrap(), b"fo");
    assert_eq!(b64url("Zg").unwrap(), b"f");
    assert_eq!(b64url("_-8").unwrap(), [0xff, 0xef]);
    for bad in ["Zg==", "Z", "Zh", "Zm9+", "Zm9/", "Zm 9"] {
        assert_eq!(b64url(bad), None, "{bad}");
    }
    for n in 0..40u8 {
        let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
        assert_eq!(b64url(&enc(&bytes)).unwrap(), bytes);
    }
}

#[test]
fn jwks_documents() {
    assert!(matches!(Jwks::parse(b"nope"), Err(JwksError::NotJson(_))));
    assert_eq!(Jwks::parse(b"{}"), Err(JwksError::NoKeys));
    let j = Jwks::parse(
        br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"},{"kty":"EC","crv":"P-384","x":"","y":""},
              {"kty":"OKP","crv":"Ed25519","use":"enc","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
              {"kty":"OKP","crv":"Ed25519","alg":"RS256","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
              {"kty":"OKP","crv":"Ed25519","kid":"ok","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#,
    )
    .unwrap();
    assert_eq!((j.len(), j.skipped), (1, 4));
    assert_eq!(j.kids().collect::<Vec<_>>(), ["ok"]);
}

#[test]
fn jwt_shape() {
    let idp = Idp::new();
    assert!(looks_like_jwt(&idp.sign(json!({"alg": "EdDSA"}), claims())));
    assert!(!looks_like_jwt("pcak_abc_def"));
    assert!(!looks_like_jwt("eyJ.a b.c"));
    assert_eq!(
        claimed_issuer(&idp.sign(json!({"alg": "EdDSA"}), claims())).unwrap(),
        "https://idp.test"
    );
}

fn cert(cn: Option<&str>, sans: Vec<rcgen::SanType>) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "corp");
    if let Some(cn) = cn {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    params.subject_alt_names = sans;
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn client_certificates_name_agents() {
    let uri = |u: &str| rcgen::SanType::URI(u.try_into().unwrap());
    let dns = |d: &str| rcgen::SanType::DnsName(d.try_into().unwrap());
    let der = cert(
        Some("billing-bot"),
        vec![
            dns("bot.corp.example"),
            uri("https://corp.example/x"),
            uri("spiffe://corp/agent/billing-bot"),
        ],
    );
    let spiffe = CertName::UriSan {
        prefix: "spiffe://corp/agent/".into(),
    };
    assert_eq!(
        certificate_agent(&der, &CertName::CommonName).as_deref(),
        Some("billing-bot")
    );
    assert_eq!(
        certificate_agent(&der, &spiffe).as_deref(),
        Some("billing-bot")
    );
    assert_eq!(
        certificate_agent(&der, &CertName::DnsSan).as_deref(),
        Some("bot.corp.example")
    );
    // No such name: no agent (the caller then needs another credential).
    let bare = cert(None, vec![uri("spiffe://other/agent/x")]);
    assert_eq!(certificate_agent(&bare, &CertName::CommonName), None);
    assert_eq!(certificate_agent(&bare, &spiffe), None);
    assert_eq!(certificate_agent(&bare, &CertName::DnsSan), None);
    // Truncated or garbage DER never panics.
    for n in 0..der.len() {
        let _ = certificate_agent(&der[..n], &CertName::CommonName);
        let _ = certificate_agent(&der[..n], &spiffe);
    }
    assert_eq!(
        certificate_agent(b"\x30\x84\xff\xff\xff\xff", &CertName::CommonName),
        None
    );
}

#[test]
fn certificate_expiry_is_read_in_both_time_forms() {
    let expiring = |y: i32, m: u8, d: u8| {
        let mut params = rcgen::CertificateParams::default();
        params.not_after = rcgen::date_time_ymd(y, m, d);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    };
    // Before 2050 rcgen writes UTCTime, from 2050 GeneralizedTime (RFC 5280 4.1.2.5).
    assert_eq!(
        certificate_not_after(&expiring(2031, 5, 17)),
        Some(1_936_742_400)
    );
    assert_eq!(
        certificate_not_after(&expiring(2050, 1, 1)),
        Some(2_524_608_000)
    );
    assert_eq!(
        certificate_not_after(&expiring(2000, 3, 1)),
        Some(951_868_800)
    );
    let der = expiring(2031, 5, 17);
    for n in 0..der.len() {
        let _ = certificate_not_after(&der[..n]);
    }
    assert_eq!(certificate_not_after(b"not a certificate"), None);
}

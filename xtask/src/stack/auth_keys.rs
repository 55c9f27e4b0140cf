//! The stack's Supabase Auth signing keys: an ES256 (P-256) and an RS256 (RSA 2048) key made at every `stack up`,
//! kept as a private JWK set (`target/stack/auth/signing-keys.json`, for anything that mints user tokens) and its
//! public half (`target/stack/auth/jwks.json`, which the fal emulator serves at
//! `<SUPABASE_URL>/auth/v1/.well-known/jwks.json` as Supabase Auth does).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use aws_lc_rs::encoding::{AsBigEndian, AsDer};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey};
use pkcs1::der::Encode as _;
use pkcs1::{RsaPrivateKey, UintRef};
use serde::{Deserialize, Serialize};

use super::envfile::StackEnv;
use crate::paths::Paths;

/// The `stack.env` key naming the private key set.
pub const ENV_KEY: &str = "SUPABASE_SIGNING_KEYS";

/// Where the two files of a stack are.
pub struct AuthFiles {
    /// The private JWK set.
    pub signing_keys: PathBuf,
    /// The public JWK set.
    pub jwks: PathBuf,
}

impl AuthFiles {
    pub fn of(paths: &Paths) -> Self {
        let dir = paths.stack.join("auth");
        AuthFiles {
            signing_keys: dir.join("signing-keys.json"),
            jwks: dir.join("jwks.json"),
        }
    }

    /// Its key in `stack.env`: where tools find the private keys.
    pub fn add_to(&self, env: &mut StackEnv) {
        env.set(ENV_KEY, self.signing_keys.display().to_string());
    }

    pub fn exist(&self) -> bool {
        self.signing_keys.is_file() && self.jwks.is_file()
    }

    /// Makes a new key pair of each kind and writes both sets (the private one readable by its owner only).
    pub fn create(&self) -> anyhow::Result<SigningKeys> {
        let keys = SigningKeys::generate()?;
        let dir = self.signing_keys.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_file(&self.signing_keys, &pretty(&keys)?, 0o600)?;
        write_file(&self.jwks, &pretty(&keys.public())?, 0o644)?;
        Ok(keys)
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.signing_keys);
        let _ = std::fs::remove_file(&self.jwks);
    }
}

/// `signing-keys.json`: `{"keys": [<EC private JWK>, <RSA private JWK>]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeys {
    pub keys: Vec<PrivateJwk>,
}

/// `jwks.json`: the same keys with their public members only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeys {
    pub keys: Vec<PublicJwk>,
}

/// The only curve, algorithms and use these keys have; anything else in a file is refused when it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Curve {
    #[serde(rename = "P-256")]
    P256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EcAlg {
    ES256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RsaAlg {
    RS256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyUse {
    #[serde(rename = "sig")]
    Sig,
}

/// A private JWK (RFC 7518 §6.2.2, §6.3.2), its members base64url without padding. [`PublicJwk`] repeats its
/// public members on purpose: two types, so a published set can never carry a private member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kty")]
pub enum PrivateJwk {
    #[serde(rename = "EC")]
    Ec {
        kid: String,
        alg: EcAlg,
        #[serde(rename = "use")]
        use_: KeyUse,
        crv: Curve,
        x: String,
        y: String,
        d: String,
    },
    #[serde(rename = "RSA")]
    Rsa {
        kid: String,
        alg: RsaAlg,
        #[serde(rename = "use")]
        use_: KeyUse,
        n: String,
        e: String,
        d: String,
        p: String,
        q: String,
        dp: String,
        dq: String,
        qi: String,
    },
}

/// A public JWK: what a JWKS publishes (the public members of [`PrivateJwk`], repeated on purpose: see there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kty")]
pub enum PublicJwk {
    #[serde(rename = "EC")]
    Ec {
        kid: String,
        alg: EcAlg,
        #[serde(rename = "use")]
        use_: KeyUse,
        crv: Curve,
        x: String,
        y: String,
    },
    #[serde(rename = "RSA")]
    Rsa {
        kid: String,
        alg: RsaAlg,
        #[serde(rename = "use")]
        use_: KeyUse,
        n: String,
        e: String,
    },
}

impl SigningKeys {
    /// A new ES256 and RS256 key, each with a fresh kid.
    pub fn generate() -> anyhow::Result<Self> {
        Ok(SigningKeys {
            keys: vec![generate_ec()?, generate_rsa()?],
        })
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the signing keys {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a private JWK set", path.display()))
    }

    pub fn public(&self) -> PublicKeys {
        PublicKeys {
            keys: self.keys.iter().map(PrivateJwk::public).collect(),
        }
    }

    /// The key signing with `alg` (ES256 or RS256).
    pub fn for_algorithm(&self, alg: Algorithm) -> anyhow::Result<&PrivateJwk> {
        self.keys
            .iter()
            .find(|k| k.algorithm() == alg)
            .with_context(|| format!("the signing keys have no {alg:?} key"))
    }
}

impl PrivateJwk {
    pub fn kid(&self) -> &str {
        match self {
            PrivateJwk::Ec { kid, .. } | PrivateJwk::Rsa { kid, .. } => kid,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            PrivateJwk::Ec { .. } => Algorithm::ES256,
            PrivateJwk::Rsa { .. } => Algorithm::RS256,
        }
    }

    pub fn public(&self) -> PublicJwk {
        match self.clone() {
            PrivateJwk::Ec {
                kid,
                alg,
                use_,
                crv,
                x,
                y,
                ..
            } => PublicJwk::Ec {
                kid,
                alg,
                use_,
                crv,
                x,
                y,
            },
            PrivateJwk::Rsa {
                kid,
                alg,
                use_,
                n,
                e,
                ..
            } => PublicJwk::Rsa {
                kid,
                alg,
                use_,
                n,
                e,
            },
        }
    }

    /// The key rebuilt from its members (checked for consistency by aws-lc), ready for `jsonwebtoken::encode`.
    pub fn encoding_key(&self) -> anyhow::Result<EncodingKey> {
        let kid = self.kid();
        match self {
            PrivateJwk::Ec { x, y, d, .. } => {
                let mut point = vec![0x04];
                point.extend(decode(x, "x")?);
                point.extend(decode(y, "y")?);
                let pair = EcdsaKeyPair::from_private_key_and_public_key(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &decode(d, "d")?,
                    &point,
                )
                .map_err(|e| anyhow!("key {kid}: not a P-256 key pair: {e}"))?;
                let pkcs8 = pair
                    .to_pkcs8v1()
                    .map_err(|_| anyhow!("key {kid}: cannot encode it as PKCS#8"))?;
                Ok(EncodingKey::from_ec_der(pkcs8.as_ref()))
            }
            PrivateJwk::Rsa {
                n,
                e,
                d,
                p,
                q,
                dp,
                dq,
                qi,
                ..
            } => {
                let members = [n, e, d, p, q, dp, dq, qi]
                    .into_iter()
                    .zip(["n", "e", "d", "p", "q", "dp", "dq", "qi"])
                    .map(|(v, name)| decode(v, name))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let uint = |i: usize| {
                    UintRef::new(&members[i]).map_err(|e| anyhow!("key {kid}: member {i}: {e}"))
                };
                let pkcs1 = RsaPrivateKey {
                    modulus: uint(0)?,
                    public_exponent: uint(1)?,
                    private_exponent: uint(2)?,
                    prime1: uint(3)?,
                    prime2: uint(4)?,
                    exponent1: uint(5)?,
                    exponent2: uint(6)?,
                    coefficient: uint(7)?,
                    other_prime_infos: None,
                }
                .to_der()
                .map_err(|e| anyhow!("key {kid}: cannot encode it as PKCS#1: {e}"))?;
                // jsonwebtoken parses the DER only when it signs: check the key here, with the same parser.
                RsaKeyPair::from_der(&pkcs1)
                    .map_err(|e| anyhow!("key {kid}: not an RSA key pair: {e}"))?;
                Ok(EncodingKey::from_rsa_der(&pkcs1))
            }
        }
    }
}

fn new_kid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn generate_ec() -> anyhow::Result<PrivateJwk> {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
        .map_err(|_| anyhow!("cannot generate a P-256 key"))?;
    let d = pair
        .private_key()
        .as_be_bytes()
        .map_err(|_| anyhow!("cannot export the P-256 private key"))?;
    // Uncompressed SEC1 point: 0x04 || x || y, 32 bytes each.
    let point = pair.public_key().as_ref();
    if point.len() != 65 || point[0] != 0x04 {
        bail!("unexpected P-256 public key encoding");
    }
    Ok(PrivateJwk::Ec {
        kid: new_kid(),
        alg: EcAlg::ES256,
        use_: KeyUse::Sig,
        crv: Curve::P256,
        x: B64.encode(&point[1..33]),
        y: B64.encode(&point[33..]),
        d: B64.encode(d.as_ref()),
    })
}

fn generate_rsa() -> anyhow::Result<PrivateJwk> {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048)
        .map_err(|_| anyhow!("cannot generate an RSA key"))?;
    let pkcs8 = pair
        .as_der()
        .map_err(|_| anyhow!("cannot export the RSA key"))?;
    let info = pkcs8::PrivateKeyInfo::try_from(pkcs8.as_ref())
        .map_err(|e| anyhow!("the RSA key is not PKCS#8: {e}"))?;
    let key = RsaPrivateKey::try_from(info.private_key)
        .map_err(|e| anyhow!("the RSA key is not PKCS#1: {e}"))?;
    let b64 = |v: UintRef<'_>| B64.encode(v.as_bytes());
    Ok(PrivateJwk::Rsa {
        kid: new_kid(),
        alg: RsaAlg::RS256,
        use_: KeyUse::Sig,
        n: b64(key.modulus),
        e: b64(key.public_exponent),
        d: b64(key.private_exponent),
        p: b64(key.prime1),
        q: b64(key.prime2),
        dp: b64(key.exponent1),
        dq: b64(key.exponent2),
        qi: b64(key.coefficient),
    })
}

fn decode(member: &str, name: &str) -> anyhow::Result<Vec<u8>> {
    B64.decode(member)
        .with_context(|| format!("JWK member {name} is not base64url"))
}

fn pretty<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

/// Writes `text` to `path` through a temporary file made with `mode`.
fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn temp_files() -> AuthFiles {
        let dir = std::env::temp_dir().join(format!("auth-keys-{}", uuid::Uuid::new_v4()));
        AuthFiles {
            signing_keys: dir.join("signing-keys.json"),
            jwks: dir.join("jwks.json"),
        }
    }

    #[test]
    fn the_private_set_round_trips_through_its_file() {
        let files = temp_files();
        let made = files.create().expect("creates");
        let read = SigningKeys::read(&files.signing_keys).expect("reads");
        assert_eq!(read, made);
        let mode = std::fs::metadata(&files.signing_keys)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        for key in &read.keys {
            key.encoding_key().expect("rebuilds the key pair");
        }
        let _ = std::fs::remove_dir_all(files.signing_keys.parent().expect("dir"));
    }

    #[test]
    fn files_carry_the_jwk_members_and_the_public_set_no_private_ones() {
        let files = temp_files();
        let keys = files.create().expect("creates");
        let private: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&files.signing_keys).expect("reads"))
                .expect("json");
        let public: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&files.jwks).expect("reads"))
                .expect("json");
        let members = |v: &serde_json::Value, i: usize| {
            let mut names: Vec<String> = v["keys"][i]
                .as_object()
                .expect("object")
                .keys()
                .cloned()
                .collect();
            names.sort();
            names.join(",")
        };
        assert_eq!(members(&private, 0), "alg,crv,d,kid,kty,use,x,y");
        assert_eq!(members(&private, 1), "alg,d,dp,dq,e,kid,kty,n,p,q,qi,use");
        assert_eq!(members(&public, 0), "alg,crv,kid,kty,use,x,y");
        assert_eq!(members(&public, 1), "alg,e,kid,kty,n,use");
        assert_eq!(private["keys"][0]["kty"], "EC");
        assert_eq!(private["keys"][0]["crv"], "P-256");
        assert_eq!(private["keys"][0]["alg"], "ES256");
        assert_eq!(private["keys"][1]["kty"], "RSA");
        assert_eq!(private["keys"][1]["alg"], "RS256");
        assert_eq!(private["keys"][1]["e"], "AQAB");
        assert_eq!(public["keys"][0]["use"], "sig");
        // RSA 2048: a 256-byte modulus.
        let n = B64
            .decode(private["keys"][1]["n"].as_str().expect("n"))
            .expect("b64");
        assert_eq!(n.len(), 256);
        assert_ne!(keys.keys[0].kid(), keys.keys[1].kid());
        let _ = std::fs::remove_dir_all(files.signing_keys.parent().expect("dir"));
    }

    #[test]
    fn every_generation_has_new_kids() {
        let a = SigningKeys::generate().expect("generates");
        let b = SigningKeys::generate().expect("generates");
        for (x, y) in a.keys.iter().zip(&b.keys) {
            assert_ne!(x.kid(), y.kid());
        }
    }

    #[test]
    fn a_key_with_a_foreign_public_half_is_refused() {
        let a = SigningKeys::generate().expect("generates");
        let b = SigningKeys::generate().expect("generates");
        let (PrivateJwk::Ec { d, .. }, PrivateJwk::Ec { x, y, .. }) = (&a.keys[0], &b.keys[0])
        else {
            panic!("EC first");
        };
        let mixed = PrivateJwk::Ec {
            kid: "mixed".into(),
            alg: EcAlg::ES256,
            use_: KeyUse::Sig,
            crv: Curve::P256,
            x: x.clone(),
            y: y.clone(),
            d: d.clone(),
        };
        assert!(mixed.encoding_key().is_err());
    }
}

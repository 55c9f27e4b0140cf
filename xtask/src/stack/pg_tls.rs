//! TLS for the stack's own Postgres (and PgBouncer): a throwaway CA made at `stack up`, as a managed Postgres has
//! its own (Supabase's `prod-ca-2021.crt`), and a server certificate it signs for 127.0.0.1.
//!
//! The functions reach the database as a deployment does: `sslmode=require` and the CA in the secret's
//! `DATABASE_CA_CERT`. Tests and tools use `stack.env`'s URL, which names the CA file (`sslrootcert=`).

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

use crate::paths::Paths;

/// The server certificate's and key's file names in the directory of the server that uses them.
pub const CERT_FILE: &str = "server.crt";
pub const KEY_FILE: &str = "server.key";

pub struct StackTls {
    /// The CA certificate (PEM), also written to `ca_file`.
    pub ca_pem: String,
    pub ca_file: PathBuf,
    cert_pem: String,
    key_pem: String,
}

impl StackTls {
    /// A new CA and a server certificate for `127.0.0.1` and `localhost`; the CA is written to
    /// `target/stack/postgres-ca.pem`.
    pub fn create(paths: &Paths) -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "gen-pipeline local stack Postgres CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        params.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::DnsName("localhost".try_into()?),
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;

        let ca_file = paths.stack.join("postgres-ca.pem");
        std::fs::write(&ca_file, ca.pem())
            .with_context(|| format!("cannot write {}", ca_file.display()))?;
        Ok(Self {
            ca_pem: ca.pem(),
            ca_file,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the server certificate and its key (mode 0600, as Postgres and PgBouncer demand) into `dir`, owned
    /// by `owner` when given.
    pub fn install(&self, dir: &Path, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
        for (name, text) in [(CERT_FILE, &self.cert_pem), (KEY_FILE, &self.key_pem)] {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            }
        }
        Ok(())
    }

    /// `url` for tests and tools: TLS required and verified against the CA file.
    pub fn tools_url(&self, url: &str) -> String {
        let ca = self.ca_file.display().to_string();
        with_query(
            url,
            &format!(
                "sslmode=require&sslrootcert={}",
                utf8_percent_encode(&ca, NON_ALPHANUMERIC)
            ),
        )
    }
}

/// `url` for the functions' secret: TLS required; the CA goes in the secret beside it.
pub fn functions_url(url: &str) -> String {
    with_query(url, "sslmode=require")
}

fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_urls_ask_for_verified_tls() {
        assert_eq!(
            functions_url("postgres://u:p@127.0.0.1:5/app"),
            "postgres://u:p@127.0.0.1:5/app?sslmode=require"
        );
        let tls = StackTls {
            ca_pem: String::new(),
            ca_file: PathBuf::from("/w/my target/ca.pem"),
            cert_pem: String::new(),
            key_pem: String::new(),
        };
        assert_eq!(
            tls.tools_url("postgres://h/app?application_name=t"),
            "postgres://h/app?application_name=t&sslmode=require&sslrootcert=%2Fw%2Fmy%20target%2Fca%2Epem"
        );
    }
}

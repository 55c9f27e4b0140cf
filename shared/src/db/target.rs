//! Where to connect and whom to trust: a `DATABASE_URL` read as libpq reads it, and the root certificates its TLS
//! handshake verifies against.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` only, and refuses libpq's `sslrootcert`. Our TLS
//! connector always verifies the server's certificate chain and host name, so `verify-ca` and `verify-full` are
//! read as `require` (with the host name checked for both), and `sslrootcert=<file>` names the PEM roots to trust.
//! A managed Postgres (Supabase, RDS) presents a certificate from its own root CA, which the Mozilla roots lack: a
//! function, which has no file to point at, is given that CA as PEM text (`DATABASE_CA_CERT` in the secret).

use percent_encoding::percent_decode_str;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::DbError;

/// A parsed connection target.
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

/// `url` (a `postgres://` URL or a key=value string) with `ca_pem`, PEM root certificates to trust instead of the
/// Mozilla roots. `ca_pem` (the secret's, where a function has no file) takes precedence over a `sslrootcert` file
/// in the URL; `sslrootcert=system` means the Mozilla roots. Naming roots makes TLS mandatory: the default
/// `prefer` would go on in plaintext when the server (or whoever answers for it) declines TLS.
pub fn target(url: &str, ca_pem: Option<&str>) -> Result<Target, DbError> {
    let (mut config, root_file) = parse(url)?;
    if ca_pem.is_some() || root_file.is_some() {
        match config.get_ssl_mode() {
            SslMode::Prefer => {
                config.ssl_mode(SslMode::Require);
            }
            SslMode::Disable if root_file.as_deref() == Some("system") => {
                return Err(DbError::Tls(
                    "sslrootcert=system needs TLS, but sslmode is disable".into(),
                ));
            }
            _ => {}
        }
    }
    let roots = match (ca_pem, root_file.as_deref()) {
        (Some(pem), _) => Some(certificates(pem.as_bytes(), "DATABASE_CA_CERT")?),
        (None, Some("system")) => None,
        (None, Some(path)) => {
            let pem = std::fs::read(path)
                .map_err(|e| DbError::Tls(format!("sslrootcert {path} cannot be read: {e}")))?;
            Some(certificates(&pem, "the sslrootcert file")?)
        }
        (None, None) => None,
    };
    let tls = crate::tls::postgres_config(roots).map_err(|e| DbError::Tls(e.to_string()))?;
    Ok(Target {
        config,
        tls: MakeRustlsConnect::new(tls),
    })
}

/// The connection settings of `url`, and the `sslrootcert` file it names; reads no file.
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, Option<String>), DbError> {
    let (url, root_file) = libpq_params(url)?;
    let config = url.parse().map_err(|_| DbError::BadUrl)?;
    Ok((config, root_file))
}

/// Every certificate of a PEM text; an error when it has none or one does not parse.
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, DbError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DbError::Tls(format!("{what} is not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(DbError::Tls(format!("{what} holds no PEM certificate")));
    }
    Ok(certs)
}

/// The URL tokio-postgres can parse, and the `sslrootcert` it named (percent-decoded). Only the URL form's query
/// is rewritten; a key=value string is handed on as it is.
fn libpq_params(url: &str) -> Result<(String, Option<String>), DbError> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    // The query starts at the first `?` after the credentials, which may hold a `?` of their own.
    let after_credentials = url.rfind('@').map_or(0, |at| at + 1);
    let Some((base, query)) = url[after_credentials..]
        .find('?')
        .filter(|_| is_url)
        .map(|q| {
            (
                &url[..after_credentials + q],
                &url[after_credentials + q + 1..],
            )
        })
    else {
        return Ok((url.to_owned(), None));
    };
    let mut root_file = None;
    let mut kept = Vec::new();
    for param in query.split('&') {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match (key, value) {
            ("sslrootcert", v) => {
                let path = percent_decode_str(v)
                    .decode_utf8()
                    .map_err(|_| DbError::BadUrl)?;
                root_file = Some(path.into_owned());
            }
            ("sslmode", "verify-ca" | "verify-full") => kept.push("sslmode=require"),
            _ => kept.push(param),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, root_file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_are_read_and_removed() {
        let (url, file) = libpq_params(
            "postgres://u:p%3Fw@h:5432/d?sslmode=verify-full&sslrootcert=%2Ftmp%2Fmy%20ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u:p%3Fw@h:5432/d?sslmode=require&application_name=x"
        );
        assert_eq!(file.as_deref(), Some("/tmp/my ca.pem"));

        let (url, file) = libpq_params("postgresql://h/d?sslrootcert=system").unwrap();
        assert_eq!(
            (url.as_str(), file.as_deref()),
            ("postgresql://h/d", Some("system"))
        );

        for plain in [
            "postgres://h/d",
            "postgres://h/d?sslmode=disable",
            "host=h sslmode=require",
        ] {
            assert_eq!(libpq_params(plain).unwrap(), (plain.to_owned(), None));
        }
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let (url, file) =
            libpq_params("postgres://u:ab?&cd@h/d?sslmode=verify-full&sslrootcert=%2Fca.pem")
                .unwrap();
        assert_eq!(url, "postgres://u:ab?&cd@h/d?sslmode=require");
        assert_eq!(file.as_deref(), Some("/ca.pem"));
        let plain = "postgres://u:ab?&cd@h/d";
        assert_eq!(libpq_params(plain).unwrap(), (plain.to_owned(), None));
    }

    #[test]
    fn named_roots_make_tls_mandatory() {
        let ca = include_str!("../../tests/fixtures/unrelated-ca.pem");
        let mode = |url: &str, ca| target(url, ca).map(|t| t.config.get_ssl_mode());
        assert_eq!(mode("postgres://h/d", None).unwrap(), SslMode::Prefer);
        assert_eq!(mode("postgres://h/d", Some(ca)).unwrap(), SslMode::Require);
        assert_eq!(
            mode("postgres://h/d?sslrootcert=system", None).unwrap(),
            SslMode::Require
        );
        assert!(mode("postgres://h/d?sslmode=disable&sslrootcert=system", None).is_err());
        // The secret's CA wins over a file the function does not have.
        let both = "postgres://h/d?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem";
        assert_eq!(mode(both, Some(ca)).unwrap(), SslMode::Require);
    }

    #[test]
    fn verify_modes_require_tls() {
        for mode in ["verify-ca", "verify-full", "require"] {
            let t = target(&format!("postgres://h/d?sslmode={mode}"), None).unwrap();
            assert_eq!(t.config.get_ssl_mode(), SslMode::Require, "{mode}");
        }
        assert!(matches!(
            target("postgres://h/d?sslmode=sometimes", None),
            Err(DbError::BadUrl)
        ));
    }

    #[test]
    fn a_ca_that_is_not_a_certificate_is_refused() {
        for pem in [
            "",
            "not pem",
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        ] {
            assert!(
                matches!(target("postgres://h/d", Some(pem)), Err(DbError::Tls(_))),
                "{pem:?}"
            );
        }
        let missing = target("postgres://h/d?sslrootcert=/nonexistent/ca.pem", None);
        assert!(matches!(missing, Err(DbError::Tls(m)) if m.contains("/nonexistent/ca.pem")));
    }
}

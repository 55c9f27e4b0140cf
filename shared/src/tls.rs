//! The process's one TLS client configuration: aws-lc-rs with the Mozilla roots compiled in (`webpki-roots`), built
//! once and shared by every HTTP client (fal, Replicate and the key sets; media) and by Postgres unless the database
//! URL or secret names its own CA ([`crate::db::target`]). Building a root store from the system's CA files takes
//! milliseconds per client at every cold start; this one reads no file and parses nothing, and the copies share
//! its roots and verifier.

use std::sync::{Arc, LazyLock};

use rustls::pki_types::CertificateDer;

static CONFIG: LazyLock<Result<Arc<rustls::ClientConfig>, rustls::Error>> = LazyLock::new(|| {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = with_roots(roots)?;
    // reqwest sets no ALPN on a configuration it is handed: HTTP/2 where the server offers it, else HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
});

fn with_roots(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// A copy for an HTTP client (`reqwest::ClientBuilder::tls_backend_preconfigured`).
pub fn http_config() -> Result<rustls::ClientConfig, rustls::Error> {
    CONFIG.as_ref().map(|c| (**c).clone()).map_err(Clone::clone)
}

/// A configuration for Postgres (no ALPN): a copy of the shared one, or, given `roots`, one that trusts only them.
pub fn postgres_config(
    roots: Option<Vec<CertificateDer<'static>>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let Some(certs) = roots else {
        let mut config = http_config()?;
        config.alpn_protocols.clear();
        return Ok(config);
    };
    let mut store = rustls::RootCertStore::empty();
    for cert in certs {
        store.add(cert)?;
    }
    with_roots(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_root_store_shared_by_every_copy() {
        let (a, b) = (http_config().unwrap(), http_config().unwrap());
        assert!(Arc::ptr_eq(
            &a.crypto_provider().clone(),
            &b.crypto_provider().clone()
        ));
        assert_eq!(a.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(postgres_config(None).unwrap().alpn_protocols.is_empty());
    }
}

//! Model endpoints. fal has two hosts: the sync one (`https://fal.run`) and the queue one
//! (`https://queue.fal.run`). Each has its own type, built only from its own configured base URL
//! (`api_providers.sync_base_url` / `api_providers.base_url`), so a sync run can never be sent to the queue host:
//! [`super::FalClient::run`] takes only a [`SyncEndpoint`], [`super::FalClient::submit`] only a [`QueueEndpoint`].

use url::Url;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("provider base URL is not configured")]
    MissingBase,
    #[error("provider base URL is not an http(s) URL")]
    BadBase,
    #[error("model key {0:?} is not a valid fal model id")]
    BadModelKey(String),
    /// A URL outside the provider's configured hosts: the provider's key is never sent there.
    #[error("URL is not on the provider's hosts")]
    ForeignHost,
}

/// A URL of a request the provider answered with (status, result, cancel), on one of the provider's own
/// configured hosts (`api_providers.base_url` / `sync_base_url`): same scheme, host and port. The provider's key
/// is sent only to these and to the two endpoints above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderUrl(Url);

impl ProviderUrl {
    pub fn on_provider_hosts(url: &str, provider_bases: &[String]) -> Result<Self, EndpointError> {
        let url = Url::parse(url.trim()).map_err(|_| EndpointError::ForeignHost)?;
        let same_origin = |base: &String| {
            Url::parse(base.trim()).is_ok_and(|b| {
                matches!(b.scheme(), "http" | "https")
                    && b.origin() == url.origin()
                    && url.username().is_empty()
                    && url.password().is_none()
            })
        };
        if provider_bases.iter().any(same_origin) {
            Ok(ProviderUrl(url))
        } else {
            tracing::warn!("provider URL outside the provider's hosts refused");
            Err(EndpointError::ForeignHost)
        }
    }

    pub fn url(&self) -> &Url {
        &self.0
    }

    /// Whether the URL's path names request `request_id` where the providers' own URLs do: the segment after
    /// `requests` (fal: `…/requests/<id>[/status|/cancel]`) or `predictions` (Replicate:
    /// `…/predictions/<id>[/cancel]`). Any other segment would let a run whose request id was written by a client
    /// (V5) pick a word of another request's URL as its id.
    pub fn names_request(&self, request_id: &str) -> bool {
        let Some(segments) = self.0.path_segments() else {
            return false;
        };
        !request_id.is_empty()
            && segments
                .clone()
                .zip(segments.skip(1))
                .any(|(kind, id)| matches!(kind, "requests" | "predictions") && id == request_id)
    }

    /// `url` when it is on the provider's hosts ([`Self::on_provider_hosts`]) and, with `request_id` known, names
    /// that request ([`Self::names_request`]): the rule for every URL of a recorded request the key is sent to.
    pub fn of_request(
        url: &str,
        provider_bases: &[String],
        request_id: Option<&str>,
    ) -> Option<Self> {
        let url = Self::on_provider_hosts(url, provider_bases).ok()?;
        match request_id {
            Some(id) if !url.names_request(id) => {
                tracing::warn!(request_id = %id, "a provider URL that does not name its request refused");
                None
            }
            _ => Some(url),
        }
    }
}

/// `POST <sync base>/<model_key>`: answers with the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncEndpoint(Url);

/// `POST <queue base>/<model_key>?fal_webhook=…`: answers with a request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEndpoint(Url);

impl SyncEndpoint {
    pub fn new(sync_base_url: Option<&str>, model_key: &str) -> Result<Self, EndpointError> {
        join(sync_base_url, model_key).map(SyncEndpoint)
    }

    pub fn url(&self) -> &Url {
        &self.0
    }
}

impl QueueEndpoint {
    pub fn new(queue_base_url: Option<&str>, model_key: &str) -> Result<Self, EndpointError> {
        join(queue_base_url, model_key).map(QueueEndpoint)
    }

    pub fn url(&self) -> &Url {
        &self.0
    }
}

/// `base + '/' + model_key`, with the model key restricted to fal's id alphabet so it cannot add a query,
/// a fragment or climb out of the base path.
fn join(base: Option<&str>, model_key: &str) -> Result<Url, EndpointError> {
    let base = base
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .ok_or(EndpointError::MissingBase)?;
    let valid_key = !model_key.is_empty()
        && model_key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && model_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if !valid_key {
        return Err(EndpointError::BadModelKey(model_key.to_owned()));
    }
    let url = Url::parse(&format!("{}/{model_key}", base.trim_end_matches('/')))
        .map_err(|_| EndpointError::BadBase)?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
        return Err(EndpointError::BadBase);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_urls_only_on_the_providers_own_hosts() {
        let bases = vec![
            "https://queue.fal.run".to_owned(),
            "https://fal.run/".to_owned(),
        ];
        for ok in [
            "https://queue.fal.run/fal-ai/x/requests/abc/status",
            "https://fal.run/fal-ai/x",
            "https://queue.fal.run:443/fal-ai/x/requests/abc/cancel",
        ] {
            assert!(ProviderUrl::on_provider_hosts(ok, &bases).is_ok(), "{ok}");
        }
        for bad in [
            "https://evil.example/fal-ai/x/requests/abc",
            "http://queue.fal.run/fal-ai/x",
            "https://queue.fal.run:8443/x",
            "https://queue.fal.run.evil.example/x",
            "https://user:pw@queue.fal.run/x",
            "https://127.0.0.1/x",
            "not a url",
            "",
        ] {
            assert_eq!(
                ProviderUrl::on_provider_hosts(bad, &bases),
                Err(EndpointError::ForeignHost),
                "{bad}"
            );
        }
        assert!(ProviderUrl::on_provider_hosts("https://queue.fal.run/x", &[]).is_err());
    }

    #[test]
    fn a_provider_url_names_its_request_only_where_the_provider_puts_it() {
        let bases = [
            "https://queue.fal.run".to_owned(),
            "https://api.replicate.com".to_owned(),
        ];
        let url = |u: &str| ProviderUrl::on_provider_hosts(u, &bases).unwrap();
        let id = "764cabcf-b745-4b3e-ae38-1200304cf45b";
        for (u, named) in [
            (
                format!("https://queue.fal.run/fal-ai/x/requests/{id}/status"),
                true,
            ),
            (
                format!("https://queue.fal.run/fal-ai/x/requests/{id}"),
                true,
            ),
            (
                format!("https://queue.fal.run/fal-ai/x/requests/{id}/cancel?x=1"),
                true,
            ),
            (
                "https://api.replicate.com/v1/predictions/p1/cancel".to_owned(),
                false,
            ),
            // The id elsewhere in the path: not where the provider puts it.
            (
                format!("https://queue.fal.run/{id}/x/requests/other/status"),
                false,
            ),
            (
                format!("https://queue.fal.run/fal-ai/x/requests/{id}0/status"),
                false,
            ),
            (
                format!("https://queue.fal.run/fal-ai/x/requests/other/status?id={id}"),
                false,
            ),
            (
                format!("https://queue.fal.run/fal-ai/x/requests/other#{id}"),
                false,
            ),
        ] {
            assert_eq!(url(&u).names_request(id), named, "{u}");
        }
        let replicate = url("https://api.replicate.com/v1/predictions/p1/cancel");
        assert!(replicate.names_request("p1"));
        assert!(!replicate.names_request(""));
        // A request id chosen to be a word of another request's URL.
        let other = url(&format!(
            "https://queue.fal.run/fal-ai/flux/requests/{id}/status"
        ));
        for word in [
            "requests",
            "fal-ai",
            "flux",
            "status",
            "predictions",
            "v1",
            "cancel",
        ] {
            assert!(!other.names_request(word), "{word}");
            assert!(!replicate.names_request(word), "{word}");
        }
    }

    #[test]
    fn each_host_comes_only_from_its_own_base() {
        let key = "fal-ai/bytedance/seedream/v4/text-to-image";
        let sync = SyncEndpoint::new(Some("https://fal.run"), key).unwrap();
        let queue = QueueEndpoint::new(Some("https://queue.fal.run/"), key).unwrap();
        assert_eq!(
            sync.url().as_str(),
            "https://fal.run/fal-ai/bytedance/seedream/v4/text-to-image"
        );
        assert_eq!(
            queue.url().as_str(),
            "https://queue.fal.run/fal-ai/bytedance/seedream/v4/text-to-image"
        );
        // No sync base configured: no sync endpoint, rather than a guess at a host.
        assert_eq!(
            SyncEndpoint::new(None, key),
            Err(EndpointError::MissingBase)
        );
        assert_eq!(
            SyncEndpoint::new(Some("  "), key),
            Err(EndpointError::MissingBase)
        );
    }

    #[test]
    fn base_paths_are_kept() {
        let e = SyncEndpoint::new(Some("http://127.0.0.1:9000/run"), "fal-ai/flux/dev").unwrap();
        assert_eq!(
            e.url().as_str(),
            "http://127.0.0.1:9000/run/fal-ai/flux/dev"
        );
    }

    #[test]
    fn hostile_model_keys_and_bases_are_refused() {
        for key in [
            "",
            "../admin",
            "fal-ai/../x",
            "a?b=c",
            "a#b",
            "a//b",
            "a b",
            "/abs",
            "x/",
        ] {
            assert!(
                matches!(
                    SyncEndpoint::new(Some("https://fal.run"), key),
                    Err(EndpointError::BadModelKey(_))
                ),
                "{key}"
            );
        }
        assert_eq!(
            QueueEndpoint::new(Some("ftp://queue.fal.run"), "a/b"),
            Err(EndpointError::BadBase)
        );
        assert_eq!(
            QueueEndpoint::new(Some("not a url"), "a/b"),
            Err(EndpointError::BadBase)
        );
    }
}

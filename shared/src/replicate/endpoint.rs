//! Where a prediction is created, built only from Replicate's configured base URL (`https://api.replicate.com/v1`
//! or the emulator's `<emulator>/replicate/v1`): an official model has its own path, a version goes in the body.

use url::Url;

use crate::fal::endpoint::EndpointError;

/// Length of a version id: 64 hex digits.
const VERSION_LEN: usize = 64;

/// `POST <base>/models/<owner>/<name>/predictions` for an official model, or `POST <base>/predictions` with
/// `"version"` in the body for `owner/name:<version>` or a bare version id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictionsEndpoint {
    url: Url,
    version: Option<String>,
}

impl PredictionsEndpoint {
    /// `model_key` is `owner/name`, `owner/name:<64 hex>` or `<64 hex>`; anything else is
    /// [`EndpointError::BadModelKey`].
    pub fn new(base_url: Option<&str>, model_key: &str) -> Result<Self, EndpointError> {
        let base = base_url
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .ok_or(EndpointError::MissingBase)?;
        let bad_key = || EndpointError::BadModelKey(model_key.to_owned());
        let (path, version) = match model_key.split_once(':') {
            Some((model, version)) if valid_model(model) && valid_version(version) => {
                ("predictions".to_owned(), Some(model_key.to_owned()))
            }
            Some(_) => return Err(bad_key()),
            None if valid_model(model_key) => (format!("models/{model_key}/predictions"), None),
            None if valid_version(model_key) => {
                ("predictions".to_owned(), Some(model_key.to_owned()))
            }
            None => return Err(bad_key()),
        };
        let url = Url::parse(&format!("{}/{path}", base.trim_end_matches('/')))
            .map_err(|_| EndpointError::BadBase)?;
        if !matches!(url.scheme(), "http" | "https")
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(EndpointError::BadBase);
        }
        Ok(PredictionsEndpoint { url, version })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// What goes in the body's `"version"`: the model key as configured, `None` for an official model.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }
}

/// `owner/name`, each part in Replicate's name alphabet, so the key can neither add a query or a fragment nor
/// climb out of the base path.
fn valid_model(model: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    matches!(model.split_once('/'), Some((owner, name)) if part_ok(owner) && part_ok(name))
}

fn valid_version(version: &str) -> bool {
    version.len() == VERSION_LEN && version.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION: &str = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa";
    const BASE: &str = "https://api.replicate.com/v1";

    #[test]
    fn an_official_model_has_its_own_path() {
        let e = PredictionsEndpoint::new(
            Some("https://api.replicate.com/v1/"),
            "black-forest-labs/flux-1.1-pro",
        )
        .unwrap();
        assert_eq!(
            e.url().as_str(),
            "https://api.replicate.com/v1/models/black-forest-labs/flux-1.1-pro/predictions"
        );
        assert_eq!(e.version(), None);
    }

    #[test]
    fn versions_go_to_predictions_with_the_key_in_the_body() {
        let named = format!("stability-ai/sdxl:{VERSION}");
        let e = PredictionsEndpoint::new(Some(BASE), &named).unwrap();
        assert_eq!(e.url().as_str(), "https://api.replicate.com/v1/predictions");
        assert_eq!(e.version(), Some(named.as_str()));
        let e =
            PredictionsEndpoint::new(Some("http://127.0.0.1:9000/replicate/v1"), VERSION).unwrap();
        assert_eq!(
            e.url().as_str(),
            "http://127.0.0.1:9000/replicate/v1/predictions"
        );
        assert_eq!(e.version(), Some(VERSION));
    }

    #[test]
    fn hostile_or_malformed_model_keys_are_refused() {
        let short = format!("acme/x:{}", &VERSION[..10]);
        let not_hex = format!("acme/x:{}", "g".repeat(64));
        for key in [
            "",
            "flux",
            "acme",
            "../admin",
            "acme/..",
            "./x",
            "acme/x/y",
            "acme//x",
            "/x",
            "x/",
            "acme/x?y=1",
            "acme/x#y",
            "acme/x y",
            "acme/x:",
            ":abc",
            short.as_str(),
            not_hex.as_str(),
            &VERSION[1..],
        ] {
            assert!(
                matches!(
                    PredictionsEndpoint::new(Some(BASE), key),
                    Err(EndpointError::BadModelKey(_))
                ),
                "{key}"
            );
        }
    }

    #[test]
    fn the_base_must_be_configured_and_plain_http() {
        assert_eq!(
            PredictionsEndpoint::new(None, "a/b"),
            Err(EndpointError::MissingBase)
        );
        assert_eq!(
            PredictionsEndpoint::new(Some(" "), "a/b"),
            Err(EndpointError::MissingBase)
        );
        for base in [
            "ftp://api.replicate.com/v1",
            "not a url",
            "https://h/v1?x=1",
            "https://h/v1#f",
        ] {
            assert_eq!(
                PredictionsEndpoint::new(Some(base), "a/b"),
                Err(EndpointError::BadBase),
                "{base}"
            );
        }
    }
}

//! HTTP events as the functions take them. lambda_http builds the request's URI from an API Gateway v2 event (a
//! function URL's, an HTTP API's) and panics where it cannot, before the handler runs:
//! - it appends the raw query string as it is, and `http::Uri` refuses a raw space, `"`, `<`, `>` or control
//!   character, which a browser percent-encodes and a hand-made request need not (a raw `#` would end the URI's
//!   query there). [`BuildableUri`] percent-encodes those first, as a browser would: the query decodes to the same
//!   parameters;
//! - it takes the scheme from `x-forwarded-proto` (`https` without one), and a value that is no scheme (a list a
//!   proxy appended to, or a client's own) fails its URL parser. [`BuildableUri`] keeps only `http` and `https`.
//!
//! The handler then answers the request as any other; neither the query's raw form nor the scheme is read by it.

use std::task::{Context, Poll};

use lambda_http::http::{HeaderMap, HeaderValue};
use lambda_http::request::LambdaRequest;
use lambda_runtime::{LambdaEvent, Service};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// What `http::Uri` refuses in a query: WHATWG's query percent-encode set (C0 controls, space, `"`, `#`, `<`,
/// `>`; `CONTROLS` also holds DEL).
const REFUSED_IN_QUERY: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'<').add(b'>');

/// The header lambda_http takes the URI's scheme from.
const FORWARDED_PROTO: &str = "x-forwarded-proto";

/// `inner` (lambda_http's `Adapter`) given events it can build a URI of.
pub struct BuildableUri<S>(pub S);

impl<S> Service<LambdaEvent<LambdaRequest>> for BuildableUri<S>
where
    S: Service<LambdaEvent<LambdaRequest>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut event: LambdaEvent<LambdaRequest>) -> Self::Future {
        if let LambdaRequest::ApiGatewayV2(request) = &mut event.payload {
            if let Some(query) = request.raw_query_string.as_mut() {
                encode_refused(query);
            }
            drop_unusable_scheme(&mut request.headers);
        }
        self.0.call(event)
    }
}

/// An `x-forwarded-proto` other than `http` or `https` is removed; lambda_http then builds an `https` URI.
fn drop_unusable_scheme(headers: &mut HeaderMap) {
    let usable = |v: &HeaderValue| {
        ["http", "https"]
            .iter()
            .any(|s| v.as_bytes().eq_ignore_ascii_case(s.as_bytes()))
    };
    if headers.get(FORWARDED_PROTO).is_some_and(|v| !usable(v)) {
        headers.remove(FORWARDED_PROTO);
    }
}

fn encode_refused(query: &mut String) {
    // Compared whole: a query of one encoded byte comes back borrowed from the encoder's table.
    let encoded = utf8_percent_encode(query, REFUSED_IN_QUERY).to_string();
    if encoded != *query {
        *query = encoded;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lambda_http::{Adapter, Request, RequestExt as _};
    use serde_json::Value;

    /// A function URL's event (API Gateway v2 shape) for `GET /?<raw_query>` with `headers`.
    pub(crate) fn function_url_event(raw_query: &str, headers: Value) -> Value {
        serde_json::json!({
            "version": "2.0", "rawPath": "/", "rawQueryString": raw_query, "headers": headers,
            "requestContext": {"http": {"method": "GET", "path": "/", "protocol": "HTTP/1.1",
                                        "sourceIp": "127.0.0.1", "userAgent": "test"}},
            "isBase64Encoded": false
        })
    }

    fn event_with_headers(raw_query: &str, headers: Value) -> LambdaEvent<LambdaRequest> {
        let event = function_url_event(raw_query, headers);
        LambdaEvent::new(serde_json::from_value(event).unwrap(), Default::default())
    }

    /// What the handler gets for `event`: its URI, its query and the query's parameters.
    async fn seen_in(
        event: LambdaEvent<LambdaRequest>,
    ) -> (String, Option<String>, Vec<(String, String)>) {
        let handler = lambda_http::service_fn(|req: Request| async move {
            let query = req.uri().query().map(str::to_owned);
            let params = req.query_string_parameters();
            let mut pairs: Vec<(String, String)> = params
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            pairs.sort();
            let seen = (req.uri().to_string(), query, pairs);
            Ok::<_, lambda_http::Error>(serde_json::to_string(&seen)?)
        });
        let mut service = BuildableUri(Adapter::from(handler));
        let answer = service.call(event).await.unwrap();
        let answer: Value = serde_json::to_value(answer).unwrap();
        serde_json::from_str(answer["body"].as_str().unwrap()).unwrap()
    }

    async fn seen(raw_query: &str) -> (Option<String>, Vec<(String, String)>) {
        let (_, query, params) =
            seen_in(event_with_headers(raw_query, serde_json::json!({}))).await;
        (query, params)
    }

    #[tokio::test]
    async fn a_forwarded_proto_that_is_no_scheme_is_dropped_and_http_or_https_kept() {
        let host = "abc.lambda-url.us-east-1.on.aws";
        for (proto, scheme) in [
            ("https, http", "https"),
            ("a b", "https"),
            ("HTTP", "http"),
            ("https", "https"),
        ] {
            let headers = serde_json::json!({"host": host, "x-forwarded-proto": proto});
            let (uri, _, _) = seen_in(event_with_headers("a=1", headers)).await;
            assert_eq!(uri, format!("{scheme}://{host}/?a=1"), "{proto}");
        }
    }

    #[tokio::test]
    async fn characters_a_uri_refuses_are_encoded_and_decode_to_the_same_parameters() {
        let (query, params) = seen("job_id=a<b>&token=x y\"#z").await;
        assert_eq!(query.as_deref(), Some("job_id=a%3Cb%3E&token=x%20y%22%23z"));
        assert_eq!(
            params,
            [
                ("job_id".to_owned(), "a<b>".to_owned()),
                ("token".to_owned(), "x y\"#z".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn a_query_of_one_refused_character_is_encoded() {
        let (query, params) = seen("<").await;
        assert_eq!(query.as_deref(), Some("%3C"));
        assert_eq!(params, [("<".to_owned(), String::new())]);
    }

    #[tokio::test]
    async fn a_query_a_uri_takes_is_left_as_it_is() {
        let raw = "job_id=0b1e&token=a%20b+c&x=%3C";
        let (query, params) = seen(raw).await;
        assert_eq!(query.as_deref(), Some(raw));
        assert_eq!(params.len(), 3, "{params:?}");
    }
}

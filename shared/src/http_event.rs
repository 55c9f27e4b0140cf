//! HTTP events as the functions take them. lambda_http appends an API Gateway v2 event's raw query string (a
//! function URL's, an HTTP API's) to the request's URI as it is, and panics when `http::Uri` refuses one of its
//! characters: a raw space, `"`, `<`, `>` or control character, which a browser percent-encodes and a hand-made
//! request need not (a raw `#` would end the URI's query there). [`BuildableUri`] percent-encodes those first, as a
//! browser would: the query decodes to the same parameters, and the handler answers the request as any other.

use std::task::{Context, Poll};

use lambda_http::request::LambdaRequest;
use lambda_runtime::{LambdaEvent, Service};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// What `http::Uri` refuses in a query: WHATWG's query percent-encode set (C0 controls, space, `"`, `#`, `<`,
/// `>`; `CONTROLS` also holds DEL).
const REFUSED_IN_QUERY: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'<').add(b'>');

/// `inner` (lambda_http's `Adapter`) given events whose query it can build a URI of.
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
        if let LambdaRequest::ApiGatewayV2(request) = &mut event.payload
            && let Some(query) = request.raw_query_string.as_mut()
        {
            // Compared whole: a query of one encoded byte comes back borrowed from the encoder's table.
            let encoded = utf8_percent_encode(query, REFUSED_IN_QUERY).to_string();
            if encoded != *query {
                *query = encoded;
            }
        }
        self.0.call(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::{Adapter, Request, RequestExt as _};
    use serde_json::Value;

    fn function_url_event(raw_query: &str) -> LambdaEvent<LambdaRequest> {
        let event = serde_json::json!({
            "version": "2.0", "rawPath": "/", "rawQueryString": raw_query, "headers": {},
            "requestContext": {"http": {"method": "GET", "path": "/", "protocol": "HTTP/1.1",
                                        "sourceIp": "127.0.0.1", "userAgent": "test"}},
            "isBase64Encoded": false
        });
        LambdaEvent::new(serde_json::from_value(event).unwrap(), Default::default())
    }

    /// The request the handler gets for `raw_query`: its URI's query and its parameters.
    async fn seen(raw_query: &str) -> (Option<String>, Vec<(String, String)>) {
        let handler = lambda_http::service_fn(|req: Request| async move {
            let query = req.uri().query().map(str::to_owned);
            let params = req.query_string_parameters();
            let mut pairs: Vec<(String, String)> = params
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            pairs.sort();
            Ok::<_, lambda_http::Error>(serde_json::to_string(&(query, pairs))?)
        });
        let mut service = BuildableUri(Adapter::from(handler));
        let answer = service.call(function_url_event(raw_query)).await.unwrap();
        let answer: Value = serde_json::to_value(answer).unwrap();
        serde_json::from_str(answer["body"].as_str().unwrap()).unwrap()
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

//! HTTP glue of fal-image: routes, CORS and JSON errors.

use gen_pipeline::AppState;
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Error, Request, Response};
use serde_json::json;

pub async fn handle(_state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::OPTIONS, _) => cors(Response::builder().status(StatusCode::OK)).body(Body::from("ok"))?,
        (&Method::GET, "/health") => json_response(StatusCode::OK, &json!({ "ok": true }))?,
        _ => json_response(StatusCode::NOT_FOUND, &json!({ "error": "Not found" }))?,
    };
    Ok(response)
}

fn cors(builder: lambda_http::http::response::Builder) -> lambda_http::http::response::Builder {
    builder
        .header("access-control-allow-origin", "*")
        .header(
            "access-control-allow-headers",
            "authorization, x-client-info, apikey, content-type",
        )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Result<Response<Body>, Error> {
    Ok(cors(Response::builder().status(status))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn state() -> AppState {
        // Building the state makes no network call; the secret id only names what would be fetched.
        unsafe { std::env::set_var("APP_SECRET_ID", "unit-test") };
        AppState::from_env().await.unwrap()
    }

    #[tokio::test]
    async fn health_preflight_and_unknown_routes() {
        let state = state().await;
        let get = |path: &str, method: Method| {
            let mut req = Request::default();
            *req.method_mut() = method;
            *req.uri_mut() = path.parse().unwrap();
            req
        };
        let r = handle(&state, get("/health", Method::GET)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = handle(&state, get("/fal-image", Method::OPTIONS)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        assert_eq!(r.body(), &Body::from("ok"));
        let r = handle(&state, get("/nope", Method::GET)).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}

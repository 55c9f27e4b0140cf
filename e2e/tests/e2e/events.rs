//! The files of `events/`, replayed through the runtime API of the running `cargo lambda watch` exactly as
//! `cargo lambda invoke --data-file` sends them, answer what the README's "Replaying events" table says.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use uuid::Uuid;

use e2e::common::workspace_root;
use e2e::{db, invoke, stack_var};

/// The `sub` claim of the authenticated fal-image events.
const EVENTS_USER: Uuid = Uuid::from_u128(0x00000000_0000_4000_a000_00000000e0e0);
/// Stands for the job's webhook token (HMAC-SHA256 of its `job_id` with the webhook secret) in the webhook events'
/// query strings.
const TOKEN_PLACEHOLDER: &str = "REPLACE_WITH_JOB_TOKEN";
const README_SECTION: &str = "## Replaying events";

/// `events/<function>/<name>.json` paths (relative to the workspace root) with their function.
fn event_files() -> Vec<(String, String)> {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in std::fs::read_dir(root.join("events")).expect("events/ exists") {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let function = dir.file_name().unwrap().to_string_lossy().into_owned();
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "json") {
                let rel = file
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((rel, function.clone()));
            }
        }
    }
    files.sort();
    files
}

/// The README's table: event file -> documented status code (the first number of the "answer" cell).
fn documented_outcomes() -> BTreeMap<String, u16> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split_once(README_SECTION)
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("README.md has no \"{README_SECTION}\" section"));
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
            let file = cells.first()?.trim().strip_prefix("`events/")?;
            let file = format!("events/{}", file.strip_suffix('`')?);
            let status: String = cells
                .get(1)?
                .trim()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            Some((file, status.parse().ok()?))
        })
        .collect()
}

fn load(rel: &str) -> String {
    std::fs::read_to_string(workspace_root().join(Path::new(rel))).unwrap()
}

#[tokio::test]
async fn every_event_file_answers_its_documented_status() {
    // The authenticated events name a fixed user; the job ids of the status and cancel events exist for no one.
    gen_pipeline::db::users::ensure(&db().await, EVENTS_USER)
        .await
        .unwrap();
    let files = event_files();
    let documented = documented_outcomes();
    let on_disk: Vec<&String> = files.iter().map(|(f, _)| f).collect();
    let in_readme: Vec<&String> = documented.keys().collect();
    assert_eq!(
        on_disk, in_readme,
        "every file of events/ needs a row in the README's \"Replaying events\" table, and every row a file"
    );
    assert!(!files.is_empty());

    let mut wrong = Vec::new();
    for (file, function) in &files {
        let event: Value = serde_json::from_str(&load(file)).unwrap();
        let answer = invoke(function, &event).await;
        let expected = documented[file];
        if answer["statusCode"] != expected {
            wrong.push(format!("{file}: expected {expected}, got {answer}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn a_replayed_delivery_is_refused_even_with_the_right_token() {
    let secret = stack_var("FAL_WEBHOOK_SECRET");
    let replayable: Vec<(String, String)> = event_files()
        .into_iter()
        .filter(|(f, function)| function == "fal-webhook" && load(f).contains(TOKEN_PLACEHOLDER))
        .collect();
    assert!(
        replayable.len() >= 3,
        "the OK, ERROR and payload-null events carry the placeholder"
    );
    for (file, function) in replayable {
        // Past the token check (the token of the event's own job id), the stale signature headers must still be
        // refused.
        let raw = load(&file);
        let template: Value = serde_json::from_str(&raw).unwrap();
        let job_id = template["queryStringParameters"]["job_id"]
            .as_str()
            .and_then(|id| Uuid::parse_str(id).ok())
            .unwrap_or_else(|| panic!("{file}: no job_id in queryStringParameters"));
        let token = e2e::job_token(&secret, job_id);
        let event: Value = serde_json::from_str(&raw.replace(TOKEN_PLACEHOLDER, &token)).unwrap();
        assert_eq!(
            event["rawQueryString"],
            format!("job_id={job_id}&token={token}"),
            "{file}"
        );
        let answer = invoke(&function, &event).await;
        assert_eq!(answer["statusCode"], 401, "{file}: {answer}");
    }
}

/// An event that is not an HTTP request (a scheduled event sent to the wrong function, a console test) is answered
/// at once with the runtime's error, the handler not called, and the functions answer HTTP events as before: the
/// after-response work waits for nothing an invocation may not leave (`after_response`).
#[tokio::test]
async fn an_event_that_is_not_an_http_request_is_answered_by_the_function() {
    let scheduled =
        serde_json::json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
    for function in ["fal-image", "fal-webhook"] {
        let answer = invoke(function, &scheduled).await;
        let message = answer["errorMessage"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("failed to deserialize the incoming data"),
            "{function}: {answer}"
        );
    }
    let preflight = serde_json::json!({
        "version": "2.0", "rawPath": "/", "rawQueryString": "", "headers": {},
        "requestContext": {"http": {"method": "OPTIONS", "path": "/", "protocol": "HTTP/1.1",
                                    "sourceIp": "127.0.0.1", "userAgent": "e2e"}},
        "isBase64Encoded": false
    });
    assert_eq!(invoke("fal-webhook", &preflight).await["statusCode"], 200);
}

/// lambda_http builds the request from the event before calling the handler, and panics on a raw query string
/// `http::Uri` refuses (here a `<` and a space) or an `x-forwarded-proto` that is no scheme. The functions
/// percent-encode those characters and drop such a header first (`http_event::BuildableUri`), so such a request
/// reaches the handler and gets its answer; the query's parameters are the same.
#[tokio::test]
async fn a_query_with_characters_a_uri_refuses_reaches_the_handler() {
    let request = |raw_query: &str| {
        serde_json::json!({
            "version": "2.0", "rawPath": "/", "rawQueryString": raw_query, "headers": {},
            "requestContext": {"http": {"method": "OPTIONS", "path": "/", "protocol": "HTTP/1.1",
                                        "sourceIp": "127.0.0.1", "userAgent": "e2e"}},
            "isBase64Encoded": false
        })
    };
    for function in ["fal-image", "fal-webhook"] {
        for raw_query in ["job_id=a<b&token=c d", "<"] {
            let answer = invoke(function, &request(raw_query)).await;
            assert_eq!(
                answer["statusCode"], 200,
                "{function} {raw_query}: {answer}"
            );
        }
        // The URI's scheme comes from `x-forwarded-proto`; one that is no scheme is dropped, not panicked on.
        let mut forwarded = request("a=1");
        forwarded["headers"] = serde_json::json!({
            "host": "abc.lambda-url.us-east-1.on.aws", "x-forwarded-proto": "https, http"
        });
        let answer = invoke(function, &forwarded).await;
        assert_eq!(answer["statusCode"], 200, "{function}: {answer}");
    }
}

//! fal-webhook's query, signature and body: tokens, forged and replayed signatures, sizes, and authentic deliveries
//! with the wrong credentials; all aimed at the other user's queued job.

use super::*;

/// The webhook query for the victim's queued job, with this token if any.
fn job_query(v: &Victim, token: Option<&str>) -> Vec<(&'static str, String)> {
    let mut q = vec![("job_id", v.queued_job.clone())];
    if let Some(t) = token {
        q.push(("token", t.to_owned()));
    }
    q
}

#[tokio::test]
async fn forged_or_malformed_deliveries_are_row() {
    let world = World::new().await;
    let v = &world.victim;
    let rid = v.queued_request_id.clone();
    let token = token_of(&v.queued_job);
    let job_q = |token: Option<&str>| job_query(v, token);
    let fresh = || forged_headers(&rid, now().to_string());
    let mut rows: Vec<Row> = Vec::new();

    for (name, query, headers, body, status) in [
        ("no token", job_q(None), fresh(), completing_body(&rid), 401),
        (
            "wrong token",
            job_q(Some(&"0".repeat(64))),
            fresh(),
            completing_body(&rid),
            401,
        ),
        (
            "empty token",
            job_q(Some("")),
            fresh(),
            completing_body(&rid),
            401,
        ),
        (
            "token is SQL",
            job_q(Some(OR_TRUE)),
            fresh(),
            completing_body(&rid),
            401,
        ),
        (
            "a wrong token first, the right one second",
            vec![
                ("job_id", v.queued_job.clone()),
                ("token", "nope".into()),
                ("token", token.clone()),
            ],
            fresh(),
            completing_body(&rid),
            401,
        ),
        (
            "right token, no signature headers",
            job_q(Some(&token)),
            Vec::new(),
            completing_body(&rid),
            401,
        ),
        (
            "right token, replay: timestamp 10 minutes old, random signature",
            job_q(Some(&token)),
            forged_headers(&rid, (now() - 600).to_string()),
            completing_body(&rid),
            401,
        ),
        (
            "right token, timestamp 10 minutes ahead",
            job_q(Some(&token)),
            forged_headers(&rid, (now() + 600).to_string()),
            completing_body(&rid),
            401,
        ),
        (
            "right token, timestamp i64::MIN",
            job_q(Some(&token)),
            forged_headers(&rid, i64::MIN.to_string()),
            completing_body(&rid),
            401,
        ),
        (
            "right token, timestamp not a number",
            job_q(Some(&token)),
            forged_headers(&rid, "now".into()),
            completing_body(&rid),
            401,
        ),
        (
            "right token, signature not hex",
            job_q(Some(&token)),
            fresh()
                .into_iter()
                .map(|(k, val)| {
                    if k == HEADER_SIGNATURE {
                        (k, "zz".repeat(64))
                    } else {
                        (k, val)
                    }
                })
                .collect(),
            completing_body(&rid),
            401,
        ),
        // The signature covers the raw body and is checked before parsing, so malformed JSON is a 401, not a 400.
        (
            "right token, malformed JSON body",
            job_q(Some(&token)),
            fresh(),
            b"{\"request_id\":".to_vec(),
            401,
        ),
        (
            "right token, SQL in the request id (header and body)",
            job_q(Some(&token)),
            forged_headers(DROP, now().to_string()),
            completing_body(DROP),
            401,
        ),
        (
            "right token, body over WEBHOOK_MAX_BODY_BYTES (6 MiB)",
            job_q(Some(&token)),
            fresh(),
            vec![b' '; 6 * MIB + 1],
            413,
        ),
    ] {
        let name = format!("webhook: {name}");
        rows.push(row(name, webhook(query, headers), body, status).await);
    }
    let get_webhook = Target::Webhook {
        method: Method::GET,
        query: Vec::new(),
        headers: Vec::new(),
    };
    rows.push(row("webhook: GET", get_webhook, Vec::new(), 405).await);

    world.run("fal-webhook, forged deliveries", rows).await;
}

#[tokio::test]
async fn authentic_deliveries_with_the_wrong_credentials_are_row() {
    let world = World::new().await;
    let v = &world.victim;
    let secret = stack_var("FAL_WEBHOOK_SECRET");
    let token = token_of(&v.queued_job);
    let job_q = |token: Option<&str>| job_query(v, token);
    let mut rows: Vec<Row> = Vec::new();

    // A real, emulator-signed delivery of another request: it passes both checks, then finds nothing to change.
    let real = capture_delivery().await;
    let unknown = Uuid::new_v4().to_string();
    let with_secret = |job_id: &str, secret: &str| {
        vec![("job_id", job_id.to_owned()), ("secret", secret.to_owned())]
    };
    for (name, query, status) in [
        // A token is made for a job id, so a job_id that is no UUID cannot carry one.
        (
            "job_id is SQL, with a token",
            vec![("job_id", DROP.to_owned()), ("token", token.clone())],
            401,
        ),
        // The global secret (still accepted where no run says otherwise) reaches the job lookup with them.
        (
            "job_id is SQL, with the global secret",
            with_secret(DROP, &secret),
            404,
        ),
        (
            "job_id is ../../etc/passwd, with the global secret",
            with_secret("../../etc/passwd", &secret),
            404,
        ),
        ("job_id is another request's job", job_q(Some(&token)), 409),
        (
            "an unknown job with its own token",
            token_query(&unknown),
            404,
        ),
        (
            "no job_id and an unknown request id, with the global secret",
            vec![("secret", secret.clone())],
            404,
        ),
        (
            "the global secret for a job whose URL carries a token",
            with_secret(&v.queued_job, &secret),
            401,
        ),
        (
            "another job's token",
            job_q(Some(&token_of(&v.completed_job))),
            401,
        ),
        (
            "the job's token presented for another job",
            vec![
                ("job_id", v.completed_job.clone()),
                ("token", token.clone()),
            ],
            401,
        ),
        ("wrong token", job_q(Some(&"0".repeat(64))), 401),
        (
            "truncated token",
            job_q(Some(&token[..token.len() - 1])),
            401,
        ),
    ] {
        let name = format!("webhook, authentic delivery: {name}");
        let target = webhook(query, real.fal_headers());
        rows.push(row(name, target, real.body.clone(), status).await);
    }

    world.run("fal-webhook, authentic deliveries", rows).await;
}

//! fal-image through its HTTP interface: every route and status of the contract, sync and async generations,
//! fallback, faults, ownership, post-processing.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use e2e::*;

const WAIT: Duration = Duration::from_secs(60);

/// An API Gateway HTTP API (v2) event, invoked through the Lambda runtime API as API Gateway invokes it.
async fn invoke_http_api(method: &str, path: &str, headers: Value, claims: Option<Value>) -> Value {
    let mut context = json!({
        "accountId": "123456789012", "apiId": "local", "domainName": "local", "domainPrefix": "local",
        "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "e2e"},
        "requestId": Uuid::new_v4(), "routeKey": format!("{method} {path}"), "stage": "$default",
        "time": "25/Nov/2026:00:00:00 +0000", "timeEpoch": 0,
    });
    if let Some(claims) = claims {
        context["authorizer"] = json!({"jwt": {"claims": claims, "scopes": null}});
    }
    let event = json!({
        "version": "2.0", "routeKey": format!("{method} {path}"), "rawPath": path, "rawQueryString": "",
        "headers": headers, "requestContext": context, "isBase64Encoded": false,
    });
    invoke("fal-image", &event).await
}

/// `POST /fal-image` that must be refused: its status and `error`.
async fn refusal(jwt: &str, body: &Value) -> (u16, String) {
    let (status, answer) = generate(jwt, body).await;
    (
        status,
        answer["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn preflight_answers_ok_with_cors_headers() {
    // Through the runtime API: `cargo lambda watch` answers OPTIONS on function URLs itself. Every path a
    // supabase-js client calls, with every header it sends.
    for path in [
        "/fal-image",
        "/functions/v1/fal-image",
        "/storage/v1/object/sign/workspace-temp",
        "/storage/v1/object/sign/workspace-temp/u/a.png",
        "/jobs/00000000-0000-0000-0000-000000000000",
    ] {
        let r = invoke_http_api(
            "OPTIONS",
            path,
            json!({"origin": "https://app.example"}),
            None,
        )
        .await;
        assert_eq!(r["statusCode"], 200, "{path}: {r}");
        assert_eq!(r["headers"]["access-control-allow-origin"], "*", "{path}");
        let allowed = r["headers"]["access-control-allow-headers"]
            .as_str()
            .unwrap();
        for header in ["authorization", "apikey", "x-client-info", "content-type"] {
            assert!(
                allowed.contains(header),
                "{path}: {header} not in {allowed}"
            );
        }
        assert_eq!(r["body"], "ok");
    }
}

#[tokio::test]
async fn api_gateway_jwt_authorizer_claims_identify_the_caller() {
    let (user, jwt) = user().await;
    let body = json!({"prompt": prompt("claims", "#no-webhook #delay-ms=60000"), "apiModelId": async_model()});
    let (_, answer) = generate(&jwt, &body).await;
    let path = format!("/jobs/{}", answer["jobId"].as_str().unwrap());
    let claims = |sub: Uuid, role: Option<&str>| {
        let mut c = json!({"sub": sub.to_string()});
        if let Some(role) = role {
            c["role"] = json!(role);
        }
        Some(c)
    };
    let r = invoke_http_api("GET", &path, json!({}), claims(user, Some("authenticated"))).await;
    assert_eq!(r["statusCode"], 200, "{r}");
    let view: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(view["status"], "queued");
    let someone = Uuid::new_v4();
    let r = invoke_http_api(
        "GET",
        &path,
        json!({}),
        claims(someone, Some("authenticated")),
    )
    .await;
    assert_eq!(r["statusCode"], 404, "{r}");
    // The role is checked as on tokens the function verifies itself: only signed-in users.
    for role in [Some("anon"), Some("service_role"), None] {
        let r = invoke_http_api("GET", &path, json!({}), claims(user, role)).await;
        assert_eq!(r["statusCode"], 401, "{role:?}: {r}");
    }
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused_and_create_nothing() {
    let (user, _) = user().await;
    let body = json!({"prompt": prompt("x", ""), "apiModelId": sync_model()});
    let r = http()
        .post(api("/fal-image"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "Authorization required"
    );
    for jwt in ["garbage".to_owned(), jwt_for(user, -3600)] {
        assert_eq!(
            refusal(&jwt, &body).await,
            (401, "Authentication failed".into())
        );
    }
    let r = http()
        .get(api(&format!("/jobs/{}", Uuid::new_v4())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(jobs_of_user(user).await, 0);
}

#[tokio::test]
async fn malformed_requests_are_refused_before_any_work() {
    let (user, jwt) = user().await;
    let post = |ct: &'static str, body: Vec<u8>| {
        http()
            .post(api("/fal-image"))
            .bearer_auth(&jwt)
            .header("content-type", ct)
            .body(body)
    };
    let r = post("text/plain", b"{}".to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 415);
    let r = post("application/json", b"{\"prompt\": ".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "Invalid JSON body"
    );
    let r = post("application/json", b"[1,2,3]".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let huge = format!("{{\"prompt\":\"{}\"}}", "a".repeat(2 * 1024 * 1024));
    let r = post("application/json", huge.into_bytes())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        refusal(&jwt, &json!({"apiModelId": sync_model()})).await,
        (400, "Prompt is required".into())
    );
    for model in [Uuid::new_v4().to_string(), "not-a-uuid".into()] {
        assert_eq!(
            refusal(&jwt, &json!({"prompt": "x", "apiModelId": model})).await,
            (400, "Specified API model not found or inactive".into())
        );
    }
    assert_eq!(jobs_of_user(user).await, 0);
}

#[tokio::test]
async fn a_model_with_an_unsupported_endpoint_path_is_422() {
    let (user, jwt) = user().await;
    let model = Uuid::new_v4();
    db().await
        .execute(
            "INSERT INTO public.api_models (id, provider_id, model_key, display_name, modality, tasks, endpoint_path)
             SELECT $1, provider_id, $3, 'test', 'image', '{t2i}', 'replicate-webhook'
               FROM public.api_models WHERE id = $2",
            &[&model, &Uuid::parse_str(&sync_model()).unwrap(), &format!("fal-ai/test/{model}")],
        )
        .await
        .unwrap();
    assert_eq!(
        refusal(&jwt, &json!({"prompt": "x", "apiModelId": model})).await,
        (422, "unsupported endpoint_path".into())
    );
    assert_eq!(jobs_of_user(user).await, 0);
}

#[tokio::test]
async fn sync_generation_stores_the_served_bytes_with_their_real_type_and_size() {
    let (user, jwt) = user().await;
    let body = json!({
        "prompt": prompt("a red fox", "#media-type=image/jpeg #media-bytes=12345"),
        "apiModelId": sync_model(),
        "metadata": {"aspectRatio": "16:9"},
    });
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "completed");
    assert_eq!(answer["resultType"], "image");
    let job_id = answer["jobId"].as_str().unwrap();
    // Our copy serves exactly what fal served.
    let ours = digest(answer["resultUrl"].as_str().unwrap()).await;
    let fals = digest(answer["originalUrl"].as_str().unwrap()).await;
    assert_eq!(ours, fals);
    assert_eq!(ours.1, 12345);

    let j = job(job_id).await;
    assert_eq!(j["status"], "completed");
    assert!(j["started_at"].is_string() && j["completed_at"].is_string());
    let key = format!("{user}/{job_id}_0.jpg");
    assert_eq!(j["metadata"]["storage_path"], key);
    assert_eq!(j["metadata"]["result_type"], "image");
    assert_eq!(j["metadata"]["original_fal_url"], answer["originalUrl"]);
    assert_eq!(
        j["metadata"]["model_key"],
        "fal-ai/bytedance/seedream/v4/text-to-image"
    );
    assert!(j["metadata"]["input_used"]["prompt"].is_string());
    assert!(j["metadata"]["fal_response"]["images"].is_array());
    assert_eq!(
        objects_of_job(&user.to_string(), job_id).await,
        vec![(key.clone(), 12345)]
    );
    assert_eq!(asset_count(job_id).await, 1);
    assert_eq!(usage_count(job_id).await, 1);

    let (status, view) = view_job(&jwt, job_id).await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "completed");
    assert_eq!(view["result"]["assetId"], answer["assetId"]);
    assert_eq!(view["result"]["storagePath"], key);
    assert_eq!(view["result"]["mimeType"], "image/jpeg");
    assert_eq!(digest(view["result"]["url"].as_str().unwrap()).await, fals);
}

/// The functions reach the database as a deployment reaches Supabase's: over TLS verified against the database's
/// own CA (the stack's secret has `sslmode=require` and the CA as `DATABASE_CA_CERT`). Postgres sees every one of
/// their sessions as TLS (through the pooler: PgBouncer's, which take the functions' name).
#[tokio::test]
async fn the_functions_sessions_with_the_database_are_tls() {
    let (_, jwt) = user().await;
    let body = json!({"prompt": prompt("a lighthouse", ""), "apiModelId": sync_model()});
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    let sessions: Vec<bool> = db()
        .await
        .query(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.application_name = 'gen-pipeline'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // This process's sessions (this query's among them) have another name: these are the functions'.
    assert!(!sessions.is_empty(), "no session of the functions");
    assert!(sessions.iter().all(|tls| *tls), "{sessions:?}");
}

#[tokio::test]
async fn async_generation_answers_before_any_webhook_and_stores_the_request_id() {
    let (_, jwt) = user().await;
    let body = json!({"prompt": prompt("waves", "#delay-ms=2500"), "apiModelId": async_model()});
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "queued");
    let (job_id, request_id) = (
        answer["jobId"].as_str().unwrap(),
        answer["requestId"].as_str().unwrap(),
    );
    let j = job(job_id).await;
    assert_eq!(j["status"], "queued");
    assert_eq!(j["metadata"]["fal_request_id"], request_id);
    for k in ["fal_status_url", "fal_response_url", "fal_cancel_url"] {
        assert!(
            j["metadata"][k]
                .as_str()
                .is_some_and(|u| u.contains(request_id)),
            "{k}"
        );
    }
    assert_eq!(inspect(request_id).await["deliveries"], json!([]));
    assert_eq!(usage_count(job_id).await, 1);

    let done = wait_terminal(job_id, WAIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["metadata"]["result_type"], "video");
    assert_eq!(asset_count(job_id).await, 1);
    assert_eq!(usage_count(job_id).await, 1);
}

#[tokio::test]
async fn a_queue_503_falls_back_to_the_sync_host_and_completes() {
    let (_, jwt) = user().await;
    let body =
        json!({"prompt": prompt("fallback", "#queue-status=503"), "apiModelId": async_model()});
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "completed");
    let j = job(answer["jobId"].as_str().unwrap()).await;
    assert_eq!(j["status"], "completed");
    assert_eq!(j["metadata"]["sync_fallback"], true);
    assert_eq!(usage_count(answer["jobId"].as_str().unwrap()).await, 1);
}

/// A queue submission that times out leaves the sync run only what is left of the sync bound: the two together end
/// within it (and so within the function's 29 s timeout), with the job failed, instead of the function being killed
/// with the job left `processing`.
#[tokio::test]
async fn a_sync_run_after_a_timed_out_queue_submission_ends_within_the_sync_bound() {
    let (_, jwt) = user().await;
    // fal's queue answers after the submission's 10 s bound; its sync host would take 20 s more.
    let directives = "#no-webhook #submit-delay-ms=12000 #run-delay-ms=20000";
    let body = json!({"prompt": prompt("slow queue", directives), "apiModelId": async_model()});
    let started = std::time::Instant::now();
    let (status, answer) = generate(&jwt, &body).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{answer}");
    assert!(
        took < Duration::from_secs(29),
        "answered after {took:?}, past the function's timeout"
    );
    let j = job(answer["jobId"].as_str().unwrap()).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["metadata"]["sync_fallback"], true, "{j}");
}

/// fal accepts a queue submission but answers it after the 10 s bound, and that queued request then fails while
/// the sync fallback runs: its error delivery is for a request the job abandoned, so the sync run completes the job.
#[tokio::test]
async fn an_error_from_the_queue_request_a_fallback_abandoned_leaves_the_sync_run_to_finish() {
    let queued = abandoned_queue_request_leaves_the_sync_run_to_finish("#queue-error").await;
    assert_eq!(queued["failed"], true, "{queued}");
}

/// As above, but the abandoned request succeeds and its result is one we refuse (its file answers 404, which the
/// sync run's does not): the refusal is that request's, and does not fail the job the sync run completes.
#[tokio::test]
async fn a_refused_result_of_the_queue_request_a_fallback_abandoned_leaves_the_sync_run_to_finish()
{
    let queued =
        abandoned_queue_request_leaves_the_sync_run_to_finish("#queue-media-status=404").await;
    assert_eq!(queued["failed"], false, "{queued}");
    // Its delivery did fetch the file, and was refused it.
    assert!(queued["media_fetches"].as_u64().unwrap() >= 1, "{queued}");
}

/// As above (a refused result of the abandoned request), after a holder before it that stored the result under
/// another type and failed (planted: its claim, its lease ended, and a `.jpg`). The refusal leaves the job open and
/// the claim's count of its holders as it was, so the sync run that completes the job knows holders came before it
/// and removes the leftover (before, the refusal deleted the claim, and the `.jpg` outlived the job's completion).
#[tokio::test]
async fn a_refused_abandoned_request_between_a_failed_holder_and_the_sync_run_leaves_no_leftover() {
    let (user_id, jwt) = user().await;
    let directives =
        "#queue-media-status=404 #submit-delay-ms=12000 #delay-ms=13000 #run-delay-ms=6000";
    let body = json!({"prompt": prompt("leftover then abandoned", directives), "apiModelId": async_model()});
    let (answer, job_id) = generate_in_flight(&jwt, user_id, body, "leftover").await;
    plant_failed_holder(user_id, &job_id, "jpg").await;

    let (status, answer) = answer.await.unwrap();
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("completed")),
        "{answer}"
    );
    assert_exactly_once(user_id, &job_id, "completed").await;
    assert_eq!(
        objects_of_job(&user_id.to_string(), &job_id).await,
        vec![(format!("{user_id}/{job_id}_0.mp4"), 4096)]
    );
    // The abandoned request's delivery came between, and was refused its file.
    let queued = requests_for_job(&job_id).await;
    let request_id = queued[0]["request_id"].as_str().unwrap();
    let delivered = answered_deliveries(request_id, 1, WAIT).await;
    assert_eq!(delivered[0]["http_status"], 200, "{delivered:?}");
    assert!(inspect(request_id).await["media_fetches"].as_u64().unwrap() >= 1);
}

/// A queue submission accepted but answered at 12 s, past the 10 s bound, whose request ends (as `outcome` makes
/// it) and is delivered at ~13 s, while the sync fallback runs from ~10 s to ~16 s: the job is completed once, by
/// the sync run, and the delivery was answered 200 before the sync run's answer. Returns the queued request as
/// the emulator reports it.
async fn abandoned_queue_request_leaves_the_sync_run_to_finish(outcome: &str) -> Value {
    let (user_id, jwt) = user().await;
    let directives = format!("{outcome} #submit-delay-ms=12000 #delay-ms=13000 #run-delay-ms=6000");
    let body = json!({"prompt": prompt("abandoned queue request", &directives), "apiModelId": async_model()});
    let (status, answer) = generate(&jwt, &body).await;
    let answered_at_ms = unix_ms();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "completed", "{answer}");
    let job_id = answer["jobId"].as_str().unwrap();
    let j = assert_exactly_once(user_id, job_id, "completed").await;
    assert_eq!(j["metadata"]["sync_fallback"], true, "{j}");
    let queued = requests_for_job(job_id).await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    let request_id = queued[0]["request_id"].as_str().unwrap();
    let delivered = answered_deliveries(request_id, 1, WAIT).await;
    assert_eq!(delivered[0]["http_status"], 200, "{delivered:?}");
    assert!(
        delivered[0]["started_at_ms"].as_u64().unwrap() < answered_at_ms,
        "delivered after the sync run's answer: {delivered:?}"
    );
    assert_eq!(job(job_id).await["status"], "completed");
    inspect(request_id).await
}

/// An error delivered for an abandoned queue request ends the job once its sync run can no longer decide it (the
/// fallback is older than a sync run lives: the run was answered or its function stopped, and the job is still
/// open), and is skipped while it can. The fallback is written into the run by hand, between the queue's answer
/// and its delivery 4 s later.
#[tokio::test]
async fn an_abandoned_requests_error_ends_the_job_only_once_its_sync_run_is_over() {
    let (_, jwt) = user().await;
    for (fell_back, status) in [("0", "processing"), ("120", "failed")] {
        let directives = "#queue-error #delay-ms=4000";
        let body = json!({"prompt": prompt("abandoned, then over", directives), "apiModelId": async_model()});
        let (job_id, request_id) = submit_queued(&jwt, &body).await;
        let id = Uuid::parse_str(&job_id).unwrap();
        let db = db().await;
        db.execute(
            "UPDATE public.job_runs SET request_id = NULL, status_url = NULL, response_url = NULL,
                    cancel_url = NULL, fell_back_at = now() - make_interval(secs => $2::text::int)
              WHERE job_id = $1",
            &[&id, &fell_back],
        )
        .await
        .unwrap();
        db.execute(
            "UPDATE public.jobs SET status = 'processing' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
        let delivered = answered_deliveries(&request_id, 1, WAIT).await;
        assert_eq!(delivered[0]["http_status"], 200, "{delivered:?}");
        assert_eq!(
            job(&job_id).await["status"],
            status,
            "fell back {fell_back} s before the delivery"
        );
    }
}

/// fal accepts a queue submission, runs it and delivers its webhook, but answers the submission after the 10 s bound:
/// the fallback finds its job completed by that webhook, runs nothing more, and answers with the stored result.
#[tokio::test]
async fn a_timed_out_queue_submission_whose_webhook_completed_the_job_answers_its_result() {
    let (user_id, jwt) = user().await;
    let directives = "#early #submit-delay-ms=12000";
    let body =
        json!({"prompt": prompt("early, slow answer", directives), "apiModelId": async_model()});
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "completed", "{answer}");
    let job_id = answer["jobId"].as_str().unwrap();
    let j = assert_exactly_once(user_id, job_id, "completed").await;
    assert!(j["metadata"].get("sync_fallback").is_none(), "{j}");
    let (status, _, _) = digest(answer["resultUrl"].as_str().unwrap()).await;
    assert_eq!(status, 200);
}

/// fal accepted the submission (2xx) but its answer cannot be read (no request id): the request runs and is
/// delivered, so the job is neither run again on the sync host (a second generation) nor failed (its result then
/// thrown away): the caller is answered queued, and fal's delivery completes the job.
#[tokio::test]
async fn an_unreadable_accepted_submission_is_left_to_its_delivery() {
    let (user_id, jwt) = user().await;
    let body = json!({"prompt": prompt("unreadable submit", "#queue-unreadable #delay-ms=300"), "apiModelId": async_model()});
    let (job_id, request_id) = submit_queued(&jwt, &body).await;
    assert_eq!(request_id, "", "no id could be read from fal's answer");
    let j = wait_terminal(&job_id, WAIT).await;
    assert_eq!(j["status"], "completed", "{j}");
    assert!(j["metadata"].get("sync_fallback").is_none(), "{j}");
    assert_eq!(
        requests_for_job(&job_id).await.len(),
        1,
        "one request at fal"
    );
    assert_exactly_once(user_id, &job_id, "completed").await;
    assert_eq!(usage_count(&job_id).await, 1, "one usage row");

    // One that fails at fal keeps the usage row written when it was left to its delivery.
    let body = json!({"prompt": prompt("unreadable submit failing", "#queue-unreadable #queue-error #delay-ms=300"), "apiModelId": async_model()});
    let (job_id, _) = submit_queued(&jwt, &body).await;
    let j = wait_terminal(&job_id, WAIT).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(usage_count(&job_id).await, 1, "one usage row");
}

#[tokio::test]
async fn a_queue_422_fails_the_job_with_fals_message() {
    let (_, jwt) = user().await;
    let body =
        json!({"prompt": prompt("refused", "#queue-status=422"), "apiModelId": async_model()});
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 422, "{answer}");
    let (j, message) = failed_job(answer["jobId"].as_str().unwrap()).await;
    assert!(message.starts_with("Async submission failed: 422"), "{j}");
}

#[tokio::test]
async fn sync_model_errors_fail_the_job_with_the_status_fal_gave() {
    let (_, jwt) = user().await;
    // Refusals of the service's key, balance or model name are not the caller's: 502, without fal's detail (a 401
    // would read as the caller's session having ended).
    let cases = [
        ("#error", 422),
        ("#run-status=503", 503),
        ("#run-status=401", 502),
        ("#run-status=402", 502),
        ("#run-status=403", 502),
        ("#run-status=404", 502),
    ];
    for (directive, expected) in cases {
        let body = json!({"prompt": prompt("broken", directive), "apiModelId": sync_model()});
        let (status, answer) = generate(&jwt, &body).await;
        assert_eq!(status, expected, "{directive}: {answer}");
        if expected == 502 {
            assert!(answer.get("fal_detail").is_none(), "{directive}: {answer}");
        }
        let job_id = answer["jobId"].as_str().unwrap();
        let (j, message) = failed_job(job_id).await;
        assert!(message.starts_with("fal.ai API error"), "{directive}: {j}");
        assert_eq!(asset_count(job_id).await, 0);
        assert_eq!(usage_count(job_id).await, 1);
    }
}

/// A sync run whose completion another caller holds past the wait (a claim planted here, standing for a provider's
/// webhook that took it first and is still storing the result) answers as a queued job, which the caller polls:
/// the job is not failed, and a "Generation failed" answer would contradict the row it is about to have.
#[tokio::test]
async fn a_sync_run_whose_completion_another_caller_holds_answers_queued() {
    let (user_id, jwt) = user().await;
    let body = json!({"prompt": prompt("held", "#run-delay-ms=3000"), "apiModelId": sync_model()});
    let submission = tokio::spawn(async move { generate(&jwt, &body).await });
    let db = db().await;
    let job_id = loop {
        let row = db
            .query_opt("SELECT id FROM public.jobs WHERE user_id = $1", &[&user_id])
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get::<_, Uuid>(0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    db.execute(
        "INSERT INTO public.job_completion_claims (job_id, holder, lease_expires_at)
         VALUES ($1, gen_random_uuid(), now() + interval '2 minutes')",
        &[&job_id],
    )
    .await
    .unwrap();
    let (status, answer) = submission.await.unwrap();
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("queued")),
        "{answer}"
    );
    assert_eq!(answer["jobId"], job_id.to_string());
    assert_eq!(job(&job_id.to_string()).await["status"], "processing");
    assert_eq!(asset_count(&job_id.to_string()).await, 0);
}

#[tokio::test]
async fn a_sync_503_then_success_is_retried_and_completes() {
    let (_, jwt) = user().await;
    let body = json!({"prompt": prompt("flaky", "#run-fail-first=2"), "apiModelId": sync_model()});
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("completed")),
        "{answer}"
    );
}

#[tokio::test]
async fn a_100_mib_sync_video_passes_with_bounded_memory() {
    let (user, jwt) = user().await;
    let size = 100 * 1024 * 1024;
    let body = json!({
        "prompt": prompt("long video", &format!("#media-type=video/mp4 #media-bytes={size}")),
        "apiModelId": sync_model(),
    });
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    let job_id = answer["jobId"].as_str().unwrap();
    assert_eq!(
        objects_of_job(&user.to_string(), job_id).await,
        vec![(format!("{user}/{job_id}_0.mp4"), size)]
    );
    let peaks = function_peak_rss("fal-image");
    assert!(!peaks.is_empty());
    for (pid, peak) in peaks {
        assert!(
            peak < 120 * 1024 * 1024,
            "fal-image pid {pid} peaked at {} MiB",
            peak / (1024 * 1024)
        );
    }
}

#[tokio::test]
async fn a_result_on_a_disallowed_host_fails_the_job_without_being_fetched() {
    let (_, jwt) = user().await;
    let trap = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let port = trap.local_addr().unwrap().port();
    let body = json!({
        "prompt": prompt("elsewhere", &format!("#media-url=http://127.0.0.2:{port}/x.png")),
        "apiModelId": sync_model(),
    });
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 502, "{answer}");
    let (j, message) = failed_job(answer["jobId"].as_str().unwrap()).await;
    assert!(message.contains("not allowed"), "{j}");
    assert_eq!(
        trap.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

/// The cancel route closes the run for good, so it asks the provider to stop whatever status the row shows: an
/// owner who first set their queued job `processing` through RLS does not get a slot back while fal runs on.
#[tokio::test]
async fn cancelling_a_job_its_owner_marked_processing_still_cancels_it_at_fal() {
    let (owner, jwt) = user().await;
    let parked = json!({"prompt": prompt("marked processing", "#no-webhook #delay-ms=600000"), "apiModelId": async_model()});
    let (job_id, request_id) = submit_queued(&jwt, &parked).await;
    let id = Uuid::parse_str(&job_id).unwrap();
    let mut session = db().await;
    let marked = e2e::common::as_user(&mut session, owner, async |tx| {
        tx.execute(
            "UPDATE public.jobs SET status = 'processing' WHERE id = $1",
            &[&id],
        )
        .await
    })
    .await
    .unwrap();
    assert_eq!(marked, 1, "the owner's update through RLS");

    let (status, answer) = cancel_job(&jwt, &job_id).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        Provider::Fal.cancelled(&request_id).await,
        "fal was not told to stop {request_id}"
    );
}

for_each_provider!(a_job_cancelled_while_its_submission_is_in_flight_is_cancelled_at_the_provider);

/// A job cancelled through the API while its queue submission is in flight: the run is closed before the
/// provider's answer brings the cancel URL, so the cancel route has nothing to ask the provider; the submission,
/// finding the run closed when it records the answer, asks the provider to stop. The caller still gets its
/// `queued` answer.
async fn a_job_cancelled_while_its_submission_is_in_flight_is_cancelled_at_the_provider(
    provider: Provider,
) {
    let (owner, jwt) = user().await;
    let body = json!({
        "prompt": prompt("cancelled in flight", "#no-webhook #delay-ms=600000 #submit-delay-ms=3000"),
        "apiModelId": provider.queued_model(),
    });
    let (submitting, job_id) = generate_in_flight(&jwt, owner, body, "cancelled in flight").await;
    let db = db().await;
    let (status, answer) = cancel_job(&jwt, &job_id).await;
    assert_eq!(status, 200, "{answer}");
    let runs_url = "SELECT cancel_url IS NULL FROM public.job_runs WHERE job_id = $1::text::uuid";
    let no_url_yet: bool = db.query_one(runs_url, &[&job_id]).await.unwrap().get(0);
    assert!(
        no_url_yet,
        "fal answered the submission before the cancel: the test proves nothing"
    );

    let (status, answer) = submitting.await.unwrap();
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("queued")),
        "{answer}"
    );
    let request_id = answer["requestId"].as_str().expect("requestId");
    assert!(
        provider.cancelled(request_id).await,
        "{provider:?} was not told to stop {request_id}"
    );
    let (_, job) = view_job(&jwt, &job_id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
}

for_each_provider!(a_sync_run_whose_job_was_closed_meanwhile_still_logs_its_usage);

/// A sync run whose job its owner closed while the provider ran it (cancelled through the API, or deleted through
/// RLS) stores nothing, and the run the provider billed still has its one usage row. One submission in flight at a
/// time: the functions run at most four invocations at once under `cargo lambda watch`, and the cancel needs one.
async fn a_sync_run_whose_job_was_closed_meanwhile_still_logs_its_usage(provider: Provider) {
    let (owner, jwt) = user().await;
    for closing in ["cancelled", "deleted"] {
        let marker = format!("{closing}-sync");
        let directives = "#delay-ms=4000 #run-delay-ms=4000";
        let body =
            json!({"prompt": prompt(&marker, directives), "apiModelId": provider.sync_model()});
        let (submitting, job_id) = generate_in_flight(&jwt, owner, body, &marker).await;
        if closing == "cancelled" {
            let (status, answer) = cancel_job(&jwt, &job_id).await;
            assert_eq!(status, 200, "{answer}");
        } else {
            let delete = "DELETE FROM public.jobs WHERE id = $1::text::uuid";
            db().await.execute(delete, &[&job_id]).await.unwrap();
        }
        let (status, answer) = submitting.await.unwrap();
        assert_eq!(status, 409, "{closing}: {answer}");
        let objects = objects_of_job(&owner.to_string(), &job_id).await;
        assert!(objects.is_empty(), "{closing}: {objects:?}");
        assert_eq!(
            usage_count(&job_id).await,
            1,
            "usage rows of the {closing} job"
        );
    }
}

#[tokio::test]
async fn users_cannot_read_or_cancel_each_others_jobs_and_cancel_is_once() {
    let (_, owner) = user().await;
    let (_, other) = user().await;
    let body = json!({"prompt": prompt("slow", "#no-webhook #delay-ms=60000"), "apiModelId": async_model()});
    let (status, answer) = generate(&owner, &body).await;
    assert_eq!(status, 200, "{answer}");
    let (job_id, request_id) = (
        answer["jobId"].as_str().unwrap(),
        answer["requestId"].as_str().unwrap(),
    );
    assert_eq!(view_job(&other, job_id).await.0, 404);
    assert_eq!(cancel_job(&other, job_id).await.0, 404);
    assert_eq!(job(job_id).await["status"], "queued");
    let (status, view) = view_job(&owner, job_id).await;
    assert_eq!(status, 200);
    assert_eq!(
        (view["status"].as_str(), &view["result"]),
        (Some("queued"), &Value::Null)
    );

    let (status, answer) = cancel_job(&owner, job_id).await;
    assert_eq!(status, 200);
    assert_eq!(answer["status"], "cancelled");
    let j = job(job_id).await;
    assert_eq!(j["status"], "cancelled");
    assert!(j["completed_at"].is_string());
    assert_eq!(inspect(request_id).await["cancelled"], true);
    assert_eq!(cancel_job(&owner, job_id).await.0, 409);
    assert_eq!(view_job(&owner, &Uuid::new_v4().to_string()).await.0, 404);
}

/// Waits until post-processing recorded `step` for the job.
async fn wait_step(job_id: &str, step: &str) {
    let id = Uuid::parse_str(job_id).unwrap();
    for _ in 0..100 {
        let n: i64 = db()
            .await
            .query_one(
                "SELECT count(*) FROM public.job_postprocessing WHERE job_id = $1 AND step = $2",
                &[&id, &step],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("post-processing step {step} of job {job_id} never finished");
}

/// Runs post-processing again, as the reconciler would, in this process.
async fn rerun_post_processing(job_id: &str) -> Vec<&'static str> {
    let (state, settings) = app_state().await;
    gen_pipeline::postprocess::run_steps(&state, &settings, Uuid::parse_str(job_id).unwrap())
        .await
        .unwrap()
}

/// A sync generation with post-processing `metadata`, once its `step` has run and a second run (as the
/// reconciler's) did nothing more: its job id and the user's one library row.
async fn post_processed_once(
    jwt: &str,
    user: Uuid,
    text: &str,
    metadata: Value,
    step: &str,
) -> (String, Value) {
    let body =
        json!({"prompt": prompt(text, ""), "apiModelId": sync_model(), "metadata": metadata});
    let (status, answer) = generate(jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    let job_id = answer["jobId"].as_str().unwrap().to_owned();
    wait_step(&job_id, step).await;
    assert!(rerun_post_processing(&job_id).await.is_empty());
    let rows = library_rows(user).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    (job_id, rows[0].clone())
}

/// A new character of `user`'s, named `name`.
async fn new_character(user: Uuid, name: &str) -> Uuid {
    let character = Uuid::new_v4();
    db().await
        .execute(
            "INSERT INTO public.characters (id, user_id, name) VALUES ($1, $2, $3)",
            &[&character, &user, &name],
        )
        .await
        .unwrap();
    character
}

/// A sync portrait of `character`, once its post-processing step is recorded: its job id.
async fn sync_portrait(jwt: &str, character: Uuid, text: &str) -> String {
    let metadata = json!({"destination": "character_portrait", "character_id": character});
    let body =
        json!({"prompt": prompt(text, ""), "apiModelId": sync_model(), "metadata": metadata});
    let (status, answer) = generate(jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    let job_id = answer["jobId"].as_str().unwrap().to_owned();
    wait_step(&job_id, "character_portrait").await;
    job_id
}

/// The recorded `character_portrait` step's detail of job `job_id`.
async fn portrait_step(job_id: &str) -> Value {
    db().await
        .query_one(
            "SELECT detail FROM public.job_postprocessing WHERE job_id = $1::text::uuid AND step = 'character_portrait'",
            &[&job_id],
        )
        .await
        .unwrap()
        .get(0)
}

/// The keys of `user`'s objects in the library bucket.
async fn library_objects(user: Uuid) -> Vec<String> {
    let listed = s3()
        .await
        .list_objects_v2()
        .bucket(stack_var("LIBRARY_BUCKET"))
        .prefix(format!("{user}/"))
        .send()
        .await
        .unwrap();
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

async fn library_rows(user: Uuid) -> Vec<Value> {
    first_column(
        &db().await,
        "SELECT to_jsonb(l) FROM public.user_library l WHERE user_id = $1",
        &[&user],
    )
    .await
}

#[tokio::test]
async fn a_character_portrait_updates_the_character_and_library_once_even_when_run_twice() {
    let (user, jwt) = user().await;
    let character = new_character(user, "Ada").await;
    let metadata = json!({"destination": "character_portrait", "character_id": character, "character_name": "Ada"});
    let (job_id, row) = post_processed_once(
        &jwt,
        user,
        "portrait of Ada",
        metadata,
        "character_portrait",
    )
    .await;

    let key = format!("{user}/{job_id}_{character}.png");
    assert_eq!(row["storage_path"], key);
    assert_eq!(row["tags"], json!(["character", "portrait"]));
    assert_eq!(row["output_type"], "portrait");
    let c: Value = db()
        .await
        .query_one(
            "SELECT to_jsonb(c) FROM public.characters c WHERE id = $1",
            &[&character],
        )
        .await
        .unwrap()
        .get(0);
    // The original's pointer: the storage bucket clients sign in, not the S3 bucket behind it.
    assert_eq!(c["image_url"], format!("user-library/{key}"));
    assert_eq!(c["reference_image_url"], c["image_url"]);
}

#[tokio::test]
async fn a_portrait_naming_its_character_without_an_id_updates_the_callers_latest_character_of_that_name()
 {
    let (other, _) = user().await;
    let (user, jwt) = user().await;
    let (older, latest, others) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let client = db().await;
    for (id, owner, updated) in [
        (older, user, "2026-01-01"),
        (latest, user, "2026-06-01"),
        // Another user's character of the same name, updated last: never the caller's.
        (others, other, "2026-12-01"),
    ] {
        client
            .execute(
                "INSERT INTO public.characters (id, user_id, name, updated_at) VALUES ($1, $2, 'Cy', $3::text::timestamptz)",
                &[&id, &owner, &updated],
            )
            .await
            .unwrap();
    }
    let metadata = json!({"destination": "character_portrait", "characterName": "Cy"});
    let (job_id, row) =
        post_processed_once(&jwt, user, "portrait of Cy", metadata, "character_portrait").await;

    assert_eq!(row["character_id"], json!(latest));
    assert_eq!(row["storage_path"], format!("{user}/{job_id}_{latest}.png"));
    let image_urls: Vec<Option<String>> = first_column(
        &client,
        "SELECT image_url FROM public.characters WHERE id = ANY($1) ORDER BY updated_at",
        &[&vec![older, others]],
    )
    .await;
    assert_eq!(image_urls, vec![None, None]);
}

#[tokio::test]
async fn a_roleplay_scene_gets_its_image_in_the_library_once() {
    let (user, jwt) = user().await;
    let character = new_character(user, "Bo").await;
    let scene = Uuid::new_v4();
    let client = db().await;
    client
        .execute(
            "INSERT INTO public.character_scenes (id, character_id, scene_prompt) VALUES ($1, $2, 'a harbour')",
            &[&scene, &character],
        )
        .await
        .unwrap();
    let metadata =
        json!({"destination": "roleplay_scene", "scene_id": scene, "character_id": character});
    let (job_id, row) =
        post_processed_once(&jwt, user, "a harbour at night", metadata, "scene_image").await;
    assert_eq!(row["tags"], json!(["scene", "roleplay"]));
    let image_url: Option<String> = client
        .query_one(
            "SELECT image_url FROM public.character_scenes WHERE id = $1",
            &[&scene],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        image_url.unwrap(),
        format!("user-library/{user}/scenes/{scene}_{job_id}.png")
    );
}

/// A storyboard clip in `generating`, as a client makes it.
async fn generating_clip() -> Uuid {
    let clip = Uuid::new_v4();
    db().await
        .execute(
            "INSERT INTO public.storyboard_clips (id, status) VALUES ($1, 'generating')",
            &[&clip],
        )
        .await
        .unwrap();
    clip
}

/// A storyboard clip in `generating` and a video generation for it: (clip, answer).
async fn storyboard_video(directives: &str) -> (Uuid, Value) {
    let (_, jwt) = user().await;
    let clip = generating_clip().await;
    let body = json!({
        "prompt": prompt("clip", directives),
        "apiModelId": async_model(),
        "metadata": {"storyboard_clip_id": clip},
    });
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    (clip, answer)
}

/// Post-processing finished the clip with the job's video, which can be fetched.
async fn assert_clip_completed(job_id: &str, clip: Uuid) {
    wait_step(job_id, "storyboard_clip").await;
    let row = db()
        .await
        .query_one(
            "SELECT status, video_url FROM public.storyboard_clips WHERE id = $1",
            &[&clip],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("completed")
    );
    let url: String = row.get::<_, Option<String>>(1).unwrap();
    assert_eq!(digest(&url).await.0, 200);
}

/// The queue refuses the submission, so the video runs on the sync host: its storyboard clip is still finished
/// after the answer (post-processing eligibility is one rule, whatever the route that completed the job).
#[tokio::test]
async fn a_storyboard_video_that_falls_back_to_the_sync_run_completes_its_clip() {
    let (clip, answer) = storyboard_video("#queue-status=503").await;
    assert_eq!(
        answer["status"], "completed",
        "fell back to the sync run: {answer}"
    );
    assert_clip_completed(answer["jobId"].as_str().unwrap(), clip).await;
}

#[tokio::test]
async fn a_storyboard_clip_is_completed_with_its_video() {
    let (clip, answer) = storyboard_video("#delay-ms=100").await;
    let job_id = answer["jobId"].as_str().unwrap();
    assert_eq!(wait_terminal(job_id, WAIT).await["status"], "completed");
    assert_clip_completed(job_id, clip).await;
}

/// Cancelling a clip's job ends the clip too, as failing it does: no video will come for it, and a clip left
/// `generating` would wait for one forever.
#[tokio::test]
async fn cancelling_a_storyboard_clips_job_fails_the_clip() {
    let (_, jwt) = user().await;
    let clip = generating_clip().await;
    let job_id = queued_clip_job(&jwt, clip, "#no-webhook").await;
    let (status, cancelled) = cancel_job(&jwt, &job_id).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(clip_status(clip).await.as_deref(), Some("failed"));
}

/// A clip its owner asked for again while the first job was still queued: cancelling the first job leaves the
/// clip to the later one, which completes it with its video.
#[tokio::test]
async fn a_clip_asked_for_again_is_decided_by_the_later_job() {
    let (_, jwt) = user().await;
    let clip = generating_clip().await;
    let first = queued_clip_job(&jwt, clip, "#no-webhook").await;
    let again = queued_clip_job(&jwt, clip, "#delay-ms=1500").await;
    let (status, cancelled) = cancel_job(&jwt, &first).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(clip_status(clip).await.as_deref(), Some("generating"));

    assert_eq!(wait_terminal(&again, WAIT).await["status"], "completed");
    assert_clip_completed(&again, clip).await;
}

/// A video generation for `clip`, answered `queued`: its job id.
async fn queued_clip_job(jwt: &str, clip: Uuid, directives: &str) -> String {
    let body = json!({
        "prompt": prompt("clip", directives),
        "apiModelId": async_model(),
        "metadata": {"storyboard_clip_id": clip},
    });
    let (status, answer) = generate(jwt, &body).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("queued")),
        "{answer}"
    );
    answer["jobId"].as_str().unwrap().to_owned()
}

async fn clip_status(clip: Uuid) -> Option<String> {
    db().await
        .query_one(
            "SELECT status FROM public.storyboard_clips WHERE id = $1",
            &[&clip],
        )
        .await
        .unwrap()
        .get(0)
}

/// An image-to-video clip from the caller's own stored image: the image is copied as the video's thumbnail, and
/// the clip points at the copy in the storage bucket clients sign in (not the S3 bucket behind it).
#[tokio::test]
async fn an_image_to_video_clip_shows_its_reference_as_thumbnail() {
    let (user_id, jwt) = user().await;
    let reference = generated_image(&jwt, "reference").await;
    let clip = generating_clip().await;
    let body = json!({
        "prompt": prompt("clip", "#delay-ms=100"),
        "apiModelId": async_model(),
        "input": {"image_url": format!("workspace-temp/{}", reference.path)},
        "metadata": {"storyboard_clip_id": clip},
    });
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    let job_id = answer["jobId"].as_str().unwrap();
    assert_eq!(wait_terminal(job_id, WAIT).await["status"], "completed");
    wait_step(job_id, "storyboard_clip").await;

    let thumb = format!("{user_id}/{job_id}_0.thumb.webp");
    let thumbnails: Vec<Option<String>> = first_column(
        &db().await,
        "SELECT thumbnail_path FROM public.workspace_assets WHERE job_id = $1",
        &[&Uuid::parse_str(job_id).unwrap()],
    )
    .await;
    assert_eq!(thumbnails, vec![Some(thumb.clone())]);
    let stored = objects_of_job(&user_id.to_string(), job_id).await;
    assert!(
        stored.contains(&(thumb.clone(), reference.size)),
        "the thumbnail is a copy of the reference ({} bytes): {stored:?}",
        reference.size
    );
    let clip_thumbnail: Option<String> = db()
        .await
        .query_one(
            "SELECT thumbnail_url FROM public.storyboard_clips WHERE id = $1",
            &[&clip],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(clip_thumbnail, Some(format!("workspace-temp/{thumb}")));
}

/// `model_key_override` naming an active edit model whose schema takes `image_urls`, asked through a row whose schema
/// does not: the reference is handed in the list form the named model takes (the original's step 6), not as the
/// `image_url` the asked row alone would give.
#[tokio::test]
async fn an_override_whose_model_takes_image_urls_gets_its_reference_as_a_list() {
    let (_, jwt) = user().await;
    let reference = generated_image(&jwt, "edit source").await;
    let edit_key = format!("fal-ai/test/edit-{}", Uuid::new_v4().simple());
    let db = db().await;
    db.execute(
        "INSERT INTO public.api_models
           (provider_id, model_key, display_name, modality, tasks, capabilities, priority, is_active)
         SELECT provider_id, $2, 'Edit (e2e)', 'image', '{i2i}',
                '{\"input_schema\": {\"prompt\": {}, \"image_urls\": {}}}', 50, true
           FROM public.api_models WHERE id = $1",
        &[&Uuid::parse_str(&sync_model()).unwrap(), &edit_key],
    )
    .await
    .unwrap();
    let body = json!({
        "prompt": prompt("edit", ""), "apiModelId": sync_model(), "model_key_override": edit_key,
        "input": {"image_url": format!("workspace-temp/{}", reference.path)},
    });
    let (status, answer) = generate(&jwt, &body).await;
    db.execute(
        "DELETE FROM public.api_models WHERE model_key = $1",
        &[&edit_key],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    let used = &job(answer["jobId"].as_str().unwrap()).await["metadata"]["input_used"];
    let list = used["image_urls"].as_array().expect("image_urls handed");
    assert_eq!(list.len(), 1, "{used}");
    assert!(
        list[0].as_str().unwrap().contains(&reference.path),
        "the reference, signed: {used}"
    );
    assert!(used.get("image_url").is_none(), "{used}");
}

/// A reference given as a bare key (a `user_library.storage_path`, which is stored without its bucket) is looked
/// for in the workspace bucket and then the library bucket, as the original tried its buckets in turn; a key in
/// neither is refused before a job is written.
#[tokio::test]
async fn a_bare_reference_is_found_in_the_library_and_a_missing_one_is_refused() {
    let (user_id, jwt) = user().await;
    let character = new_character(user_id, "Library reference").await;
    sync_portrait(&jwt, character, "library reference").await;
    let copies = library_objects(user_id).await;
    assert_eq!(copies.len(), 1, "{copies:?}");
    let body = |image_url: &str| {
        json!({
            "prompt": prompt("from the library", "#delay-ms=100"),
            "apiModelId": async_model(),
            "input": {"image_url": image_url},
        })
    };
    let (job_id, request_id) = submit_queued(&jwt, &body(&copies[0])).await;
    let handed = inspect(&request_id).await["input"]["image_url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let in_library = format!("/{}/{}", stack_var("LIBRARY_BUCKET"), copies[0]);
    assert!(handed.contains(&in_library), "{handed}");
    let fetched = http().get(&handed).send().await.unwrap();
    assert_eq!(fetched.status(), 200, "{handed}");
    assert_eq!(wait_terminal(&job_id, WAIT).await["status"], "completed");

    let jobs = jobs_of_user(user_id).await;
    let missing = format!("{user_id}/{}.png", Uuid::new_v4());
    let (status, answer) = generate(&jwt, &body(&missing)).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        jobs_of_user(user_id).await,
        jobs,
        "no job for a refused request"
    );
}

/// A browser `fetch()` of a signed link from the app's origin: the 302 and the object's own answer both carry
/// CORS headers (the buckets' rule in `template.yaml`, set on the local buckets too), so a page can read the
/// bytes, not only show them in an `<img>`.
#[tokio::test]
async fn a_signed_link_fetched_from_the_apps_origin_is_readable_by_the_page() {
    let (_, jwt) = user().await;
    let body = json!({"prompt": prompt("cors", ""), "apiModelId": sync_model()});
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    let origin = "https://app.example";
    let step_by_step = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let get = async |url: &str| {
        step_by_step
            .get(url)
            .header("origin", origin)
            .send()
            .await
            .unwrap()
    };
    // `*`, or the origin echoed (as moto does for a `*` rule): either lets the page read the answer.
    let readable = |r: &reqwest::Response| {
        let allowed = r.headers().get("access-control-allow-origin");
        let allowed = allowed.and_then(|v| v.to_str().ok());
        assert!(
            allowed == Some("*") || allowed == Some(origin),
            "{} allows {allowed:?}",
            r.url()
        );
    };
    let link = get(answer["resultUrl"].as_str().unwrap()).await;
    assert_eq!(link.status(), 302);
    readable(&link);
    let location = link.headers()["location"].to_str().unwrap().to_owned();
    let object = get(&location).await;
    assert_eq!(object.status(), 200);
    readable(&object);
}

/// A portrait whose character its owner deleted before the result came: the step is recorded as skipped with
/// nothing copied into the library, so that no reconciler pass copies the result again for a row it can never
/// write, and a copy an earlier pass left there (its transaction failed after the copy) is removed.
#[tokio::test]
async fn a_portrait_whose_character_was_deleted_meanwhile_is_skipped_once() {
    let (user, jwt) = user().await;
    let character = new_character(user, "Gone").await;
    let client = db().await;
    let metadata = json!({"destination": "character_portrait", "character_id": character});
    let body = json!({
        "prompt": prompt("portrait of a deleted character", "#delay-ms=1500"),
        "apiModelId": async_model(),
        "metadata": metadata,
    });
    let (job_id, _) = submit_queued(&jwt, &body).await;
    client
        .execute("DELETE FROM public.characters WHERE id = $1", &[&character])
        .await
        .unwrap();
    let left_behind = format!("{user}/{job_id}_{character}.thumb.webp");
    plant_object("LIBRARY_BUCKET", &left_behind, b"an earlier pass's copy").await;

    wait_step(&job_id, "character_portrait").await;
    let detail = portrait_step(&job_id).await;
    assert!(detail["skipped"].is_string(), "{detail}");
    assert!(rerun_post_processing(&job_id).await.is_empty());
    assert_eq!(library_rows(user).await, Vec::<Value>::new());
    assert_eq!(library_objects(user).await, Vec::<String>::new());
}

/// Two portraits of one character, the older one's step re-run late (its first pass failed: no step, no library
/// row): it records its library copy but leaves the character pointed at the newer portrait.
#[tokio::test]
async fn a_late_rerun_of_an_older_portrait_leaves_the_newer_one() {
    let (user, jwt) = user().await;
    let character = new_character(user, "Twice").await;
    let client = db().await;
    let mut jobs = Vec::new();
    for text in ["older portrait of Twice", "newer portrait of Twice"] {
        jobs.push(sync_portrait(&jwt, character, text).await);
    }
    let key = |job_id: &str| format!("{user}/{job_id}_{character}.png");
    let image_url = async || -> String {
        client
            .query_one(
                "SELECT image_url FROM public.characters WHERE id = $1",
                &[&character],
            )
            .await
            .unwrap()
            .get(0)
    };
    let newer = format!("user-library/{}", key(&jobs[1]));
    assert_eq!(image_url().await, newer);
    client
        .execute(
            "DELETE FROM public.job_postprocessing WHERE job_id = $1::text::uuid",
            &[&jobs[0]],
        )
        .await
        .unwrap();
    client
        .execute(
            "DELETE FROM public.user_library WHERE storage_path = $1",
            &[&key(&jobs[0])],
        )
        .await
        .unwrap();

    assert_eq!(
        rerun_post_processing(&jobs[0]).await,
        vec!["character_portrait"]
    );
    assert_eq!(image_url().await, newer);
    let paths: Vec<String> = first_column(
        &client,
        "SELECT storage_path FROM public.user_library WHERE user_id = $1 ORDER BY storage_path",
        &[&user],
    )
    .await;
    let mut expected = vec![key(&jobs[0]), key(&jobs[1])];
    expected.sort();
    assert_eq!(paths, expected);
}

/// Post-processing goes by the result the completion recorded, not by the status the owner can rewrite: a
/// portrait job its owner set `failed` after its completion still gets its step when it is run again (as the
/// reconciler runs a step that was not recorded).
#[tokio::test]
async fn post_processing_goes_by_the_recorded_result_not_the_status_its_owner_wrote() {
    let (user, character, job_id) = portrait_then(
        "Rewritten",
        &[
            "DELETE FROM public.job_postprocessing WHERE job_id = $1::text::uuid",
            "DELETE FROM public.user_library WHERE generation_metadata->>'job_id' = $1",
            "UPDATE public.jobs SET status = 'failed' WHERE id = $1::text::uuid",
        ],
    )
    .await;
    let client = db().await;
    assert_eq!(
        rerun_post_processing(&job_id).await,
        vec!["character_portrait"]
    );
    let library: Vec<String> = first_column(
        &client,
        "SELECT storage_path FROM public.user_library WHERE generation_metadata->>'job_id' = $1",
        &[&job_id],
    )
    .await;
    assert_eq!(library, vec![format!("{user}/{job_id}_{character}.png")]);
}

/// The same while the newer portrait's step is in flight: the older one's re-run waits for the character's row,
/// then sees that step committed and leaves the newer portrait (a check made before the wait would not see it).
#[tokio::test]
async fn an_older_portraits_rerun_waiting_on_the_newer_ones_step_leaves_the_newer_one() {
    let (user, jwt) = user().await;
    let character = new_character(user, "Thrice").await;
    let mut client = db().await;
    let older = sync_portrait(&jwt, character, "older portrait of Thrice").await;
    let newer = sync_portrait(&jwt, character, "newer portrait of Thrice").await;
    let newer_url = format!("user-library/{user}/{newer}_{character}.png");
    for sql in [
        "DELETE FROM public.job_postprocessing WHERE job_id = $1::text::uuid",
        "DELETE FROM public.user_library WHERE generation_metadata->>'job_id' = $1",
    ] {
        for job in [&older, &newer] {
            client.execute(sql, &[job]).await.unwrap();
        }
    }
    // The newer job's step, recorded and pointing the character, not committed yet.
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO public.job_postprocessing (job_id, step, detail)
         VALUES ($1::text::uuid, 'character_portrait', jsonb_build_object('storage_path', $2::text))",
        &[&newer, &newer_url],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE public.characters SET image_url = $2 WHERE id = $1",
        &[&character, &newer_url],
    )
    .await
    .unwrap();
    let rerun = tokio::spawn({
        let older = older.clone();
        async move { rerun_post_processing(&older).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !rerun.is_finished(),
        "the re-run did not wait for the character's row"
    );
    tx.commit().await.unwrap();

    assert_eq!(rerun.await.unwrap(), vec!["character_portrait"]);
    let image_url: String = client
        .query_one(
            "SELECT image_url FROM public.characters WHERE id = $1",
            &[&character],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(image_url, newer_url);
}

/// A completed portrait whose first post-processing pass failed (no step, no library row) and whose asset row its
/// owner deleted since: the re-run goes by the stored result, so the character still gets its portrait.
#[tokio::test]
async fn a_step_whose_asset_row_was_deleted_runs_from_the_stored_result() {
    let (user, job_id, key) = portrait_with_first_pass_undone("Brief").await;

    assert_eq!(
        rerun_post_processing(&job_id).await,
        vec!["character_portrait"]
    );
    assert_eq!(portrait_step(&job_id).await["storage_path"], key);
    let rows = library_rows(user).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["storage_path"], key);
    assert_eq!(rows[0]["mime_type"], "image/png");
    assert!(
        rows[0]["file_size_bytes"].as_i64().unwrap() > 0,
        "{}",
        rows[0]
    );
}

/// The same with the stored result deleted too: nothing to copy, so the step is recorded as skipped (the
/// reconciler's backlog, which takes jobs with a step not recorded, stops taking it) and the copy the failed first
/// pass left in the library is removed.
#[tokio::test]
async fn a_step_whose_result_was_deleted_is_skipped_and_its_copy_removed() {
    let (user, job_id, _) = portrait_with_first_pass_undone("Briefer").await;
    let result_key: String = db()
        .await
        .query_one(
            "SELECT result_key FROM public.job_runs WHERE job_id = $1::text::uuid",
            &[&job_id],
        )
        .await
        .unwrap()
        .get(0);
    let s3 = s3().await;
    s3.delete_object()
        .bucket(stack_var("WORKSPACE_BUCKET"))
        .key(&result_key)
        .send()
        .await
        .unwrap();

    assert!(rerun_post_processing(&job_id).await.is_empty());
    let detail = portrait_step(&job_id).await;
    assert_eq!(detail["skipped"], "its result no longer exists", "{detail}");
    assert_eq!(library_objects(user).await, Vec::<String>::new());
}

/// A sync portrait of a new user's new character `name`, once its step is recorded, then each of `writes` (the
/// job id as `$1`, text), each reaching one row: the user, the character and the job id.
async fn portrait_then(name: &str, writes: &[&str]) -> (Uuid, Uuid, String) {
    let (user, jwt) = user().await;
    let character = new_character(user, name).await;
    let job_id = sync_portrait(&jwt, character, &format!("portrait of {name}")).await;
    let client = db().await;
    for sql in writes {
        assert_eq!(client.execute(*sql, &[&job_id]).await.unwrap(), 1, "{sql}");
    }
    (user, character, job_id)
}

/// A sync portrait of a new character `name`, made to look as if its first post-processing pass failed after
/// copying (the library copy stays; no step, no library row) and its owner then deleted its asset row: its user,
/// job id and library key.
async fn portrait_with_first_pass_undone(name: &str) -> (Uuid, String, String) {
    let (user, character, job_id) = portrait_then(
        name,
        &[
            "DELETE FROM public.job_postprocessing WHERE job_id = $1::text::uuid",
            "DELETE FROM public.workspace_assets WHERE job_id = $1::text::uuid",
            "DELETE FROM public.user_library WHERE generation_metadata->>'job_id' = $1",
        ],
    )
    .await;
    let key = format!("{user}/{job_id}_{character}.png");
    let library = s3()
        .await
        .head_object()
        .bucket(stack_var("LIBRARY_BUCKET"))
        .key(&key)
        .send()
        .await;
    assert!(library.is_ok(), "the first pass's copy {key}: {library:?}");
    (user, job_id, key)
}

/// Every refusal on the storage routes has Supabase Storage's shape (`{statusCode, error, message}`), which
/// storage-js reads, the refusals made before the route is known included, and CORS headers.
#[tokio::test]
async fn storage_route_refusals_have_supabase_storages_error_shape() {
    let (user, jwt) = user().await;
    let one = format!("/storage/v1/object/sign/workspace-temp/{user}/a.png");
    let bearer = format!("Bearer {jwt}");
    for (method, path, authorization, status) in [
        (reqwest::Method::POST, one.as_str(), None, 401),
        (
            reqwest::Method::POST,
            one.as_str(),
            Some("Bearer not-a-token"),
            401,
        ),
        (
            reqwest::Method::DELETE,
            one.as_str(),
            Some(bearer.as_str()),
            405,
        ),
        (
            reqwest::Method::POST,
            "/storage/v1/object/sign/b/%FF",
            Some(bearer.as_str()),
            404,
        ),
        (
            reqwest::Method::POST,
            "/storage/v1/object/sign/nope/a.png",
            Some(bearer.as_str()),
            404,
        ),
    ] {
        let mut request = http()
            .request(method.clone(), api(path))
            .json(&json!({"expiresIn": 60}));
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        let response = request.send().await.unwrap();
        // A browser shows the refusal to the page only with CORS headers on it.
        let cors = response
            .headers()
            .get("access-control-allow-origin")
            .cloned();
        let (got, body) = answer_of(response).await;
        let what = format!("{method} {path}: {got} {body}");
        assert_eq!(got, status, "{what}");
        assert_eq!(
            cors.as_ref().and_then(|v| v.to_str().ok()),
            Some("*"),
            "{what}"
        );
        assert_eq!(body["statusCode"], status.to_string(), "{what}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{what}"
        );
    }
}

/// The asset of a sync image generated for the caller (an object of theirs to use as a reference).
async fn generated_image(jwt: &str, label: &str) -> Asset {
    let image = json!({"prompt": prompt(label, ""), "apiModelId": sync_model()});
    let (status, answer) = generate(jwt, &image).await;
    assert_eq!(status, 200, "{answer}");
    assets_of(answer["jobId"].as_str().unwrap()).await.remove(0)
}

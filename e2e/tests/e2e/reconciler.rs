//! The lost-webhook reconciler against the real stack: jobs whose webhook never came are completed from fal's
//! stored URLs, failed with fal's message, or failed past the deadline (whatever fault is in the way then); sync
//! runs whose function stopped are failed; young or running ones are left alone, and rows a client wrote itself
//! are not the reconciler's.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use e2e::*;

/// Submits an async job whose webhook never comes, and makes it look `age` old.
async fn lost_webhook_job(jwt: &str, directives: &str, age: &str) -> (String, String) {
    let body = json!({"prompt": prompt("lost", &format!("#no-webhook {directives}")), "apiModelId": async_model()});
    let (job_id, request_id) = submit_queued(jwt, &body).await;
    age_job(&job_id, age).await;
    (job_id, request_id)
}

async fn wait_fal_completed(request_id: &str) {
    wait_until(
        "fal to complete the request",
        Duration::from_secs(5),
        async || inspect(request_id).await["status"] == "COMPLETED",
    )
    .await;
}

#[tokio::test]
async fn a_pass_completes_fails_or_leaves_each_stale_job_as_fal_says() {
    let (_, jwt) = user().await;
    // Ages beyond any other test's jobs, so this pass touches only these.
    let (done, done_rid) = lost_webhook_job(&jwt, "#delay-ms=20", "61 minutes").await;
    let (errored, errored_rid) = lost_webhook_job(&jwt, "#delay-ms=20 #error", "61 minutes").await;
    // A run that failed on fal's side answers its result with the run's error; an untyped 503 is fal's API.
    let run_failed = "#delay-ms=20 #result-status=500 #result-error-type=runner_server_error";
    let (crashed, crashed_rid) = lost_webhook_job(&jwt, run_failed, "61 minutes").await;
    let (unanswered, unanswered_rid) =
        lost_webhook_job(&jwt, "#delay-ms=20 #result-status=503", "61 minutes").await;
    let (running, _) = lost_webhook_job(&jwt, "#delay-ms=600000", "61 minutes").await;
    let (expired, expired_rid) = lost_webhook_job(&jwt, "#delay-ms=600000", "3 hours").await;
    wait_fal_completed(&done_rid).await;
    wait_fal_completed(&errored_rid).await;
    wait_fal_completed(&crashed_rid).await;
    wait_fal_completed(&unanswered_rid).await;

    // The other tests of this file run passes too, and one of theirs may take some of these jobs first: what is
    // checked is where each job ends up.
    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;

    let j = job(&done).await;
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(j["metadata"]["reconciled"], true);
    assert_eq!(asset_count(&done).await, 1);
    assert_eq!(usage_count(&done).await, 1);

    let (j, message) = failed_job(&errored).await;
    assert!(message.contains("emulated model failure"), "{j}");
    let (j, message) = failed_job(&crashed).await;
    assert!(message.contains("emulated failed request"), "{j}");
    assert_eq!(job(&unanswered).await["status"], "queued");

    assert_eq!(job(&running).await["status"], "queued");

    let (j, message) = failed_job(&expired).await;
    assert!(message.contains("did not finish"), "{j}");
    assert_eq!(inspect(&expired_rid).await["cancelled"], true);

    // A second pass (as a concurrent or later instance would) changes nothing more.
    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;
    assert_eq!(asset_count(&done).await, 1);
    assert_eq!(usage_count(&done).await, 1);
    assert_eq!(job(&running).await["status"], "queued");
}

/// Gives job `own`'s run the status, response and cancel URLs of job `victim`'s, as V5 could have brought them
/// over from metadata the owner wrote.
async fn plant_urls_of(victim: &str, own: &str) {
    let planted = db()
        .await
        .execute(
            "UPDATE public.job_runs r
                SET status_url = v.status_url, response_url = v.response_url, cancel_url = v.cancel_url
               FROM public.job_runs v
              WHERE r.job_id = $1::text::uuid AND v.job_id = $2::text::uuid",
            &[&own, &victim],
        )
        .await
        .unwrap();
    assert_eq!(planted, 1);
}

/// A run V5 brought over from metadata its owner had rewritten may carry another request's URLs on fal's own host
/// (the host check passes them): a pass does not fetch that request's result into the job.
#[tokio::test]
async fn a_run_carrying_another_requests_urls_is_not_completed_with_its_result() {
    let (_, victim_jwt) = user().await;
    let (_, jwt) = user().await;
    let (victim, victim_rid) = lost_webhook_job(&victim_jwt, "#delay-ms=20", "61 minutes").await;
    let (own, _) = lost_webhook_job(&jwt, "#delay-ms=600000", "61 minutes").await;
    wait_fal_completed(&victim_rid).await;
    plant_urls_of(&victim, &own).await;

    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;

    let j = job(&own).await;
    assert_eq!(j["status"], "queued", "{j}");
    assert_eq!(asset_count(&own).await, 0);
    let j = job(&victim).await;
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(asset_count(&victim).await, 1);
}

/// An invocation with less time left than one step's allowance takes no job at all: it would be killed half-way
/// through it. The job stays as it was, not even marked as checked, for the next pass. Then the statement a pass
/// gives back a job it took but had no time to begin (`db::reconcile::give_back`), run on a take recorded here:
/// the job is due again at once, not only once `older_than` has passed again. (When a pass calls it depends on
/// the invocation's clock, which a test cannot stop between the take and the first step.)
#[tokio::test]
async fn a_pass_with_too_little_time_left_takes_no_job_and_gives_back_what_it_did_not_begin() {
    let (_, jwt) = user().await;
    // Older than this pass's threshold, younger than every other pass's (3600 s): no other test's pass takes it.
    let (job_id, request_id) = lost_webhook_job(&jwt, "#delay-ms=20", "2 minutes").await;
    wait_fal_completed(&request_id).await;

    let older_than = Duration::from_secs(60);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let report = reconcile_pass_until(older_than, Duration::from_secs(7200), Some(until)).await;
    assert!(report.cut_short, "{report:?}");
    assert_eq!(
        (report.examined, report.closed, report.post_processed),
        (0, 0, 0)
    );
    assert_eq!(job(&job_id).await["status"], "queued");
    let checks = "SELECT count(*) FROM public.job_reconcile_checks WHERE job_id = $1";
    assert_eq!(count(checks, &job_id).await, 0);

    // As a pass records its take, then gives the job back when its time runs short.
    let id = Uuid::parse_str(&job_id).unwrap();
    let client = db().await;
    client
        .execute(
            "INSERT INTO public.job_reconcile_checks (job_id) VALUES ($1)",
            &[&id],
        )
        .await
        .unwrap();
    let given = gen_pipeline::db::reconcile::give_back(&client, &[id], older_than).await;
    assert_eq!(given.unwrap(), 1);
    let due = "SELECT count(*) FROM public.job_reconcile_checks
                WHERE job_id = $1 AND checks = 0 AND checked_at < now() - interval '60 seconds'";
    assert_eq!(count(due, &job_id).await, 1);
}

/// A sync run's job as fal-image writes it before the run starts (`processing`, no provider request; a webhook
/// only for a sync fallback, `webhook_auth` `token`, else `none`), `age` old: what a function killed mid-run (its
/// timeout, a crash) leaves behind.
async fn interrupted_sync_job(user: Uuid, webhook_auth: &str, age: &str) -> String {
    let id: Uuid = db()
        .await
        .query_one(
            "SELECT public.insert_job($1, 'image_fast', 'interrupted', 'processing', 'fast', NULL, 'image',
                                      '{}'::jsonb, 1000, NULL, 'fal', 'sync-model', $2, NULL, NULL, NULL,
                                      NULL, NULL, NULL, '{}'::text[])",
            &[&user, &webhook_auth],
        )
        .await
        .unwrap()
        .get(0);
    let id = id.to_string();
    age_job(&id, age).await;
    id
}

#[tokio::test]
async fn a_sync_run_whose_function_stopped_is_failed_and_no_longer_counts_as_open() {
    let (fallback_user, _) = user().await;
    let (user, _) = user().await;
    let stopped = interrupted_sync_job(user, "none", "61 minutes").await;
    // A sync fallback's queue submission may have reached fal after all: its webhook can still come, so it waits
    // for the deadline like a queued job.
    let fallback = interrupted_sync_job(fallback_user, "token", "61 minutes").await;

    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;

    assert_eq!(job(&fallback).await["status"], "processing");

    let (j, message) = failed_job(&stopped).await;
    assert!(message.contains("function running it stopped"), "{j}");
    assert_eq!(asset_count(&stopped).await, 0);
    let open = e2e::common::open_jobs_of(&db().await, user).await;
    assert_eq!(
        open, 0,
        "the stopped run still holds one of the user's open jobs"
    );
}

#[tokio::test]
async fn past_the_deadline_a_result_that_cannot_be_stored_fails_the_job() {
    let (_, jwt) = user().await;
    // fal completed the request, but its media answers 500 at every try: before the deadline the job waits for a
    // later pass, past it the job fails rather than being retried forever.
    let (waiting, waiting_rid) =
        lost_webhook_job(&jwt, "#delay-ms=20 #media-status=500", "61 minutes").await;
    let (expired, expired_rid) =
        lost_webhook_job(&jwt, "#delay-ms=20 #media-status=500", "3 hours").await;
    wait_fal_completed(&waiting_rid).await;
    wait_fal_completed(&expired_rid).await;

    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;

    assert_eq!(job(&waiting).await["status"], "queued");
    let (j, message) = failed_job(&expired).await;
    assert!(message.contains("did not finish within 7200 s"), "{j}");
    assert_eq!(asset_count(&expired).await, 0);
}

#[tokio::test]
async fn jobs_a_client_wrote_itself_neither_crowd_a_pass_nor_are_touched_by_it() {
    let (attacker, _) = user().await;
    let (_, jwt) = user().await;
    // Rows the client inserts through RLS (the original's policy lets it write its own jobs), made to look older
    // than anything; the functions never wrote a run for them.
    let mut session = db().await;
    let planted: Vec<Uuid> = e2e::common::as_user(&mut session, attacker, async |tx| {
        tx.query(
            "INSERT INTO public.jobs (user_id, job_type, status, started_at)
             SELECT $1, 'image_fast', 'queued', timestamptz '1970-01-01' FROM generate_series(1, 150)
             RETURNING id",
            &[&attacker],
        )
        .await
    })
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    // Another user's job.
    let (lost, lost_rid) = lost_webhook_job(&jwt, "#delay-ms=20", "61 minutes").await;
    wait_fal_completed(&lost_rid).await;

    // A pass takes 100 jobs: the planted rows, oldest by their own account, would fill it.
    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;

    assert_eq!(job(&lost).await["status"], "completed");
    let touched: i64 = db()
        .await
        .query_one(
            "SELECT count(*) FROM public.job_reconcile_checks WHERE job_id = ANY($1)",
            &[&planted],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(touched, 0);
    let still_queued: i64 = db()
        .await
        .query_one(
            "SELECT count(*) FROM public.jobs WHERE id = ANY($1) AND status = 'queued'",
            &[&planted],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(still_queued, planted.len() as i64);
}

/// The original's clients cancel by writing `status = 'cancelled'` through RLS, which reaches no function, and
/// the provider goes on running those requests: they keep counting against the owner's open jobs until a pass
/// cancels them at the provider and closes their runs. Set open again by their owner after that, they are never
/// completed.
#[tokio::test]
async fn jobs_their_owner_ended_through_rls_hold_the_bound_until_a_pass_closes_them_for_good() {
    let limit = max_open_jobs();
    let (owner, jwt) = user().await;
    let submit = async |directives: &str| {
        let body = json!({"prompt": prompt("ended by its owner", &format!("#no-webhook {directives}")), "apiModelId": async_model()});
        submit_queued(&jwt, &body).await
    };
    // One request fal is still running; the others done at fal, their webhooks lost.
    let (running, running_rid) = submit("#delay-ms=600000").await;
    let mut jobs = vec![(running.clone(), running_rid.clone())];
    for _ in 1..limit {
        jobs.push(submit("#delay-ms=20").await);
    }
    let ids: Vec<Uuid> = jobs
        .iter()
        .map(|(j, _)| Uuid::parse_str(j).unwrap())
        .collect();
    let owner_sets = async |status: &str| {
        let mut session = db().await;
        let sql = "UPDATE public.jobs SET status = $2 WHERE id = ANY($1)";
        let n = e2e::common::as_user(&mut session, owner, async |tx| {
            tx.execute(sql, &[&ids, &status]).await
        })
        .await
        .unwrap();
        assert_eq!(n, ids.len() as u64, "the owner's update through RLS");
    };
    owner_sets("cancelled").await;

    let over = json!({"prompt": prompt("past the bound", "#no-webhook #delay-ms=600000"), "apiModelId": async_model()});
    let (status, answer) = generate(&jwt, &over).await;
    assert_eq!(
        status, 429,
        "cancelled through RLS, still running at fal: {answer}"
    );

    for (job_id, request_id) in &jobs[1..] {
        wait_fal_completed(request_id).await;
        age_job(job_id, "61 minutes").await;
    }
    age_job(&running, "61 minutes").await;
    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;

    let closed: i64 = db()
        .await
        .query_one(
            "SELECT count(*) FROM public.job_runs WHERE job_id = ANY($1) AND closed_at IS NOT NULL",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(closed, ids.len() as i64);
    assert!(
        Provider::Fal.cancelled(&running_rid).await,
        "fal was not told to stop"
    );

    // Open again, and no check recorded to hold a pass back: a pass still completes none of them.
    owner_sets("queued").await;
    db().await
        .execute(
            "DELETE FROM public.job_reconcile_checks WHERE job_id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap();
    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;
    for (job_id, _) in &jobs {
        assert_eq!(job(job_id).await["status"], "queued", "{job_id}");
        assert_eq!(asset_count(job_id).await, 0, "{job_id}");
    }

    // Closed runs no longer count.
    let (status, answer) = generate(&jwt, &over).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = cancel_job(&jwt, answer["jobId"].as_str().unwrap()).await;
    assert_eq!(status, 200);
}

/// A run whose result is stored but that was never closed (a job completed by the release before V11's functions,
/// during the upgrade) is closed by the next pass, whatever its job's status says: it would otherwise count against
/// its owner's open jobs for good.
#[tokio::test]
async fn a_stored_result_whose_run_was_never_closed_is_closed_by_a_pass() {
    let (user, _) = user().await;
    let client = db().await;
    let job_id: Uuid = client
        .query_one(
            "SELECT public.insert_job($1, 'image_fast', 'old release', 'queued', 'fast', NULL, 'image', '{}'::jsonb,
                                      10, NULL, 'fal', 'm', 'token', NULL, NULL, NULL, NULL, NULL, NULL, '{}'::text[])",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    // What the release before V11 wrote when it completed a job: the status and the result key, no close.
    client
        .batch_execute(&format!(
            "UPDATE public.jobs SET status = 'completed', completed_at = now() WHERE id = '{job_id}';
             UPDATE public.job_runs SET result_key = '{user}/{job_id}_0.png' WHERE job_id = '{job_id}';"
        ))
        .await
        .unwrap();
    age_job(&job_id.to_string(), "61 minutes").await;

    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;

    let closed = "SELECT count(*) FROM public.job_runs WHERE job_id = $1 AND closed_at IS NOT NULL";
    assert_eq!(count(closed, &job_id.to_string()).await, 1);
    assert_eq!(job(&job_id.to_string()).await["status"], "completed");
}

/// `limit` queued jobs of `body` for the holder of `jwt`: (job id, fal request id) each.
async fn submit_up_to_the_bound(
    jwt: &str,
    body: &serde_json::Value,
    limit: usize,
) -> Vec<(String, String)> {
    let mut jobs = Vec::new();
    for _ in 0..limit {
        jobs.push(submit_queued(jwt, body).await);
    }
    jobs
}

/// The owner deletes these jobs of theirs through RLS; how many went.
async fn delete_as_owner(owner: Uuid, ids: &[Uuid]) -> u64 {
    let mut session = db().await;
    e2e::common::as_user(&mut session, owner, async |tx| {
        tx.execute("DELETE FROM public.jobs WHERE id = ANY($1)", &[&ids])
            .await
    })
    .await
    .unwrap()
}

/// Owners may also delete their jobs through RLS, and a job's run goes with it, while the provider may still be
/// running the request: the run is kept aside (V11's `job_run_orphans`) and counts against the bound until a pass
/// cancels the request at the provider.
#[tokio::test]
async fn jobs_their_owner_deleted_while_running_hold_the_bound_until_a_pass_cancels_them() {
    let limit = max_open_jobs();
    let (owner, jwt) = user().await;
    let parked = json!({"prompt": prompt("deleted by its owner", "#no-webhook #delay-ms=600000"), "apiModelId": async_model()});
    let jobs = submit_up_to_the_bound(&jwt, &parked, limit).await;
    let ids: Vec<Uuid> = jobs
        .iter()
        .map(|(j, _)| Uuid::parse_str(j).unwrap())
        .collect();
    let deleted = delete_as_owner(owner, &ids).await;
    assert_eq!(deleted, ids.len() as u64, "the owner's delete through RLS");
    assert_eq!(jobs_of_user(owner).await, 0);

    let (status, answer) = generate(&jwt, &parked).await;
    assert_eq!(status, 429, "deleted, still running at fal: {answer}");

    db().await
        .execute(
            "UPDATE public.job_run_orphans SET created_at = now() - interval '61 minutes' WHERE job_id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap();
    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;
    for (_, request_id) in &jobs {
        assert!(
            Provider::Fal.cancelled(request_id).await,
            "fal was not told to stop {request_id}"
        );
    }
    let (status, answer) = generate(&jwt, &parked).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = cancel_job(&jwt, answer["jobId"].as_str().unwrap()).await;
    assert_eq!(status, 200);
}

/// Whether the job's run is kept in `job_run_orphans`, and if so whether a cancel of it was tried there.
async fn orphan_tried(job_id: &str) -> Option<bool> {
    db().await
        .query_opt(
            "SELECT cancel_tried_at IS NOT NULL FROM public.job_run_orphans WHERE job_id = $1::text::uuid",
            &[&job_id],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Makes a kept run due for the next pass: written and last tried `age` ago.
async fn age_orphan(job_id: &str, age: &str) {
    let sql = format!(
        "UPDATE public.job_run_orphans SET created_at = now() - interval '{age}',
                cancel_tried_at = now() - interval '{age}' WHERE job_id = $1::text::uuid"
    );
    let updated = db().await.execute(&sql, &[&job_id]).await.unwrap();
    assert_eq!(updated, 1, "no kept run for {job_id}");
}

/// A run carrying another request's cancel URL (as V5 could bring one over from metadata its owner wrote), whose
/// job its owner then deletes: the kept run records its own request id (V17), and a pass does not cancel the
/// request the URL names.
#[tokio::test]
async fn a_deleted_jobs_run_carrying_another_requests_cancel_url_cancels_nothing_of_others() {
    let (_, victim_jwt) = user().await;
    let (owner, jwt) = user().await;
    let running = async |jwt: &str, text: &str| {
        let body = json!({"prompt": prompt(text, "#no-webhook #delay-ms=600000"), "apiModelId": async_model()});
        submit_queued(jwt, &body).await
    };
    let (victim, victim_rid) = running(&victim_jwt, "victim of a planted cancel").await;
    let (own, own_rid) = running(&jwt, "planted cancel url").await;
    plant_urls_of(&victim, &own).await;
    let id = Uuid::parse_str(&own).unwrap();
    assert_eq!(delete_as_owner(owner, &[id]).await, 1);
    age_orphan(&own, "61 minutes").await;

    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;

    assert_eq!(inspect(&victim_rid).await["cancel_calls"], 0);
    assert_eq!(job(&victim).await["status"], "queued");
    // The kept run had no usable cancel URL: dropped, as one with none is.
    assert_eq!(orphan_tried(&own).await, None);
    assert_eq!(inspect(&own_rid).await["cancel_calls"], 0);
}

/// The API's cancel when fal cannot take it (a 503): the job is cancelled at once, but its run, which fal still
/// runs, keeps counting against its owner, kept with the orphans; a later pass asks fal again and frees it.
#[tokio::test]
async fn a_cancel_fal_could_not_take_keeps_the_run_counted_until_a_pass_cancels_it() {
    let limit = max_open_jobs();
    let (_, jwt) = user().await;
    let parked = json!({"prompt": prompt("cancel refused once", "#no-webhook #delay-ms=600000 #cancel-fail-first=1"), "apiModelId": async_model()});
    let jobs = submit_up_to_the_bound(&jwt, &parked, limit).await;
    let (job_id, request_id) = jobs[0].clone();
    let (status, answer) = cancel_job(&jwt, &job_id).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("cancelled")),
        "{answer}"
    );
    let fal = inspect(&request_id).await;
    assert_eq!(
        (fal["cancel_calls"].as_u64(), fal["cancelled"].as_bool()),
        (Some(1), Some(false)),
        "{fal}"
    );
    assert_eq!(orphan_tried(&job_id).await, Some(true));
    let (status, answer) = generate(&jwt, &parked).await;
    assert_eq!(status, 429, "cancelled, still running at fal: {answer}");

    age_orphan(&job_id, "61 minutes").await;
    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;
    assert!(
        Provider::Fal.cancelled(&request_id).await,
        "fal was not told to stop {request_id} again"
    );
    assert_eq!(orphan_tried(&job_id).await, None);
    let (status, answer) = generate(&jwt, &parked).await;
    assert_eq!(status, 200, "{answer}");
}

/// A pass whose cancel of a deleted job's run fal cannot take (a 503) keeps the run for a later pass, which does
/// not try it again before `older_than` and cancels it then; past the deadline, a run fal keeps refusing is
/// dropped, so that nothing is held for good.
#[tokio::test]
async fn a_pass_keeps_a_run_fal_could_not_cancel_until_it_can_or_the_deadline_passes() {
    let (owner, jwt) = user().await;
    let submit = async |refusals: u32| {
        let directives = format!("#no-webhook #delay-ms=600000 #cancel-fail-first={refusals}");
        let body = json!({"prompt": prompt("deleted, cancel refused", &directives), "apiModelId": async_model()});
        submit_queued(&jwt, &body).await
    };
    let (retried, retried_rid) = submit(1).await;
    let (expired, expired_rid) = submit(100).await;
    let ids: Vec<Uuid> = [&retried, &expired]
        .iter()
        .map(|j| Uuid::parse_str(j).unwrap())
        .collect();
    let deleted = delete_as_owner(owner, &ids).await;
    assert_eq!(deleted, 2, "the owner's delete through RLS");
    age_orphan(&retried, "61 minutes").await;
    db().await
        .execute(
            "UPDATE public.job_run_orphans SET created_at = now() - interval '3 hours' WHERE job_id = $1",
            &[&ids[1]],
        )
        .await
        .unwrap();

    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;
    let fal = inspect(&retried_rid).await;
    assert_eq!(
        (fal["cancel_calls"].as_u64(), fal["cancelled"].as_bool()),
        (Some(1), Some(false)),
        "{fal}"
    );
    assert_eq!(
        orphan_tried(&retried).await,
        Some(true),
        "kept for a later pass"
    );
    let fal = inspect(&expired_rid).await;
    assert_eq!(fal["cancelled"], false, "{fal}");
    assert_eq!(
        orphan_tried(&expired).await,
        None,
        "past the deadline, dropped"
    );

    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;
    assert_eq!(
        inspect(&retried_rid).await["cancel_calls"],
        1,
        "tried again before older_than"
    );
    age_orphan(&retried, "61 minutes").await;
    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;
    assert!(Provider::Fal.cancelled(&retried_rid).await);
    assert_eq!(orphan_tried(&retried).await, None);
}

/// A sync run cancelled through the API while fal works on it: the job is cancelled at once, but the run keeps
/// counting against its owner until fal's answer comes back to the submitting function (it was freed at once
/// before, so cancelling and submitting again passed the bound), which then answers 409 and frees it.
#[tokio::test]
async fn a_sync_run_cancelled_while_fal_works_counts_until_its_call_returns() {
    let limit = max_open_jobs();
    let (owner, jwt) = user().await;
    let parked = json!({"prompt": prompt("parked", "#no-webhook #delay-ms=600000"), "apiModelId": async_model()});
    submit_up_to_the_bound(&jwt, &parked, limit - 1).await;
    let slow =
        json!({"prompt": prompt("slow sync", "#run-delay-ms=4000"), "apiModelId": sync_model()});
    let (submitting, sync_job) = generate_in_flight(&jwt, owner, slow, "slow sync").await;
    let (status, answer) = cancel_job(&jwt, &sync_job).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = generate(&jwt, &parked).await;
    assert_eq!(status, 429, "cancelled, still running at fal: {answer}");

    let (status, answer) = submitting.await.unwrap();
    assert_eq!(status, 409, "{answer}");
    assert_eq!(
        orphan_tried(&sync_job).await,
        None,
        "the hold outlived the call"
    );
    let (status, answer) = generate(&jwt, &parked).await;
    assert_eq!(status, 200, "{answer}");
}

/// A pass whose database cannot be reached reads none of its phases' rows, and says so: `unread` counts all three
/// (the reconciler function fails such an invocation, for its alarm). The database here is a loopback port nothing
/// listens on.
#[tokio::test]
async fn a_pass_without_its_database_reports_each_phase_unread() {
    use gen_pipeline::reconcile::{PassTime, ReconcileOptions, reconcile_stale_jobs};
    let (state, settings) = app_state().await;
    let mut secrets = (*settings.secrets).clone();
    secrets.database_url = "postgresql://reconciler@127.0.0.1:9/none?sslmode=require"
        .to_owned()
        .into();
    let settings = gen_pipeline::Settings {
        config: settings.config,
        secrets: std::sync::Arc::new(secrets),
    };
    let options = ReconcileOptions {
        older_than: Duration::from_secs(60),
        deadline: Duration::from_secs(3600),
        batch: 10,
    };
    let time = PassTime::new(&settings, None);
    let report = reconcile_stale_jobs(&state, &settings, options, time).await;
    assert_eq!(
        (report.unread, report.errors, report.examined),
        (3, 3, 0),
        "{report:?}"
    );
}

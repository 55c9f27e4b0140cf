use std::time::Duration;

use crate::common::{open_jobs_of, stack_var};
use gen_pipeline::completion;
use gen_pipeline::db::{self, Db, users};
use gen_pipeline::jobs::JobStatus;
use secrecy::SecretString;
use uuid::Uuid;

fn url() -> SecretString {
    SecretString::from(stack_var("DATABASE_URL"))
}

async fn prepared_statements(client: &tokio_postgres::Client) -> String {
    let rows = client
        .simple_query("SELECT count(*) FROM pg_prepared_statements")
        .await
        .unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn queries_leave_no_named_prepared_statement_on_the_session() {
    let db = Db::new();
    let client = db.client(&url(), None).await.unwrap();
    let user = Uuid::new_v4();
    users::ensure(&**client, user).await.unwrap();
    users::ensure(&**client, user).await.unwrap();
    assert!(users::exists(&**client, user).await.unwrap());
    assert!(!users::exists(&**client, Uuid::new_v4()).await.unwrap());
    // A transaction-mode pooler hands each transaction to any server connection: a named statement prepared
    // on one would be missing on the next. Unnamed statements leave nothing behind.
    assert_eq!(prepared_statements(&client).await, "0");
}

#[tokio::test]
async fn a_connection_closed_by_the_server_is_replaced_on_next_use() {
    let db = Db::new();
    let pid: i32 = {
        let client = db.client(&url(), None).await.unwrap();
        client
            .query_typed_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    };
    // As when a frozen Lambda environment's connection is dropped by the server.
    let admin = db::connect(&stack_var("DATABASE_URL")).await.unwrap();
    let killed: bool = admin
        .query_typed_one("SELECT pg_terminate_backend($1)", &[(&pid, db::Type::INT4)])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = db.client(&url(), None).await.unwrap();
    let new_pid: i32 = client
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(new_pid, pid);
}

#[tokio::test]
async fn a_bad_database_url_is_an_error_not_a_panic() {
    let db = Db::new();
    let err = db
        .client(&SecretString::from("not a url".to_owned()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, db::DbError::BadUrl));
}

/// The open-jobs bound holds under a burst of concurrent submissions from one user: each counts the user's open
/// jobs only after the previous one committed (V10's per-user lock), so exactly the bound gets through.
#[tokio::test]
async fn concurrent_submissions_never_exceed_the_open_jobs_bound() {
    const BURST: usize = 12;
    const MAX_OPEN: i64 = 3;
    let (admin, user) = admin_and_new_user().await;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(BURST));
    let submissions = (0..BURST).map(|_| {
        let start = start.clone();
        tokio::spawn(async move {
            let client = db::connect(&stack_var("DATABASE_URL")).await.unwrap();
            start.wait().await;
            let row = client
                .query_one(
                    "SELECT public.insert_job($1, 'image_fast', 'burst', 'queued', 'fast', NULL, 'image',
                                              '{}'::jsonb, $2, NULL, 'fal', 'burst-model', 'token', NULL, NULL,
                                              NULL, NULL, NULL, NULL, '{}'::text[])",
                    &[&user, &MAX_OPEN],
                )
                .await
                .unwrap();
            row.get::<_, Option<Uuid>>(0)
        })
    });
    let mut admitted = 0;
    for submission in submissions.collect::<Vec<_>>() {
        admitted += usize::from(submission.await.unwrap().is_some());
    }
    assert_eq!(admitted, MAX_OPEN as usize);
    assert_eq!(open_jobs_of(&admin, user).await, MAX_OPEN);
}

/// A job and its run, as a submission writes them, admitted below `max_open` (`None` at the bound).
async fn insert_job(client: &tokio_postgres::Client, user: Uuid, max_open: i64) -> Option<Uuid> {
    client
        .query_one(
            "SELECT public.insert_job($1, 'image_fast', 'bound', 'queued', 'fast', NULL, 'image', '{}'::jsonb, $2,
                                      NULL, 'fal', 'bound-model', 'token', NULL, NULL, NULL, NULL, NULL, NULL,
                                      '{}'::text[])",
            &[&user, &max_open],
        )
        .await
        .unwrap()
        .get(0)
}

/// The bound counts the runs the functions have not closed, not the statuses the owner can rewrite: jobs their
/// owner set `cancelled` (the original's clients cancel that way, through RLS) count until the functions close
/// their runs, as the provider is still running them.
#[tokio::test]
async fn jobs_their_owner_closed_count_against_the_bound_until_their_runs_close() {
    const MAX_OPEN: i64 = 2;
    let (admin, user) = admin_and_new_user().await;
    let mut jobs = Vec::new();
    for _ in 0..MAX_OPEN {
        jobs.push(
            insert_job(&admin, user, MAX_OPEN)
                .await
                .expect("below the bound"),
        );
    }
    admin
        .execute(
            "UPDATE public.jobs SET status = 'cancelled' WHERE id = ANY($1)",
            &[&jobs],
        )
        .await
        .unwrap();
    assert_eq!(open_jobs_of(&admin, user).await, 0);
    assert_eq!(insert_job(&admin, user, MAX_OPEN).await, None);

    db::runs::close(&admin, jobs[0]).await.unwrap();
    let admitted = insert_job(&admin, user, MAX_OPEN).await;
    assert!(admitted.is_some());
    assert_eq!(insert_job(&admin, user, MAX_OPEN).await, None);
}

/// A terminal transition closes the run in the same statement, and a closed run's job is never moved again, even
/// after its owner set its status open.
#[tokio::test]
async fn a_terminal_transition_closes_the_run_for_good() {
    let (admin, user) = admin_and_new_user().await;
    let job = insert_job(&admin, user, 10).await.unwrap();
    let closed_at = async || -> Option<chrono::DateTime<chrono::Utc>> {
        admin
            .query_one(
                "SELECT closed_at FROM public.job_runs WHERE job_id = $1",
                &[&job],
            )
            .await
            .unwrap()
            .get(0)
    };
    let patch = serde_json::json!({});
    let to_processing = db::jobs::transition(&admin, job, JobStatus::Processing, None, &patch);
    assert!(to_processing.await.unwrap());
    assert_eq!(
        closed_at().await,
        None,
        "a move between open statuses closed the run"
    );
    let failed = db::jobs::transition(&admin, job, JobStatus::Failed, Some("gone"), &patch);
    assert!(failed.await.unwrap());
    assert!(closed_at().await.is_some());

    admin
        .execute(
            "UPDATE public.jobs SET status = 'queued' WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    let reopened = db::jobs::get(&admin, job).await.unwrap().unwrap();
    assert_eq!(reopened.status, JobStatus::Queued);
    assert!(reopened.is_closed());
    let completed = db::jobs::transition(&admin, job, JobStatus::Completed, None, &patch);
    assert!(
        !completed.await.unwrap(),
        "a closed run's job was completed"
    );
    let status: String = admin
        .query_one("SELECT status FROM public.jobs WHERE id = $1", &[&job])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "queued");
}

/// A queue request is abandoned only while the sync run its job fell back to may still be at work: not before the
/// fallback, not for the request the run recorded, and not once that run is certainly over (a job still open then
/// has no one else to end it).
#[tokio::test]
async fn a_queue_request_is_abandoned_only_while_the_fallbacks_sync_run_may_run() {
    let (admin, user) = admin_and_new_user().await;
    let job = insert_job(&admin, user, 10).await.unwrap();
    let lifetime = Duration::from_secs(45);
    let abandons = async |request: &str| {
        db::runs::abandons(&admin, job, request, lifetime)
            .await
            .unwrap()
    };
    // Request ids are unique per provider across the database: this test's own.
    let (a, b) = (format!("req-{job}-a"), format!("req-{job}-b"));
    assert!(!abandons(&a).await, "before any fallback");
    db::runs::mark_fell_back(&admin, job).await.unwrap();
    assert!(abandons(&a).await, "just after the fallback");
    let set = async |sql: &str, request: Option<&str>| {
        admin.execute(sql, &[&job, &request]).await.unwrap()
    };
    let fell_back =
        "UPDATE public.job_runs SET fell_back_at = now() - make_interval(secs => $2::text::int)
                      WHERE job_id = $1";
    set(fell_back, Some("30")).await;
    assert!(abandons(&a).await, "within the sync run's lifetime");
    set(fell_back, Some("46")).await;
    assert!(!abandons(&a).await, "past the sync run's lifetime");
    // Past the lifetime still (46 s ago): a request the sync route recorded (a Replicate create that outlived its
    // wait) decides the job for as long as it runs, and another request stays abandoned.
    let recorded = "UPDATE public.job_runs SET request_id = $2 WHERE job_id = $1";
    set(recorded, Some(&a)).await;
    assert!(!abandons(&a).await, "the run's own request");
    assert!(
        abandons(&b).await,
        "another request, with the sync route's own recorded"
    );
}

/// A usage row made from a job's estimate (a job submitted before the port): the estimate is in metadata its owner
/// can rewrite, and one the column cannot hold is left out instead of failing the completing transaction. A job
/// with a run gets the server's price instead.
#[tokio::test]
async fn a_usage_row_from_an_owners_estimate_never_fails_on_the_estimate() {
    let (admin, user) = admin_and_new_user().await;
    for (estimate, expected) in [
        (serde_json::json!(0.25), Some("0.250000")),
        (serde_json::json!(1e9), None),
        (serde_json::json!(-1), None),
        (serde_json::json!("12"), None),
    ] {
        let metadata = serde_json::json!({ "estimated_cost": estimate });
        let job: Uuid = admin
            .query_one(
                "INSERT INTO public.jobs (user_id, job_type, metadata) VALUES ($1, 'image_fast', $2) RETURNING id",
                &[&user, &metadata],
            )
            .await
            .unwrap()
            .get(0);
        let meta = serde_json::json!({});
        let inserted = db::usage::insert_for_job(&admin, job, "fal", None, 1, &meta).await;
        assert!(inserted.unwrap(), "{estimate}");
        assert_eq!(
            cost_of(&admin, job).await.as_deref(),
            expected,
            "{estimate}"
        );
    }
    // A job with a run is priced by the server: the owner's estimate is not read.
    let job = insert_job(&admin, user, 10).await.unwrap();
    admin
        .execute(
            "UPDATE public.jobs SET metadata = '{\"estimated_cost\": 0}' WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    let meta = serde_json::json!({});
    let inserted = db::usage::insert_for_job(&admin, job, "fal", Some(0.25), 1, &meta);
    assert!(inserted.await.unwrap());
    assert_eq!(cost_of(&admin, job).await.as_deref(), Some("0.250000"));
}

/// What a job was submitted with (its model and its format) is read from its run, not from `jobs`, whose owner may
/// rewrite both: a usage row written at completion is attributed to the submitted model and modality, and the
/// completion picks the result's media type by the submitted format.
#[tokio::test]
async fn a_completion_reads_the_submitted_model_and_format_from_the_run() {
    let (admin, user) = admin_and_new_user().await;
    let models = admin
        .query(
            "(SELECT id FROM public.api_models WHERE modality = 'video' LIMIT 1)
             UNION ALL (SELECT id FROM public.api_models WHERE modality = 'image' LIMIT 1)",
            &[],
        )
        .await
        .unwrap();
    let (video_model, image_model): (Uuid, Uuid) = (models[0].get(0), models[1].get(0));
    let job: Uuid = admin
        .query_one(
            "SELECT public.insert_job($1, 'video_fast', 'submitted', 'queued', 'fast', $2, 'video', '{}'::jsonb, 10,
                                      NULL, 'fal', 'submitted-model', 'token', NULL, NULL, NULL, NULL, NULL, NULL,
                                      '{}'::text[])",
            &[&user, &video_model],
        )
        .await
        .unwrap()
        .get(0);
    admin
        .execute(
            "UPDATE public.jobs SET api_model_id = $2, format = 'image' WHERE id = $1",
            &[&job, &image_model],
        )
        .await
        .unwrap();
    let read = db::jobs::get(&admin, job).await.unwrap().unwrap();
    assert_eq!(read.format.as_deref(), Some("image"), "the owner's column");
    assert_eq!(read.submitted_format(), Some("video"));
    let meta = serde_json::json!({});
    let inserted = db::usage::insert_for_job(&admin, job, "fal", Some(0.5), 1, &meta);
    assert!(inserted.await.unwrap());
    let row = admin
        .query_one(
            "SELECT model_id, request_type, user_id FROM public.api_usage_logs WHERE job_id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<Uuid>>(0), Some(video_model));
    assert_eq!(row.get::<_, String>(1), "video");
    assert_eq!(row.get::<_, Uuid>(2), user);
}

/// A model row deleted while a job is open (its owner pointed `jobs.api_model_id` elsewhere, so nothing else held
/// it) leaves the run without a model (V20), and the usage row written at completion has none: not the model the
/// owner pointed the job at.
#[tokio::test]
async fn a_run_whose_model_row_was_deleted_gets_a_usage_row_without_a_model() {
    let (admin, user) = admin_and_new_user().await;
    let temporary: Uuid = admin
        .query_one(
            "INSERT INTO public.api_models (provider_id, model_key, display_name, modality, tasks)
             SELECT provider_id, 'test/deleted-' || gen_random_uuid(), 'deleted', 'image', tasks
               FROM public.api_models WHERE modality = 'image' LIMIT 1
             RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let job: Uuid = admin
        .query_one(
            "SELECT public.insert_job($1, 'image_fast', 'deleted model', 'queued', 'fast', $2, 'image', '{}'::jsonb,
                                      10, NULL, 'fal', 'deleted-model', 'token', NULL, NULL, NULL, NULL, NULL, NULL,
                                      '{}'::text[])",
            &[&user, &temporary],
        )
        .await
        .unwrap()
        .get(0);
    let other: Uuid = admin
        .query_one(
            "SELECT id FROM public.api_models WHERE modality = 'image' AND id <> $1 LIMIT 1",
            &[&temporary],
        )
        .await
        .unwrap()
        .get(0);
    let repoint = "UPDATE public.jobs SET api_model_id = $2 WHERE id = $1";
    admin.execute(repoint, &[&job, &other]).await.unwrap();
    let deleted = "DELETE FROM public.api_models WHERE id = $1";
    assert_eq!(admin.execute(deleted, &[&temporary]).await.unwrap(), 1);
    let run_model = "SELECT api_model_id FROM public.job_runs WHERE job_id = $1";
    let row = admin.query_one(run_model, &[&job]).await.unwrap();
    assert_eq!(row.get::<_, Option<Uuid>>(0), None);
    let meta = serde_json::json!({});
    let inserted = db::usage::insert_for_job(&admin, job, "fal", Some(0.5), 1, &meta);
    assert!(inserted.await.unwrap());
    let logged = "SELECT model_id FROM public.api_usage_logs WHERE job_id = $1";
    let row = admin.query_one(logged, &[&job]).await.unwrap();
    assert_eq!(row.get::<_, Option<Uuid>>(0), None);
}

/// Columns an owner may write with values Postgres takes and Rust cannot decode (a JSON number beyond `f64`, arrays
/// nested past serde_json's limit, an `infinity` timestamp) read as unset instead of panicking the reader (every
/// delivery and reconciler pass that reads the job).
#[tokio::test]
async fn a_job_whose_owner_wrote_undecodable_values_still_reads() {
    let (admin, user) = admin_and_new_user().await;
    for (metadata, timestamp) in [
        ("'{\"x\": 1e400}'::jsonb", "'infinity'"),
        (
            "(repeat('[', 300) || repeat(']', 300))::jsonb",
            "'-infinity'",
        ),
    ] {
        let job = insert_job(&admin, user, 10).await.unwrap();
        let sql = format!(
            "UPDATE public.jobs SET metadata = {metadata}, started_at = {timestamp}, created_at = {timestamp},
                    completed_at = {timestamp} WHERE id = $1"
        );
        assert_eq!(admin.execute(&sql, &[&job]).await.unwrap(), 1, "{sql}");
        let read = db::jobs::get(&admin, job).await.unwrap().unwrap();
        assert_eq!(read.metadata, serde_json::json!({}), "{metadata}");
        assert_eq!(
            (read.created_at, read.started_at, read.completed_at),
            (None, None, None),
            "{timestamp}"
        );
        assert!(read.run.is_some(), "the run is read as ever");
    }
}

/// An owner may write hundreds of megabytes into their job's prompt, error or metadata; a read takes at most
/// `MAX_OWNER_VALUE_BYTES` of each, and a column over it reads as unset (the rest of the job as ever). A column at
/// the bound reads whole.
#[tokio::test]
async fn a_job_column_its_owner_wrote_past_the_bound_reads_as_unset() {
    let (admin, user) = admin_and_new_user().await;
    let max = db::jobs::MAX_OWNER_VALUE_BYTES;
    // A JSON array of zeros of `bytes` bytes as text ("[0, 0, …, 0]": 3 bytes an element, less one, plus two).
    let zeros =
        |bytes: i32| format!("(SELECT jsonb_agg(0) FROM generate_series(1, ({bytes} - 1) / 3))");
    let job = insert_job(&admin, user, 10).await.unwrap();
    let over = format!(
        "UPDATE public.jobs SET metadata = jsonb_build_object('big', {}), original_prompt = repeat('p', {max} + 1),
                error_message = repeat('e', {max} + 1) WHERE id = $1",
        zeros(max)
    );
    assert_eq!(admin.execute(&over, &[&job]).await.unwrap(), 1);
    let read = db::jobs::get(&admin, job).await.unwrap().unwrap();
    assert_eq!(read.metadata, serde_json::json!({}));
    assert_eq!((read.original_prompt, read.error_message), (None, None));
    assert_eq!(read.user_id, user);
    assert!(read.run.is_some(), "the run is read as ever");

    let at = format!(
        "UPDATE public.jobs SET metadata = {}, original_prompt = repeat('p', {max}), error_message = 'e'
          WHERE id = $1 RETURNING octet_length(metadata::text)",
        zeros(max)
    );
    let bytes: i32 = admin.query_one(&at, &[&job]).await.unwrap().get(0);
    assert!(bytes <= max && bytes > max - 4, "{bytes}");
    let read = db::jobs::get(&admin, job).await.unwrap().unwrap();
    assert_eq!(
        read.metadata.as_array().map(Vec::len),
        Some(((max - 1) / 3) as usize)
    );
    assert_eq!(read.original_prompt.map(|p| p.len()), Some(max as usize));
    assert_eq!(read.error_message.as_deref(), Some("e"));
}

/// The job's usage row's `cost_usd`, as Postgres prints it.
async fn cost_of(admin: &tokio_postgres::Client, job: Uuid) -> Option<String> {
    admin
        .query_one(
            "SELECT cost_usd::text FROM public.api_usage_logs WHERE job_id = $1",
            &[&job],
        )
        .await
        .unwrap()
        .get(0)
}

/// A NULL status (the column's CHECK admits it, and owners may write it) is read as the column's default,
/// `queued`; the transition's guard agrees, so such a job can still be ended and its run closed.
#[tokio::test]
async fn a_job_whose_owner_nulled_its_status_can_still_be_ended() {
    let (admin, user) = admin_and_new_user().await;
    let job = insert_job(&admin, user, 10).await.unwrap();
    admin
        .execute(
            "UPDATE public.jobs SET status = NULL WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    let read = db::jobs::get(&admin, job).await.unwrap().unwrap();
    assert_eq!(read.status, JobStatus::Queued);
    let patch = serde_json::json!({});
    let failed = db::jobs::transition(&admin, job, JobStatus::Failed, Some("gone"), &patch);
    assert!(failed.await.unwrap());
    let ended = db::jobs::get(&admin, job).await.unwrap().unwrap();
    assert_eq!(ended.status, JobStatus::Failed);
    assert!(ended.run.unwrap().closed_at.is_some());
}

/// The fal model of the seed: (model id, provider id).
async fn fal_model(client: &tokio_postgres::Client) -> tokio_postgres::Row {
    client
        .query_one(
            "SELECT m.id, m.provider_id FROM public.api_models m
               JOIN public.api_providers p ON p.id = m.provider_id
              WHERE p.name = 'fal' LIMIT 1",
            &[],
        )
        .await
        .unwrap()
}

/// The usage row and the provider's request as a queued submission records them for `job`.
fn queued_request(
    job: Uuid,
    user: Uuid,
    model: &tokio_postgres::Row,
    cancel_url: &str,
) -> (db::usage::NewUsage, db::runs::ProviderRequest) {
    let usage = db::usage::NewUsage {
        job_id: job,
        provider_id: model.get(1),
        model_id: model.get(0),
        user_id: user,
        request_type: "image".to_owned(),
        endpoint_path: "fal-webhook".to_owned(),
        request_payload: serde_json::json!({}),
        cost_usd: None,
        response_status: Some(200),
        response_time_ms: 1,
        response_payload: None,
        error_message: None,
        provider_metadata: serde_json::json!({}),
    };
    let request = db::runs::ProviderRequest {
        request_id: job.to_string(),
        gateway_request_id: None,
        status_url: None,
        response_url: None,
        cancel_url: Some(cancel_url.to_owned()),
    };
    (usage, request)
}

/// Recording the provider's answer says whether it went into an open run (V12): a job cancelled through the API
/// while its submission was in flight has a closed run, and its request must then be cancelled by the submitter,
/// since nothing reads that run again. The URL is written either way, and the usage row once.
#[tokio::test]
async fn recording_a_request_says_whether_its_run_is_still_open() {
    let (admin, user) = admin_and_new_user().await;
    let model = fal_model(&admin).await;
    let open = insert_job(&admin, user, 10).await.unwrap();
    let closed = insert_job(&admin, user, 10).await.unwrap();
    let patch = serde_json::json!({"cancelled_by": "user"});
    let cancelled = db::jobs::transition(&admin, closed, JobStatus::Cancelled, None, &patch);
    assert!(cancelled.await.unwrap());

    for (job, want_open) in [(open, true), (closed, false)] {
        let url = format!("http://127.0.0.1:9/fal-ai/flux/requests/{job}/cancel");
        let (usage, request) = queued_request(job, user, &model, &url);
        let recorded = db::usage::insert_once_and_record_request(&admin, &usage, &request).await;
        assert_eq!(recorded.unwrap(), want_open, "job {job}");
        let read = db::jobs::get(&admin, job).await.unwrap().unwrap();
        let run = read.run.unwrap();
        assert_eq!(run.closed_at.is_none(), want_open);
        let recorded_url = run.request.and_then(|r| r.cancel_url);
        assert_eq!(recorded_url.as_deref(), Some(url.as_str()));
        let usages = admin
            .query_one(
                "SELECT count(*) FROM public.api_usage_logs WHERE job_id = $1",
                &[&job],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(usages, 1);
    }
}

/// A cancel holds a run whose submission may be in flight (no request recorded, young): the hold counts against the
/// owner, takes the provider's cancel URL when its cancel does not go through, and is released (only while it has
/// no URL) when the submission ends. A run with its request recorded, or an old one, is not held.
#[tokio::test]
async fn a_cancel_holds_a_run_in_flight_until_it_is_released_or_given_a_cancel_url() {
    const MAX_OPEN: i64 = 1;
    let in_flight = Duration::from_secs(50);
    let (admin, user) = admin_and_new_user().await;
    let model = fal_model(&admin).await;
    let orphan_url = async |job: Uuid| {
        admin
            .query_opt(
                "SELECT cancel_url FROM public.job_run_orphans WHERE job_id = $1",
                &[&job],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, Option<String>>(0))
    };
    let hold = async |job: Uuid| {
        db::reconcile::hold_in_flight(&admin, job, in_flight)
            .await
            .unwrap()
    };
    let close = async |job: Uuid| {
        let patch = serde_json::json!({"cancelled_by": "user"});
        let closed = db::jobs::transition(&admin, job, JobStatus::Cancelled, None, &patch);
        assert!(closed.await.unwrap());
    };

    let job = insert_job(&admin, user, MAX_OPEN).await.unwrap();
    assert!(hold(job).await);
    close(job).await;
    assert_eq!(orphan_url(job).await, Some(None));
    assert_eq!(
        insert_job(&admin, user, MAX_OPEN).await,
        None,
        "the hold did not count"
    );
    db::reconcile::release_hold(&admin, job).await.unwrap();
    assert_eq!(orphan_url(job).await, None);

    // The provider took it and its cancel did not go through: the hold becomes a kept run, no longer released.
    let job = insert_job(&admin, user, MAX_OPEN).await.unwrap();
    assert!(hold(job).await);
    close(job).await;
    let url = format!("http://127.0.0.1:9/fal-ai/flux/requests/{job}/cancel");
    let (usage, request) = queued_request(job, user, &model, &url);
    let recorded = db::usage::insert_once_and_record_request(&admin, &usage, &request).await;
    assert!(!recorded.unwrap());
    db::reconcile::keep_for_cancel(&admin, job).await.unwrap();
    db::reconcile::release_hold(&admin, job).await.unwrap();
    assert_eq!(orphan_url(job).await, Some(Some(url.clone())));
    assert!(
        db::reconcile::drop_orphan(&admin, job, Some(&url))
            .await
            .unwrap()
    );

    // Its request recorded, or written long ago: no submission of it is in flight.
    let job = insert_job(&admin, user, MAX_OPEN).await.unwrap();
    let url = format!("http://127.0.0.1:9/fal-ai/flux/requests/{job}/cancel");
    let (usage, request) = queued_request(job, user, &model, &url);
    assert!(
        db::usage::insert_once_and_record_request(&admin, &usage, &request)
            .await
            .unwrap()
    );
    assert!(!hold(job).await);
    close(job).await;
    let job = insert_job(&admin, user, MAX_OPEN).await.unwrap();
    admin
        .execute(
            "UPDATE public.job_runs SET created_at = now() - interval '51 seconds' WHERE job_id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert!(!hold(job).await);
    close(job).await;
}

/// A job its owner deleted between its insert and the provider's answer: its run is kept aside (V11's
/// `job_run_orphans`) and is given the provider's cancel URL when the answer is recorded, so that the reconciler
/// can stop the request. Reading the stale orphans takes nothing away (a pass stopped before asking the provider
/// leaves them to the next); the run counts against its owner's bound until it is dropped, after the cancel.
#[tokio::test]
async fn a_job_deleted_during_its_submission_leaves_a_cancellable_orphan_until_it_is_dropped() {
    const MAX_OPEN: i64 = 1;
    let (admin, user) = admin_and_new_user().await;
    let model = fal_model(&admin).await;
    let job = insert_job(&admin, user, MAX_OPEN).await.unwrap();
    let deleted = admin
        .execute("DELETE FROM public.jobs WHERE id = $1", &[&job])
        .await
        .unwrap();
    assert_eq!(deleted, 1);

    let cancel_url = format!("http://127.0.0.1:9/fal-ai/flux/requests/{job}/cancel");
    let (usage, request) = queued_request(job, user, &model, &cancel_url);
    let recorded = db::usage::insert_once_and_record_request(&admin, &usage, &request).await;
    assert!(
        !recorded.unwrap(),
        "a deleted job's request was reported as recorded into an open run"
    );

    let orphan_url = async || {
        db::reconcile::stale_orphans(&admin, Duration::ZERO, 10_000)
            .await
            .unwrap()
            .into_iter()
            .find(|o| o.job_id == job)
            .map(|o| o.cancel_url)
    };
    assert_eq!(orphan_url().await, Some(Some(cancel_url.clone())));
    assert_eq!(
        orphan_url().await,
        Some(Some(cancel_url.clone())),
        "reading the stale orphans took one away"
    );
    assert_eq!(
        insert_job(&admin, user, MAX_OPEN).await,
        None,
        "the deleted job's run did not count"
    );

    // A pass that read the orphan before the provider's answer was recorded does not drop it.
    let dropped = db::reconcile::drop_orphan(&admin, job, None).await.unwrap();
    assert!(
        !dropped,
        "an orphan whose cancel URL came after it was read was dropped"
    );
    let dropped = db::reconcile::drop_orphan(&admin, job, Some(&cancel_url)).await;
    assert!(dropped.unwrap());
    assert_eq!(orphan_url().await, None);
    assert!(insert_job(&admin, user, MAX_OPEN).await.is_some());
}

/// The stack's cluster has a CA of its own, as a managed Postgres (Supabase) has. A function is given it as
/// `DATABASE_CA_CERT` beside a `sslmode=require` URL: its connection is TLS, and verified against that CA alone,
/// host name included. Without it (the Mozilla roots) or with another CA the handshake fails.
#[tokio::test]
async fn database_tls_is_verified_against_the_ca_the_secret_names() {
    let tools_url = stack_var("DATABASE_URL");
    let (_, ca_file) = db::target::parse(&tools_url).unwrap();
    let ca_file = ca_file.expect("the stack's own cluster, whose URL names its CA (sslrootcert)");
    let ca = std::fs::read_to_string(ca_file).unwrap();
    let (base, _) = tools_url.split_once('?').unwrap();
    let url = SecretString::from(format!("{base}?sslmode=require"));

    let client = Db::new().client(&url, Some(&ca)).await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the connection is not TLS");

    let unrelated = include_str!("../fixtures/unrelated-ca.pem");
    let host = url::Url::parse(base)
        .unwrap()
        .host_str()
        .unwrap()
        .to_owned();
    let other_name = SecretString::from(format!(
        "{}?sslmode=require&hostaddr={host}",
        base.replacen(&format!("@{host}:"), "@db.example.invalid:", 1)
    ));
    for (case, url, ca, reason) in [
        ("the Mozilla roots", &url, None, "UnknownIssuer"),
        ("another CA", &url, Some(unrelated), "UnknownIssuer"),
        (
            "another host name",
            &other_name,
            Some(ca.as_str()),
            "certificate not valid for name",
        ),
    ] {
        let err = Db::new().client(url, ca).await.map(|_| ()).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "TLS handshake: invalid peer certificate: {reason}"
            )),
            "{case}: {err}"
        );
    }
}

/// A connection as the database's owner, and a new user with a profile.
async fn admin_and_new_user() -> (tokio_postgres::Client, Uuid) {
    let admin = db::connect(&stack_var("DATABASE_URL")).await.unwrap();
    let user = Uuid::new_v4();
    users::ensure(&admin, user).await.unwrap();
    (admin, user)
}

/// A claim counts its holders until the job ends: a holder that fails ends its lease at once (the next takes the
/// job over without waiting, as its second holder), a renewal already under way cannot give the claim back to the
/// holder that failed, and a live lease keeps everyone else out.
#[tokio::test]
async fn a_claim_counts_its_holders_across_failures() {
    const LEASE: Duration = Duration::from_secs(30);
    let (admin, user) = admin_and_new_user().await;
    let job = insert_job(&admin, user, 1_000_000).await.unwrap();
    let (first, second, third) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        db::claims::try_claim(&admin, job, first, LEASE)
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        db::claims::try_claim(&admin, job, second, LEASE)
            .await
            .unwrap(),
        None
    );

    db::claims::expire(&admin, job, first).await.unwrap();
    assert!(!db::claims::renew(&admin, job, first, LEASE).await.unwrap());
    let claim = db::claims::current(&admin, job).await.unwrap().unwrap();
    assert_eq!((claim.holder, claim.live), (first, false));
    assert_eq!(
        db::claims::try_claim(&admin, job, second, LEASE)
            .await
            .unwrap(),
        Some(2)
    );
    assert!(db::claims::renew(&admin, job, second, LEASE).await.unwrap());
    // Expiring another holder's claim changes nothing.
    db::claims::expire(&admin, job, first).await.unwrap();
    assert_eq!(
        db::claims::try_claim(&admin, job, third, LEASE)
            .await
            .unwrap(),
        None
    );

    assert!(db::claims::release(&admin, job, second).await.unwrap());
    assert_eq!(
        db::claims::try_claim(&admin, job, third, LEASE)
            .await
            .unwrap(),
        Some(1)
    );
}

/// Closing a job's run (its owner ended it, and the provider is done with it) drops its claim: a failed holder's,
/// kept while the job was open to count the holders, would otherwise outlive the job.
#[tokio::test]
async fn closing_a_run_drops_the_claim_a_failed_holder_left() {
    let (admin, user) = admin_and_new_user().await;
    let job = insert_job(&admin, user, 1_000_000).await.unwrap();
    let holder = Uuid::new_v4();
    let lease = Duration::from_secs(30);
    assert_eq!(
        db::claims::try_claim(&admin, job, holder, lease)
            .await
            .unwrap(),
        Some(1)
    );
    db::claims::expire(&admin, job, holder).await.unwrap();
    assert!(db::claims::current(&admin, job).await.unwrap().is_some());
    db::runs::close(&admin, job).await.unwrap();
    assert!(db::claims::current(&admin, job).await.unwrap().is_none());
}

/// A generation runs only on an active image or video model of an active provider: neither a `chat` model nor a
/// model of a deactivated provider is found by id or as an override. (Providers of their own, so that no other
/// test picking the seed's fal models meets these rows.)
#[tokio::test]
async fn only_image_and_video_models_of_active_providers_are_found() {
    let admin = db::connect(&stack_var("DATABASE_URL")).await.unwrap();
    let tag = Uuid::new_v4().simple().to_string();
    let provider = |name: String, active: bool| {
        let admin = &admin;
        async move {
            let row = admin
                .query_one(
                    "INSERT INTO public.api_providers (name, display_name, base_url, is_active)
                     VALUES ($1, 'test', 'http://127.0.0.1:9', $2) RETURNING id",
                    &[&name, &active],
                )
                .await
                .unwrap();
            row.get::<_, Uuid>(0)
        }
    };
    let model = |provider: Uuid, key: String, modality: &'static str| {
        let admin = &admin;
        async move {
            let row = admin
                .query_one(
                    "INSERT INTO public.api_models (provider_id, model_key, display_name, modality, tasks)
                     VALUES ($1, $2, 'test', $3, ARRAY['t2i']) RETURNING id",
                    &[&provider, &key, &modality],
                )
                .await
                .unwrap();
            (row.get::<_, Uuid>(0), key)
        }
    };
    let on = provider(format!("active-{tag}"), true).await;
    let off = provider(format!("deactivated-{tag}"), false).await;
    let chat = model(on, format!("test/chat-{tag}"), "chat").await;
    let image = model(on, format!("test/image-{tag}"), "image").await;
    let deactivated = model(off, format!("test/off-{tag}"), "image").await;

    for (what, (id, key), provider) in [
        ("chat", &chat, on),
        ("deactivated provider", &deactivated, off),
    ] {
        let by_id = db::models::active_by_id(&admin, *id).await.unwrap();
        assert!(by_id.is_none(), "{what}: {by_id:?}");
        let cache = db::models::ModelCache::new(Duration::from_secs(30));
        assert!(
            cache.active_by_id(&admin, *id).await.unwrap().is_none(),
            "{what}"
        );
        let overridden = db::models::active_override(&admin, provider, key)
            .await
            .unwrap();
        assert!(overridden.is_none(), "{what}: {overridden:?}");
    }
    // Control: an image model of an active provider is found both ways, and so is the deactivated provider's
    // once its provider is active again.
    let found = db::models::active_by_id(&admin, image.0).await.unwrap();
    assert_eq!(found.map(|m| m.id), Some(image.0));
    assert!(
        db::models::active_override(&admin, on, &image.1)
            .await
            .unwrap()
            .is_some()
    );
    admin
        .execute(
            "UPDATE public.api_providers SET is_active = true WHERE id = $1",
            &[&off],
        )
        .await
        .unwrap();
    let found = db::models::active_by_id(&admin, deactivated.0)
        .await
        .unwrap();
    assert_eq!(found.map(|m| m.id), Some(deactivated.0));

    // Their models go with them (ON DELETE CASCADE).
    admin
        .execute(
            "DELETE FROM public.api_providers WHERE id = ANY($1)",
            &[&vec![on, off]],
        )
        .await
        .unwrap();
}

/// A row a client planted at asset 0 under another user's job (RLS checks only the row's `user_id`) is the job's
/// asset once it completes: its owner, its result, and none of the planted dimensions or duration.
#[tokio::test]
async fn a_planted_asset_row_is_overwritten_whole_by_the_completion() {
    let (admin, owner) = admin_and_new_user().await;
    let planter = Uuid::new_v4();
    users::ensure(&admin, planter).await.unwrap();
    let job = insert_job(&admin, owner, 10).await.unwrap();
    admin
        .execute(
            "INSERT INTO public.workspace_assets (user_id, job_id, asset_index, asset_type, temp_storage_path,
                 file_size_bytes, mime_type, generation_seed, original_prompt, model_used, width, height,
                 duration_seconds)
             VALUES ($1, $2, 0, 'video', 'planted', 1, 'video/mp4', 1, 'planted', 'planted', 1, 1, 9999)",
            &[&planter, &job],
        )
        .await
        .unwrap();
    let asset = db::assets::NewAsset {
        user_id: owner,
        job_id: job,
        asset_type: "image".into(),
        temp_storage_path: format!("{owner}/{job}_0.png"),
        thumbnail_path: None,
        file_size_bytes: 10,
        mime_type: "image/png".into(),
        generation_seed: 7,
        original_prompt: "prompt".into(),
        model_used: "fal-ai/test".into(),
        generation_settings: serde_json::json!({}),
    };
    db::assets::insert_once(&admin, &asset).await.unwrap();
    let row = admin
        .query_one(
            "SELECT user_id, asset_type, temp_storage_path, width, height, duration_seconds::float8
               FROM public.workspace_assets WHERE job_id = $1",
            &[&job],
        )
        .await
        .unwrap();
    let read: (Uuid, String, String, Option<i32>, Option<i32>, Option<f64>) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    assert_eq!(
        read,
        (
            owner,
            "image".into(),
            asset.temp_storage_path.clone(),
            None,
            None,
            None
        )
    );
}

/// Closing the run of a job its owner ended fails its storyboard clip only when that close is the one that ended
/// the run without a result: a caller holding a copy of the job read before another caller completed it (and
/// closed its run) leaves the clip to the completion's post-processing.
#[tokio::test]
async fn an_owner_ended_jobs_clip_fails_only_when_its_run_is_closed_without_a_result() {
    let (admin, user) = admin_and_new_user().await;
    let clip_job = async || {
        let job = insert_job(&admin, user, 10).await.unwrap();
        let clip = Uuid::new_v4();
        admin
            .execute(
                "INSERT INTO public.storyboard_clips (id, status) VALUES ($1, 'generating')",
                &[&clip],
            )
            .await
            .unwrap();
        admin
            .execute(
                "UPDATE public.job_runs SET storyboard_clip_id = $2 WHERE job_id = $1",
                &[&job, &clip],
            )
            .await
            .unwrap();
        (job, clip)
    };
    let clip_status = async |clip: Uuid| -> String {
        let sql = "SELECT status FROM public.storyboard_clips WHERE id = $1";
        admin.query_one(sql, &[&clip]).await.unwrap().get(0)
    };

    // Read while open; completed by another caller (its run closed with its result) before the close.
    let (completed, clip) = clip_job().await;
    let stale = db::jobs::get(&admin, completed).await.unwrap().unwrap();
    assert_eq!(
        stale
            .run
            .as_ref()
            .and_then(|r| r.targets.storyboard_clip_id),
        Some(clip)
    );
    db::runs::record_result(&admin, completed, "key", None)
        .await
        .unwrap();
    let nothing = serde_json::json!({});
    let done = db::jobs::transition(&admin, completed, JobStatus::Completed, None, &nothing);
    assert!(done.await.unwrap());
    completion::close_owner_ended(&admin, &stale).await.unwrap();
    assert_eq!(clip_status(clip).await, "generating");

    // Ended by its owner (its status written, its run open): the close fails the clip, once.
    let (cancelled, clip) = clip_job().await;
    let sql = "UPDATE public.jobs SET status = 'cancelled' WHERE id = $1";
    admin.execute(sql, &[&cancelled]).await.unwrap();
    let ended = db::jobs::get(&admin, cancelled).await.unwrap().unwrap();
    completion::close_owner_ended(&admin, &ended).await.unwrap();
    assert_eq!(clip_status(clip).await, "failed");
    assert!(
        !db::runs::close(&admin, cancelled).await.unwrap(),
        "closed already"
    );
}

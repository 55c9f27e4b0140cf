//! The hostile-client suite: a signed-in client plants what it can reach (its own jobs' metadata and asset rows,
//! its request's metadata, the port's tables, the webhook URL's query) and the functions must still never send the
//! FAL key anywhere but fal's own hosts, never sign, copy or delete another user's objects, never write another
//! user's rows, and end each job as it should.
//!
//! Every attack is made as a client can make it: the HTTP API with the client's own token, or the database as role
//! `authenticated` with the client's own claims (row level security applies). The superuser only sets up what
//! the test needs and reads the outcome. A planted URL points at a trap: a loopback HTTP listener of the test that
//! records every request it gets.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use e2e::*;

const WAIT: Duration = Duration::from_secs(60);
/// A queued job that stays queued at fal for the whole test: no webhook, no completion for ten minutes.
const PARKED: &str = "#no-webhook #delay-ms=600000";
/// The port's own tables: the functions' bookkeeping, closed to clients.
const PORT_TABLES: [&str; 4] = [
    "job_runs",
    "job_completion_claims",
    "job_postprocessing",
    "job_reconcile_checks",
];
/// Request metadata keys only the functions may write (`fal_anything` stands for every `fal_*` key).
const SERVER_OWNED_METADATA: [&str; 23] = [
    "fal_request_id",
    "fal_gateway_request_id",
    "fal_status_url",
    "fal_response_url",
    "fal_cancel_url",
    "fal_response",
    "fal_webhook_payload",
    "fal_anything",
    "storage_path",
    "thumbnail_path",
    "result_url",
    "reference_image_storage",
    "reference_image_signed_url",
    "input_used",
    "provider_name",
    "provider_id",
    "model_key",
    "database_model_key",
    "is_model_overridden",
    "estimated_cost",
    "sync_fallback",
    "original_fal_url",
    "webhook_processed",
];

// ---------------------------------------------------------------------------------------------------------
// The client's database session
// ---------------------------------------------------------------------------------------------------------

type Rows = Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>;

fn id(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

/// One statement run as the signed-in client `user` (role `authenticated`, its own claims, RLS applies).
async fn as_client(user: Uuid, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Rows {
    let mut db = db().await;
    e2e::common::as_user(&mut db, user, async |tx| tx.query(sql, params).await).await
}

fn is_denied(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
}

/// The database refused the statement for lack of privilege (grants or row level security), not for anything else.
#[track_caller]
fn assert_denied(result: Rows, what: &str) {
    match result {
        Err(e) if is_denied(&e) => {}
        Err(e) => panic!("{what}: refused, but not for lack of privilege: {e:?}"),
        Ok(rows) => panic!("{what}: allowed ({} rows)", rows.len()),
    }
}

/// Refused, or it reached no row (row level security hides them).
#[track_caller]
fn assert_denied_or_nothing(result: Rows, what: &str) {
    match result {
        Err(e) if is_denied(&e) => {}
        Ok(rows) if rows.is_empty() => {}
        Err(e) => panic!("{what}: refused, but not for lack of privilege: {e:?}"),
        Ok(rows) => panic!("{what}: reached {} rows", rows.len()),
    }
}

/// A write a client is allowed to make on its own rows (`RETURNING` something); it must reach a row.
async fn client_writes(user: Uuid, sql: &str, params: &[&(dyn ToSql + Sync)]) {
    match as_client(user, sql, params).await {
        Ok(rows) => assert!(
            !rows.is_empty(),
            "the client's own write reached no row: {sql}"
        ),
        Err(e) => panic!("the client may make this write on its own rows, but: {e:?}\n{sql}"),
    }
}

/// The client merges `patch` into its own job's metadata, as the original's clients may.
async fn plant_metadata(user: Uuid, job_id: &str, patch: Value) {
    client_writes(
        user,
        "UPDATE public.jobs SET metadata = coalesce(metadata, '{}'::jsonb) || $1::jsonb WHERE id = $2 RETURNING 1",
        &[&patch, &id(job_id)],
    )
    .await;
}

/// A character of `user`'s, made by that user as a client.
async fn character_of(user: Uuid, name: &str) -> Uuid {
    let character = Uuid::new_v4();
    client_writes(
        user,
        "INSERT INTO public.characters (id, user_id, name) VALUES ($1, $2, $3) RETURNING 1",
        &[&character, &user, &name],
    )
    .await;
    character
}

/// A scene of `character`, made by its owner `user` as a client.
async fn scene_of(user: Uuid, character: Uuid) -> Uuid {
    let scene = Uuid::new_v4();
    client_writes(
        user,
        "INSERT INTO public.character_scenes (id, character_id, scene_prompt) VALUES ($1, $2, 'a harbour') RETURNING 1",
        &[&scene, &character],
    )
    .await;
    scene
}

/// A storyboard clip in `status`, made by `user` as a client (the table is open to clients, as in the original).
async fn storyboard_clip(user: Uuid, status: &str) -> Uuid {
    let clip = Uuid::new_v4();
    client_writes(
        user,
        "INSERT INTO public.storyboard_clips (id, status) VALUES ($1, $2) RETURNING 1",
        &[&clip, &status],
    )
    .await;
    clip
}

/// Every row of `table` (superuser) whose `column` is one of `ids`, as JSON: what an attack must leave as it was.
async fn rows_of(table: &str, column: &str, ids: &[Uuid]) -> Value {
    db().await
        .query_one(
            &format!(
                "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text), '[]')
                   FROM public.{table} t WHERE {column} = ANY($1)"
            ),
            &[&ids],
        )
        .await
        .unwrap()
        .get(0)
}

// ---------------------------------------------------------------------------------------------------------
// The HTTP API, as the client calls it
// ---------------------------------------------------------------------------------------------------------

/// `POST /fal-image`: status, `Retry-After`, answer.
async fn submit_raw(jwt: &str, body: &Value) -> (u16, Option<String>, Value) {
    let r = generate_response(jwt, body).await;
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, answer) = answer_of(r).await;
    (status, retry_after, answer)
}

async fn queued(jwt: &str, text: &str, directives: &str) -> (String, String) {
    Provider::Fal.queued(jwt, text, directives).await
}

/// A completed sync image of the caller's on fal: (job id, answer).
async fn completed_image(jwt: &str, text: &str, directives: &str) -> (String, Value) {
    completed_image_on(Provider::Fal, jwt, text, directives).await
}

/// A completed sync image of the caller's on `provider`: (job id, answer).
async fn completed_image_on(
    provider: Provider,
    jwt: &str,
    text: &str,
    directives: &str,
) -> (String, Value) {
    let body = json!({"prompt": prompt(text, directives), "apiModelId": provider.sync_model()});
    let (status, answer) = generate(jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "completed", "{answer}");
    (answer["jobId"].as_str().unwrap().to_owned(), answer)
}

/// Cancels parked jobs so the test leaves nothing open.
async fn cancel_all(jwt: &str, jobs: &[String]) {
    for job_id in jobs {
        let (status, answer) = cancel_job(jwt, job_id).await;
        assert_eq!(status, 200, "cancel {job_id}: {answer}");
    }
}

/// Fails when the provider has already delivered: the attack must come before the delivery to mean anything.
async fn assert_not_delivered_yet(provider: Provider, request_id: &str) {
    let record = provider.request(request_id).await;
    assert_eq!(
        record["deliveries"],
        json!([]),
        "the delivery came before the attack: {record}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------------------

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of an object's bytes; `None` when it cannot be read.
async fn object_sha(bucket: &str, key: &str) -> Option<String> {
    let out = s3()
        .await
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .ok()?;
    Some(sha256_hex(&out.body.collect().await.ok()?.into_bytes()))
}

/// Every object of `user` in both buckets (`<bucket>/<key>` → sha256).
async fn objects_of(user: Uuid) -> BTreeMap<String, String> {
    let s3 = s3().await;
    let mut out = BTreeMap::new();
    for bucket in [stack_var("WORKSPACE_BUCKET"), stack_var("LIBRARY_BUCKET")] {
        let listed = s3
            .list_objects_v2()
            .bucket(&bucket)
            .prefix(format!("{user}/"))
            .send()
            .await
            .unwrap();
        for key in listed.contents().iter().filter_map(|o| o.key()) {
            let sha = object_sha(&bucket, key).await.unwrap_or_default();
            out.insert(format!("{bucket}/{key}"), sha);
        }
    }
    out
}

/// A job's stored result in the workspace bucket (not its thumbnail): key and sha256.
async fn result_of(user: Uuid, job_id: &str) -> (String, String) {
    let results: Vec<String> = objects_of_job(&user.to_string(), job_id)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !k.contains(".thumb."))
        .collect();
    assert_eq!(results.len(), 1, "results of job {job_id}: {results:?}");
    let sha = object_sha(&stack_var("WORKSPACE_BUCKET"), &results[0])
        .await
        .unwrap();
    (results[0].clone(), sha)
}

/// The job (row `j`) completed with one asset, its result stored as the attacker's own: key and sha256.
async fn assert_own_result(attacker: Uuid, job_id: &str, j: &Value) -> (String, String) {
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(asset_count(job_id).await, 1);
    result_of(attacker, job_id).await
}

/// Another user with a stored result of their own: the objects the attacker aims at.
struct Victim {
    key: String,
    id: Uuid,
    objects: BTreeMap<String, String>,
}

impl Victim {
    async fn new() -> Victim {
        let (id, jwt) = user().await;
        let (job_id, _) = completed_image(&jwt, "victim", "#media-bytes=7919").await;
        let (key, _) = result_of(id, &job_id).await;
        Victim {
            key,
            id,
            objects: objects_of(id).await,
        }
    }

    /// Nothing of the victim's was deleted, overwritten or added.
    async fn assert_objects_untouched(&self) {
        assert_eq!(
            objects_of(self.id).await,
            self.objects,
            "the victim's objects changed"
        );
    }

    /// No object of `user` holds the bytes of a victim's object: nothing was copied from them.
    async fn assert_no_copy_in(&self, user: Uuid) {
        let theirs: Vec<&String> = self.objects.values().collect();
        for (object, sha) in objects_of(user).await {
            assert!(
                !theirs.contains(&&sha),
                "{object} holds a copy of the victim's object"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The trap (`e2e::Trap`): where planted URLs point
// ---------------------------------------------------------------------------------------------------------

/// fal-shaped URLs of a request at the trap: (status, response, cancel).
fn trap_urls(trap: &Trap, request_id: &str) -> (String, String, String) {
    let base = format!("/queue/fal-ai/planted/requests/{request_id}");
    (
        trap.url(&format!("{base}/status")),
        trap.url(&base),
        trap.url(&format!("{base}/cancel")),
    )
}

// ---------------------------------------------------------------------------------------------------------
// Webhook deliveries
// ---------------------------------------------------------------------------------------------------------

fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    hex::encode(
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize(),
    )
}

/// The token of a job's webhook URL as the contract defines it: hex HMAC-SHA256(webhook secret, job id).
fn webhook_token(job_id: &str) -> String {
    hmac_sha256_hex(
        stack_var("FAL_WEBHOOK_SECRET").as_bytes(),
        job_id.as_bytes(),
    )
}

// ---------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------

// The attacks that reach a provider (its URLs, its deliveries, the results it produces) are tried on both.
for_each_provider!(
    cancel_ignores_a_planted_cancel_url_and_cancels_at_the_provider,
    the_reconciler_asks_the_provider_only_at_the_urls_the_functions_stored,
    a_repointed_asset_path_never_gets_the_victims_object_signed,
    a_planted_reference_never_becomes_the_thumbnail,
    post_processing_copies_the_attackers_own_result_whatever_asset_rows_it_planted,
    a_client_cancel_during_a_delivery_leaves_the_job_cancelled_with_nothing_stored,
    a_job_written_again_under_a_deleted_jobs_id_is_not_the_deliverys_job,
    a_job_written_again_during_its_deliverys_transfer_is_left_as_written,
);

async fn cancel_ignores_a_planted_cancel_url_and_cancels_at_the_provider(provider: Provider) {
    let victim = Victim::new().await;
    let trap = Trap::start().await;
    let (attacker, jwt) = user().await;
    let (job_id, request_id) = provider.queued(&jwt, "cancel trap", PARKED).await;
    let (status_url, response_url, cancel_url) = trap_urls(&trap, &request_id);
    plant_metadata(
        attacker,
        &job_id,
        json!({
            "fal_cancel_url": cancel_url, "fal_status_url": status_url, "fal_response_url": response_url,
            "storage_path": victim.key, "thumbnail_path": victim.key,
        }),
    )
    .await;

    let (status, answer) = cancel_job(&jwt, &job_id).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "cancelled", "{answer}");
    assert_eq!(job(&job_id).await["status"], "cancelled");
    wait_until("the provider to see the real cancel", WAIT, async || {
        provider.cancelled(&request_id).await
    })
    .await;
    trap.assert_untouched();
    victim.assert_objects_untouched().await;
}

async fn the_reconciler_asks_the_provider_only_at_the_urls_the_functions_stored(
    provider: Provider,
) {
    let trap = Trap::start().await;
    let (attacker, jwt) = user().await;
    let (job_id, request_id) = provider
        .queued(&jwt, "reconcile trap", "#no-webhook #delay-ms=20")
        .await;
    wait_until("the provider to finish the request", WAIT, async || {
        provider.finished(&request_id).await
    })
    .await;
    let (status_url, response_url, cancel_url) = trap_urls(&trap, &request_id);
    plant_metadata(
        attacker,
        &job_id,
        json!({"fal_status_url": status_url, "fal_response_url": response_url, "fal_cancel_url": cancel_url}),
    )
    .await;
    age_job(&job_id, "61 minutes").await;

    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;

    assert_own_result(attacker, &job_id, &job(&job_id).await).await;
    trap.assert_untouched();
}

/// fal only: Replicate's delivery is the whole prediction, it has no `payload: null` form.
#[tokio::test]
async fn a_payload_null_delivery_fetches_the_result_only_from_the_stored_response_url() {
    let provider = Provider::Fal;
    let trap = Trap::start().await;
    let (attacker, jwt) = user().await;
    let (job_id, request_id) =
        queued(&jwt, "payload-null trap", "#payload-null #delay-ms=2000").await;
    let (status_url, response_url, _) = trap_urls(&trap, &request_id);
    plant_metadata(
        attacker,
        &job_id,
        json!({"fal_response_url": response_url, "fal_status_url": status_url}),
    )
    .await;
    assert_not_delivered_yet(provider, &request_id).await;

    assert_own_result(attacker, &job_id, &wait_terminal(&job_id, WAIT).await).await;
    trap.assert_untouched();
}

async fn a_repointed_asset_path_never_gets_the_victims_object_signed(provider: Provider) {
    let victim = Victim::new().await;
    let (attacker, jwt) = user().await;
    let (job_id, answer) = completed_image_on(provider, &jwt, "own image", "").await;
    let (_, own_sha) = result_of(attacker, &job_id).await;
    let handed_out = digest(answer["resultUrl"].as_str().unwrap()).await;
    assert_eq!(
        (handed_out.0, handed_out.2),
        (200, own_sha.clone()),
        "resultUrl"
    );

    client_writes(
        attacker,
        "UPDATE public.workspace_assets SET temp_storage_path = $1, thumbnail_path = $1 WHERE job_id = $2 RETURNING 1",
        &[&victim.key, &id(&job_id)],
    )
    .await;
    let (status, view) = view_job(&jwt, &job_id).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "completed", "{view}");
    let url = (view["result"]["url"].as_str())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| panic!("GET /jobs did not hand out the caller's own result: {view}"));
    let (code, _, sha) = digest(url).await;
    assert!(
        !victim.objects.values().any(|v| *v == sha),
        "GET /jobs handed out a URL of the victim's object"
    );
    assert_eq!(
        (code, sha),
        (200, own_sha),
        "GET /jobs URL is not the caller's own result"
    );
    victim.assert_objects_untouched().await;
}

async fn a_planted_reference_never_becomes_the_thumbnail(provider: Provider) {
    let victim = Victim::new().await;
    let trap = Trap::start().await;
    let (attacker, jwt) = user().await;
    let (job_id, request_id) = provider
        .queued(&jwt, "thumbnail trap", "#delay-ms=2000")
        .await;
    plant_metadata(
        attacker,
        &job_id,
        json!({
            "reference_image_storage": {"bucket": stack_var("WORKSPACE_BUCKET"), "key": victim.key},
            "reference_image_signed_url": trap.url("/reference.png"),
            "input_used": {"image_url": trap.url("/reference.png")},
        }),
    )
    .await;
    assert_not_delivered_yet(provider, &request_id).await;

    let j = wait_terminal(&job_id, WAIT).await;
    assert_eq!(j["status"], "completed", "{j}");
    let thumbnails: Vec<Option<String>> = first_column(
        &db().await,
        "SELECT thumbnail_path FROM public.workspace_assets WHERE job_id = $1",
        &[&id(&job_id)],
    )
    .await;
    // The submission named no reference: the planted one gives the asset no thumbnail at all.
    assert_eq!(thumbnails, vec![None::<String>]);
    victim.assert_no_copy_in(attacker).await;
    trap.assert_untouched();
    victim.assert_objects_untouched().await;
}

async fn post_processing_copies_the_attackers_own_result_whatever_asset_rows_it_planted(
    provider: Provider,
) {
    let victim = Victim::new().await;
    let (attacker, jwt) = user().await;
    let character = character_of(attacker, "Eve").await;
    let metadata = json!({"destination": "character_portrait", "character_id": character, "character_name": "Eve"});
    let (job_id, request_id) = provider
        .queued_with(
            &jwt,
            "portrait",
            "#delay-ms=2000",
            json!({ "metadata": metadata }),
        )
        .await;
    // Before the webhook: asset rows of its own job naming the victim's object, ahead of (-1) and at (0) the
    // result's place.
    for index in [-1i32, 0] {
        client_writes(
            attacker,
            "INSERT INTO public.workspace_assets (user_id, job_id, asset_index, asset_type, temp_storage_path,
                 thumbnail_path, file_size_bytes, mime_type, generation_seed, original_prompt, model_used)
             VALUES ($1, $2, $3, 'image', $4, $4, 1, 'image/gif', 1, 'planted', 'planted') RETURNING 1",
            &[&attacker, &id(&job_id), &index, &victim.key],
        )
        .await;
    }
    assert_not_delivered_yet(provider, &request_id).await;

    let j = wait_terminal(&job_id, WAIT).await;
    assert_eq!(j["status"], "completed", "{j}");
    let (_, own_sha) = result_of(attacker, &job_id).await;
    let (mut library_key, mut described) = (String::new(), Value::Null);
    wait_until("the portrait's library copy", WAIT, async || {
        let row = db()
            .await
            .query_opt(
                "SELECT storage_path, jsonb_build_array(asset_type, mime_type, file_size_bytes)
                   FROM public.user_library WHERE user_id = $1 AND character_id = $2",
                &[&attacker, &character],
            )
            .await
            .unwrap();
        row.map(|r| (library_key, described) = (r.get(0), r.get(1)))
            .is_some()
    })
    .await;
    // The library row describes the result (the queued model's 4096-byte video), not the row planted ahead of it
    // at -1 (a 1-byte GIF), which post-processing read as the job's asset before.
    assert_eq!(described, json!(["video", "video/mp4", 4096]));
    let library = stack_var("LIBRARY_BUCKET");
    assert!(
        library_key.starts_with(&format!("{attacker}/")),
        "{library_key}"
    );
    assert_eq!(object_sha(&library, &library_key).await, Some(own_sha));

    victim.assert_no_copy_in(attacker).await;
    victim.assert_objects_untouched().await;
}

#[tokio::test]
async fn the_ports_tables_are_closed_to_clients() {
    let (_, victim_jwt) = user().await;
    let (victim_job, _) = queued(&victim_jwt, "victim parked", PARKED).await;
    let (attacker, jwt) = user().await;
    let (own_job, _) = queued(&jwt, "attacker parked", PARKED).await;
    let jobs = [id(&victim_job), id(&own_job)];
    let mut before = Vec::new();
    for table in PORT_TABLES {
        before.push(rows_of(table, "job_id", &jobs).await);
    }

    for table in PORT_TABLES {
        for (verb, sql) in [
            (
                "SELECT",
                format!("SELECT 1 FROM public.{table} WHERE job_id = ANY($1)"),
            ),
            (
                "UPDATE",
                format!(
                    "UPDATE public.{table} SET job_id = job_id WHERE job_id = ANY($1) RETURNING 1"
                ),
            ),
            (
                "DELETE",
                format!("DELETE FROM public.{table} WHERE job_id = ANY($1) RETURNING 1"),
            ),
        ] {
            let result = as_client(attacker, &sql, &[&jobs.as_slice()]).await;
            assert_denied_or_nothing(result, &format!("{verb} {table}"));
        }
    }
    let (v, own) = (jobs[0], jobs[1]);
    let inserts: [(&str, &str, Uuid); 7] = [
        (
            "a long-lease claim on the victim's job",
            "INSERT INTO public.job_completion_claims (job_id, holder, lease_expires_at)
             VALUES ($1, gen_random_uuid(), now() + interval '30 days')",
            v,
        ),
        (
            "a post-processing record that suppresses post-processing",
            "INSERT INTO public.job_postprocessing (job_id, step) VALUES ($1, 'character_portrait')",
            own,
        ),
        (
            "a reconcile check that hides the victim's job",
            "INSERT INTO public.job_reconcile_checks (job_id, checked_at) VALUES ($1, now() + interval '100 years')",
            v,
        ),
        (
            "a reconcile check that hides the attacker's job",
            "INSERT INTO public.job_reconcile_checks (job_id, checked_at) VALUES ($1, now() + interval '100 years')",
            own,
        ),
        (
            "a run of a job with no run",
            "INSERT INTO public.job_runs (job_id, user_id, provider_name, model_key, webhook_auth)
             VALUES (gen_random_uuid(), $1, 'fal', 'planted', 'secret')",
            attacker,
        ),
        (
            "the attacker's own run rewritten to the legacy secret and a planted status URL",
            "INSERT INTO public.job_runs (job_id, user_id, provider_name, model_key, webhook_auth)
             VALUES ($1, auth.uid(), 'fal', 'planted', 'secret')
             ON CONFLICT (job_id) DO UPDATE SET webhook_auth = 'secret', status_url = 'http://127.0.0.1:9/'",
            own,
        ),
        (
            "the victim's run taken over",
            "INSERT INTO public.job_runs (job_id, user_id, provider_name, model_key, webhook_auth)
             VALUES ($1, auth.uid(), 'fal', 'planted', 'token')
             ON CONFLICT (job_id) DO UPDATE SET user_id = auth.uid()",
            v,
        ),
    ];
    for (what, sql, param) in inserts {
        assert_denied(as_client(attacker, sql, &[&param]).await, what);
    }

    for (table, rows) in PORT_TABLES.iter().zip(&before) {
        assert_eq!(&rows_of(table, "job_id", &jobs).await, rows, "{table}");
    }
    let runs = rows_of("job_runs", "job_id", &jobs).await;
    assert_eq!(runs.as_array().map(Vec::len), Some(2), "{runs}");
    for run in runs.as_array().unwrap() {
        assert_eq!(run["webhook_auth"], "token", "{run}");
    }
    cancel_all(&victim_jwt, &[victim_job]).await;
    cancel_all(&jwt, &[own_job]).await;
}

#[tokio::test]
async fn server_owned_metadata_keys_in_a_request_are_400_and_write_nothing() {
    let (attacker, jwt) = user().await;
    for key in SERVER_OWNED_METADATA {
        let body = json!({
            "prompt": prompt("owned", ""), "apiModelId": sync_model(),
            "metadata": {key: "http://127.0.0.1:9/planted"},
        });
        let (status, answer) = generate(&jwt, &body).await;
        assert_eq!(status, 400, "{key}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(key)),
            "the error does not name {key}: {answer}"
        );
    }
    assert_eq!(jobs_of_user(attacker).await, 0);
}

#[tokio::test]
async fn post_processing_targets_of_others_or_closed_clips_are_404_and_write_nothing() {
    let (victim, _) = user().await;
    let victim_character = character_of(victim, "Vic").await;
    let victim_scene = scene_of(victim, victim_character).await;
    let (attacker, jwt) = user().await;
    let own_character = character_of(attacker, "Eve").await;
    let completed_clip = storyboard_clip(attacker, "completed").await;
    let pending_clip = storyboard_clip(attacker, "pending").await;
    let victim_rows = (
        rows_of("characters", "id", &[victim_character]).await,
        rows_of("character_scenes", "id", &[victim_scene]).await,
    );

    let cases = [
        (
            "the victim's character",
            json!({"destination": "character_portrait", "character_id": victim_character}),
        ),
        (
            "a scene of the victim's character",
            json!({"destination": "roleplay_scene", "scene_id": victim_scene}),
        ),
        (
            "the victim's scene named with the attacker's character",
            json!({"destination": "character_scene", "scene_id": victim_scene, "character_id": own_character}),
        ),
        (
            "a completed storyboard clip",
            json!({"storyboard_clip_id": completed_clip}),
        ),
    ];
    for (what, metadata) in cases {
        let body = json!({"prompt": prompt("target", ""), "apiModelId": sync_model(), "metadata": metadata});
        let (status, answer) = generate(&jwt, &body).await;
        assert_eq!(status, 404, "{what}: {answer}");
    }
    assert_eq!(jobs_of_user(attacker).await, 0);
    assert_eq!(
        (
            rows_of("characters", "id", &[victim_character]).await,
            rows_of("character_scenes", "id", &[victim_scene]).await,
        ),
        victim_rows
    );
    assert_eq!(
        rows_of("storyboard_clips", "id", &[completed_clip]).await[0]["status"],
        "completed"
    );

    // The attacker's own character and an open clip are accepted.
    let body = json!({
        "prompt": prompt("own target", ""), "apiModelId": sync_model(),
        "metadata": {"destination": "character_portrait", "character_id": own_character, "storyboard_clip_id": pending_clip},
    });
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
}

/// A storyboard clip's job its owner ended through RLS (its status written `cancelled`): the provider's final
/// delivery closes the run and fails the clip, as the API's cancel fails it at once, rather than leaving it
/// `generating` for a result that never comes. The job stays as its owner wrote it, and nothing is stored.
#[tokio::test]
async fn a_clips_job_its_owner_cancelled_through_rls_fails_the_clip_at_its_delivery() {
    let (owner, jwt) = user().await;
    let clip = storyboard_clip(owner, "generating").await;
    let extra = json!({"metadata": {"storyboard_clip_id": clip}});
    let (job_id, request_id) = Provider::Fal
        .queued_with(&jwt, "clip cancelled through rls", "#delay-ms=2000", extra)
        .await;
    client_writes(
        owner,
        "UPDATE public.jobs SET status = 'cancelled' WHERE id = $1 RETURNING 1",
        &[&id(&job_id)],
    )
    .await;
    assert_not_delivered_yet(Provider::Fal, &request_id).await;
    assert_eq!(
        rows_of("storyboard_clips", "id", &[clip]).await[0]["status"],
        "generating"
    );

    let attempts = settled_deliveries(&request_id, 1, WAIT).await;
    assert!(
        attempts.iter().all(|a| a["http_status"] == 200),
        "{attempts:?}"
    );
    assert_eq!(
        rows_of("storyboard_clips", "id", &[clip]).await[0]["status"],
        "failed"
    );
    let closed: bool = db()
        .await
        .query_one(
            "SELECT closed_at IS NOT NULL FROM public.job_runs WHERE job_id = $1",
            &[&id(&job_id)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(closed, "the delivery closes the run");
    let j = job(&job_id).await;
    assert_eq!(j["status"], "cancelled", "{j}");
    assert_eq!(assets_of(&job_id).await.len(), 0);
    assert!(objects_of(owner).await.is_empty());
}

#[tokio::test]
async fn a_token_authenticates_only_its_own_job_and_new_jobs_refuse_the_legacy_secret() {
    let (_, jwt) = user().await;
    let (a, a_request) = queued(&jwt, "token a", PARKED).await;
    let (b, _) = queued(&jwt, "token b", PARKED).await;
    let before = (job(&a).await, job(&b).await);
    let delivery = capture_delivery().await;
    let secret = stack_var("FAL_WEBHOOK_SECRET");
    let (token_a, token_b) = (webhook_token(&a), webhook_token(&b));

    let refused: [(&str, Vec<(&str, &str)>); 4] = [
        (
            "job A with B's token",
            vec![("job_id", a.as_str()), ("token", token_b.as_str())],
        ),
        (
            "job B with A's token",
            vec![("job_id", b.as_str()), ("token", token_a.as_str())],
        ),
        (
            "job A with its token cut short",
            vec![
                ("job_id", a.as_str()),
                ("token", &token_a[..token_a.len() - 1]),
            ],
        ),
        (
            "job A with the legacy secret",
            vec![("job_id", a.as_str()), ("secret", secret.as_str())],
        ),
    ];
    for (what, query) in refused {
        let (status, text) = replay(&query, &delivery).await;
        assert_eq!(status, 401, "{what}: {text}");
    }
    // Control: A's own token passes authentication; the delivery (another request's) is then refused as such.
    let (status, text) = replay(
        &[("job_id", a.as_str()), ("token", token_a.as_str())],
        &delivery,
    )
    .await;
    assert!(
        status != 401 && (400..500).contains(&status),
        "A's own token with another request's delivery: {status} {text}"
    );

    assert_eq!((job(&a).await, job(&b).await), before);
    assert_eq!(asset_count(&a).await + asset_count(&b).await, 0);
    assert_eq!(inspect(&a_request).await["deliveries"], json!([]));
    cancel_all(&jwt, &[a, b]).await;
}

#[tokio::test]
async fn model_key_override_outside_the_active_models_is_400_and_writes_nothing() {
    let trap = Trap::start().await;
    let (attacker, jwt) = user().await;
    let inactive = format!("fal-ai/hostile/inactive-{}", Uuid::new_v4().simple());
    db().await
        .execute(
            "INSERT INTO public.api_models (provider_id, model_key, display_name, modality, tasks, is_active)
             SELECT provider_id, $1, 'hostile inactive', 'image', ARRAY['t2i'], false
               FROM public.api_models WHERE id = $2",
            &[&inactive, &id(&sync_model())],
        )
        .await
        .unwrap();
    let overrides = [
        format!("fal-ai/hostile/unknown-{}", Uuid::new_v4().simple()),
        inactive.clone(),
        trap.url("/fal-ai/planted"),
    ];
    for key in &overrides {
        let body = json!({"prompt": prompt("override", ""), "apiModelId": sync_model(), "model_key_override": key});
        let (status, answer) = generate(&jwt, &body).await;
        assert_eq!(status, 400, "{key}: {answer}");
        assert_eq!(answer["error"], "Invalid model_key_override", "{key}");
    }
    db().await
        .execute(
            "DELETE FROM public.api_models WHERE model_key = $1",
            &[&inactive],
        )
        .await
        .unwrap();
    assert_eq!(jobs_of_user(attacker).await, 0);
    trap.assert_untouched();

    // Control: an active model's key is accepted.
    let body = json!({
        "prompt": prompt("override", ""), "apiModelId": sync_model(),
        "model_key_override": stack_var("SYNC_MODEL_KEY"),
    });
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
}

/// A `chat` model of the provider is no generation model: asked for by id or named as an override, it is 400
/// before anything is written or sent (before, it ran on the provider as an image model, and was billed).
#[tokio::test]
async fn a_chat_model_by_id_or_override_is_400_and_writes_nothing() {
    let trap = Trap::start().await;
    let (attacker, jwt) = user().await;
    let key = format!("fal-ai/hostile/chat-{}", Uuid::new_v4().simple());
    let chat: Uuid = db()
        .await
        .query_one(
            "INSERT INTO public.api_models (provider_id, model_key, display_name, modality, tasks)
             SELECT provider_id, $1, 'hostile chat', 'chat', ARRAY['roleplay']
               FROM public.api_models WHERE id = $2
             RETURNING id",
            &[&key, &id(&sync_model())],
        )
        .await
        .unwrap()
        .get(0);
    let by_id = json!({"prompt": prompt("chat model", ""), "apiModelId": chat});
    let (status, answer) = generate(&jwt, &by_id).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "Specified API model not found or inactive");
    let as_override = json!({
        "prompt": prompt("chat override", ""), "apiModelId": sync_model(), "model_key_override": key,
    });
    let (status, answer) = generate(&jwt, &as_override).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "Invalid model_key_override");
    db().await
        .execute("DELETE FROM public.api_models WHERE id = $1", &[&chat])
        .await
        .unwrap();
    assert_eq!(jobs_of_user(attacker).await, 0);
    trap.assert_untouched();
}

/// An override naming the provider's active video model, asked through an image model's row, runs as the video
/// model it is: on its queue route (not the sync host, which it would hold past the sync bound), with the usage
/// row the video's, at the video's price, not the image row's.
#[tokio::test]
async fn a_model_key_override_is_priced_as_the_model_it_names() {
    let (_, jwt) = user().await;
    let body = json!({
        "prompt": prompt("priced override", ""), "apiModelId": sync_model(),
        "model_key_override": stack_var("ASYNC_MODEL_KEY"),
    });
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["status"], "queued",
        "run on the named model's route: {answer}"
    );
    let usage = db()
        .await
        .query_one(
            "SELECT request_type, cost_usd::float8, endpoint_path FROM public.api_usage_logs WHERE job_id = $1",
            &[&id(answer["jobId"].as_str().unwrap())],
        )
        .await
        .unwrap();
    let (kind, cost, endpoint): (String, f64, String) = (usage.get(0), usage.get(1), usage.get(2));
    assert_eq!(endpoint, format!("/{}", stack_var("ASYNC_MODEL_KEY")));
    assert_eq!(
        (kind.as_str(), cost),
        ("video", gen_pipeline::pricing::DEFAULT_VIDEO)
    );
}

#[tokio::test]
async fn a_client_past_the_open_job_bound_gets_429_with_retry_after() {
    let limit = max_open_jobs();
    let (user_id, jwt) = user().await;
    let mut open = Vec::new();
    for _ in 0..limit {
        open.push(queued(&jwt, "open", PARKED).await.0);
    }
    let body = json!({"prompt": prompt("one too many", PARKED), "apiModelId": async_model()});
    let (status, retry_after, answer) = submit_raw(&jwt, &body).await;
    let jobs_after = jobs_of_user(user_id).await;
    if let Some(extra) = answer["jobId"].as_str() {
        open.push(extra.to_owned());
    }
    cancel_all(&jwt, &open).await;
    assert_eq!(status, 429, "{answer}");
    assert!(
        retry_after.as_deref().is_some_and(|v| !v.trim().is_empty()),
        "Retry-After: {retry_after:?}"
    );
    assert_eq!(jobs_after, limit as i64);

    // Cancelled jobs no longer count.
    let (again, _) = queued(&jwt, "open again", PARKED).await;
    cancel_all(&jwt, &[again]).await;
}

#[tokio::test]
async fn clients_cannot_write_usage_logs_or_others_assets() {
    let (victim, victim_jwt) = user().await;
    let (victim_job, _) = completed_image(&victim_jwt, "victim usage", "").await;
    let (attacker, jwt) = user().await;
    let (own_job, _) = completed_image(&jwt, "own usage", "").await;
    let (v, own) = (id(&victim_job), id(&own_job));
    let users = [victim, attacker];
    let before = (
        rows_of("api_usage_logs", "user_id", &users).await,
        rows_of("workspace_assets", "user_id", &users).await,
    );
    let provider: Uuid = db()
        .await
        .query_one(
            "SELECT provider_id FROM public.api_models WHERE id = $1",
            &[&id(&sync_model())],
        )
        .await
        .unwrap()
        .get(0);

    let usage_insert =
        "INSERT INTO public.api_usage_logs (provider_id, user_id, request_type, response_time_ms,
                            cost_usd, job_id) VALUES ($1, $2, 'image', 1, 0, $3)";
    for (what, owner, job_id) in [
        ("a usage row of the victim's", victim, None),
        ("a usage row of one's own", attacker, None),
        ("a second usage row of one's own job", attacker, Some(own)),
    ] {
        let result = as_client(attacker, usage_insert, &[&provider, &owner, &job_id]).await;
        assert_denied(result, what);
    }
    for (what, sql) in [
        (
            "UPDATE own usage",
            "UPDATE public.api_usage_logs SET cost_usd = 0, response_status = 500 WHERE job_id = $1 AND $2::uuid IS NOT NULL RETURNING 1",
        ),
        (
            "UPDATE the victim's usage",
            "UPDATE public.api_usage_logs SET cost_usd = 0 WHERE job_id = $2 AND $1::uuid IS NOT NULL RETURNING 1",
        ),
        (
            "DELETE usage",
            "DELETE FROM public.api_usage_logs WHERE job_id IN ($1, $2) RETURNING 1",
        ),
        (
            "SELECT the victim's usage",
            "SELECT 1 FROM public.api_usage_logs WHERE job_id = $2 AND $1::uuid IS NOT NULL",
        ),
        (
            "UPDATE the victim's assets",
            "UPDATE public.workspace_assets SET temp_storage_path = 'x' WHERE job_id = $2 AND $1::uuid IS NOT NULL RETURNING 1",
        ),
        (
            "DELETE the victim's assets",
            "DELETE FROM public.workspace_assets WHERE job_id = $2 AND $1::uuid IS NOT NULL RETURNING 1",
        ),
    ] {
        assert_denied_or_nothing(as_client(attacker, sql, &[&own, &v]).await, what);
    }
    assert_denied(
        as_client(
            attacker,
            "INSERT INTO public.workspace_assets (user_id, job_id, asset_index, asset_type, temp_storage_path,
                 file_size_bytes, mime_type, generation_seed, original_prompt, model_used)
             VALUES ($1, $2, 1, 'image', 'planted', 1, 'image/png', 1, 'planted', 'planted')",
            &[&victim, &v],
        )
        .await,
        "an asset row of the victim's",
    );
    // Users read their own usage.
    let own_usage = as_client(
        attacker,
        "SELECT 1 FROM public.api_usage_logs WHERE job_id = $1",
        &[&own],
    )
    .await
    .unwrap();
    assert_eq!(own_usage.len(), 1);

    assert_eq!(
        (
            rows_of("api_usage_logs", "user_id", &users).await,
            rows_of("workspace_assets", "user_id", &users).await,
        ),
        before
    );
}

async fn a_client_cancel_during_a_delivery_leaves_the_job_cancelled_with_nothing_stored(
    provider: Provider,
) {
    let (attacker, jwt) = user().await;
    let (job_id, request_id) = provider
        .queued(&jwt, "cancel race", "#delay-ms=100 #media-slow-ms=2500")
        .await;
    wait_until("the delivery to fetch the result", WAIT, async || {
        provider.request(&request_id).await["media_fetches"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    })
    .await;
    client_writes(
        attacker,
        "UPDATE public.jobs SET status = 'cancelled' WHERE id = $1 AND status IN ('queued', 'processing') RETURNING 1",
        &[&id(&job_id)],
    )
    .await;
    wait_until(
        "the provider's delivery to be answered 2xx",
        WAIT,
        async || {
            provider.request(&request_id).await["deliveries"]
                .as_array()
                .is_some_and(|ds| {
                    ds.iter().any(|d| {
                        d["http_status"]
                            .as_u64()
                            .is_some_and(|s| (200..300).contains(&s))
                    })
                })
        },
    )
    .await;

    wait_until("the stored result to be removed", WAIT, async || {
        objects_of_job(&attacker.to_string(), &job_id)
            .await
            .is_empty()
    })
    .await;
    let j = job(&job_id).await;
    assert_eq!(j["status"], "cancelled", "{j}");
    assert_eq!(asset_count(&job_id).await, 0);
    // The provider is done with it: it no longer counts against the owner's open jobs.
    let closed = "SELECT count(*) FROM public.job_runs WHERE job_id = $1 AND closed_at IS NOT NULL";
    assert_eq!(count(closed, &job_id).await, 1);
}

/// The client deletes its queued job (its run goes with it) and writes another row under the same id, with its own
/// metadata and times, before the provider delivers. The delivery's token was made for the deleted job: it finds
/// no job (404), and the row the client wrote is left as written, with nothing stored for it.
async fn a_job_written_again_under_a_deleted_jobs_id_is_not_the_deliverys_job(provider: Provider) {
    let (attacker, jwt) = user().await;
    let (job_id, request_id) = provider
        .queued(&jwt, "written again", "#delay-ms=2000")
        .await;
    write_again(
        attacker,
        &job_id,
        json!({"estimated_cost": 9999, "destination": "character_portrait"}),
    )
    .await;
    assert_not_delivered_yet(provider, &request_id).await;
    let written = job(&job_id).await;
    let usage = usage_count(&job_id).await;

    let answered = provider.answered_deliveries(&request_id, 1, WAIT).await;
    assert_eq!(answered[0]["http_status"], 404, "{answered:?}");
    assert_eq!(
        job(&job_id).await,
        written,
        "the row the client wrote was changed"
    );
    assert_eq!(
        usage_count(&job_id).await,
        usage,
        "a usage row was written for it"
    );
    assert_eq!(asset_count(&job_id).await, 0);
    let objects = objects_of_job(&attacker.to_string(), &job_id).await;
    assert!(objects.is_empty(), "{objects:?}");
}

/// The same while the delivery is storing the result: the job was read, with its run, before the client deleted it
/// and wrote another row under its id. The completing transaction finds a row without a run and leaves it as
/// written (before, it completed it with the deleted job's result); nothing is stored for it.
async fn a_job_written_again_during_its_deliverys_transfer_is_left_as_written(provider: Provider) {
    let (attacker, jwt) = user().await;
    let directives = format!(
        "#media-bytes={} #media-rate={} #media-type=video/mp4",
        8 << 20,
        4 << 20
    );
    let (job_id, request_id) = provider
        .queued(&jwt, "written again mid-transfer", &directives)
        .await;
    let claims = "SELECT count(*) FROM public.job_completion_claims WHERE job_id = $1";
    wait_until("the delivery's claim", WAIT, async || {
        count(claims, &job_id).await == 1
    })
    .await;
    write_again(attacker, &job_id, json!({"written": "again"})).await;
    let written = job(&job_id).await;
    provider.answered_deliveries(&request_id, 1, WAIT).await;
    assert_eq!(
        job(&job_id).await,
        written,
        "the row the client wrote was changed"
    );
    assert_eq!(asset_count(&job_id).await, 0);
    let objects = objects_of_job(&attacker.to_string(), &job_id).await;
    assert!(objects.is_empty(), "{objects:?}");
}

/// The client deletes its job (its run goes with it) and writes another row under the same id, with its own
/// metadata and times.
async fn write_again(user: Uuid, job_id: &str, metadata: Value) {
    client_writes(
        user,
        "DELETE FROM public.jobs WHERE id = $1 RETURNING 1",
        &[&id(job_id)],
    )
    .await;
    client_writes(
        user,
        "INSERT INTO public.jobs (id, user_id, job_type, status, format, started_at, metadata)
         VALUES ($1, $2, 'video_fast', 'queued', 'video', now() - interval '1 day', $3::jsonb)
         RETURNING 1",
        &[&id(job_id), &user, &metadata],
    )
    .await;
}

/// Values an owner may write that Postgres takes and Rust cannot decode: a JSON number beyond `f64` in the job's
/// metadata and an `infinity` timestamp. Neither the delivery that completes the job nor a reconciler pass that
/// reads it stumbles on them (each read panicked before, and a panicking pass skipped everyone's backlog).
#[tokio::test]
async fn a_job_whose_owner_wrote_undecodable_values_is_still_completed() {
    const POISON: &str = "UPDATE public.jobs SET metadata = metadata || '{\"x\": 1e400}'::jsonb,
                                                 started_at = 'infinity'
                           WHERE id = $1 RETURNING 1";
    let (attacker, jwt) = user().await;
    let status_of = async |job_id: &str| -> String {
        let sql = "SELECT status FROM public.jobs WHERE id = $1";
        let row = db().await.query_one(sql, &[&id(job_id)]).await;
        row.unwrap().get(0)
    };

    // Completed by its delivery.
    let (delivered, request_id) = queued(&jwt, "undecodable delivered", "#delay-ms=2000").await;
    client_writes(attacker, POISON, &[&id(&delivered)]).await;
    assert_not_delivered_yet(Provider::Fal, &request_id).await;
    wait_until("the delivery to complete the job", WAIT, async || {
        status_of(&delivered).await == "completed"
    })
    .await;
    assert_eq!(assets_of(&delivered).await.len(), 1);

    // Completed by the reconciler, its delivery lost.
    let (lost, request_id) = queued(&jwt, "undecodable lost", "#no-webhook #delay-ms=20").await;
    wait_until("the provider to finish the request", WAIT, async || {
        Provider::Fal.finished(&request_id).await
    })
    .await;
    age_job(&lost, "61 minutes").await;
    client_writes(attacker, POISON, &[&id(&lost)]).await;
    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;
    assert_eq!(status_of(&lost).await, "completed");
    assert_eq!(assets_of(&lost).await.len(), 1);
}

//! fal-image's request fields: wrong JSON types, missing and unknown values, references to others' objects, and
//! hostile text that must be stored as data.

use super::*;

#[tokio::test]
async fn fal_image_fields_of_the_wrong_type_or_value_are_400() {
    let world = World::new().await;
    let v = &world.victim;
    let sync = sync_model();
    let asyn = async_model();
    let mut rows: Vec<Row> = Vec::new();

    // --- fal-image: every field with the wrong JSON type; missing and unknown values --------------------
    for (name, body) in [
        (
            "prompt as number",
            json!({"prompt": 42, "apiModelId": sync}),
        ),
        (
            "prompt as array",
            json!({"prompt": ["a"], "apiModelId": sync}),
        ),
        (
            "prompt as object",
            json!({"prompt": {"a": 1}, "apiModelId": sync}),
        ),
        (
            "prompt as bool",
            json!({"prompt": true, "apiModelId": sync}),
        ),
        (
            "apiModelId as number",
            json!({"prompt": "x", "apiModelId": 42}),
        ),
        (
            "apiModelId as array",
            json!({"prompt": "x", "apiModelId": [sync]}),
        ),
        (
            "apiModelId as object",
            json!({"prompt": "x", "apiModelId": {"id": sync}}),
        ),
        (
            "model_key_override as number",
            json!({"prompt": "x", "apiModelId": sync, "model_key_override": 1}),
        ),
        (
            "modality as number",
            json!({"prompt": "x", "apiModelId": sync, "modality": 1}),
        ),
        (
            "quality as object",
            json!({"prompt": "x", "apiModelId": sync, "quality": {"a": 1}}),
        ),
        (
            "quality as number",
            json!({"prompt": "x", "apiModelId": sync, "quality": 5}),
        ),
        (
            "job_type as array",
            json!({"prompt": "x", "apiModelId": sync, "job_type": ["image_fast"]}),
        ),
        (
            "jobType as object",
            json!({"prompt": "x", "apiModelId": sync, "jobType": {}}),
        ),
        (
            "input as string",
            json!({"prompt": "x", "apiModelId": sync, "input": "image_url=x"}),
        ),
        (
            "input as array",
            json!({"prompt": "x", "apiModelId": sync, "input": [1]}),
        ),
        (
            "input as number",
            json!({"prompt": "x", "apiModelId": sync, "input": 3}),
        ),
        (
            "metadata as array",
            json!({"prompt": "x", "apiModelId": sync, "metadata": []}),
        ),
        (
            "metadata as string",
            json!({"prompt": "x", "apiModelId": sync, "metadata": "x"}),
        ),
        (
            "input.image_url as number",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": 7}}),
        ),
        (
            "input.image_url as object",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": {"url": 1}}}),
        ),
        ("no prompt", json!({"apiModelId": sync})),
        ("empty prompt", json!({"prompt": "", "apiModelId": sync})),
        (
            "blank prompt",
            json!({"prompt": " \t\n ", "apiModelId": sync}),
        ),
        ("empty object", json!({})),
        // Postgres text and jsonb cannot hold U+0000: a permanent client error, not "temporarily unavailable".
        (
            "NUL character in the prompt",
            json!({"prompt": "a\u{0}b", "apiModelId": sync}),
        ),
        (
            "NUL character in a metadata value",
            json!({"prompt": "x", "apiModelId": sync, "metadata": {"k": "a\u{0}b"}}),
        ),
        (
            "NUL character in a metadata key",
            json!({"prompt": "x", "apiModelId": sync, "metadata": {"k\u{0}": "v"}}),
        ),
        (
            "unknown model id",
            json!({"prompt": "x", "apiModelId": Uuid::new_v4()}),
        ),
        (
            "model id not a uuid",
            json!({"prompt": "x", "apiModelId": "not-a-uuid"}),
        ),
        (
            "model id: SQL injection (DROP)",
            json!({"prompt": "x", "apiModelId": DROP}),
        ),
        (
            "model id: SQL injection (OR true)",
            json!({"prompt": "x", "apiModelId": OR_TRUE}),
        ),
        (
            "model id: uuid followed by SQL",
            json!({"prompt": "x", "apiModelId": format!("{sync}{OR_TRUE}")}),
        ),
        (
            "input.image_url: SQL injection",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": DROP}}),
        ),
        (
            "input.image_url ../../etc/passwd",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": "../../etc/passwd"}}),
        ),
        (
            "input.image_url /etc/passwd",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": "/etc/passwd"}}),
        ),
        (
            "input.image_url file:///etc/passwd",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": "file:///etc/passwd"}}),
        ),
        (
            "input.image_url: another user's object",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": format!("workspace-temp/{}", v.completed_key)}}),
        ),
        (
            "input.image_url: another user's object, bucket-less",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": v.completed_key}}),
        ),
        (
            "input.image_url: another user's library object",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": format!("user-library/{}/x.png", v.id)}}),
        ),
        (
            "input.image_url: another user's object as a Supabase signed URL",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url":
                format!("https://project.supabase.co/storage/v1/object/sign/workspace-temp/{}?token=t", v.completed_key)}}),
        ),
        (
            "input.image_urls[]: another user's object",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_urls": [format!("workspace-temp/{}", v.completed_key)]}}),
        ),
        (
            "input.video (video model): another user's object",
            json!({"prompt": "x", "apiModelId": asyn, "input": {"video": format!("workspace-temp/{}/x.mp4", v.id)}}),
        ),
    ] {
        rows.push(row(name, post_json(Auth::Caller), body.to_string(), 400).await);
    }
    // A path under the caller's own prefix, so the row's body names its caller.
    let name = "input.image_url: climbing out of the caller's own prefix";
    let mut climbing = row(name, post_json(Auth::Caller), Vec::new(), 400).await;
    let path = format!(
        "workspace-temp/{}/../{}",
        climbing.caller.0, v.completed_key
    );
    climbing.body = json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": path}})
        .to_string()
        .into_bytes();
    rows.push(climbing);
    // A model key that is not a fal model id is the caller's error (contract: 400, never a bare 500).
    for (name, key) in [
        ("model_key_override ../../etc/passwd", "../../etc/passwd"),
        ("model_key_override: SQL injection", DROP),
        (
            "model_key_override: an absolute URL",
            "https://evil.example/x",
        ),
    ] {
        let body = json!({"prompt": "x", "apiModelId": sync, "model_key_override": key});
        rows.push(row(name, post_json(Auth::Caller), body.to_string(), 400).await);
    }

    world.run("fal-image fields", rows).await;
}

#[tokio::test]
async fn hostile_text_in_free_text_fields_is_stored_verbatim() {
    let world = World::new().await;
    let sync = sync_model();
    let mut rows: Vec<Row> = Vec::new();

    // --- fal-image: hostile text in every free-text field is stored as data ------------------------------
    for injection in [DROP, OR_TRUE] {
        let text = format!("{injection} {}", Uuid::new_v4().simple());
        let metadata = [
            ("destination", injection),
            ("character_name", injection),
            (injection, injection),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::from(v)))
        .collect();
        let body = json!({
            "prompt": text, "apiModelId": sync, "quality": injection, "modality": injection,
            "job_type": injection, "jobType": injection,
            "input": {"negative_prompt": injection, "seed": injection},
            "metadata": Value::Object(metadata),
        });
        let name = format!("SQL injection ({injection}) in every free-text field");
        let row = row(name, post_json(Auth::Caller), body.to_string(), 200).await;
        rows.push(row.expecting(Effect::Verbatim(vec![
            ("/original_prompt", text.clone()),
            ("/metadata/destination", injection.to_owned()),
            ("/metadata/character_name", injection.to_owned()),
        ])));
    }

    world.run("hostile text", rows).await;
}

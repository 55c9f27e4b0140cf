//! fal-image's request body: not JSON, not one object, too big, too deep, or not sent as JSON.

use super::*;

#[tokio::test]
async fn fal_image_bodies_that_are_not_one_small_json_object_are_row() {
    let world = World::new().await;
    let sync = sync_model();
    let mut rows: Vec<Row> = Vec::new();

    // --- fal-image: bodies that are not JSON, not an object, too big or too deep -------------------------
    for (name, body) in [
        (
            "truncated JSON",
            format!("{{\"prompt\": \"x\", \"apiModelId\": \"{sync}"),
        ),
        ("truncated after a key", "{\"prompt\": ".to_owned()),
        ("a lone brace", "{".to_owned()),
        ("empty body", String::new()),
        (
            "trailing garbage after the object",
            format!("{} xyz", valid()),
        ),
        ("two objects", format!("{}{}", valid(), valid())),
        ("an array body", "[1,2,3]".to_owned()),
        ("a string body", "\"x\"".to_owned()),
        ("a null body", "null".to_owned()),
        ("a number body", "42".to_owned()),
        ("single-quoted JSON", "{'prompt': 'x'}".to_owned()),
        (
            "a lone surrogate escape",
            format!("{{\"prompt\":\"\\ud800\",\"apiModelId\":\"{sync}\"}}"),
        ),
        ("10 000 unclosed [", "[".repeat(10_000)),
        (
            "10 000 nested arrays",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        ),
        (
            "10 000 nested arrays inside input",
            format!(
                "{{\"prompt\":\"x\",\"apiModelId\":\"{sync}\",\"input\":{{\"a\":{}{}}}}}",
                "[".repeat(10_000),
                "]".repeat(10_000)
            ),
        ),
        (
            "200 nested objects inside metadata",
            format!(
                "{{\"prompt\":\"x\",\"apiModelId\":\"{sync}\",\"metadata\":{}1{}}}",
                "{\"a\":".repeat(200),
                "}".repeat(200)
            ),
        ),
    ] {
        rows.push(row(name, post_json(Auth::Caller), body, 400).await);
    }
    let unknown_model = Uuid::new_v4().to_string();
    for (name, body, status) in [
        ("body 1 byte over 1 MiB", pad(MIB + 1, &sync), 413),
        ("body of 5 MiB", pad(5 * MIB, &sync), 413),
        (
            "body of exactly 1 MiB (accepted size) naming an unknown model",
            pad(MIB, &unknown_model),
            400,
        ),
    ] {
        rows.push(row(name, post_json(Auth::Caller), body, status).await);
    }

    // --- fal-image: content types and tokens ------------------------------------------------------------
    for (name, ct) in [
        ("text/plain", Some("text/plain")),
        ("no content type", None),
        ("form-encoded", Some("application/x-www-form-urlencoded")),
        ("multipart", Some("multipart/form-data; boundary=x")),
        (
            "application/json-patch+json",
            Some("application/json-patch+json"),
        ),
    ] {
        let target = Target::Api {
            method: Method::POST,
            path: "/fal-image".into(),
            auth: Auth::Caller,
            content_type: ct,
        };
        let name = format!("content type: {name}");
        rows.push(row(name, target, valid().to_string(), 415).await);
    }

    world.run("fal-image bodies", rows).await;
}

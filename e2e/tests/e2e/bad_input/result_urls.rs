//! Result URLs on unlisted hosts or schemes, from the sync run and from the webhook: the job fails and nothing
//! is fetched.

use super::*;

#[tokio::test]
async fn result_urls_on_unlisted_hosts_or_schemes_fail_their_job_unfetched() {
    let world = World::new().await;
    let trap = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let emulator = url::Url::parse(&stack_var("FAL_EMULATOR_URL")).unwrap();
    let emu_port = emulator.port().unwrap();
    let sync = sync_model();
    let asyn = async_model();
    let mut rows: Vec<Row> = Vec::new();

    // --- Result URLs on unlisted hosts or schemes: the job fails, nothing is fetched ---------------------
    let sync_urls = vec![
        (
            "ftp:// result URL",
            format!("ftp://127.0.0.3:{trap_port}/x.png"),
        ),
        (
            "file:///etc/passwd result URL",
            "file:///etc/passwd".to_owned(),
        ),
        (
            "gopher:// result URL",
            format!("gopher://127.0.0.3:{trap_port}/_x"),
        ),
        (
            "http:// result URL on an unlisted loopback host",
            format!("http://127.0.0.3:{trap_port}/x.png"),
        ),
        (
            "result URL on the allowed host with credentials",
            format!("http://user:pw@127.0.0.1:{emu_port}/x.png"),
        ),
        (
            "result URL on the allowed port under another name",
            format!("http://localhost:{emu_port}/x.png"),
        ),
    ];
    let webhook_urls = vec![
        (
            "file:///etc/passwd result URL",
            "file:///etc/passwd".to_owned(),
        ),
        (
            "gopher:// result URL",
            format!("gopher://127.0.0.3:{trap_port}/_x"),
        ),
        (
            "http:// result URL on an unlisted loopback host",
            format!("http://127.0.0.3:{trap_port}/x.mp4"),
        ),
    ];
    for (route, model, status, urls) in [
        ("sync", &sync, 502, sync_urls),
        ("webhook", &asyn, 200, webhook_urls),
    ] {
        for (name, url) in urls {
            let body = json!({"prompt": prompt("ssrf", &format!("#media-url={url}")), "apiModelId": model});
            let name = format!("{route}: {name}");
            let target = post_json(Auth::Caller);
            let row = row(name, target, body.to_string(), status).await;
            rows.push(row.expecting(Effect::FailedJob));
        }
    }

    world.run("result URLs", rows).await;
    // No result URL of a refused host was ever contacted.
    match trap.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the trap listener on 127.0.0.3 was contacted: {other:?}"),
    }
}

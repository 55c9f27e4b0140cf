//! After the suite: no secret value of the stack may appear in any of its log files (the webhook URL carries
//! the webhook secret in its query string, so anything that logs URLs would leak it). The values come from
//! `stack.env` and from every version of the app secret the functions read (a test may rotate it).

use std::path::Path;

use crate::stack::StackEnv;

/// Keys of the app secret (and of `stack.env`) whose whole value is secret.
const SECRET_KEYS: [&str; 7] = [
    "FAL_KEY",
    "FAL_WEBHOOK_SECRET",
    "FAL_WEBHOOK_SECRET_PREVIOUS",
    "SUPABASE_JWT_SECRET",
    "STORAGE_SIGNING_KEY",
    "REPLICATE_API_TOKEN",
    "REPLICATE_WEBHOOK_SIGNING_SECRET",
];
/// Keys holding a Postgres URL (or key=value string) whose password is secret.
const DATABASE_URL_KEYS: [&str; 2] = ["DATABASE_URL", "POOLER_DATABASE_URL"];
/// Shorter values are not searched: they would match by chance.
const MIN_LEN: usize = 8;

/// The secret values to look for, named: from `env` and from each JSON value the app secret has held.
pub fn secret_values(env: &StackEnv, secret_jsons: &[String]) -> Vec<(&'static str, String)> {
    let mut sources: Vec<serde_json::Map<String, serde_json::Value>> = vec![
        env.iter()
            .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v)))
            .collect(),
    ];
    // A value that is not a JSON object has no key to search for (and no function could have read it).
    sources.extend(
        secret_jsons
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok()),
    );
    let mut values: Vec<(&'static str, String)> = Vec::new();
    let mut add = |name: &'static str, value: &str| {
        if value.len() >= MIN_LEN && !values.iter().any(|(_, v)| v == value) {
            values.push((name, value.to_owned()));
        }
    };
    for source in &sources {
        let get = |k: &str| source.get(k).and_then(serde_json::Value::as_str);
        for name in SECRET_KEYS {
            if let Some(v) = get(name) {
                add(name, v);
            }
        }
        for name in DATABASE_URL_KEYS {
            for password in get(name).map(database_passwords).unwrap_or_default() {
                add("database password", &password);
            }
        }
    }
    values
}

/// The password of a Postgres connection string (URL or key=value), decoded, and as written in a URL when that
/// differs (percent-encoded).
pub fn database_passwords(conn: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = gen_pipeline::db::target::parse(conn)
        .ok()
        .and_then(|(c, _)| {
            c.get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned())
        })
    {
        out.push(p);
    }
    if let Some(p) = url::Url::parse(conn)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
        .filter(|p| !out.contains(p))
    {
        out.push(p);
    }
    out
}

/// The names of the secrets found, per log file. Values are matched raw and percent-encoded.
pub fn scan(
    secrets: &[(&'static str, String)],
    logs: &Path,
) -> anyhow::Result<Vec<(String, &'static str)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(logs)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&path)?).into_owned();
        for (name, value) in secrets {
            let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
            if text.contains(value.as_str()) || text.contains(&encoded) {
                found.push((path.display().to_string(), *name));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_password_comes_out_of_urls_and_key_value_strings() {
        assert_eq!(
            database_passwords("postgres://app:s3cret-pass@127.0.0.1:5432/app"),
            ["s3cret-pass"]
        );
        // Percent-encoded in the URL: searched decoded and as written.
        assert_eq!(
            database_passwords(
                "postgresql://app:p%40ss%2Fword@db.example:6543/app?sslmode=require"
            ),
            ["p@ss/word", "p%40ss%2Fword"]
        );
        assert_eq!(
            database_passwords("host=127.0.0.1 user=app password='long pass' dbname=app"),
            ["long pass"]
        );
        assert!(database_passwords("postgres://app@127.0.0.1/app").is_empty());
        assert!(database_passwords("not a connection string").is_empty());
    }

    #[test]
    fn every_secret_of_the_env_and_of_each_secret_version_is_searched() {
        let mut env = StackEnv::default();
        env.set("FAL_KEY", "local-fal-key-0123456789");
        env.set("FAL_WEBHOOK_SECRET", "hook-secret-current");
        env.set("SUPABASE_JWT_SECRET", "jwt-secret-value");
        env.set(
            "DATABASE_URL",
            "postgres://postgres:direct-password@127.0.0.1:1/app",
        );
        env.set("AWS_SECRET_ACCESS_KEY", "test");
        let rotated = serde_json::json!({
            "FAL_KEY": "local-fal-key-0123456789",
            "FAL_WEBHOOK_SECRET": "hook-secret-rotated",
            "FAL_WEBHOOK_SECRET_PREVIOUS": "hook-secret-current",
            "FAL_WEBHOOK_SECRET_ROTATED_AT": "2030-01-01T00:00:00Z",
            "DATABASE_URL": "postgres://app:pooler-password@127.0.0.1:2/app",
            "SUPABASE_JWT_SECRET": "short",
        })
        .to_string();
        let values = secret_values(&env, &[rotated, "not json".into()]);
        assert_eq!(
            values,
            [
                ("FAL_KEY", "local-fal-key-0123456789".to_owned()),
                ("FAL_WEBHOOK_SECRET", "hook-secret-current".to_owned()),
                ("SUPABASE_JWT_SECRET", "jwt-secret-value".to_owned()),
                ("database password", "direct-password".to_owned()),
                ("FAL_WEBHOOK_SECRET", "hook-secret-rotated".to_owned()),
                ("database password", "pooler-password".to_owned()),
            ]
        );
    }

    #[test]
    fn a_secret_in_a_log_is_found_raw_or_percent_encoded() {
        let dir = std::env::temp_dir().join(format!("secret-scan-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("clean.log"), "nothing to see").unwrap();
        std::fs::write(
            dir.join("leak.log"),
            "GET /?fal_webhook=http%3A%2F%2Fh%2F%3Fsecret%3Dp%40ss%2Fword HTTP/1.1",
        )
        .unwrap();
        let found = scan(&[("database password", "p@ss/word".to_owned())], &dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].0.ends_with("leak.log"));
    }
}

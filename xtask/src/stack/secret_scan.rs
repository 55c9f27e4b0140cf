//! After the suite: no secret value of the stack may appear in any of its log files (the webhook URL carries
//! the webhook secret in its query string, so anything that logs URLs would leak it).

use std::path::Path;

use super::envfile::StackEnv;

/// The names of the secrets found, per log file. Values are matched raw and percent-encoded.
pub fn scan(env: &StackEnv, logs: &Path) -> anyhow::Result<Vec<(String, &'static str)>> {
    let mut secrets: Vec<(&'static str, String)> = Vec::new();
    for name in ["FAL_WEBHOOK_SECRET", "FAL_KEY", "SUPABASE_JWT_SECRET"] {
        if let Some(v) = env.get(name).filter(|v| v.len() >= 8) {
            secrets.push((name, v.to_owned()));
        }
    }
    if let Some(password) = env
        .get("DATABASE_URL")
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.password().map(str::to_owned))
        .filter(|p| p.len() >= 8)
    {
        secrets.push(("database password", password));
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(logs)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&path)?).into_owned();
        for (name, value) in &secrets {
            let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
            if text.contains(value.as_str()) || text.contains(&encoded) {
                found.push((path.display().to_string(), *name));
            }
        }
    }
    Ok(found)
}

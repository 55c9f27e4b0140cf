//! Whose an object key is. Clients can rewrite asset paths and job metadata, so every key the functions sign,
//! copy or delete is checked here first: it must be the job owner's (`<user_id>/…`), a plain relative path.

use uuid::Uuid;

/// A key under the user's own prefix, with no empty, `.` or `..` segment and no control character or backslash
/// (S3 treats those literally, but another store or a copy into a path-like name might not).
pub fn is_owned_key(user_id: Uuid, key: &str) -> bool {
    let Some(rest) = key.strip_prefix(&format!("{user_id}/")) else {
        return false;
    };
    !rest.is_empty()
        && key.len() <= 1024
        && !key.chars().any(|c| c.is_control() || c == '\\')
        && rest
            .split('/')
            .all(|segment| !matches!(segment, "" | "." | ".."))
}

/// The key when it is the user's ([`is_owned_key`]); refusals are logged without the key.
pub fn owned_key(user_id: Uuid, key: &str) -> Option<&str> {
    if is_owned_key(user_id, key) {
        Some(key)
    } else {
        tracing::warn!(%user_id, "object key outside the owner's prefix refused");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_keys_under_the_owner_prefix_are_owned() {
        let me = Uuid::new_v4();
        let other = Uuid::new_v4();
        for ok in [
            format!("{me}/job_0.png"),
            format!("{me}/scenes/s_j.webp"),
            format!("{me}/a.b..c"),
        ] {
            assert!(is_owned_key(me, &ok), "{ok}");
        }
        for bad in [
            format!("{other}/job_0.png"),
            format!("{me}"),
            format!("{me}/"),
            format!("/{me}/x.png"),
            format!("{me}/../{other}/x.png"),
            format!("{me}/./x.png"),
            format!("{me}//x.png"),
            format!("{me}/x\\..\\y"),
            format!("{me}/x\n.png"),
            format!("{me}x/y.png"),
            format!("{}/x.png", me.to_string().to_uppercase()),
            format!("{me}/{}", "a".repeat(1024)),
        ] {
            assert!(!is_owned_key(me, &bad), "{bad}");
        }
    }
}

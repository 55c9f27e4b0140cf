//! The functions' IAM roles in `template.yaml` match the AWS calls the code makes: every AWS SDK call in the
//! production code (shared/src, functions/*/src) is mapped to the IAM action it needs, and each function's role must
//! grant those actions (on object or bucket ARNs as the action requires) and no other S3 or Secrets Manager
//! action. Reads source text and the template only: no stack needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What an IAM action must be granted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum On {
    /// Objects: a `…/*` ARN.
    Objects,
    /// The bucket itself: an ARN without a key part.
    Bucket,
    /// Whatever the statement names (e.g. the app secret).
    Any,
}

/// The IAM actions an SDK operation needs. `None`: unknown here, so the test fails until it is added.
fn iam_actions(operation: &str) -> Option<Vec<(&'static str, On)>> {
    use On::*;
    Some(match operation {
        // Multipart uploads are authorised as s3:PutObject, part by part.
        "put_object" | "create_multipart_upload" | "upload_part" | "complete_multipart_upload" => {
            vec![("s3:PutObject", Objects)]
        }
        "abort_multipart_upload" => vec![("s3:AbortMultipartUpload", Objects)],
        // Presigned GETs are signed with the role's credentials: the reader gets what the role may get.
        "get_object" => vec![("s3:GetObject", Objects)],
        // A HEAD of a missing key answers 404 only to a role that may list the bucket (403 otherwise), and the code
        // takes a 403 for a refusal, not an absent object.
        "head_object" => vec![("s3:GetObject", Objects), ("s3:ListBucket", Bucket)],
        // Read on the source, write on the target.
        "copy_object" | "upload_part_copy" => {
            vec![("s3:GetObject", Objects), ("s3:PutObject", Objects)]
        }
        "delete_object" | "delete_objects" => vec![("s3:DeleteObject", Objects)],
        "list_objects_v2" | "list_objects" => vec![("s3:ListBucket", Bucket)],
        "list_multipart_uploads" => vec![("s3:ListBucketMultipartUploads", Bucket)],
        "list_parts" => vec![("s3:ListMultipartUploadParts", Objects)],
        "get_secret_value" => vec![("secretsmanager:GetSecretValue", Any)],
        "describe_secret" => vec![("secretsmanager:DescribeSecret", Any)],
        _ => return None,
    })
}

/// Every operation of the SDK clients the workspace links (aws-sdk-s3 1.157, aws-sdk-secretsmanager 1.125: one
/// fluent method per `src/operation/*` module). A call `.op()` of one of these is an AWS call.
const SDK_OPERATIONS: &[&str] = &[
    // aws-sdk-s3
    "abort_multipart_upload",
    "complete_multipart_upload",
    "copy_object",
    "create_bucket",
    "create_bucket_metadata_configuration",
    "create_bucket_metadata_table_configuration",
    "create_multipart_upload",
    "create_session",
    "delete_bucket",
    "delete_bucket_analytics_configuration",
    "delete_bucket_cors",
    "delete_bucket_encryption",
    "delete_bucket_intelligent_tiering_configuration",
    "delete_bucket_inventory_configuration",
    "delete_bucket_lifecycle",
    "delete_bucket_metadata_configuration",
    "delete_bucket_metadata_table_configuration",
    "delete_bucket_metrics_configuration",
    "delete_bucket_ownership_controls",
    "delete_bucket_policy",
    "delete_bucket_replication",
    "delete_bucket_tagging",
    "delete_bucket_website",
    "delete_object",
    "delete_object_annotation",
    "delete_object_tagging",
    "delete_objects",
    "delete_public_access_block",
    "get_bucket_abac",
    "get_bucket_accelerate_configuration",
    "get_bucket_acl",
    "get_bucket_analytics_configuration",
    "get_bucket_cors",
    "get_bucket_encryption",
    "get_bucket_intelligent_tiering_configuration",
    "get_bucket_inventory_configuration",
    "get_bucket_lifecycle_configuration",
    "get_bucket_location",
    "get_bucket_logging",
    "get_bucket_metadata_configuration",
    "get_bucket_metadata_table_configuration",
    "get_bucket_metrics_configuration",
    "get_bucket_notification_configuration",
    "get_bucket_ownership_controls",
    "get_bucket_policy",
    "get_bucket_policy_status",
    "get_bucket_replication",
    "get_bucket_request_payment",
    "get_bucket_tagging",
    "get_bucket_versioning",
    "get_bucket_website",
    "get_object",
    "get_object_acl",
    "get_object_annotation",
    "get_object_attributes",
    "get_object_legal_hold",
    "get_object_lock_configuration",
    "get_object_retention",
    "get_object_tagging",
    "get_object_torrent",
    "get_public_access_block",
    "head_bucket",
    "head_object",
    "list_bucket_analytics_configurations",
    "list_bucket_intelligent_tiering_configurations",
    "list_bucket_inventory_configurations",
    "list_bucket_metrics_configurations",
    "list_buckets",
    "list_directory_buckets",
    "list_multipart_uploads",
    "list_object_annotations",
    "list_object_versions",
    "list_objects",
    "list_objects_v2",
    "list_parts",
    "put_bucket_abac",
    "put_bucket_accelerate_configuration",
    "put_bucket_acl",
    "put_bucket_analytics_configuration",
    "put_bucket_cors",
    "put_bucket_encryption",
    "put_bucket_intelligent_tiering_configuration",
    "put_bucket_inventory_configuration",
    "put_bucket_lifecycle_configuration",
    "put_bucket_logging",
    "put_bucket_metrics_configuration",
    "put_bucket_notification_configuration",
    "put_bucket_ownership_controls",
    "put_bucket_policy",
    "put_bucket_replication",
    "put_bucket_request_payment",
    "put_bucket_tagging",
    "put_bucket_versioning",
    "put_bucket_website",
    "put_object",
    "put_object_acl",
    "put_object_annotation",
    "put_object_legal_hold",
    "put_object_lock_configuration",
    "put_object_retention",
    "put_object_tagging",
    "put_public_access_block",
    "rename_object",
    "restore_object",
    "select_object_content",
    "update_bucket_metadata_annotation_table_configuration",
    "update_bucket_metadata_inventory_table_configuration",
    "update_bucket_metadata_journal_table_configuration",
    "update_object_encryption",
    "upload_part",
    "upload_part_copy",
    "write_get_object_response",
    // aws-sdk-secretsmanager
    "batch_get_secret_value",
    "cancel_rotate_secret",
    "create_secret",
    "delete_resource_policy",
    "delete_secret",
    "describe_secret",
    "get_random_password",
    "get_resource_policy",
    "get_secret_value",
    "list_secret_version_ids",
    "list_secrets",
    "put_resource_policy",
    "put_secret_value",
    "remove_regions_from_replication",
    "replicate_secret_to_regions",
    "restore_secret",
    "rotate_secret",
    "stop_replication_to_replica",
    "tag_resource",
    "untag_resource",
    "update_secret",
    "update_secret_version_stage",
    "validate_resource_policy",
];

/// The services whose actions the roles must grant exactly (logs are the runtime's, not the code's).
const CHECKED_SERVICES: &[&str] = &["s3:", "secretsmanager:"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the shared crate sits in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The function crates: `functions/<name>` with a `src` folder.
fn function_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(workspace_root().join("functions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("src").is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------- source scan

/// The source with comments, string and char literals blanked (newlines kept), so only code is searched.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend(bytes.iter().map(|&c| if c == b'\n' { b'\n' } else { b' ' }))
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let prev_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let end = if rest.starts_with(b"//") {
            i + rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            let mut j = i;
            loop {
                if j + 1 >= b.len() {
                    break b.len();
                } else if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break j;
                    }
                } else {
                    j += 1;
                }
            }
        } else if !prev_ident
            && (rest.starts_with(b"r\"") || rest.starts_with(b"r#") || rest.starts_with(b"br"))
        {
            let start = i + usize::from(rest[0] == b'b') + 1;
            let hashes = b[start..].iter().take_while(|&&c| c == b'#').count();
            if b.get(start + hashes) != Some(&b'"') {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let body = start + hashes + 1;
            b[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(b.len(), |p| body + p + close.len())
        } else if rest[0] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            (j + 1).min(b.len())
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            let close = if rest.get(1) == Some(&b'\\') {
                rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 2)
            } else {
                src[i + 1..]
                    .chars()
                    .next()
                    .map(|c| 1 + c.len_utf8())
                    .filter(|&p| rest.get(p) == Some(&b'\''))
            };
            match close {
                Some(p) => i + p + 1,
                None => {
                    out.push(b[i]);
                    i += 1;
                    continue;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
            continue;
        };
        blank(&mut out, &b[i..end]);
        i = end;
    }
    String::from_utf8(out).expect("blanking keeps ASCII structure")
}

/// The code without `#[cfg(test)]` items (the attribute and the item after it, to its `;` or closing brace).
fn without_test_items(code: &str) -> String {
    let mut out = code.to_owned();
    let mut from = 0;
    while let Some(p) = out[from..].find("#[cfg(test)]").map(|p| p + from) {
        let b = out.as_bytes();
        let mut j = p + "#[cfg(test)]".len();
        let mut depth = 0usize;
        let end = loop {
            match b.get(j) {
                None => break b.len(),
                Some(b';') if depth == 0 => break j + 1,
                Some(b'{') => depth += 1,
                Some(b'}') => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        };
        let blanked: String = out.as_bytes()[p..end]
            .iter()
            .map(|&c| if c == b'\n' { '\n' } else { ' ' })
            .collect();
        out.replace_range(p..end, &blanked);
        from = end;
    }
    out
}

/// Every SDK operation called in `code` (`.op()`, as the fluent clients are used), with its line.
fn sdk_calls(code: &str) -> Vec<(&'static str, usize)> {
    let mut calls = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            let ident_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let (ident, after) = rest.split_at(ident_len);
            if after.trim_start().starts_with('(')
                && after.trim_start()[1..].trim_start().starts_with(')')
                && let Some(op) = SDK_OPERATIONS.iter().find(|op| **op == ident)
            {
                calls.push((*op, n + 1));
            }
        }
    }
    calls
}

/// The operations called by the production code under `dirs`, each with where it is called.
fn operations_in(dirs: &[PathBuf]) -> BTreeMap<&'static str, Vec<String>> {
    let mut files = Vec::new();
    for dir in dirs {
        rust_files(dir, &mut files);
    }
    let root = workspace_root();
    let mut ops: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for file in files {
        let src = std::fs::read_to_string(&file).unwrap();
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for (op, line) in sdk_calls(&without_test_items(&code_only(&src))) {
            ops.entry(op).or_default().push(format!("{shown}:{line}"));
        }
    }
    ops
}

// ---------------------------------------------------------------- template.yaml

/// The block-style YAML subset CloudFormation templates are written in: maps, lists, plain and quoted scalars,
/// folded/literal blocks; tags (`!Sub`, `!GetAtt`) and flow collections are kept as scalar text.
#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Scalar(String),
    List(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn path(&self, keys: &[&str]) -> Option<&Yaml> {
        keys.iter().try_fold(self, |node, key| node.get(key))
    }

    fn str(&self) -> Option<&str> {
        match self {
            Yaml::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// A scalar, a list of scalars or a flow list `[a, b]`, as strings.
    fn strings(&self) -> Vec<String> {
        match self {
            Yaml::Scalar(s) => match s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                Some(inner) => inner
                    .split(',')
                    .map(|v| unquote(v.trim()))
                    .filter(|v| !v.is_empty())
                    .collect(),
                None => vec![s.clone()],
            },
            Yaml::List(items) => items.iter().flat_map(Yaml::strings).collect(),
            Yaml::Map(_) => Vec::new(),
        }
    }
}

fn unquote(v: &str) -> String {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_owned();
        }
    }
    // A tag before a quoted scalar: `!Sub "…"`.
    if let Some((tag, rest)) = v.split_once(' ')
        && tag.starts_with('!')
    {
        return format!("{tag} {}", unquote(rest.trim()));
    }
    v.to_owned()
}

/// Cuts a trailing `# comment` (a `#` after whitespace, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return &line[..i],
            None => {}
        }
        prev = c;
    }
    line
}

struct Line {
    indent: usize,
    text: String,
}

fn parse_yaml(text: &str) -> Yaml {
    let mut lines: Vec<Line> = text
        .lines()
        .map(|l| {
            let trimmed = strip_comment(l).trim_end();
            Line {
                indent: trimmed.len() - trimmed.trim_start().len(),
                text: trimmed.trim_start().to_owned(),
            }
        })
        .collect();
    let mut i = 0;
    skip_blank(&lines, &mut i);
    parse_block(&mut lines, &mut i, 0)
}

fn skip_blank(lines: &[Line], i: &mut usize) {
    while *i < lines.len() && lines[*i].text.is_empty() {
        *i += 1;
    }
}

/// `key: value` or `key:`; `None` for a line that is no map entry.
fn split_entry(text: &str) -> Option<(String, &str)> {
    let (key, value) = match text.find(": ") {
        Some(p) => (&text[..p], text[p + 2..].trim()),
        None => (text.strip_suffix(':')?, ""),
    };
    if key.is_empty() || key.starts_with(['[', '{', '!', '-']) {
        return None;
    }
    Some((unquote(key.trim()), value))
}

fn parse_block(lines: &mut Vec<Line>, i: &mut usize, min_indent: usize) -> Yaml {
    skip_blank(lines, i);
    if *i >= lines.len() || lines[*i].indent < min_indent {
        return Yaml::Scalar(String::new());
    }
    let indent = lines[*i].indent;
    if lines[*i].text == "-" || lines[*i].text.starts_with("- ") {
        let mut items = Vec::new();
        while *i < lines.len()
            && lines[*i].indent == indent
            && (lines[*i].text == "-" || lines[*i].text.starts_with("- "))
        {
            let content = lines[*i].text[1..].trim_start().to_owned();
            if content.is_empty() {
                *i += 1;
                items.push(parse_block(lines, i, indent + 1));
            } else if split_entry(&content).is_some() {
                // `- key: value` opens a map whose entries sit where `key` starts.
                let offset = lines[*i].text.len() - content.len();
                lines[*i] = Line {
                    indent: indent + offset,
                    text: content,
                };
                items.push(parse_block(lines, i, indent + offset));
            } else {
                *i += 1;
                items.push(Yaml::Scalar(unquote(&content)));
            }
            skip_blank(lines, i);
        }
        return Yaml::List(items);
    }
    let mut entries = Vec::new();
    while *i < lines.len() && lines[*i].indent == indent {
        let text = lines[*i].text.clone();
        let Some((key, value)) = split_entry(&text) else {
            panic!("template.yaml line {}: not a map entry: {text}", *i + 1);
        };
        *i += 1;
        let node = match value {
            "" => {
                skip_blank(lines, i);
                let nested = *i < lines.len()
                    && (lines[*i].indent > indent
                        || (lines[*i].indent == indent && lines[*i].text.starts_with("- ")));
                if nested {
                    parse_block(lines, i, indent)
                } else {
                    Yaml::Scalar(String::new())
                }
            }
            ">" | ">-" | "|" | "|-" => {
                let mut parts = Vec::new();
                while *i < lines.len() && (lines[*i].text.is_empty() || lines[*i].indent > indent) {
                    parts.push(lines[*i].text.clone());
                    *i += 1;
                }
                Yaml::Scalar(parts.join(" ").trim().to_owned())
            }
            v => Yaml::Scalar(unquote(v)),
        };
        entries.push((key, node));
        skip_blank(lines, i);
    }
    Yaml::Map(entries)
}

/// What one role allows: action pattern → the resources of the statements granting it.
type Grants = Vec<(String, Vec<String>)>;

fn role_grants(template: &Yaml, role: &str) -> Grants {
    let props = template
        .path(&["Resources", role, "Properties"])
        .unwrap_or_else(|| panic!("template.yaml has no role {role}"));
    assert!(
        props.get("ManagedPolicyArns").is_none(),
        "{role}: managed policies cannot be checked here; grant inline"
    );
    let Some(Yaml::List(policies)) = props.get("Policies") else {
        panic!("{role} has no inline Policies list");
    };
    let mut grants = Vec::new();
    for policy in policies {
        let Some(Yaml::List(statements)) = policy.path(&["PolicyDocument", "Statement"]) else {
            panic!("{role}: a policy without a Statement list");
        };
        for s in statements {
            assert!(
                s.get("NotAction").is_none() && s.get("NotResource").is_none(),
                "{role}: NotAction/NotResource"
            );
            if s.get("Effect").and_then(Yaml::str) != Some("Allow") {
                continue;
            }
            let resources = s.get("Resource").map(Yaml::strings).unwrap_or_default();
            for action in s.get("Action").map(Yaml::strings).unwrap_or_default() {
                grants.push((action, resources.clone()));
            }
        }
    }
    grants
}

/// IAM action matching: case-insensitive, `*` and `?` wildcards.
fn action_matches(pattern: &str, action: &str) -> bool {
    fn glob(p: &[u8], a: &[u8]) -> bool {
        match (p.first(), a.first()) {
            (None, None) => true,
            (Some(b'*'), _) => glob(&p[1..], a) || (!a.is_empty() && glob(p, &a[1..])),
            (Some(b'?'), Some(_)) => glob(&p[1..], &a[1..]),
            (Some(x), Some(y)) => x.eq_ignore_ascii_case(y) && glob(&p[1..], &a[1..]),
            _ => false,
        }
    }
    glob(pattern.as_bytes(), action.as_bytes())
}

fn resource_fits(resource: &str, on: On) -> bool {
    match on {
        On::Any => true,
        On::Objects => resource.ends_with("/*") || resource == "*",
        On::Bucket => {
            (resource.contains("Bucket") || resource.starts_with("arn:aws:s3:::"))
                && !resource.contains("/")
        }
    }
}

/// `functions/<name>` → the logical id of its role, through the function whose build binary is `<name>`.
fn role_of(template: &Yaml, function: &str) -> String {
    let Some(Yaml::Map(resources)) = template.get("Resources") else {
        panic!("template.yaml has no Resources");
    };
    let (id, props) = resources
        .iter()
        .find(|(_, r)| {
            r.path(&["Metadata", "BuildProperties", "Binary"])
                .and_then(Yaml::str)
                == Some(function)
        })
        .map(|(id, r)| (id, r.get("Properties")))
        .unwrap_or_else(|| panic!("template.yaml builds no function with Binary: {function}"));
    let props = props.unwrap_or_else(|| panic!("{id} has no Properties"));
    assert!(
        props.get("Policies").is_none(),
        "{id}: SAM policies cannot be checked here; use its Role"
    );
    let role = props
        .get("Role")
        .and_then(Yaml::str)
        .unwrap_or_else(|| panic!("{id} has no Role"));
    role.strip_prefix("!GetAtt ")
        .and_then(|r| r.strip_suffix(".Arn"))
        .unwrap_or_else(|| panic!("{id}: Role {role:?} is not `!GetAtt <Role>.Arn`"))
        .to_owned()
}

// ---------------------------------------------------------------- the checks

#[test]
fn every_aws_call_of_the_code_is_granted_to_each_function_and_nothing_else() {
    let root = workspace_root();
    let template = parse_yaml(&std::fs::read_to_string(root.join("template.yaml")).unwrap());
    let shared = operations_in(&[root.join("shared/src")]);
    assert!(
        shared.contains_key("put_object") && shared.contains_key("get_secret_value"),
        "the scan finds no S3 or Secrets Manager call in shared/src: {shared:?}"
    );
    let mut problems = Vec::new();
    for function in function_names() {
        // Conservatively: the function may reach any call of the shared crate, and all of its own.
        let mut ops = shared.clone();
        for (op, at) in operations_in(&[root.join("functions").join(&function).join("src")]) {
            ops.entry(op).or_default().extend(at);
        }
        let mut needed: BTreeMap<&str, BTreeSet<On>> = BTreeMap::new();
        for (op, at) in &ops {
            match iam_actions(op) {
                Some(actions) => {
                    for (action, on) in actions {
                        needed.entry(action).or_default().insert(on);
                    }
                }
                None => problems.push(format!(
                    "{function}: no IAM mapping for SDK call `{op}` (at {}): add it to iam_actions",
                    at.join(", ")
                )),
            }
        }
        let role = role_of(&template, &function);
        let grants = role_grants(&template, &role);
        for (action, kinds) in &needed {
            for on in kinds {
                let granted = grants.iter().any(|(pattern, resources)| {
                    action_matches(pattern, action)
                        && resources.iter().any(|r| resource_fits(r, *on))
                });
                if !granted {
                    problems.push(format!("{function} ({role}) lacks {action} on {on:?}"));
                }
            }
        }
        for (pattern, _) in &grants {
            let checked = CHECKED_SERVICES
                .iter()
                .any(|s| pattern.to_ascii_lowercase().starts_with(s));
            if checked && !needed.keys().any(|a| action_matches(pattern, a)) {
                problems.push(format!(
                    "{function} ({role}) grants {pattern}, which no code calls: remove it"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "IAM and code disagree:\n{}",
        problems.join("\n")
    );
}

/// What the code does in each bucket, which the scan above cannot tell apart (a call's bucket is a value). The
/// workspace: results written (multipart, so aborts too), read (presigned links, copies), deleted when their job
/// ends without them. The library: results copied in (read and written), read through links, and deleted when
/// their post-processing step is skipped because its character or scene, or the result, is gone
/// (`postprocess::skip_step`); objects are looked up in both. A resource must be the bucket's objects, or the bucket,
/// exactly.
const BUCKET_NEEDS: &[(&str, &[&str])] = &[
    (
        "${WorkspaceBucket.Arn}/*",
        &[
            "s3:GetObject",
            "s3:PutObject",
            "s3:DeleteObject",
            "s3:AbortMultipartUpload",
        ],
    ),
    (
        "${LibraryBucket.Arn}/*",
        &["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
    ),
    // Objects are looked up (HEAD) in both buckets: a missing one is 404, not 403, to a role that may list.
    ("${WorkspaceBucket.Arn}", &["s3:ListBucket"]),
    ("${LibraryBucket.Arn}", &["s3:ListBucket"]),
];

#[test]
fn each_function_may_do_in_each_bucket_what_the_code_does_there() {
    let root = workspace_root();
    let template = parse_yaml(&std::fs::read_to_string(root.join("template.yaml")).unwrap());
    let mut problems = Vec::new();
    for function in function_names() {
        let role = role_of(&template, &function);
        let grants = role_grants(&template, &role);
        for (bucket, actions) in BUCKET_NEEDS {
            for action in *actions {
                let granted = grants.iter().any(|(pattern, resources)| {
                    action_matches(pattern, action)
                        && resources
                            .iter()
                            .any(|r| r.strip_prefix("!Sub ").unwrap_or(r) == *bucket)
                });
                if !granted {
                    problems.push(format!("{function} ({role}) lacks {action} on {bucket}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_scan_sees_fluent_and_presigned_calls_and_skips_comments_strings_and_tests() {
    let src = r##"
        async fn a(s3: &Client) {
            s3.put_object().bucket(b).send().await;
            let r = s3
                .get_object()
                .presigned(c);
            s3.upload_part ( ).send();
            // s3.delete_bucket().send()
            /* s3.delete_bucket() */
            let s = ".list_buckets()";
            let r = r#".list_buckets()"#;
            let c = '"'; s3.copy_object().send();
            let l: &'static str = "x"; s3.head_object();
            fields.iter().map(|f| f.put_objects());
        }
        #[cfg(test)]
        mod tests {
            fn t() { s3.delete_bucket().send(); }
        }
        fn b(c: &Client) { c.get_secret_value().secret_id(id).send(); }
    "##;
    let ops: Vec<_> = sdk_calls(&without_test_items(&code_only(src)))
        .into_iter()
        .map(|(op, _)| op)
        .collect();
    assert_eq!(
        ops,
        [
            "put_object",
            "get_object",
            "upload_part",
            "copy_object",
            "head_object",
            "get_secret_value"
        ]
    );
}

#[test]
fn the_template_reader_handles_tags_flow_lists_and_list_maps() {
    let y = parse_yaml(
        r#"
Resources:
  # a comment
  Role:
    Type: AWS::IAM::Role
    Properties:
      Description: >-
        two
        lines
      Policies:
        - PolicyName: p
          PolicyDocument:
            Statement:
              - Sid: A
                Effect: Allow
                Action: [s3:GetObject, "s3:PutObject"]
                Resource: !Sub "${Bucket.Arn}/*"  # objects
              - Effect: Allow
                Action:
                  - s3:ListBucket
                Resource:
                  - !GetAtt Bucket.Arn
              - Effect: Deny
                Action: "s3:*"
                Resource: "*"
  Fn:
    Metadata:
      BuildProperties:
        Binary: f
    Properties:
      Role: !GetAtt Role.Arn
"#,
    );
    assert_eq!(
        y.path(&["Resources", "Role", "Properties", "Description"])
            .and_then(Yaml::str),
        Some("two lines")
    );
    assert_eq!(role_of(&y, "f"), "Role");
    let grants = role_grants(&y, "Role");
    assert_eq!(
        grants,
        [
            (
                "s3:GetObject".to_owned(),
                vec!["!Sub ${Bucket.Arn}/*".to_owned()]
            ),
            (
                "s3:PutObject".to_owned(),
                vec!["!Sub ${Bucket.Arn}/*".to_owned()]
            ),
            (
                "s3:ListBucket".to_owned(),
                vec!["!GetAtt Bucket.Arn".to_owned()]
            ),
        ]
    );
    assert!(resource_fits("!Sub ${Bucket.Arn}/*", On::Objects));
    assert!(!resource_fits("!Sub ${Bucket.Arn}/*", On::Bucket));
    assert!(resource_fits("!GetAtt Bucket.Arn", On::Bucket));
    assert!(!resource_fits("!GetAtt Bucket.Arn", On::Objects));
    assert!(action_matches("s3:*", "s3:GetObject"));
    assert!(action_matches("S3:getobject", "s3:GetObject"));
    assert!(!action_matches("s3:Get*", "s3:PutObject"));
}

//! `stack.env`: KEY=VALUE lines a shell can source (`set -a; . target/stack/stack.env; set +a`), and our reader.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

/// The variables of a running stack, in the order they are written.
#[derive(Debug, Clone, Default)]
pub struct StackEnv {
    vars: Vec<(String, String)>,
}

impl StackEnv {
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.vars.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((key.to_string(), value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value, or an error naming the missing key.
    pub fn require(&self, key: &str) -> anyhow::Result<&str> {
        self.get(key)
            .with_context(|| format!("{key} is missing from the stack environment"))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Writes the file readable by its owner only (it holds the stack's secrets).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut text =
            String::from("# The local stack's environment, written by `cargo xtask stack up`.\n");
        for (k, v) in &self.vars {
            text.push_str(k);
            text.push('=');
            text.push_str(&quote(v));
            text.push('\n');
        }
        let tmp = path.with_extension("env.tmp");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut env = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (key, raw) = line
                .split_once('=')
                .with_context(|| format!("line {}: expected KEY=VALUE", n + 1))?;
            let value =
                unquote(raw).with_context(|| format!("line {}: bad quoting for {key}", n + 1))?;
            env.set(key.trim(), value);
        }
        Ok(env)
    }
}

fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c)
}

/// Shell-safe spelling of a value: as is when it has only plain characters, else single-quoted.
pub fn quote(value: &str) -> String {
    if !value.is_empty() && value.chars().all(is_plain) {
        return value.to_string();
    }
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Reads a value written by [`quote`] (or any mix of plain text, '…' and \x).
fn unquote(raw: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    other => out.push(other),
                }
            },
            '\\' => out.push(chars.next()?),
            other => out.push(other),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_quoting() {
        let mut env = StackEnv::default();
        env.set("PLAIN", "postgres://postgres:abc@127.0.0.1:5432/app");
        env.set("SPACES", "a b 'c' $HOME `x`");
        env.set("EMPTY", "");
        let text: String = env
            .iter()
            .map(|(k, v)| format!("{k}={}\n", quote(v)))
            .collect();
        let back = StackEnv::parse(&text).expect("parses");
        for (k, v) in env.iter() {
            assert_eq!(back.get(k), Some(v), "{k}");
        }
    }

    #[test]
    fn plain_values_stay_unquoted() {
        assert_eq!(quote("http://127.0.0.1:9000/x"), "http://127.0.0.1:9000/x");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}

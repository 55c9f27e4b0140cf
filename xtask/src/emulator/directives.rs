//! Fault scripts: the `#key[=value]` tokens of a request's `prompt`, parsed once into [`Directives`].

use serde_json::Value;

/// Upper bound on `#deliveries`, so a typo cannot make the emulator flood a receiver.
const MAX_DELIVERIES: u32 = 1000;

/// Where the result URL sits in the output JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputShape {
    /// `images: [...]` or `video: {...}`, chosen by media type.
    #[default]
    Media,
    /// `output: {url, ...}` (`#output-shape=output`).
    Output,
    /// Replicate only: `output` is an array of URLs (`#output-shape=array`); fal treats it as `Media`.
    Array,
}

/// Everything a prompt can script. Defaults are the well-behaved request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    pub error: bool,
    /// fal: the queued request ends in error; the sync run is unaffected (`#queue-error`).
    pub queue_error: bool,
    pub payload_null: bool,
    pub deliveries: u32,
    pub concurrent: bool,
    pub early: bool,
    pub delay_ms: u64,
    /// The queue's answer to a submission comes this long after the request was accepted (it runs meanwhile).
    pub submit_delay_ms: u64,
    pub no_webhook: bool,
    pub queue_status: Option<u16>,
    /// A queue submission is accepted (the request runs and is delivered) but its answer cannot be read: fal's
    /// lacks the request's id and URLs; Replicate's (a create without a wait) has a status no client knows.
    pub queue_unreadable: bool,
    /// Replicate: the same for a create that waits (`Prefer: wait`), once its wait is over.
    pub run_unreadable: bool,
    pub run_status: Option<u16>,
    pub run_fail_first: u32,
    /// How long the sync run takes once started (`X-Fal-Request-Timeout` does not cut it).
    pub run_delay_ms: u64,
    /// How long the sync run waits for a runner before it starts: past the `X-Fal-Request-Timeout` deadline, 504.
    pub start_delay_ms: u64,
    /// `#result-status=N`: a queued request that completes answers its result URL with HTTP N and a fal error body
    /// (fal's way of reporting a failed request), typed by `#result-error-type=T` when given.
    pub result_status: Option<u16>,
    pub result_error_type: Option<String>,
    /// The first K cancel calls of a queued request are answered 503 (the request runs on).
    pub cancel_fail_first: u32,
    pub media_bytes: u64,
    /// `#media-no-length`: result files are sent without a `Content-Length` (chunked), as a streaming CDN may.
    pub media_no_length: bool,
    pub media_type: Option<String>,
    pub media_status: Option<u16>,
    /// `#queue-media-status=N` (fal): the result files of queued requests answer HTTP N, those of sync runs are served
    /// (what a queue request a fallback abandoned can meet while the sync run's result is fine).
    pub queue_media_status: Option<u16>,
    pub media_fail_first: u32,
    pub media_slow_ms: u64,
    /// Only the first K fetches are slowed by `media_slow_ms` (0: every fetch).
    pub media_slow_first: u32,
    pub media_rate: Option<u64>,
    pub media_url: Option<String>,
    pub output_shape: OutputShape,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            error: false,
            queue_error: false,
            payload_null: false,
            deliveries: 1,
            concurrent: false,
            early: false,
            delay_ms: 50,
            submit_delay_ms: 0,
            no_webhook: false,
            queue_status: None,
            queue_unreadable: false,
            run_unreadable: false,
            run_status: None,
            run_fail_first: 0,
            run_delay_ms: 0,
            start_delay_ms: 0,
            result_status: None,
            result_error_type: None,
            cancel_fail_first: 0,
            media_bytes: 4096,
            media_no_length: false,
            media_type: None,
            media_status: None,
            queue_media_status: None,
            media_fail_first: 0,
            media_slow_ms: 0,
            media_slow_first: 0,
            media_rate: None,
            media_url: None,
            output_shape: OutputShape::Media,
        }
    }
}

impl Directives {
    /// Directives of a model input: only its string `prompt` field scripts anything.
    pub fn from_input(input: &Value) -> Self {
        match input.get("prompt").and_then(Value::as_str) {
            Some(prompt) => Self::parse(prompt),
            None => Self::default(),
        }
    }

    /// Parses every `#` token of a prompt; unknown directives and unparsable values are ignored
    /// so that ordinary prompts (`#1 best cat`) behave normally.
    pub fn parse(prompt: &str) -> Self {
        let mut d = Self::default();
        for token in prompt.split_whitespace() {
            if let Some(directive) = token.strip_prefix('#') {
                let (key, value) = match directive.split_once('=') {
                    Some((k, v)) => (k, Some(v)),
                    None => (directive, None),
                };
                d.apply(key, value);
            }
        }
        d
    }

    fn apply(&mut self, key: &str, value: Option<&str>) {
        match (key, value) {
            ("error", None) => self.error = true,
            ("queue-error", None) => self.queue_error = true,
            ("payload-null", None) => self.payload_null = true,
            ("concurrent", None) => self.concurrent = true,
            ("early", None) => self.early = true,
            ("no-webhook", None) => self.no_webhook = true,
            ("queue-unreadable", None) => self.queue_unreadable = true,
            ("run-unreadable", None) => self.run_unreadable = true,
            ("media-no-length", None) => self.media_no_length = true,
            ("deliveries", Some(v)) => set(
                &mut self.deliveries,
                v.parse().ok().map(|n: u32| n.min(MAX_DELIVERIES)),
            ),
            ("delay-ms", Some(v)) => set(&mut self.delay_ms, v.parse().ok()),
            ("submit-delay-ms", Some(v)) => set(&mut self.submit_delay_ms, v.parse().ok()),
            ("queue-status", Some(v)) => self.queue_status = v.parse().ok().or(self.queue_status),
            ("run-status", Some(v)) => self.run_status = v.parse().ok().or(self.run_status),
            ("run-fail-first", Some(v)) => set(&mut self.run_fail_first, v.parse().ok()),
            ("run-delay-ms", Some(v)) => set(&mut self.run_delay_ms, v.parse().ok()),
            ("start-delay-ms", Some(v)) => set(&mut self.start_delay_ms, v.parse().ok()),
            ("result-status", Some(v)) => {
                self.result_status = v.parse().ok().or(self.result_status)
            }
            ("result-error-type", Some(v)) if !v.is_empty() => {
                self.result_error_type = Some(v.to_owned())
            }
            ("cancel-fail-first", Some(v)) => set(&mut self.cancel_fail_first, v.parse().ok()),
            ("media-bytes", Some(v)) => set(&mut self.media_bytes, v.parse().ok()),
            ("media-type", Some(v)) if v.contains('/') => {
                self.media_type = Some(v.to_ascii_lowercase())
            }
            ("media-status", Some(v)) => self.media_status = v.parse().ok().or(self.media_status),
            ("queue-media-status", Some(v)) => {
                self.queue_media_status = v.parse().ok().or(self.queue_media_status)
            }
            ("media-fail-first", Some(v)) => set(&mut self.media_fail_first, v.parse().ok()),
            ("media-slow-ms", Some(v)) => set(&mut self.media_slow_ms, v.parse().ok()),
            ("media-slow-first", Some(v)) => set(&mut self.media_slow_first, v.parse().ok()),
            // A rate of 0 would never finish the body: treat it as "unlimited".
            ("media-rate", Some(v)) => {
                self.media_rate = v.parse().ok().filter(|r| *r > 0).or(self.media_rate)
            }
            ("media-url", Some(v)) if !v.is_empty() => self.media_url = Some(v.to_owned()),
            ("output-shape", Some("output")) => self.output_shape = OutputShape::Output,
            ("output-shape", Some("array")) => self.output_shape = OutputShape::Array,
            _ => {}
        }
    }
}

fn set<T>(slot: &mut T, parsed: Option<T>) {
    if let Some(v) = parsed {
        *slot = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_prompt_means_defaults() {
        let d = Directives::parse("a red fox in the snow, #1 best shot");
        assert_eq!(d, Directives::default());
        assert_eq!(d.deliveries, 1);
        assert_eq!(d.delay_ms, 50);
        assert_eq!(d.media_bytes, 4096);
    }

    #[test]
    fn missing_or_non_string_prompt_means_no_directives() {
        assert_eq!(Directives::from_input(&json!({})), Directives::default());
        assert_eq!(
            Directives::from_input(&json!({"prompt": 5})),
            Directives::default()
        );
        assert_eq!(
            Directives::from_input(&json!(["#error"])),
            Directives::default()
        );
        assert!(Directives::from_input(&json!({"prompt": "x #error"})).error);
    }

    #[test]
    fn flags_are_parsed() {
        let d = Directives::parse("cat #error #payload-null #concurrent #early #no-webhook");
        assert!(d.error && d.payload_null && d.concurrent && d.early && d.no_webhook);
        assert!(!d.queue_error && !d.media_no_length);
        assert!(Directives::parse("cat #media-no-length").media_no_length);
        assert!(Directives::parse("cat #queue-error").queue_error);
    }

    #[test]
    fn numeric_directives_are_parsed() {
        let d = Directives::parse(
            "#deliveries=3 #delay-ms=2000 #submit-delay-ms=900 #queue-status=503 #run-status=429 #run-fail-first=2 \
             #run-delay-ms=700 #cancel-fail-first=2 #media-bytes=1073741824 #media-status=404 #queue-media-status=410 #media-fail-first=1 \
             #media-slow-ms=250 #media-slow-first=2 #media-rate=1000",
        );
        assert_eq!(d.deliveries, 3);
        assert_eq!(d.delay_ms, 2000);
        assert_eq!(d.submit_delay_ms, 900);
        assert_eq!(d.queue_status, Some(503));
        assert_eq!(d.run_status, Some(429));
        assert_eq!(d.run_fail_first, 2);
        assert_eq!(d.run_delay_ms, 700);
        assert_eq!(d.cancel_fail_first, 2);
        assert_eq!(d.media_bytes, 1 << 30);
        assert_eq!(d.media_status, Some(404));
        assert_eq!(d.queue_media_status, Some(410));
        assert_eq!(d.media_fail_first, 1);
        assert_eq!(d.media_slow_ms, 250);
        assert_eq!(d.media_slow_first, 2);
        assert_eq!(d.media_rate, Some(1000));
    }

    #[test]
    fn text_directives_are_parsed() {
        let d = Directives::parse(
            "x\t#media-type=Video/WebM\n#media-url=http://169.254.169.254/latest?a=b #output-shape=output",
        );
        assert_eq!(d.media_type.as_deref(), Some("video/webm"));
        assert_eq!(
            d.media_url.as_deref(),
            Some("http://169.254.169.254/latest?a=b")
        );
        assert_eq!(d.output_shape, OutputShape::Output);
        let d = Directives::parse("#output-shape=array");
        assert_eq!(d.output_shape, OutputShape::Array);
    }

    #[test]
    fn bad_values_and_unknown_directives_are_ignored() {
        let d = Directives::parse(
            "#deliveries=lots #delay-ms=-1 #media-rate=0 #media-type=png #output-shape=weird \
             #error=yes #frobnicate #media-url= #queue-status=abc",
        );
        assert_eq!(d, Directives::default());
    }

    #[test]
    fn deliveries_are_capped_and_later_tokens_win() {
        assert_eq!(
            Directives::parse("#deliveries=999999").deliveries,
            MAX_DELIVERIES
        );
        assert_eq!(Directives::parse("#deliveries=0").deliveries, 0);
        assert_eq!(Directives::parse("#delay-ms=5 #delay-ms=9").delay_ms, 9);
    }

    #[test]
    fn directive_must_be_its_own_token() {
        assert!(!Directives::parse("no#error here").error);
        assert!(!Directives::parse("#error, please").error);
    }
}

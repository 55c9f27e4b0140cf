//! What a model "produces": the media it names, the output JSON, and the queue URLs handed out at submit.

use serde_json::{Value, json};

use super::directives::{Directives, OutputShape};

/// Model-id fragments that mean "this model makes videos".
const VIDEO_HINTS: [&str; 7] = ["video", "t2v", "i2v", "wan", "ltx", "kling", "veo"];

/// The result file of one request, enough to build its output and to serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSpec {
    pub content_type: String,
    pub file_name: String,
    pub size: u64,
}

impl MediaSpec {
    pub fn new(model_id: &str, directives: &Directives) -> Self {
        let content_type = media_type(model_id, directives);
        let file_name = format!("output.{}", extension(&content_type));
        MediaSpec {
            content_type,
            file_name,
            size: directives.media_bytes,
        }
    }

    fn is_video(&self) -> bool {
        self.content_type.starts_with("video/")
    }
}

fn media_type(model_id: &str, directives: &Directives) -> String {
    if let Some(t) = &directives.media_type {
        return t.clone();
    }
    let id = model_id.to_ascii_lowercase();
    if VIDEO_HINTS.iter().any(|hint| id.contains(hint)) {
        "video/mp4".into()
    } else {
        "image/png".into()
    }
}

fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        "video/mp4" => "mp4",
        "video/webm" => "webm",
        "video/quicktime" => "mov",
        _ => "bin",
    }
}

/// A stable seed per request, so outputs are reproducible but differ between requests.
pub fn seed_for(request_id: &str) -> u64 {
    super::media::fnv1a(request_id.as_bytes()) >> 8
}

/// The model output JSON for a request, as fal's image and video models shape it.
pub fn model_output(
    request_id: &str,
    media_url: &str,
    media: &MediaSpec,
    directives: &Directives,
    input: &Value,
) -> Value {
    let mut file = json!({
        "url": media_url,
        "content_type": media.content_type,
        "file_name": media.file_name,
        "file_size": media.size,
    });
    let seed = seed_for(request_id);
    let timings = json!({"inference": 0.5});
    if directives.output_shape == OutputShape::Output {
        return json!({"output": file, "seed": seed, "timings": timings});
    }
    if media.is_video() {
        file["duration"] = json!(5.0);
        return json!({"video": file, "seed": seed, "timings": timings});
    }
    file["width"] = json!(1024);
    file["height"] = json!(1024);
    let prompt = input.get("prompt").cloned().unwrap_or(Value::Null);
    json!({
        "images": [file],
        "seed": seed,
        "timings": timings,
        "has_nsfw_concepts": [false],
        "prompt": prompt,
    })
}

/// The three per-request queue URLs. fal builds them from the first two model-id segments only
/// (`fal-ai/wan/i2v` -> `fal-ai/wan`), which is why clients must store them rather than rebuild them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrls {
    pub status_url: String,
    pub response_url: String,
    pub cancel_url: String,
}

impl QueueUrls {
    pub fn new(public_base: &str, model_id: &str, request_id: &str) -> Self {
        let app: Vec<&str> = model_id
            .split('/')
            .filter(|s| !s.is_empty())
            .take(2)
            .collect();
        let response_url = format!(
            "{public_base}/queue/{}/requests/{request_id}",
            app.join("/")
        );
        QueueUrls {
            status_url: format!("{response_url}/status"),
            cancel_url: format!("{response_url}/cancel"),
            response_url,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls_keep_only_owner_and_app() {
        let urls = QueueUrls::new(
            "http://127.0.0.1:9",
            "fal-ai/bytedance/seedream/v4/text-to-image",
            "abc",
        );
        assert_eq!(
            urls.status_url,
            "http://127.0.0.1:9/queue/fal-ai/bytedance/requests/abc/status"
        );
        assert_eq!(
            urls.response_url,
            "http://127.0.0.1:9/queue/fal-ai/bytedance/requests/abc"
        );
        assert_eq!(
            urls.cancel_url,
            "http://127.0.0.1:9/queue/fal-ai/bytedance/requests/abc/cancel"
        );
        let short = QueueUrls::new("http://h", "fal-ai/flux", "r");
        assert_eq!(short.response_url, "http://h/queue/fal-ai/flux/requests/r");
    }

    #[test]
    fn media_type_follows_directive_then_model_id() {
        let d = Directives::default();
        assert_eq!(
            MediaSpec::new("fal-ai/flux/dev", &d).content_type,
            "image/png"
        );
        assert_eq!(MediaSpec::new("fal-ai/wan/i2v", &d).file_name, "output.mp4");
        assert_eq!(
            MediaSpec::new("fal-ai/kling-video/v2", &d).content_type,
            "video/mp4"
        );
        let d = Directives::parse("#media-type=image/jpeg #media-bytes=10");
        let spec = MediaSpec::new("fal-ai/veo3", &d);
        assert_eq!(
            spec,
            MediaSpec {
                content_type: "image/jpeg".into(),
                file_name: "output.jpg".into(),
                size: 10
            }
        );
        for (t, ext) in [
            ("image/webp", "webp"),
            ("video/webm", "webm"),
            ("video/quicktime", "mov"),
            ("a/b", "bin"),
        ] {
            assert_eq!(extension(t), ext);
        }
    }

    #[test]
    fn image_output_has_fal_image_shape() {
        let d = Directives::default();
        let spec = MediaSpec::new("fal-ai/flux/dev", &d);
        let out = model_output("r1", "http://m/x.png", &spec, &d, &json!({"prompt": "cat"}));
        let img = &out["images"][0];
        assert_eq!(img["url"], "http://m/x.png");
        assert_eq!(img["file_size"], 4096);
        assert_eq!(img["width"], 1024);
        assert_eq!(out["prompt"], "cat");
        assert_eq!(out["has_nsfw_concepts"], json!([false]));
        assert!(out["seed"].is_u64());
    }

    #[test]
    fn video_and_output_shapes() {
        let d = Directives::default();
        let spec = MediaSpec::new("fal-ai/wan/t2v", &d);
        let out = model_output("r1", "u", &spec, &d, &json!({}));
        assert_eq!(out["video"]["content_type"], "video/mp4");
        assert_eq!(out["video"]["duration"], 5.0);
        let d = Directives::parse("#output-shape=output");
        let out = model_output("r1", "u", &spec, &d, &json!({}));
        assert_eq!(out["output"]["url"], "u");
        assert!(out.get("video").is_none());
    }
}

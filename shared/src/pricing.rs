//! The original's static price list (USD per generation), used for `estimated_cost` and usage logs:
//! exact key, then key without `fal-ai/`, then the first substring match, then the modality's default.

/// `(key, price)`; order matters for substring matches (more specific first).
const PRICES: &[(&str, f64)] = &[
    ("bytedance/seedream/v4/text-to-image", 0.025),
    ("bytedance/seedream/v4.5/edit", 0.035),
    ("flux-2/flash/edit", 0.035),
    ("flux-2/flash", 0.025),
    ("flux-2", 0.05),
    ("flux-pro/v1.1", 0.05),
    ("grok-2-image", 0.07),
    ("grok-image", 0.07),
    ("wan-i2v", 0.25),
    ("wan/v2.2-a14b/image-to-video", 0.25),
    ("ltx-video-13b-distilled/extend", 0.25),
    ("ltx-video/v0.9.7/extend", 0.25),
    ("ltx-video/v0.9.7/multiconditioning", 0.20),
    ("ltx-video/v0.9.7/i2v", 0.20),
    ("ltx-video/v0.9.7", 0.20),
];

pub const DEFAULT_IMAGE: f64 = 0.03;
pub const DEFAULT_VIDEO: f64 = 0.25;

pub fn estimated_cost(model_key: &str, is_video: bool) -> f64 {
    let short = model_key.strip_prefix("fal-ai/").unwrap_or(model_key);
    PRICES
        .iter()
        .find(|(k, _)| *k == model_key || *k == short)
        .or_else(|| PRICES.iter().find(|(k, _)| model_key.contains(k)))
        .map(|(_, p)| *p)
        .unwrap_or(if is_video {
            DEFAULT_VIDEO
        } else {
            DEFAULT_IMAGE
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_short_then_substring_then_default() {
        assert_eq!(
            estimated_cost("fal-ai/bytedance/seedream/v4/text-to-image", false),
            0.025
        );
        assert_eq!(estimated_cost("flux-2/flash", false), 0.025);
        assert_eq!(estimated_cost("fal-ai/flux-2/flash/edit/v2", false), 0.035);
        assert_eq!(estimated_cost("fal-ai/ltx-video/v0.9.7/extend", true), 0.25);
        assert_eq!(estimated_cost("fal-ai/unknown", false), DEFAULT_IMAGE);
        assert_eq!(estimated_cost("fal-ai/unknown", true), DEFAULT_VIDEO);
    }
}

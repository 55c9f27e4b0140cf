//! The providers a model runs on, picked by its `api_providers.name`: fal and Replicate. Each has a sync route
//! (`api_models.endpoint_path` empty) and a queue route whose `endpoint_path` names the webhook
//! (`fal-webhook`, `replicate-webhook`); everything after the provider's answer (completion, claims, streaming,
//! the reconciler, post-processing, usage) is the same code for both.

mod error;

pub use error::{ProviderError, raw_message, read_capped};

/// A provider we can run models on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Fal,
    Replicate,
}

impl ProviderKind {
    /// The provider of an `api_providers.name`; `None` for providers the port does not run.
    pub fn of(name: &str) -> Option<Self> {
        match name {
            "fal" => Some(ProviderKind::Fal),
            "replicate" => Some(ProviderKind::Replicate),
            _ => None,
        }
    }

    /// `api_providers.name` and `job_runs.provider_name`.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Fal => "fal",
            ProviderKind::Replicate => "replicate",
        }
    }

    /// How answers to clients and job errors name it.
    pub fn display_name(self) -> &'static str {
        match self {
            ProviderKind::Fal => "fal.ai",
            ProviderKind::Replicate => "Replicate",
        }
    }

    /// The `api_models.endpoint_path` of the provider's queue route.
    pub fn queue_route(self) -> &'static str {
        match self {
            ProviderKind::Fal => "fal-webhook",
            ProviderKind::Replicate => "replicate-webhook",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_routes_round_trip() {
        for p in [ProviderKind::Fal, ProviderKind::Replicate] {
            assert_eq!(ProviderKind::of(p.name()), Some(p));
            assert!(p.queue_route().starts_with(p.name()));
        }
        assert_eq!(ProviderKind::of("openai"), None);
        assert_eq!(ProviderKind::of("Fal"), None);
    }
}

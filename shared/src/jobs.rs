//! The job state machine. The status values are a contract with existing clients: `queued`, `processing`,
//! `completed`, `failed`, `cancelled`, stored exactly so.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Submitted to fal's queue; the webhook (or the reconciler) will finish it.
    Queued,
    /// Running on fal's sync host.
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Terminal jobs are never changed again (unlike the original, a later success does not revive `failed`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The legal transitions: queued → processing (sync fallback); queued|processing → any terminal state.
    pub fn can_become(self, next: JobStatus) -> bool {
        match (self, next) {
            (JobStatus::Queued, JobStatus::Processing) => true,
            (JobStatus::Queued | JobStatus::Processing, n) => n.is_terminal(),
            _ => false,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SQL list of the statuses a job may leave, for `WHERE status IN (...)` guards.
pub const OPEN_STATUSES_SQL: &str = "('queued', 'processing')";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_strings_are_the_client_contract() {
        let names: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            ["queued", "processing", "completed", "failed", "cancelled"]
        );
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobStatus::parse("uploading"), None);
    }

    #[test]
    fn terminal_jobs_never_move_and_open_jobs_only_move_forward() {
        use JobStatus::*;
        for t in [Completed, Failed, Cancelled] {
            for n in JobStatus::ALL {
                assert!(!t.can_become(n), "{t} -> {n}");
            }
        }
        assert!(Queued.can_become(Processing));
        assert!(!Processing.can_become(Queued));
        for open in [Queued, Processing] {
            for t in [Completed, Failed, Cancelled] {
                assert!(open.can_become(t));
            }
        }
    }
}

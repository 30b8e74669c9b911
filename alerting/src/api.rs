//! The shapes of the server's alerting REST API (`GET /api/v1/alerts`,
//! `/api/v1/alerts/history`, `/api/v1/silences`), shared by the server
//! that writes them and the CLI that reads them. Plain serde data.

use serde::{Deserialize, Serialize};

use crate::model::{MuteReason, Notification};
use crate::silence::SilenceSpec;
use crate::subject::Subject;

/// One open problem (or flapping subject) of `GET /api/v1/alerts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenAlert {
    /// The subject's `Display` form (`check/<fp>/<name>`…), also the
    /// PagerDuty `dedup_key`.
    pub key: String,
    /// What it is about.
    pub subject: Subject,
    /// Why it is not notified now; `None`: it is (or will be) notified.
    pub muted: Option<MuteReason>,
}

/// One silence of `GET /api/v1/silences`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SilenceInfo {
    /// How operators refer to it.
    pub id: u64,
    /// In force now.
    pub active: bool,
    /// What was asked (`ends_ms` moved earlier if it was expired).
    #[serde(flatten)]
    pub spec: SilenceSpec,
}

/// One decided notification batch of `GET /api/v1/alerts/history`: a row
/// of the server's `alert_outbox` (see `server/src/store/alert_outbox.sql`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Row id: newer rows have larger ids.
    pub id: i64,
    /// `<incident_key>#<seq>` of every notification, sorted, joined by ' '.
    pub batch_key: String,
    /// `agent/<fingerprint>` or `site/<tag>`.
    pub group_key: String,
    /// The group's tags when it was decided: what routes match on.
    pub tags: Vec<String>,
    /// The worst status among the notifications: `critical`, `warning`,
    /// `unknown` or `ok`.
    pub severity: String,
    /// At least one.
    pub notifications: Vec<Notification>,
    /// When it was decided, Unix ms.
    pub created_at_ms: i64,
    /// When the notifier routed it to receivers; `None` while waiting.
    #[serde(default)]
    pub routed_at_ms: Option<i64>,
}

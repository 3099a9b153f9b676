//! Versioned JSON documents: the only things that pass between saeperf's processes (a bench and the scheduler, a
//! post and the scheduler, the scheduler and the dashboard). Each carries `"document": KIND` and `"version": N`; a
//! reader accepts its own kind at versions up to the current one, and version 0 (no header) is the shape written
//! before the header existed. The document types themselves live with their writers (bench's `BenchDocument`,
//! service's `PostDocument`, report's `StatusReport`); this module is the one reader they share.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A malformed or foreign document, said in one line.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("not a saeperf {kind} document: {why}")]
    Malformed { kind: &'static str, why: String },
    #[error("a {found:?} document where a saeperf {kind} document was expected")]
    WrongKind { kind: &'static str, found: String },
    #[error("saeperf {kind} document version {found} is newer than this runner reads (up to {reads}); update the runner")]
    TooNew {
        kind: &'static str,
        found: u32,
        reads: u32,
    },
}

/// A document type: its kind and current version.
pub trait Document: Serialize + DeserializeOwned {
    const KIND: &'static str;
    const VERSION: u32;
}

/// The header every document starts with (`"document": KIND, "version": N`), flattened into each document type.
/// Read leniently: a document without it is version 0 of its kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    #[serde(default)]
    pub document: String,
    #[serde(default)]
    pub version: u32,
}

impl Header {
    /// The header a writer of `D` puts on it.
    pub fn of<D: Document>() -> Header {
        Header {
            document: D::KIND.into(),
            version: D::VERSION,
        }
    }
}

/// An error's text on one line.
pub fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string().replace('\n', " ")
}

/// Read a document of type `D` from JSON text, checking its kind and version first.
pub fn parse<D: Document>(text: &str) -> Result<D, DocumentError> {
    let value: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|e| DocumentError::Malformed {
            kind: D::KIND,
            why: one_line(e),
        })?;
    if value.is_object() {
        let h = Header::deserialize(&value).map_err(|e| DocumentError::Malformed {
            kind: D::KIND,
            why: format!("its header: {}", one_line(e)),
        })?;
        if !h.document.is_empty() && h.document != D::KIND {
            return Err(DocumentError::WrongKind {
                kind: D::KIND,
                found: h.document,
            });
        }
        if h.version > D::VERSION {
            return Err(DocumentError::TooNew {
                kind: D::KIND,
                found: h.version,
                reads: D::VERSION,
            });
        }
    }
    serde_json::from_value(value).map_err(|e| DocumentError::Malformed {
        kind: D::KIND,
        why: one_line(e),
    })
}

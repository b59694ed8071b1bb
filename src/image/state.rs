//! The answer to "is this image still its original?", with the reasons when it is not.

use std::fmt;

/// One reason an image is dirty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    NoOriginal,
    OriginalChanged(String),
    OriginalUnreadable(String),
    MarkedDirty,
    DataWritten,
    HeaderField(String),
    AffineChanged,
    ExtensionChanged(usize),
    LargeExtensionHandedOut(usize),
    ExtensionsAddedOrRemoved,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoOriginal => f.write_str("not loaded from a file"),
            Reason::OriginalChanged(why) => f.write_str(why),
            Reason::OriginalUnreadable(why) => write!(f, "data cannot be read: {why}"),
            Reason::MarkedDirty => f.write_str("marked dirty"),
            Reason::DataWritten => f.write_str("data written"),
            Reason::HeaderField(name) => write!(f, "header field {name} changed"),
            Reason::AffineChanged => f.write_str("affine changed"),
            Reason::ExtensionChanged(i) => write!(f, "extension {i} changed"),
            Reason::LargeExtensionHandedOut(i) => write!(
                f,
                "extension {i} handed out for writing (large extensions are assumed changed)"
            ),
            Reason::ExtensionsAddedOrRemoved => f.write_str("extensions added or removed"),
        }
    }
}

/// Clean, or dirty with its reasons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyState {
    pub reasons: Vec<Reason>,
}

impl DirtyState {
    pub fn is_clean(&self) -> bool {
        self.reasons.is_empty()
    }

    /// Whether the original on disk no longer matches what was loaded.
    pub fn original_changed(&self) -> bool {
        self.reasons
            .iter()
            .any(|r| matches!(r, Reason::OriginalChanged(_)))
    }

    pub fn reason_texts(&self) -> Vec<String> {
        self.reasons.iter().map(Reason::to_string).collect()
    }
}

impl fmt::Display for DirtyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            f.write_str("clean")
        } else {
            write!(f, "dirty: {}", self.reason_texts().join("; "))
        }
    }
}

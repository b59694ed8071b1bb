//! The answer to "is this image still its original?", with the reasons when it is not, and
//! the one tracker of what changed since load that the answer comes from.

use std::collections::BTreeSet;
use std::fmt;

use crate::format::{Affine, Extension, Header};

/// Extensions larger than this are not compared byte for byte: once handed out for writing
/// they count as changed, as nibabel's design note proposes.
pub const LARGE_EXTENSION: usize = 64 * 1024;

/// What changed since load (or since the image was last marked clean): the header, the affine
/// and small extensions are kept as they were and compared when asked; data and large
/// extensions handed out for writing, and the user's override, are recorded as they happen.
#[derive(Clone, Debug)]
pub struct Tracker {
    header: Header,
    affine: Affine,
    /// Small extensions by content; large ones by code only.
    extensions: Vec<(i32, Option<Vec<u8>>)>,
    data_written: bool,
    large_extensions_out: BTreeSet<usize>,
    marked_dirty: bool,
}

impl Tracker {
    /// Everything as it is now counts as unchanged.
    pub fn new(header: &Header, affine: &Affine, extensions: &[Extension]) -> Tracker {
        Tracker {
            header: header.clone(),
            affine: *affine,
            extensions: extensions
                .iter()
                .map(|e| {
                    let small = e.content.len() <= LARGE_EXTENSION;
                    (e.code, small.then(|| e.content.clone()))
                })
                .collect(),
            data_written: false,
            large_extensions_out: BTreeSet::new(),
            marked_dirty: false,
        }
    }

    pub fn data_written(&mut self) {
        self.data_written = true;
    }

    /// A large extension was handed out for writing: it counts as changed from now on.
    pub fn large_extension_out(&mut self, index: usize) {
        self.large_extensions_out.insert(index);
    }

    pub fn mark_dirty(&mut self) {
        self.marked_dirty = true;
    }

    /// Why the image differs from what was tracked (the original's side is not seen here).
    pub fn reasons(
        &self,
        header: &Header,
        affine: &Affine,
        extensions: &[Extension],
    ) -> Vec<Reason> {
        let mut reasons = Vec::new();
        if self.marked_dirty {
            reasons.push(Reason::MarkedDirty);
        }
        if self.data_written {
            reasons.push(Reason::DataWritten);
        }
        for name in header.differing_fields(&self.header) {
            reasons.push(Reason::HeaderField(name.to_string()));
        }
        if crate::format::affine::max_abs_diff(affine, &self.affine) > 0.0 {
            reasons.push(Reason::AffineChanged);
        }
        if extensions.len() != self.extensions.len() {
            reasons.push(Reason::ExtensionsAddedOrRemoved);
        }
        for (i, (ext, (code, content))) in extensions.iter().zip(&self.extensions).enumerate() {
            let changed = match content {
                Some(bytes) => ext.code != *code || ext.content != *bytes,
                None => ext.code != *code || self.large_extensions_out.contains(&i),
            };
            if changed {
                reasons.push(if content.is_none() {
                    Reason::LargeExtensionHandedOut(i)
                } else {
                    Reason::ExtensionChanged(i)
                });
            }
        }
        reasons
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{ByteOrder, Flavor, affine};

    fn start() -> (Header, Vec<Extension>, Tracker) {
        let header = Header::new(Flavor::Nifti1, ByteOrder::Little);
        let extensions = vec![
            Extension {
                code: 6,
                content: vec![1; 8],
            },
            Extension {
                code: 4,
                content: vec![2; LARGE_EXTENSION + 8],
            },
        ];
        let tracker = Tracker::new(&header, &affine::IDENTITY, &extensions);
        (header, extensions, tracker)
    }

    #[test]
    fn nothing_changed_gives_no_reason() {
        let (header, extensions, tracker) = start();
        assert_eq!(
            tracker.reasons(&header, &affine::IDENTITY, &extensions),
            vec![]
        );
    }

    #[test]
    fn a_changed_field_and_a_changed_small_extension_are_named() {
        let (mut header, mut extensions, tracker) = start();
        header.set_from_str("descrip", "edited").unwrap();
        extensions[0].content[0] = 9;
        assert_eq!(
            tracker.reasons(&header, &affine::IDENTITY, &extensions),
            vec![
                Reason::HeaderField("descrip".into()),
                Reason::ExtensionChanged(0)
            ]
        );
    }

    #[test]
    fn written_data_a_large_extension_handed_out_and_the_override_count_as_changes() {
        let (header, extensions, mut tracker) = start();
        tracker.data_written();
        tracker.large_extension_out(1);
        tracker.mark_dirty();
        assert_eq!(
            tracker.reasons(&header, &affine::IDENTITY, &extensions),
            vec![
                Reason::MarkedDirty,
                Reason::DataWritten,
                Reason::LargeExtensionHandedOut(1)
            ]
        );
    }
}

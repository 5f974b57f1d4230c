//! Why a file could not be prepared. Every failure has a stable kind; the reason recorded
//! against the job is `"<kind>: <detail>"`, e.g. `truncated: jpeg data ends before its end marker`.

use std::fmt;

/// The kinds of failure a file can end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The file has no bytes.
    Empty,
    /// The data ends before the format says it should.
    Truncated,
    /// The data is damaged (bad markers, bad checksums, impossible values).
    Corrupt,
    /// An image, but of a format or variant this stage does not decode (HEIC, AVIF, …).
    Unsupported,
    /// Over the file size limit, or declares more pixels / memory than the decoder limits allow.
    TooLarge,
    /// The file exists but cannot be read (permissions, a directory, an I/O error).
    Unreadable,
    /// The file was there at scan time and is gone now.
    Vanished,
    /// The content is not an image format at all.
    NotAnImage,
}

impl FailureKind {
    pub const ALL: [FailureKind; 8] = [
        Self::Empty,
        Self::Truncated,
        Self::Corrupt,
        Self::Unsupported,
        Self::TooLarge,
        Self::Unreadable,
        Self::Vanished,
        Self::NotAnImage,
    ];

    /// Stable code, the prefix of every recorded reason.
    pub fn code(self) -> &'static str {
        match self {
            Self::Empty => "zero-byte",
            Self::Truncated => "truncated",
            Self::Corrupt => "corrupt",
            Self::Unsupported => "unsupported",
            Self::TooLarge => "too-large",
            Self::Unreadable => "unreadable",
            Self::Vanished => "vanished",
            Self::NotAnImage => "not-an-image",
        }
    }

    /// The kind a recorded reason starts with.
    pub fn of_reason(reason: &str) -> Option<Self> {
        let code = reason.split(':').next()?;
        Self::ALL.into_iter().find(|k| k.code() == code)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A file that ends as failed, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct FileFailure {
    pub kind: FailureKind,
    pub detail: String,
}

impl FileFailure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_to_their_kind() {
        for kind in FailureKind::ALL {
            let reason = FileFailure::new(kind, "detail: with a colon").to_string();
            assert_eq!(FailureKind::of_reason(&reason), Some(kind), "{reason}");
        }
        assert_eq!(FailureKind::of_reason("something else"), None);
    }
}

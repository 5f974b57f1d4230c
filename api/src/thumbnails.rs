//! Thumbnails of original files (`GET /images/{id}/thumbnail`), by the CPU stage's decoder
//! (size limits, EXIF orientation) from `imgfleet-imaging`.

use imgfleet_imaging::decode::DecodeLimits;
use imgfleet_imaging::hash::DEFAULT_MAX_FILE_BYTES;

use crate::state::Thumbnailer;

pub struct CpuThumbnailer {
    limits: DecodeLimits,
    max_file_bytes: u64,
}

impl CpuThumbnailer {
    /// Within these limits (the CPU stage's, where one process runs both).
    pub fn new(limits: DecodeLimits, max_file_bytes: u64) -> Self {
        Self { limits, max_file_bytes }
    }
}

impl Default for CpuThumbnailer {
    /// The CPU stage's default limits.
    fn default() -> Self {
        Self::new(DecodeLimits::default(), DEFAULT_MAX_FILE_BYTES)
    }
}

impl Thumbnailer for CpuThumbnailer {
    fn render(&self, bytes: &[u8], max_side: u32) -> Result<Vec<u8>, String> {
        imgfleet_imaging::thumbnail::render_bytes(bytes, max_side, self.limits).map(|t| t.jpeg).map_err(|e| e.to_string())
    }

    fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
    }
}

//! Thumbnails of original files (`GET /images/{id}/thumbnail`), by the CPU stage's decoder
//! (size limits, EXIF orientation). The CPU worker crate has no libtorch in it: the API links
//! it for this alone.

use imgfleet_worker_cpu::CpuStageConfig;
use imgfleet_worker_cpu::decode::DecodeLimits;

use crate::state::Thumbnailer;

pub struct CpuThumbnailer {
    limits: DecodeLimits,
    max_file_bytes: u64,
}

impl CpuThumbnailer {
    /// With the CPU stage's size limits.
    pub fn new(config: &CpuStageConfig) -> Self {
        Self { limits: config.prepare_options().limits, max_file_bytes: config.max_file_bytes }
    }
}

impl Thumbnailer for CpuThumbnailer {
    fn render(&self, bytes: &[u8], max_side: u32) -> Result<Vec<u8>, String> {
        imgfleet_worker_cpu::thumbnail::render_bytes(bytes, max_side, self.limits).map(|t| t.jpeg).map_err(|e| e.to_string())
    }

    fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
    }
}

//! imgfleet-worker-gpu: CLIP embeddings and BLIP captions in `tch`, batch sizing from the
//! device, and the seed's ML inference API.
//!
//! Not built yet: this crate holds its place in the workspace; the CLIP and BLIP issues fill it.

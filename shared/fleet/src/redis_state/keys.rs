//! The key names of the layout in the module documentation, all under the store's prefix, and
//! how a collection name or job id is written into one.

use super::RedisStateStore;

/// A key component: unchanged when made of `[A-Za-z0-9_.-]` (collection names, UUIDs),
/// percent-encoded otherwise, so it never contains `:` or a glob character.
pub(super) fn component(s: &str) -> String {
    let safe = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    if s.bytes().all(safe) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if safe(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `s` with the characters `SCAN MATCH` treats specially escaped.
pub(super) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisStateStore {
    pub(super) fn dedup_key(&self, collection: &str, sha256: &str) -> String {
        format!("{}dedup:{}:{}", self.prefix, component(collection), sha256)
    }

    /// The global dedup generation and the collection's (a generation key holds a counter).
    pub(super) fn generation_keys(&self, collection: &str) -> [String; 2] {
        [format!("{}gen", self.prefix), format!("{}gen:{}", self.prefix, component(collection))]
    }

    pub(super) fn active_key(&self) -> String {
        format!("{}jobs:active", self.prefix)
    }

    pub(super) fn finished_key(&self) -> String {
        format!("{}jobs:finished", self.prefix)
    }

    pub(super) fn job_key(&self, job_id: &str) -> String {
        format!("{}job:{}", self.prefix, component(job_id))
    }

    pub(super) fn items_key(&self, job_id: &str) -> String {
        format!("{}job:{}:items", self.prefix, component(job_id))
    }

    pub(super) fn log_key(&self, job_id: &str) -> String {
        format!("{}job:{}:log", self.prefix, component(job_id))
    }

    pub(super) fn jobs_key(&self) -> String {
        format!("{}jobs", self.prefix)
    }

    pub(super) fn active_collection_key(&self) -> String {
        format!("{}active_collection", self.prefix)
    }

    /// Where a job record that cannot be read is set aside.
    pub(super) fn damaged_job_key(&self, job_id: &str) -> String {
        format!("{}damaged:job:{}", self.prefix, component(job_id))
    }

    /// A collection's source index: the sorted set of its paths (all scores 0, so in byte
    /// order for `ZRANGEBYLEX`) and the hash of their entries.
    pub(super) fn source_keys(&self, collection: &str) -> [String; 2] {
        let c = component(collection);
        [format!("{}src:{c}:paths", self.prefix), format!("{}src:{c}:entries", self.prefix)]
    }

    /// The `SCAN MATCH` pattern of every collection's source index keys.
    pub(super) fn source_pattern(&self) -> String {
        format!("{}src:*", glob_escape(&self.prefix))
    }

    pub(super) fn watches_key(&self) -> String {
        format!("{}watches", self.prefix)
    }

    /// The `SCAN MATCH` pattern of the dedup entries of `collection`, or of every collection.
    pub(super) fn dedup_pattern(&self, collection: Option<&str>) -> String {
        match collection {
            Some(c) => format!("{}dedup:{}:*", glob_escape(&self.prefix), glob_escape(&component(c))),
            None => format!("{}dedup:*", glob_escape(&self.prefix)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_never_hold_separators_or_globs() {
        assert_eq!(component("images_2024-x.y"), "images_2024-x.y");
        assert_eq!(component("a:b*"), "a%3Ab%2A");
        assert_eq!(component("é"), "%C3%A9");
        assert_eq!(glob_escape("img:*[x]"), "img:\\*\\[x\\]");
    }
}

//! Reading deploy-time settings from the environment, or from a stand-in
//! for it (`from_vars`): what the cache's and the rate limits' settings
//! share.

/// Variables read through `F` (`std::env::var`, or a test's table).
pub(crate) struct Vars<F>(pub(crate) F);

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    /// The variable, trimmed; `None` when unset or blank.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// The variable lower-cased: a backend's or a mode's name.
    pub(crate) fn name(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| v.to_ascii_lowercase())
    }
}

/// A Redis URL for a `Debug` string: its password (`redis://user:pass@…`)
/// replaced by `***`.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            let hidden = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{}{hidden}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn a_url_in_debug_output_has_no_password() {
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redacted("redis://app:s3cret@10.0.0.1:6379/0"),
            "redis://app:***@10.0.0.1:6379/0"
        );
        assert_eq!(redacted("rediss://s3cret@host"), "rediss://***@host");
    }
}

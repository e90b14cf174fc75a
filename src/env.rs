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

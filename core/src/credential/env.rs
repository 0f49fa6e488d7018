//! Where environment variables come from: the process, or a map (tests, sidecar config).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A source of environment variables.
///
/// [`EnvVars::process`] reads the process environment on each lookup; [`EnvVars::from_map`]
/// answers from a fixed map, so tests (which run in parallel) never mutate the process
/// environment. Empty values count as unset. `Debug` lists names, never values.
#[derive(Clone, Default)]
pub struct EnvVars(Option<Arc<HashMap<String, String>>>);

impl EnvVars {
    /// The process environment.
    pub fn process() -> Self {
        EnvVars(None)
    }

    /// A fixed set of variables; nothing else is visible.
    pub fn from_map<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        EnvVars(Some(Arc::new(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )))
    }

    /// The value of `name`, or `None` when unset, empty or not Unicode.
    pub fn get(&self, name: &str) -> Option<String> {
        let value = match &self.0 {
            None => std::env::var(name).ok(),
            Some(map) => map.get(name).cloned(),
        };
        value.filter(|v| !v.trim().is_empty())
    }

    /// True when `name` has a non-empty value.
    pub fn is_set(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

impl fmt::Debug for EnvVars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("EnvVars(process)"),
            Some(map) => {
                let mut names: Vec<&String> = map.keys().collect();
                names.sort();
                f.debug_tuple("EnvVars").field(&names).finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_source_hides_values_and_treats_empty_as_unset() {
        let env = EnvVars::from_map([("A", "secret-value"), ("EMPTY", " ")]);
        assert_eq!(env.get("A").as_deref(), Some("secret-value"));
        assert!(!env.is_set("EMPTY"));
        assert!(!env.is_set("PATH"), "a map source does not see the process");
        let debug = format!("{env:?}");
        assert!(
            debug.contains('A') && !debug.contains("secret-value"),
            "{debug}"
        );
    }
}

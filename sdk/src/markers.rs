//! Helpers for the marker hooks (`Engine::write_marker`, `Engine::read_markers`), which the
//! conformance kit uses to count lost writes: answers in the order the keys were asked, and
//! the place markers are kept apart from users' data.

use std::collections::HashMap;

/// Where engines keep markers, apart from users' data: a schema or database, a key prefix,
/// a path (`shoal`, `shoal:marker:<key>`, `/shoal/markers/<key>`).
pub const NAMESPACE: &str = "shoal";

/// The answer of `read_markers`: for each of `keys`, in order, its value among `found`
/// (pairs of key and value, any order; keys not asked for are ignored).
pub fn in_key_order(
    keys: &[String],
    found: impl IntoIterator<Item = (String, String)>,
) -> Vec<Option<String>> {
    let by_key: HashMap<String, String> = found.into_iter().collect();
    keys.iter().map(|k| by_key.get(k).cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_the_keys_asked() {
        let keys = ["a".to_string(), "b".to_string(), "c".to_string()];
        let found = [
            ("c".to_string(), "3".to_string()),
            ("a".to_string(), "1".to_string()),
            ("z".to_string(), "26".to_string()),
        ];
        assert_eq!(
            in_key_order(&keys, found),
            vec![Some("1".to_string()), None, Some("3".to_string())]
        );
    }
}

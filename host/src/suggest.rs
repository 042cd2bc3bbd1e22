//! "Did you mean …?": the declared name nearest to a name that is not declared, for the messages of strict
//! connector inputs and of the linter.

/// The most edits a suggestion may be away from the name given.
const MAX_EDITS: usize = 2;

/// The candidate nearest to `name`: one that differs only in case first, else the one fewest edits away
/// (insertions, deletions, substitutions and swaps of neighbours), at most two edits and at most half the
/// length of the shorter name (so that `id` is not "near" `ab`). Ties go to the earlier candidate. `None`
/// when nothing is close, or when `name` is itself a candidate.
pub fn nearest<'a, I>(name: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let candidates: Vec<&str> = candidates.into_iter().collect();
    if candidates.contains(&name) {
        return None;
    }
    if let Some(same) = candidates.iter().find(|c| c.to_lowercase() == name.to_lowercase()) {
        return Some(same);
    }
    let length = |s: &str| s.chars().count();
    candidates
        .iter()
        .map(|c| (strsim::osa_distance(name, c), *c))
        .filter(|(edits, c)| *edits <= MAX_EDITS && *edits * 2 <= length(name).min(length(c)))
        .min_by_key(|(edits, _)| *edits)
        .map(|(_, c)| c)
}

/// Names as a message lists them: `` `a`, `b`, `c` ``.
pub fn quoted_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_case_wins_over_fewer_edits() {
        assert_eq!(nearest("identitytype", ["identityValue", "identityType"]), Some("identityType"));
        assert_eq!(nearest("customerID", ["customerId", "customer"]), Some("customerId"));
        // `Points` is one edit from `points` but another case of `POINTS`, which wins.
        assert_eq!(nearest("Points", ["points2", "POINTS"]), Some("POINTS"));
    }

    #[test]
    fn one_or_two_edits_are_close() {
        let declared = ["eventName", "eventType", "payload", "identityType", "identityValue"];
        assert_eq!(nearest("paylod", declared), Some("payload"));
        assert_eq!(nearest("payloda", declared), Some("payload"));
        assert_eq!(nearest("evntNme", declared), Some("eventName"));
        assert_eq!(nearest("eventTpye", declared), Some("eventType"), "a swap of neighbours is one edit");
        // The fewest edits win; ties go to the first declared.
        assert_eq!(nearest("eventNam", ["eventName", "eventNa"]), Some("eventName"));
        assert_eq!(nearest("ab", ["ac", "ad"]), Some("ac"));
    }

    #[test]
    fn nothing_is_suggested_when_nothing_is_close() {
        assert_eq!(nearest("name", ["workspace", "nameOptional"]), None, "eight edits away");
        assert_eq!(nearest("paylaod_data", ["payload"]), None);
        assert_eq!(nearest("ab", ["id"]), None, "two edits are the whole of a short name");
        assert_eq!(nearest("x", ["y"]), None);
        assert_eq!(nearest("anything", std::iter::empty()), None);
        assert_eq!(nearest("payload", ["payload", "paylod"]), None, "a declared name needs no suggestion");
    }

    #[test]
    fn lists_are_quoted() {
        assert_eq!(quoted_list(["workspace", "nameOptional"]), "`workspace`, `nameOptional`");
        assert_eq!(quoted_list([]), "");
    }
}

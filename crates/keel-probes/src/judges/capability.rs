//! Capability: does the answer contain one of the accepted answers, as a
//! whole word or phrase (case-insensitive)? "4" matches "The answer is 4."
//! but not "14".

/// Whether `answer` contains any of `accepted` between word boundaries.
pub fn correct(answer: &str, accepted: &[String]) -> bool {
    let text = answer.to_lowercase();
    accepted.iter().any(|a| {
        let a = a.to_lowercase();
        text.match_indices(&a).any(|(at, m)| {
            let before = text[..at].chars().next_back();
            let after = text[at + m.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(answer: &str, accepted: &[&str]) -> bool {
        correct(
            answer,
            &accepted.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn whole_word_case_insensitive_match() {
        assert!(ok("The capital of France is Paris.", &["Paris"]));
        assert!(ok("PARIS", &["paris"]));
        assert!(ok("6 x 7 = 42", &["42", "forty-two"]));
        assert!(ok("It is forty-two.", &["42", "forty-two"]));
        assert!(!ok("The answer is 142.", &["42"]));
        assert!(!ok("Parisian cafés", &["Paris"]));
        assert!(!ok("", &["Paris"]));
        // A later whole-word occurrence counts even if an earlier one is part of a word.
        assert!(ok("Not 14, but 4.", &["4"]));
    }
}

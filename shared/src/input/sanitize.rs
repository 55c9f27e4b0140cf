//! Prompt sanitisation (§2.4 step 1): a fixed table of whole-word, case-insensitive substitutions, then
//! whitespace collapsed. Only the prompt sent to fal is sanitised; `jobs.original_prompt` keeps the raw text.

/// `(pattern, replacement)`, applied in order, each once over the whole prompt. The original's exact list is not
/// recorded; this one keeps its two families (age terms made adult, suggestive/animation phrases softened).
/// A phrase must come before any shorter pattern it contains ("pre-teen" before "teen"), and no replacement may
/// contain a pattern (so sanitising twice changes nothing); both are checked by the tests.
pub const SUBSTITUTIONS: &[(&str, &str)] = &[
    // Suggestive phrases about age.
    ("barely legal", "adult"),
    ("jailbait", "adult"),
    ("child-like", "youthful"),
    ("childlike", "youthful"),
    ("baby face", "youthful face"),
    // Animation/anime age tropes.
    ("loli", "adult woman"),
    ("lolita", "adult woman"),
    ("shota", "adult man"),
    // Age terms.
    ("underage", "adult"),
    ("pre-teen", "adult"),
    ("preteen", "adult"),
    ("schoolgirls", "young women"),
    ("schoolgirl", "young woman"),
    ("schoolboys", "young men"),
    ("schoolboy", "young man"),
    ("young girl", "young woman"),
    ("young boy", "young man"),
    ("little girl", "woman"),
    ("little boy", "man"),
    ("teenagers", "young adults"),
    ("teenager", "young adult"),
    ("teenage", "young adult"),
    ("teens", "young adults"),
    ("teen", "young adult"),
    ("adolescents", "young adults"),
    ("adolescent", "young adult"),
    ("minors", "adults"),
    ("minor", "adult"),
    ("children", "adults"),
    ("child", "adult"),
    ("kids", "adults"),
    ("kid", "adult"),
];

/// The prompt as fal receives it.
pub fn sanitize_prompt(prompt: &str) -> String {
    let mut text = collapse_whitespace(prompt);
    for (pattern, replacement) in SUBSTITUTIONS {
        text = replace_whole_word(&text, pattern, replacement);
    }
    collapse_whitespace(&text)
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Word characters as in a regex `\w` (Unicode letters and digits, `_`): a match must not touch one on either side.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Replaces every whole-word, ASCII-case-insensitive occurrence of `pattern` (ASCII, non-empty) in `text`.
fn replace_whole_word(text: &str, pattern: &str, replacement: &str) -> String {
    if pattern.is_empty() || !pattern.is_ascii() {
        return text.to_owned();
    }
    // ASCII lowercasing keeps every byte offset, so positions found in `lower` are valid in `text`; a match starts
    // and ends on ASCII bytes, so every offset used below is a char boundary.
    let lower = text.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = lower.get(from..).and_then(|rest| rest.find(&pattern)) {
        let start = from + found;
        let end = start + pattern.len();
        let before = text.get(..start).and_then(|s| s.chars().next_back());
        let after = text.get(end..).and_then(|s| s.chars().next());
        if before.is_none_or(|c| !is_word_char(c)) && after.is_none_or(|c| !is_word_char(c)) {
            out.push_str(text.get(copied..start).unwrap_or_default());
            out.push_str(replacement);
            copied = end;
            from = end;
        } else {
            from = start + 1;
        }
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_terms_become_adult_terms_case_insensitively() {
        assert_eq!(
            sanitize_prompt("A TEEN on a beach"),
            "A young adult on a beach"
        );
        assert_eq!(
            sanitize_prompt("two Teenagers and a Child"),
            "two young adults and a adult"
        );
        assert_eq!(
            sanitize_prompt("a schoolgirl, a young boy"),
            "a young woman, a young man"
        );
    }

    #[test]
    fn substitutions_match_whole_words_only() {
        assert_eq!(
            sanitize_prompt("kidney beans, minority report"),
            "kidney beans, minority report"
        );
        assert_eq!(sanitize_prompt("the kid's kite"), "the adult's kite");
        assert_eq!(
            sanitize_prompt("teen_x teen2 teen."),
            "teen_x teen2 young adult."
        );
    }

    #[test]
    fn hyphenated_phrases_are_replaced_before_their_parts() {
        assert_eq!(
            sanitize_prompt("a pre-teen with child-like eyes"),
            "a adult with youthful eyes"
        );
    }

    #[test]
    fn suggestive_phrases_are_softened() {
        assert_eq!(
            sanitize_prompt("barely legal jailbait, anime loli"),
            "adult adult, anime adult woman"
        );
    }

    #[test]
    fn whitespace_is_collapsed_and_trimmed() {
        assert_eq!(
            sanitize_prompt("  a\tcat \n\n on   a mat  "),
            "a cat on a mat"
        );
        assert_eq!(sanitize_prompt("young \n girl"), "young woman");
    }

    #[test]
    fn non_ascii_text_around_matches_is_kept_intact() {
        assert_eq!(sanitize_prompt("ça teen — café"), "ça young adult — café");
        // A letter from another script is a word character: no boundary there.
        assert_eq!(sanitize_prompt("éteen"), "éteen");
        assert_eq!(sanitize_prompt("日本のteen"), "日本のteen");
    }

    #[test]
    fn sanitising_twice_changes_nothing() {
        for (pattern, _) in SUBSTITUTIONS {
            let once = sanitize_prompt(&format!("a {pattern} b {}", pattern.to_uppercase()));
            assert_eq!(sanitize_prompt(&once), once, "pattern {pattern:?}");
        }
    }

    #[test]
    fn every_pattern_is_replaced_and_phrases_precede_the_words_they_contain() {
        for (i, (pattern, replacement)) in SUBSTITUTIONS.iter().enumerate() {
            assert!(!pattern.is_empty() && pattern.is_ascii());
            assert_eq!(
                sanitize_prompt(pattern),
                *replacement,
                "pattern {pattern:?}"
            );
            for (later, _) in &SUBSTITUTIONS[i + 1..] {
                assert_eq!(
                    replace_whole_word(later, pattern, "X"),
                    *later,
                    "{pattern:?} shadows {later:?}"
                );
            }
        }
    }

    #[test]
    fn the_table_has_about_thirty_entries() {
        assert!((25..=35).contains(&SUBSTITUTIONS.len()));
    }
}

//! Caption text rules: the one place where caption text is normalised.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Token that starts every training caption (the tutorial's `startseq`).
pub const START_TOKEN: &str = "startseq";
/// Token that ends every training caption (the tutorial's `endseq`).
pub const END_TOKEN: &str = "endseq";

/// How caption text is normalised before it is used anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextRules {
    /// The original tutorial's cleaning, exactly: lowercase, strip ASCII punctuation from each
    /// token, drop tokens of length <= 1, drop tokens that are not purely alphabetic.
    /// Reproduces the tutorial's figures; drops every "a", so captions read badly.
    #[default]
    Original,
    /// Lowercase, strip ASCII punctuation, drop tokens left empty, keep every other word
    /// ("a" and "2" survive). Comparable with published (coco-caption) results.
    Standard,
}

impl TextRules {
    pub const ALL: [TextRules; 2] = [TextRules::Original, TextRules::Standard];

    pub fn name(self) -> &'static str {
        match self {
            TextRules::Original => "original",
            TextRules::Standard => "standard",
        }
    }
}

impl fmt::Display for TextRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for an unknown text-rules name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown text rules {0:?}: expected \"original\" or \"standard\"")]
pub struct UnknownTextRules(pub String);

impl FromStr for TextRules {
    type Err = UnknownTextRules;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "original" => Ok(TextRules::Original),
            "standard" => Ok(TextRules::Standard),
            other => Err(UnknownTextRules(other.to_owned())),
        }
    }
}

/// Whitespace as Python's `str.split()` sees it: Unicode White_Space plus the four
/// information separators U+001C..U+001F, which Python also splits on. Every
/// Python-compatible figure (cleaning, BLEU tokens) depends on splitting the same way.
pub fn is_py_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.split()` without arguments: split on runs of whitespace, no empty tokens.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_whitespace).filter(|t| !t.is_empty())
}

/// Python's `str.isalpha()`: non-empty and every character is a letter.
fn is_py_alpha(token: &str) -> bool {
    !token.is_empty() && token.chars().all(char::is_alphabetic)
}

/// Normalise one raw caption into space-separated tokens, without special tokens.
pub fn clean_caption(raw: &str, rules: TextRules) -> String {
    let mut out = String::with_capacity(raw.len());
    for token in py_split(raw) {
        let word: String = token
            .to_lowercase()
            .chars()
            .filter(|c| !c.is_ascii_punctuation())
            .collect();
        let keep = match rules {
            // `len(word) > 1` counts code points in Python.
            TextRules::Original => word.chars().count() > 1 && is_py_alpha(&word),
            TextRules::Standard => !word.is_empty(),
        };
        if keep {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&word);
        }
    }
    out
}

/// Wrap a cleaned caption in the start and end tokens, as the tutorial's
/// `'startseq ' + desc + ' endseq'` (tokens split the same way afterwards).
pub fn wrap(clean: &str) -> String {
    if clean.is_empty() {
        format!("{START_TOKEN} {END_TOKEN}")
    } else {
        format!("{START_TOKEN} {clean} {END_TOKEN}")
    }
}

/// Drop the special tokens from a tokenised caption (for display and coco-protocol BLEU).
pub fn strip_special<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    tokens
        .into_iter()
        .filter(|t| *t != START_TOKEN && *t != END_TOKEN)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_rules_match_the_tutorial() {
        let raw = "A child in a pink dress is climbing up a set of stairs in an entry way .";
        assert_eq!(
            clean_caption(raw, TextRules::Original),
            "child in pink dress is climbing up set of stairs in an entry way"
        );
        // Punctuation is removed inside tokens; digits make a token non-alphabetic; "'s" dies.
        assert_eq!(
            clean_caption(
                "Two dogs' toys , 2 balls and the dog's R2D2 .",
                TextRules::Original
            ),
            "two dogs toys balls and the dogs"
        );
        // Hyphens join words: "black-and-white" becomes one token.
        assert_eq!(
            clean_caption("A black-and-white dog", TextRules::Original),
            "blackandwhite dog"
        );
    }

    #[test]
    fn standard_rules_keep_every_word() {
        assert_eq!(
            clean_caption("A man with 2 dogs ' s .", TextRules::Standard),
            "a man with 2 dogs s"
        );
        assert_eq!(clean_caption("  . , !  ", TextRules::Standard), "");
        assert_eq!(
            clean_caption("Über CAFÉ-Bar", TextRules::Standard),
            "über cafébar"
        );
    }

    #[test]
    fn python_whitespace_includes_separators() {
        let tokens: Vec<_> = py_split("a\u{1c}b\u{a0}c\td  e\n").collect();
        assert_eq!(tokens, ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn wrapping_and_stripping() {
        assert_eq!(wrap("dog runs"), "startseq dog runs endseq");
        assert_eq!(wrap(""), "startseq endseq");
        let wrapped = wrap("dog runs");
        assert_eq!(strip_special(py_split(&wrapped)), ["dog", "runs"]);
    }

    #[test]
    fn rules_parse_and_print() {
        for rules in TextRules::ALL {
            assert_eq!(rules.name().parse::<TextRules>(), Ok(rules));
        }
        let err = "Original".parse::<TextRules>().unwrap_err();
        assert!(err.to_string().contains("\"original\" or \"standard\""));
    }
}

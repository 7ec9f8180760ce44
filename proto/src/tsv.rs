//! Caption TSV files: `image_id<TAB>caption` per line, UTF-8. Used for BLEU references and
//! hypotheses and for the predictions both halves write.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TsvError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {problem}")]
    Malformed {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// One line of a caption TSV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionLine {
    pub image_id: String,
    /// The caption exactly as written (may be empty).
    pub caption: String,
    /// 1-based line number, for error messages.
    pub line: usize,
}

/// Parse caption TSV text. Every line needs a tab; the id must not be empty; a caption may
/// be empty. A final newline is optional and `\r\n` endings are accepted.
pub fn parse(text: &str, origin: &Path) -> Result<Vec<CaptionLine>, TsvError> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    body.split('\n')
        .enumerate()
        .map(|(i, raw)| {
            let line = i + 1;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let malformed = |problem: String| TsvError::Malformed {
                path: origin.to_owned(),
                line,
                problem,
            };
            let (id, caption) = raw.split_once('\t').ok_or_else(|| {
                malformed(format!(
                    "no tab in {raw:?}: expected `image_id<TAB>caption`"
                ))
            })?;
            if id.trim().is_empty() {
                return Err(malformed("empty image id before the tab".into()));
            }
            Ok(CaptionLine {
                image_id: id.to_owned(),
                caption: caption.to_owned(),
                line,
            })
        })
        .collect()
}

/// Read and parse a caption TSV file.
pub fn read(path: &Path) -> Result<Vec<CaptionLine>, TsvError> {
    let text = std::fs::read_to_string(path).map_err(|source| TsvError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Group reference lines by image id (several lines per id), keeping file order within an id.
pub fn group_references(lines: Vec<CaptionLine>) -> HashMap<String, Vec<String>> {
    let mut refs: HashMap<String, Vec<String>> = HashMap::new();
    for line in lines {
        refs.entry(line.image_id).or_default().push(line.caption);
    }
    refs
}

/// Write `image_id<TAB>caption` lines.
pub fn format<'a>(rows: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (id, caption) in rows {
        out.push_str(id);
        out.push('\t');
        out.push_str(caption);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_with_empty_captions() {
        let lines = parse("a\tdog runs\r\nb\t\n", Path::new("h.tsv")).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].caption, "dog runs");
        assert_eq!(lines[1].caption, "");
        assert_eq!(lines[1].line, 2);
        assert!(parse("", Path::new("e.tsv")).unwrap().is_empty());
    }

    #[test]
    fn missing_tab_names_file_and_line() {
        let err = parse("a\tok\nb dog\n", Path::new("refs.tsv")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("refs.tsv:2: no tab"), "{msg}");
        let err = parse("\tcaption\n", Path::new("r.tsv")).unwrap_err();
        assert!(err.to_string().contains("r.tsv:1: empty image id"));
    }

    #[test]
    fn round_trip_through_format() {
        let text = format([("a", "x y"), ("b", "")]);
        let lines = parse(&text, Path::new("p.tsv")).unwrap();
        assert_eq!(lines[0].image_id, "a");
        assert_eq!(lines[1].caption, "");
        let refs = group_references(lines);
        assert_eq!(refs["a"], ["x y"]);
    }
}

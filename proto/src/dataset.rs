//! The Flickr8k layout: token file, split files and image folder, parsed exactly as the
//! original tutorial reads them.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::text::{clean_caption, py_split, TextRules};

/// Folder of the text files, relative to the dataset root.
pub const TEXT_DIR: &str = "Flickr8k_text";
/// Folder of the images (the official misspelling).
pub const IMAGE_DIR: &str = "Flicker8k_Dataset";
/// Caption file: `<file>.jpg#<n>\t<caption>` per line.
pub const TOKEN_FILE: &str = "Flickr8k.token.txt";

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
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
    #[error("{path} is not a Flickr8k folder: {problem}")]
    Layout { path: PathBuf, problem: String },
}

/// One of the official splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Dev, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }

    /// The split's file name inside [`TEXT_DIR`].
    pub fn file_name(self) -> &'static str {
        match self {
            Split::Train => "Flickr_8k.trainImages.txt",
            Split::Dev => "Flickr_8k.devImages.txt",
            Split::Test => "Flickr_8k.testImages.txt",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown split {0:?}: expected \"train\", \"dev\" or \"test\"")]
pub struct UnknownSplit(pub String);

impl FromStr for Split {
    type Err = UnknownSplit;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Split::ALL
            .into_iter()
            .find(|split| split.name() == s)
            .ok_or_else(|| UnknownSplit(s.to_owned()))
    }
}

/// The tutorial's image id: the file name up to the first `.`.
pub fn image_id(file_name: &str) -> &str {
    file_name.split('.').next().unwrap_or(file_name)
}

/// One image of the token file with its raw captions, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageCaptions {
    pub id: String,
    /// The image file name as the token file names it (before `#n`), e.g. `1000268201_693b08cb0e.jpg`.
    pub file_name: String,
    pub captions: Vec<String>,
}

/// Parse the token file text as the tutorial's `load_descriptions`: lines shorter than 2
/// characters are skipped, the first whitespace token names the image, the rest is the
/// caption. Images keep the order of their first appearance; captions keep file order.
pub fn parse_token_file(text: &str, origin: &Path) -> Result<Vec<ImageCaptions>, DatasetError> {
    let mut images: Vec<ImageCaptions> = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    for (number, line) in text.split('\n').enumerate() {
        if line.chars().count() < 2 {
            continue;
        }
        let mut tokens = py_split(line);
        let Some(name) = tokens.next() else {
            return Err(DatasetError::Malformed {
                path: origin.to_owned(),
                line: number + 1,
                problem: "line holds only whitespace; expected `<file>.jpg#<n>\\t<caption>`".into(),
            });
        };
        let caption = tokens.collect::<Vec<_>>().join(" ");
        let file_name = name.split('#').next().unwrap_or(name);
        let id = image_id(name);
        let slot = *position.entry(id.to_owned()).or_insert_with(|| {
            images.push(ImageCaptions {
                id: id.to_owned(),
                file_name: file_name.to_owned(),
                captions: Vec::new(),
            });
            images.len() - 1
        });
        images[slot].captions.push(caption);
    }
    Ok(images)
}

/// Parse a split file as the tutorial's `load_set`: every non-empty line's id, in file
/// order, without repeats.
pub fn parse_split_file(text: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    text.split('\n')
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty())
        .map(|line| image_id(line).to_owned())
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

/// A Flickr8k folder read into memory (text only; images stay on disk).
#[derive(Debug, Clone)]
pub struct Flickr8k {
    pub root: PathBuf,
    /// Every image of the token file, in first-appearance order.
    pub images: Vec<ImageCaptions>,
    /// Split ids in file order (train, dev, test).
    pub splits: HashMap<Split, Vec<String>>,
    /// Ids whose image file is not in [`IMAGE_DIR`] (reported, not fatal).
    pub missing_images: Vec<String>,
    /// Split ids that have no caption in the token file (reported, not fatal).
    pub split_ids_without_captions: Vec<(Split, String)>,
}

fn read_text(path: &Path) -> Result<String, DatasetError> {
    std::fs::read_to_string(path).map_err(|source| DatasetError::Read {
        path: path.to_owned(),
        source,
    })
}

impl Flickr8k {
    pub fn token_path(root: &Path) -> PathBuf {
        root.join(TEXT_DIR).join(TOKEN_FILE)
    }

    pub fn split_path(root: &Path, split: Split) -> PathBuf {
        root.join(TEXT_DIR).join(split.file_name())
    }

    pub fn image_dir(&self) -> PathBuf {
        self.root.join(IMAGE_DIR)
    }

    pub fn image_path(&self, image: &ImageCaptions) -> PathBuf {
        self.image_dir().join(&image.file_name)
    }

    /// Read the token file and the three split files under `root`, and check which images exist.
    pub fn load(root: &Path) -> Result<Flickr8k, DatasetError> {
        if !root.is_dir() {
            return Err(DatasetError::Layout {
                path: root.to_owned(),
                problem: "no such directory".into(),
            });
        }
        let token_path = Self::token_path(root);
        let images = parse_token_file(&read_text(&token_path)?, &token_path)?;
        let mut splits = HashMap::new();
        for split in Split::ALL {
            let path = Self::split_path(root, split);
            splits.insert(split, parse_split_file(&read_text(&path)?));
        }
        let image_dir = root.join(IMAGE_DIR);
        if !image_dir.is_dir() {
            return Err(DatasetError::Layout {
                path: root.to_owned(),
                problem: format!("image folder {} is missing", image_dir.display()),
            });
        }
        let missing_images = images
            .iter()
            .filter(|img| !image_dir.join(&img.file_name).is_file())
            .map(|img| img.id.clone())
            .collect();
        let known: HashSet<&str> = images.iter().map(|img| img.id.as_str()).collect();
        let split_ids_without_captions = Split::ALL
            .iter()
            .flat_map(|&split| {
                splits[&split]
                    .iter()
                    .filter(|id| !known.contains(id.as_str()))
                    .map(move |id| (split, id.clone()))
            })
            .collect();
        Ok(Flickr8k {
            root: root.to_owned(),
            images,
            splits,
            missing_images,
            split_ids_without_captions,
        })
    }

    /// Ids of a split, in split-file order.
    pub fn split_ids(&self, split: Split) -> &[String] {
        self.splits.get(&split).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Cleaned captions of every image (the tutorial's `descriptions.txt`), token-file order.
    pub fn clean_descriptions(&self, rules: TextRules) -> Vec<(String, Vec<String>)> {
        self.images
            .iter()
            .map(|img| {
                let clean = img
                    .captions
                    .iter()
                    .map(|c| clean_caption(c, rules))
                    .collect();
                (img.id.clone(), clean)
            })
            .collect()
    }
}

/// Keep the descriptions of the ids in `ids`, in description order (the tutorial's
/// `load_clean_descriptions(filename, dataset)`).
pub fn select<'a>(
    descriptions: &'a [(String, Vec<String>)],
    ids: &[String],
) -> Vec<&'a (String, Vec<String>)> {
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    descriptions
        .iter()
        .filter(|(id, _)| wanted.contains(id.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_parsed_like_the_tutorial() {
        let text = "b.jpg#0\tA dog .\na.jpg#0\tA cat\nb.jpg#1\tTwo dogs\n\nx\nc.jpg.1#0\tA bird\n";
        let images = parse_token_file(text, Path::new("t.txt")).unwrap();
        let ids: Vec<_> = images.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["b", "a", "c"]);
        assert_eq!(images[0].captions, ["A dog .", "Two dogs"]);
        assert_eq!(images[2].file_name, "c.jpg.1");
    }

    #[test]
    fn whitespace_only_line_names_file_and_line() {
        let err = parse_token_file("a.jpg#0\tA cat\n   \n", Path::new("tok.txt")).unwrap_err();
        assert!(err.to_string().starts_with("tok.txt:2:"), "{err}");
    }

    #[test]
    fn split_file_keeps_order_and_drops_repeats() {
        let ids = parse_split_file("b.jpg\r\na.jpg\nb.jpg\n\n");
        assert_eq!(ids, ["b", "a"]);
    }

    #[test]
    fn selection_keeps_description_order() {
        let descriptions = vec![
            ("b".to_owned(), vec!["x".to_owned()]),
            ("a".to_owned(), vec!["y".to_owned()]),
        ];
        let picked = select(&descriptions, &["a".to_owned(), "b".to_owned()]);
        assert_eq!(picked[0].0, "b");
    }

    #[test]
    fn split_names_parse() {
        assert_eq!("dev".parse::<Split>(), Ok(Split::Dev));
        assert!("val".parse::<Split>().is_err());
    }

    #[test]
    fn missing_directory_is_a_layout_error() {
        let err = Flickr8k::load(Path::new("/nonexistent/flickr")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/flickr"), "{err}");
    }
}

//! The Brown corpus as plain text: reads the tagged texts (`word/tag` tokens, one sentence per
//! line, a tab-indented line starting a paragraph) straight from the npm tarball, turns them back
//! into readable prose, and splits the 500 documents into train and evaluation sets the same way
//! every time, with every genre on both sides.
//!
//! Detagging rules: keep what precedes the last `/` of each token; `` and '' become a double quote
//! attached to the next / previous word; `. , ; : ? ! ) %` attach to the left, `(` to the right; the
//! corpus doubles every `;` token, so a `;` directly after a `;` is dropped. Paragraphs are joined
//! with a blank line. Document ids are the file names (`ca01` … `cr09`); a document's index is its
//! rank in sorted order, which is what activation sets store as `doc`.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Errors of reading the corpus; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{path}: {what}")]
    Bad { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One Brown text.
#[derive(Debug, Clone)]
pub struct Document {
    /// File name, e.g. `ca01`.
    pub id: String,
    /// Genre letter `a` … `r` (the second character of the id).
    pub genre: char,
    /// The text, paragraphs separated by a blank line.
    pub text: String,
}

/// The whole corpus, documents sorted by id.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub docs: Vec<Document>,
}

/// Which documents go to training and which to evaluation (indices into `Corpus::docs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub eval: Vec<usize>,
}

fn is_text_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 4
        && b[0] == b'c'
        && b[1].is_ascii_lowercase()
        && b[2].is_ascii_digit()
        && b[3].is_ascii_digit()
}

impl Corpus {
    /// Reads the npm tarball (`package/ca01` …) without extracting it.
    pub fn from_tgz(path: &Path) -> Result<Corpus, CorpusError> {
        let io = |source| CorpusError::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::open(path).map_err(io)?;
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
        let mut docs = Vec::new();
        for entry in ar.entries().map_err(io)? {
            let mut entry = entry.map_err(io)?;
            let name = entry
                .path()
                .map_err(io)?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !is_text_name(&name) {
                continue;
            }
            let mut raw = String::new();
            entry
                .read_to_string(&mut raw)
                .map_err(|e| CorpusError::Bad {
                    path: path.to_path_buf(),
                    what: format!("member {name}: {e}"),
                })?;
            docs.push(Document {
                genre: name.as_bytes()[1] as char,
                text: detag(&raw),
                id: name,
            });
        }
        if docs.is_empty() {
            return Err(CorpusError::Bad {
                path: path.to_path_buf(),
                what: "no Brown texts (ca01 …) in the archive".into(),
            });
        }
        docs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Corpus { docs })
    }

    /// Deterministic split: within each genre (documents in id order), every fifth document
    /// starting with the third goes to evaluation. Every genre has at least 6 texts, so each
    /// appears on both sides; about 20% of the documents are for evaluation.
    pub fn split(&self) -> Split {
        let mut train = Vec::new();
        let mut eval = Vec::new();
        let mut rank_in_genre = std::collections::HashMap::<char, usize>::new();
        for (i, d) in self.docs.iter().enumerate() {
            let r = rank_in_genre.entry(d.genre).or_default();
            if *r % 5 == 2 {
                eval.push(i);
            } else {
                train.push(i);
            }
            *r += 1;
        }
        Split { train, eval }
    }
}

/// Turns one tagged Brown file back into text (paragraphs separated by a blank line).
pub fn detag(raw: &str) -> String {
    let mut paragraphs: Vec<Vec<&str>> = Vec::new();
    for line in raw.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with('\t') || paragraphs.is_empty() {
            paragraphs.push(Vec::new());
        }
        let para = paragraphs.last_mut().expect("just pushed");
        for tok in line.split_whitespace() {
            let word = match tok.rfind('/') {
                Some(i) if i > 0 => &tok[..i],
                _ => tok,
            };
            if word == ";" && para.last() == Some(&";") {
                continue;
            }
            para.push(word);
        }
    }
    paragraphs
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| join_words(p))
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn join_words(words: &[&str]) -> String {
    let mut out = String::new();
    // Whether the next word attaches to what precedes it (after `(` or an opening quote).
    let mut glue_next = true;
    for &w in words {
        let (text, attach_left, attach_right) = match w {
            "``" => ("\"", false, true),
            "''" => ("\"", true, false),
            "(" => ("(", false, true),
            "." | "," | ";" | ":" | "?" | "!" | ")" | "%" => (w, true, false),
            _ => (w, false, false),
        };
        if !(glue_next || attach_left) {
            out.push(' ');
        }
        out.push_str(text);
        glue_next = attach_right;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detag_follows_the_rules() {
        let raw = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, (/( see/vb 5/cd %/nn )/) ./.\nIt/pps ended/vbd ;/. ;/.\n\n\n\tNew/jj para/nn ?/.\n";
        assert_eq!(
            detag(raw),
            "The jury said \"no evidence\", (see 5%). It ended;\n\nNew para?"
        );
    }

    #[test]
    fn names() {
        assert!(is_text_name("ca01") && is_text_name("cr09"));
        assert!(!is_text_name("cats.txt") && !is_text_name("README") && !is_text_name("CONTENTS"));
    }

    #[test]
    fn split_keeps_every_genre_on_both_sides() {
        let mut docs = Vec::new();
        for (g, n) in [('a', 44), ('m', 6), ('r', 9)] {
            for i in 1..=n {
                docs.push(Document {
                    id: format!("c{g}{i:02}"),
                    genre: g,
                    text: String::new(),
                });
            }
        }
        let c = Corpus { docs };
        let s = c.split();
        assert_eq!(s, c.split());
        for g in ['a', 'm', 'r'] {
            assert!(s.train.iter().any(|&i| c.docs[i].genre == g));
            assert!(s.eval.iter().any(|&i| c.docs[i].genre == g));
        }
        assert_eq!(s.train.len() + s.eval.len(), 59);
    }
}

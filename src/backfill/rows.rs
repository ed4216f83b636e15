//! The rows of a query API answer as they arrive: PostHog answers a page as
//! one JSON document, `{..., "results": [[...], [...], ...], ...}`, and a
//! page of 50,000 events is tens of megabytes. [`RowScanner`] takes the
//! answer in chunks and gives each row's JSON array as soon as it is
//! whole, keeping only the bytes of the row being read. Pure: no I/O.
//!
//! It follows JSON's structure (strings and their escapes, nesting), not its
//! whole grammar: each row it gives is parsed afterwards, and an answer that
//! is not JSON fails there or in `finish`.

use bytes::{Buf as _, Bytes, BytesMut};

#[derive(Debug, Default)]
pub struct RowScanner {
    buffer: BytesMut,
    /// The next byte of `buffer` to look at.
    at: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Where the string being read at depth 1 started (a key, maybe).
    string_start: Option<usize>,
    /// The last string closed at depth 1, while it may still be a key.
    last_string: Option<Vec<u8>>,
    /// The key whose value comes next at depth 1.
    key: Option<Vec<u8>>,
    /// Inside `results`' array.
    in_results: bool,
    /// `results` was found (an array or null).
    found: bool,
    /// Where the row being read starts in `buffer`.
    row_start: Option<usize>,
}

/// An answer that cannot be read as rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("a row of `results` is not an array")]
    NotAnArray,
    #[error("the answer has no `results`")]
    NoResults,
    #[error("the answer ended inside a row")]
    Truncated,
}

impl RowScanner {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next whole row (its JSON array), if one has arrived.
    pub fn next_row(&mut self) -> Result<Option<Bytes>, ScanError> {
        while self.at < self.buffer.len() {
            let byte = self.buffer[self.at];
            let here = self.at;
            self.at += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if byte == b'\\' {
                    self.escaped = true;
                } else if byte == b'"' {
                    self.in_string = false;
                    if let Some(start) = self.string_start.take() {
                        self.last_string = Some(self.buffer[start + 1..here].to_vec());
                    }
                }
                continue;
            }
            match byte {
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 {
                        self.string_start = Some(here);
                    }
                    if self.in_results && self.depth == 2 {
                        return Err(ScanError::NotAnArray);
                    }
                }
                b':' if self.depth == 1 => self.key = self.last_string.take(),
                b',' if self.depth == 1 => {
                    self.key = None;
                    self.last_string = None;
                }
                b'[' | b'{' => {
                    if self.in_results && self.depth == 2 {
                        if byte == b'{' {
                            return Err(ScanError::NotAnArray);
                        }
                        self.row_start = Some(here);
                    }
                    if self.depth == 1 && byte == b'[' && self.key.as_deref() == Some(b"results") {
                        self.in_results = true;
                        self.found = true;
                    }
                    self.depth += 1;
                }
                b']' | b'}' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.in_results && self.depth == 2 {
                        if let Some(start) = self.row_start.take() {
                            let row = self.take(start, here + 1);
                            return Ok(Some(row));
                        }
                    }
                    if self.in_results && self.depth == 1 {
                        self.in_results = false;
                    }
                }
                b'n' if self.depth == 1 && self.key.as_deref() == Some(b"results") => {
                    // "results": null, an empty page.
                    self.found = true;
                    self.key = None;
                }
                b' ' | b'\t' | b'\r' | b'\n' | b',' | b':' => {}
                _ if self.in_results && self.depth == 2 => return Err(ScanError::NotAnArray),
                _ => {}
            }
        }
        self.compact();
        Ok(None)
    }

    /// The answer ended: it must have had `results`, and no row half read.
    pub fn finish(&self) -> Result<(), ScanError> {
        if self.row_start.is_some() || self.in_results {
            Err(ScanError::Truncated)
        } else if !self.found {
            Err(ScanError::NoResults)
        } else {
            Ok(())
        }
    }

    /// `buffer[start..end]` as a row; what precedes it is dropped.
    fn take(&mut self, start: usize, end: usize) -> Bytes {
        self.buffer.advance(start);
        let row = self.buffer.split_to(end - start).freeze();
        self.at -= end;
        self.string_start = None;
        row
    }

    /// Drops what was read and is not part of a row or a key being read.
    fn compact(&mut self) {
        let keep = [self.row_start, self.string_start]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.at);
        if keep > 0 {
            self.buffer.advance(keep);
            self.at -= keep;
            self.row_start = self.row_start.map(|s| s - keep);
            self.string_start = self.string_start.map(|s| s - keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"{"cache_key": null, "columns": ["a", "b"], "types": [["a", "String"]],
        "results": [["x\"]y", {"k": [1, 2]}], ["[", null], [], ["\\", "results"]],
        "hasMore": false, "results_note": "]["}"#;

    fn rows_of(chunks: &[&[u8]]) -> Result<Vec<String>, ScanError> {
        let mut scanner = RowScanner::default();
        let mut rows = Vec::new();
        for chunk in chunks {
            scanner.push(chunk);
            while let Some(row) = scanner.next_row()? {
                rows.push(String::from_utf8(row.to_vec()).unwrap());
            }
        }
        scanner.finish()?;
        Ok(rows)
    }

    fn expected() -> Vec<String> {
        vec![
            r#"["x\"]y", {"k": [1, 2]}]"#.into(),
            r#"["[", null]"#.into(),
            "[]".into(),
            r#"["\\", "results"]"#.into(),
        ]
    }

    #[test]
    fn rows_come_whole_wherever_the_chunks_split() {
        let bytes = ANSWER.as_bytes();
        assert_eq!(rows_of(&[bytes]).unwrap(), expected());
        for split in 0..bytes.len() {
            let (a, b) = bytes.split_at(split);
            assert_eq!(rows_of(&[a, b]).unwrap(), expected(), "split at {split}");
        }
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(rows_of(&single).unwrap(), expected());
    }

    #[test]
    fn only_the_row_being_read_is_kept() {
        let mut scanner = RowScanner::default();
        scanner.push(br#"{"results": [["a"], ["#);
        assert_eq!(&scanner.next_row().unwrap().unwrap()[..], br#"["a"]"#);
        assert_eq!(scanner.next_row().unwrap(), None);
        assert!(scanner.buffer.len() <= 2, "{:?}", scanner.buffer);
        scanner.push(br#""b"]], "hasMore": true}"#);
        assert_eq!(&scanner.next_row().unwrap().unwrap()[..], br#"["b"]"#);
        assert_eq!(scanner.next_row().unwrap(), None);
        scanner.finish().unwrap();
    }

    #[test]
    fn empty_null_missing_truncated_and_odd_results() {
        assert_eq!(
            rows_of(&[br#"{"results": []}"#]).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            rows_of(&[br#"{"results": null}"#]).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            rows_of(&[br#"{"detail": "results"}"#]),
            Err(ScanError::NoResults)
        );
        assert_eq!(
            rows_of(&[br#"{"results": [["a"], ["#]),
            Err(ScanError::Truncated)
        );
        assert_eq!(
            rows_of(&[br#"{"results": ["a"]}"#]),
            Err(ScanError::NotAnArray)
        );
        assert_eq!(
            rows_of(&[br#"{"results": [1]}"#]),
            Err(ScanError::NotAnArray)
        );
        // A nested "results" key is not the answer's.
        assert_eq!(
            rows_of(&[br#"{"x": {"results": [["no"]]}, "results": [["yes"]]}"#]).unwrap(),
            vec![r#"["yes"]"#.to_owned()]
        );
    }
}

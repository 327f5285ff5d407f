//! Opening trace files (gzip detected by magic bytes) and reading them line by line
//! with line numbers, without loading the whole file.

use crate::error::TraceError;
use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Opens `path` for buffered reading, decompressing gzip transparently when the file
/// starts with the gzip magic bytes (whatever its name). A file named `*.gz` that is
/// not gzip is an error.
pub fn open_reader(path: &Path) -> Result<Box<dyn BufRead + Send>, TraceError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| TraceError::Io {
        file: name.clone(),
        line: 0,
        source,
    })?;
    let mut buf = BufReader::with_capacity(1 << 16, file);
    let head = buf.fill_buf().map_err(|source| TraceError::Io {
        file: name.clone(),
        line: 0,
        source,
    })?;
    let is_gzip = head.len() >= 2 && head[..2] == GZIP_MAGIC;
    if is_gzip {
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            MultiGzDecoder::new(buf),
        )))
    } else if has_gz_suffix(path) && !head.is_empty() {
        Err(TraceError::file(
            &name,
            "file name ends in .gz but the file is not gzip (no 1f 8b magic bytes)",
        ))
    } else {
        Ok(Box::new(buf))
    }
}

pub(crate) fn has_gz_suffix(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// A file being written, gzip-compressed when its name ends in `.gz` (the readers
/// above take it back either way). Call [`OutputFile::finish`]: it writes the gzip
/// trailer and flushes, and reports what dropping would swallow.
pub enum OutputFile {
    Plain(std::io::BufWriter<File>),
    Gzip(flate2::write::GzEncoder<std::io::BufWriter<File>>),
}

impl OutputFile {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::io::BufWriter::with_capacity(1 << 16, File::create(path)?);
        Ok(if has_gz_suffix(path) {
            OutputFile::Gzip(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::default(),
            ))
        } else {
            OutputFile::Plain(file)
        })
    }

    /// Ends the file: the gzip trailer, then a flush.
    pub fn finish(self) -> std::io::Result<()> {
        let mut inner = match self {
            OutputFile::Plain(w) => w,
            OutputFile::Gzip(g) => g.finish()?,
        };
        std::io::Write::flush(&mut inner)
    }
}

impl std::io::Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            OutputFile::Plain(w) => w.write(buf),
            OutputFile::Gzip(g) => g.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            OutputFile::Plain(w) => w.flush(),
            OutputFile::Gzip(g) => g.flush(),
        }
    }
}

/// Wraps an in-memory or other reader, detecting gzip the same way.
pub fn wrap_reader<R: Read + Send + 'static>(
    reader: R,
) -> Result<Box<dyn BufRead + Send>, std::io::Error> {
    let mut buf = BufReader::with_capacity(1 << 16, reader);
    let head = buf.fill_buf()?;
    if head.len() >= 2 && head[..2] == GZIP_MAGIC {
        Ok(Box::new(BufReader::new(MultiGzDecoder::new(buf))))
    } else {
        Ok(Box::new(buf))
    }
}

/// Numbered lines of a file. Line numbers are 1-based; a trailing `\r` is removed.
pub struct Lines {
    file: String,
    reader: Box<dyn BufRead + Send>,
    buf: Vec<u8>,
    line: u64,
    done: bool,
}

impl Lines {
    pub fn new(file: impl Into<String>, reader: Box<dyn BufRead + Send>) -> Self {
        Lines {
            file: file.into(),
            reader,
            buf: Vec::with_capacity(256),
            line: 0,
            done: false,
        }
    }

    pub fn open(path: &Path) -> Result<Self, TraceError> {
        Ok(Lines::new(path.display().to_string(), open_reader(path)?))
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// The number of the line last returned.
    pub fn line_no(&self) -> u64 {
        self.line
    }

    /// The next line: `Ok(None)` at the end; a line that is not UTF-8 is a row error
    /// (the reader can continue past it); an I/O error ends reading.
    pub fn next_line(&mut self) -> Result<Option<(u64, &str)>, TraceError> {
        if self.done {
            return Ok(None);
        }
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| {
                self.done = true;
                TraceError::Io {
                    file: self.file.clone(),
                    line: self.line + 1,
                    source,
                }
            })?;
        if n == 0 {
            self.done = true;
            return Ok(None);
        }
        self.line += 1;
        let mut end = self.buf.len();
        if end > 0 && self.buf[end - 1] == b'\n' {
            end -= 1;
        }
        if end > 0 && self.buf[end - 1] == b'\r' {
            end -= 1;
        }
        match std::str::from_utf8(&self.buf[..end]) {
            Ok(s) if self.line == 1 => Ok(Some((self.line, s.trim_start_matches('\u{feff}')))),
            Ok(s) => Ok(Some((self.line, s))),
            Err(e) => Err(TraceError::row(
                &self.file,
                self.line,
                format!("line is not valid UTF-8 ({e})"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_and_bad_utf8_is_a_row_error() {
        let bytes = b"\xef\xbb\xbfa\r\n\xff\nb".to_vec();
        let mut l = Lines::new("m", wrap_reader(std::io::Cursor::new(bytes)).unwrap());
        assert_eq!(l.next_line().unwrap(), Some((1, "a")));
        let e = l.next_line().unwrap_err();
        assert_eq!((e.location(), e.line()), ("m:2".to_string(), Some(2)));
        assert_eq!(l.next_line().unwrap(), Some((3, "b")));
        assert_eq!(l.next_line().unwrap(), None);
    }

    #[test]
    fn gzip_in_memory() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"x\ny\n").unwrap();
        let gz = enc.finish().unwrap();
        let mut l = Lines::new("g", wrap_reader(std::io::Cursor::new(gz)).unwrap());
        assert_eq!(l.next_line().unwrap(), Some((1, "x")));
        assert_eq!(l.next_line().unwrap(), Some((2, "y")));
        assert_eq!(l.next_line().unwrap(), None);
    }
}

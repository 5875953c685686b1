//! Reading complete lines with bounded memory.
//!
//! Trace files can be large, appended to while we read, and hostile (a
//! single 1 GB line). The reader holds at most one fixed-size buffer plus one
//! line of at most `max_line_bytes`; a longer line is skipped to its newline
//! without being kept, and a last line without its newline is left for the
//! next pass.

use std::io::{self, BufRead};

/// How much of a line too long to keep is remembered (to recognize the same
/// line when it is read again).
pub const TOO_LONG_PREFIX_BYTES: usize = 4096;

/// The reject detail for a line of `len` bytes over the limit.
pub fn too_long_detail(len: u64, max_line_bytes: u64) -> String {
    format!("line of {len} bytes exceeds traces.max_line_bytes = {max_line_bytes}")
}

/// The reject detail for a last line, still without its newline, of `tail`
/// bytes over the limit.
pub fn too_long_tail_detail(tail: u64, max_line_bytes: u64) -> String {
    format!(
        "last line (without newline) of {tail} bytes exceeds traces.max_line_bytes = {max_line_bytes}"
    )
}

/// One step of [`LineReader::next_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextLine {
    /// A complete line is in the caller's buffer (terminator removed).
    Line,
    /// A complete line longer than the limit was skipped; the caller's buffer
    /// holds its first [`TOO_LONG_PREFIX_BYTES`] bytes. `len` excludes the
    /// terminator.
    TooLong { len: u64 },
    /// End of input, possibly in the middle of a line, which is not
    /// returned: `tail` is its length so far (0 at a line boundary), and the
    /// caller's buffer holds it, or its first [`TOO_LONG_PREFIX_BYTES`]
    /// bytes when it is already longer than the limit.
    End { tail: u64 },
}

/// Splits a byte stream into `\n`-terminated lines, tracking the offset of
/// the end of the last complete line.
pub struct LineReader<R> {
    inner: R,
    /// Offset (in the file) of the next unread byte.
    offset: u64,
    max_line_bytes: usize,
}

impl<R: BufRead> LineReader<R> {
    /// A reader positioned at `offset` of its file (`inner` must already be
    /// positioned there).
    pub fn new(inner: R, offset: u64, max_line_bytes: usize) -> LineReader<R> {
        LineReader {
            inner,
            offset,
            max_line_bytes,
        }
    }

    /// Offset of the end of the last complete line returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the next complete line into `line` (cleared first), without
    /// its `\n` or `\r\n` terminator.
    pub fn next_line(&mut self, line: &mut Vec<u8>) -> io::Result<NextLine> {
        line.clear();
        let mut len: u64 = 0;
        let mut too_long = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(available) => available,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            if available.is_empty() {
                // A partial last line is not consumed: `offset` stays at the
                // end of the last complete line.
                return Ok(NextLine::End { tail: len });
            }
            let newline = memchr::memchr(b'\n', available);
            let chunk = &available[..newline.unwrap_or(available.len())];
            len += chunk.len() as u64;
            if too_long || len > self.max_line_bytes as u64 {
                // Keep only the start of the line, to recognize it later.
                if !too_long {
                    too_long = true;
                    line.truncate(TOO_LONG_PREFIX_BYTES);
                }
                let room = TOO_LONG_PREFIX_BYTES.saturating_sub(line.len());
                line.extend_from_slice(&chunk[..room.min(chunk.len())]);
            } else {
                line.extend_from_slice(chunk);
            }
            let consumed = chunk.len() + usize::from(newline.is_some());
            self.inner.consume(consumed);
            // Bytes of a line still being written are consumed from the
            // buffer but not counted into `offset` until its newline comes.
            if newline.is_some() {
                self.offset += len + 1;
                if too_long {
                    return Ok(NextLine::TooLong { len });
                }
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(NextLine::Line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], max: usize, buf_cap: usize) -> (Vec<(NextLine, Vec<u8>)>, u64) {
        let reader = io::BufReader::with_capacity(buf_cap, input);
        let mut lines = LineReader::new(reader, 0, max);
        let mut out = Vec::new();
        let mut line = Vec::new();
        loop {
            let next = lines.next_line(&mut line).unwrap();
            if let NextLine::End { .. } = next {
                return (out, lines.offset());
            }
            out.push((next, line.clone()));
        }
    }

    #[test]
    fn complete_lines_only_and_offset_at_last_newline() {
        let (lines, offset) = read_all(b"a\r\nbb\n\nccc", 100, 2);
        assert_eq!(
            lines,
            vec![
                (NextLine::Line, b"a".to_vec()),
                (NextLine::Line, b"bb".to_vec()),
                (NextLine::Line, b"".to_vec()),
            ]
        );
        assert_eq!(offset, 7);
    }

    #[test]
    fn too_long_line_is_skipped_keeping_only_a_prefix() {
        let mut input = vec![b'x'; 10_000];
        input.push(b'\n');
        input.extend_from_slice(b"ok\n");
        let (lines, offset) = read_all(&input, 100, 64);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].0, NextLine::TooLong { len: 10_000 });
        assert_eq!(lines[0].1.len(), TOO_LONG_PREFIX_BYTES);
        assert_eq!(lines[1], (NextLine::Line, b"ok".to_vec()));
        assert_eq!(offset, input.len() as u64);
    }

    #[test]
    fn line_of_exactly_the_limit_is_accepted() {
        let (lines, _) = read_all(b"12345\n123456\n", 5, 3);
        assert_eq!(lines[0], (NextLine::Line, b"12345".to_vec()));
        assert_eq!(lines[1].0, NextLine::TooLong { len: 6 });
    }

    #[test]
    fn end_reports_the_length_of_an_unterminated_tail() {
        let reader = io::BufReader::with_capacity(16, &b"ok\n0123456789"[..]);
        let mut lines = LineReader::new(reader, 0, 4);
        let mut line = Vec::new();
        assert_eq!(lines.next_line(&mut line).unwrap(), NextLine::Line);
        assert_eq!(
            lines.next_line(&mut line).unwrap(),
            NextLine::End { tail: 10 }
        );
        assert_eq!(lines.offset(), 3);
    }

    #[test]
    fn unterminated_too_long_line_waits() {
        let (lines, offset) = read_all(&[b'y'; 500], 10, 16);
        assert!(lines.is_empty());
        assert_eq!(offset, 0);
    }
}

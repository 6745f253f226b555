//! Container log files in the CRI log format, written by the shim and read by the log
//! server.
//!
//! On-disk layout (one file per container attempt, `<attempt dir>/container.log`), as the
//! CRI runtimes write it: one record per line,
//!
//! ```text
//! <RFC 3339 timestamp with nanoseconds> <stdout|stderr> <F|P> <content>\n
//! ```
//!
//! `F` marks a full line (the content ended with a newline, which the record's own
//! newline stands for), `P` a partial one (the stream ended, or the line was longer than
//! [`MAX_RECORD`], without a newline; the next record continues it).

use std::io::{BufRead, Write};

use chrono::{DateTime, SecondsFormat, Utc};

/// Longest content of one record; longer lines are split into `P` records.
pub const MAX_RECORD: usize = 16 * 1024;

/// One parsed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub time: String,
    pub stream: String,
    pub partial: bool,
    pub content: Vec<u8>,
}

/// Formats one record (the content without its newline).
pub fn format_record(time: DateTime<Utc>, stream: &str, partial: bool, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 48);
    out.extend_from_slice(time.to_rfc3339_opts(SecondsFormat::Nanos, true).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

/// Parses one line of a log file (with or without its trailing newline).
pub fn parse_record(line: &[u8]) -> Option<Record> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let stream = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let tag = parts.next()?;
    let content = parts.next().unwrap_or(b"").to_vec();
    Some(Record {
        time,
        stream,
        partial: tag == b"P",
        content,
    })
}

/// Copies `input` (one stream of a container) into CRI records on `out` until EOF. Each
/// record is written with one `write_all` so stdout and stderr interleave by line.
pub fn copy_stream<R: std::io::Read, W: Write>(
    input: R,
    stream: &str,
    out: &std::sync::Mutex<W>,
) -> std::io::Result<()> {
    let mut reader = std::io::BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = std::io::Read::take(&mut reader, MAX_RECORD as u64).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let full = line.last() == Some(&b'\n');
        let content = if full {
            &line[..line.len() - 1]
        } else {
            &line[..]
        };
        let rec = format_record(Utc::now(), stream, !full, content);
        let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(&rec)?;
        w.flush()?;
    }
}

/// How to render a log for a reader, as `kubectl logs` asks for it.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Skip lines older than this.
    pub since: Option<DateTime<Utc>>,
}

/// Renders complete log bytes (whole records only) as the user sees them.
pub fn render(records: &[u8], opts: &ReadOptions) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut pending: Option<(String, Vec<u8>)> = None;
    for raw in records.split_inclusive(|b| *b == b'\n') {
        let Some(rec) = parse_record(raw) else {
            continue;
        };
        if let Some(since) = opts.since {
            if DateTime::parse_from_rfc3339(&rec.time).is_ok_and(|t| t < since) {
                continue;
            }
        }
        let (time, mut content) = pending.take().unwrap_or((rec.time.clone(), Vec::new()));
        content.extend_from_slice(&rec.content);
        if rec.partial {
            pending = Some((time, content));
            continue;
        }
        lines.push(render_line(&time, &content, opts.timestamps));
    }
    if let Some((time, content)) = pending {
        lines.push(render_line(&time, &content, opts.timestamps));
    }
    let skip = opts
        .tail_lines
        .map(|n| lines.len().saturating_sub(n))
        .unwrap_or(0);
    lines[skip..].concat()
}

fn render_line(time: &str, content: &[u8], timestamps: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 40);
    if timestamps {
        out.extend_from_slice(time.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

/// The complete records at the start of `buf`: the length up to its last newline.
pub fn complete_prefix(buf: &[u8]) -> usize {
    buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().into()
    }

    #[test]
    fn records_round_trip() {
        let cases: [(&str, bool, &[u8]); 3] = [
            ("stdout", false, b"hello world"),
            ("stderr", true, b"no newline"),
            ("stdout", false, b""),
        ];
        for (stream, partial, content) in cases {
            let line = format_record(
                t("2024-01-02T03:04:05.000000006Z"),
                stream,
                partial,
                content,
            );
            assert!(line.starts_with(b"2024-01-02T03:04:05.000000006Z "));
            let rec = parse_record(&line).unwrap();
            assert_eq!(
                (rec.stream.as_str(), rec.partial, &rec.content[..]),
                (stream, partial, content)
            );
        }
    }

    #[test]
    fn copy_marks_partial_lines() {
        let out = std::sync::Mutex::new(Vec::new());
        copy_stream(&b"one\ntwo\nthree"[..], "stdout", &out).unwrap();
        let text = String::from_utf8(out.into_inner().unwrap()).unwrap();
        let tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["F", "F", "P"]);
        assert_eq!(
            render(text.as_bytes(), &ReadOptions::default()),
            b"one\ntwo\nthree\n"
        );
    }

    #[test]
    fn render_options() {
        let log = [
            format_record(t("2024-01-01T00:00:01Z"), "stdout", false, b"a"),
            format_record(t("2024-01-01T00:00:02Z"), "stderr", true, b"b1"),
            format_record(t("2024-01-01T00:00:03Z"), "stderr", false, b"b2"),
            format_record(t("2024-01-01T00:00:04Z"), "stdout", false, b"c"),
        ]
        .concat();
        let cases: [(ReadOptions, &str); 4] = [
            (ReadOptions::default(), "a\nb1b2\nc\n"),
            (
                ReadOptions {
                    tail_lines: Some(2),
                    ..Default::default()
                },
                "b1b2\nc\n",
            ),
            (
                ReadOptions {
                    tail_lines: Some(1),
                    timestamps: true,
                    ..Default::default()
                },
                "2024-01-01T00:00:04.000000000Z c\n",
            ),
            (
                ReadOptions {
                    since: Some(t("2024-01-01T00:00:04Z")),
                    ..Default::default()
                },
                "c\n",
            ),
        ];
        for (opts, want) in cases {
            assert_eq!(
                String::from_utf8(render(&log, &opts)).unwrap(),
                want,
                "{opts:?}"
            );
        }
    }

    #[test]
    fn complete_prefix_stops_at_last_newline() {
        assert_eq!(complete_prefix(b"a\nb"), 2);
        assert_eq!(complete_prefix(b"a\nb\n"), 4);
        assert_eq!(complete_prefix(b"ab"), 0);
    }
}

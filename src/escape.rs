//! Untrusted text in messages: file names, tensor names, metadata keys and values come from files
//! lowbit reads, and may hold terminal control sequences (ESC, BEL, CR, NUL) or be megabytes
//! long. Everything that quotes them escapes control characters and truncates.

use std::path::Path;

/// Longest quoted name or value, in characters, before truncation.
pub const MAX_TEXT: usize = 160;
/// Longest quoted path, in characters (paths are the user's own, so longer is allowed).
pub const MAX_PATH: usize = 1024;
/// Longest whole message line, in characters.
pub const MAX_LINE: usize = 4096;

/// `s` with every control character escaped (`\n`, `\r`, `\t`, `\0`, `\u{1b}`, ...), cut after
/// `max` characters with a note of how many bytes were left out.
pub fn escape(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 16);
    for (n, (i, c)) in s.char_indices().enumerate() {
        if n == max {
            out.push_str(&format!("… ({} more bytes)", s.len() - i));
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            // C0, DEL, C1 and the Unicode bidi/format controls that reorder what a terminal shows.
            c if c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// A name or value read from a file (tensor name, metadata key, JSON string), for a message.
pub fn text(s: &str) -> String {
    escape(s, MAX_TEXT)
}

/// A path, for a message.
pub fn path(p: &Path) -> String {
    escape(&p.to_string_lossy(), MAX_PATH)
}

/// A whole message line: the last line of defence for text that reached a message unescaped.
pub fn line(s: &str) -> String {
    escape(s, MAX_LINE)
}

/// The `Debug` form of a value read from a file (e.g. a GGUF metadata array), for a message: only
/// the first characters are ever formatted, however large the value.
pub fn debug(v: &impl std::fmt::Debug) -> String {
    struct Capped(String);
    impl std::fmt::Write for Capped {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.push_str(s);
            if self.0.chars().count() > MAX_TEXT {
                return Err(std::fmt::Error);
            }
            Ok(())
        }
    }
    let mut c = Capped(String::new());
    if std::fmt::write(&mut c, format_args!("{v:?}")).is_ok() {
        return escape(&c.0, MAX_TEXT);
    }
    let start: String = c.0.chars().take(MAX_TEXT).collect();
    format!("{}…", escape(&start, MAX_TEXT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(text("a\u{1b}[31mb\u{7}c\rd\0e\nf\u{202e}g"), "a\\u{1b}[31mb\\u{7}c\\rd\\0e\\nf\\u{202e}g");
        assert_eq!(text("plain ünïcode ok"), "plain ünïcode ok");
    }

    #[test]
    fn debug_of_a_huge_value_formats_only_its_start() {
        let v: Vec<u32> = (0..10_000_000).collect();
        let d = debug(&v);
        assert!(d.starts_with("[0, 1, 2, ") && d.ends_with("…") && d.chars().count() < MAX_TEXT + 30, "{d}");
        assert_eq!(debug(&"a\u{1b}b"), "\"a\\u{1b}b\"");
    }

    #[test]
    fn long_text_is_cut_with_the_byte_count() {
        let s = "é".repeat(200); // 2 bytes each
        let t = text(&s);
        assert_eq!(t, format!("{}… ({} more bytes)", "é".repeat(MAX_TEXT), 2 * (200 - MAX_TEXT)));
        assert_eq!(text(&"x".repeat(MAX_TEXT)), "x".repeat(MAX_TEXT));
    }
}

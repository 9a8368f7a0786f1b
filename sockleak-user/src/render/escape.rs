//! Process names and paths come from other users: a comm can hold escape sequences that would
//! drive the terminal of whoever reads the report. Text output shows them escaped.
use std::fmt::Write;

/// Printable ASCII and printable Unicode pass; control characters and backslashes are escaped.
pub fn for_terminal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            // Bidirectional overrides and zero-width characters reorder or hide text.
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_control() {
        assert_eq!(for_terminal("node"), "node");
        assert_eq!(for_terminal("evil\x1b[2J"), "evil\\x1b[2J");
        assert_eq!(for_terminal("a\nb"), "a\\nb");
        assert_eq!(for_terminal("back\\slash"), "back\\\\slash");
        assert_eq!(for_terminal("\u{202e}txt"), "\\u{202e}txt");
    }

    proptest::proptest! {
        #[test]
        fn output_has_no_control_characters(s in "\\PC*|[\\x00-\\x1f\\x7f]*") {
            proptest::prop_assert!(!for_terminal(&s).chars().any(|c| c.is_control()));
        }
    }
}

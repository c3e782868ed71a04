//! Printing for people: aligned columns and times relative to now ("3 min
//! ago", "in 2 h"). Plain text, no colours, so it reads the same in any
//! terminal and in a pasted log.

use std::fmt;

use repeaterd::api::time::Timestamp;
use repeaterd::model::Millis;

/// The widest a cell gets before it is cut (error messages can be long).
const MAX_CELL: usize = 60;

/// Rows under a header, printed with every column as wide as its widest
/// cell. The last column is not padded.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new<const N: usize>(header: [&str; N]) -> Table {
        Table {
            rows: vec![header.iter().map(|title| title.to_string()).collect()],
        }
    }

    /// Adds a row; cells longer than the limit are cut with an ellipsis.
    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into_iter().map(cut).collect());
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[column] - cell.chars().count();
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad + 2));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Label and value lines, the labels padded to one width.
#[derive(Debug, Default)]
pub struct Fields {
    lines: Vec<(String, String)>,
}

impl Fields {
    /// Adds a line.
    pub fn add(&mut self, label: &str, value: impl Into<String>) {
        self.lines.push((label.to_owned(), value.into()));
    }
}

impl fmt::Display for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .lines
            .iter()
            .map(|(label, _)| label.chars().count())
            .max()
            .unwrap_or(0);
        for (label, value) in &self.lines {
            writeln!(f, "{label:<width$}  {value}")?;
        }
        Ok(())
    }
}

/// One line, at most [`MAX_CELL`] characters.
fn cut(cell: String) -> String {
    let line = cell.replace(['\n', '\r', '\t'], " ");
    if line.chars().count() <= MAX_CELL {
        return line;
    }
    let mut short: String = line.chars().take(MAX_CELL - 1).collect();
    short.push('…');
    short
}

/// A time relative to `now`, in the largest unit that fits: "just now",
/// "12 s ago", "3 min ago", "in 2 h", "5 d ago". Beyond 60 days, the date.
pub fn relative(at: Millis, now: Millis) -> String {
    let delta = at - now;
    let seconds = delta.unsigned_abs() / 1000;
    if seconds == 0 {
        return "just now".to_owned();
    }
    let span = match seconds {
        0..60 => format!("{seconds} s"),
        60..3_600 => format!("{} min", seconds / 60),
        3_600..172_800 => format!("{} h", seconds / 3_600),
        172_800..5_184_000 => format!("{} d", seconds / 86_400),
        _ => return Timestamp(at).to_rfc3339()[..10].to_owned(),
    };
    if delta < 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// A time relative to `now`, or "-" when there is none.
pub fn relative_or_dash(at: Option<Timestamp>, now: Millis) -> String {
    at.map(|at| relative(at.0, now))
        .unwrap_or_else(|| "-".to_owned())
}

/// A time as RFC 3339 with its relative form: "2026-12-05T07:10:28.123Z (3 min ago)".
pub fn absolute_and_relative(at: Timestamp, now: Millis) -> String {
    format!("{at} ({})", relative(at.0, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_796_454_628_123;

    #[test]
    fn times_read_in_the_largest_unit_that_fits() {
        assert_eq!(relative(NOW, NOW), "just now");
        assert_eq!(relative(NOW - 999, NOW), "just now");
        assert_eq!(relative(NOW - 12_000, NOW), "12 s ago");
        assert_eq!(relative(NOW - 3 * 60_000 - 59_000, NOW), "3 min ago");
        assert_eq!(relative(NOW + 2 * 3_600_000, NOW), "in 2 h");
        assert_eq!(relative(NOW - 47 * 3_600_000, NOW), "47 h ago");
        assert_eq!(relative(NOW - 5 * 86_400_000, NOW), "5 d ago");
        assert_eq!(relative(NOW - 90 * 86_400_000, NOW), "2026-09-06");
        assert_eq!(relative_or_dash(None, NOW), "-");
    }

    #[test]
    fn columns_line_up_and_long_cells_are_cut() {
        let mut table = Table::new(["ID", "STATE", "LAST ERROR"]);
        table.row(["7".into(), "retrying".into(), "HTTP 503".into()]);
        table.row(["1234".into(), "pending".into(), "x".repeat(100)]);
        let text = table.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID    STATE     LAST ERROR");
        assert_eq!(lines[1], "7     retrying  HTTP 503");
        assert!(lines[2].starts_with("1234  pending   xxx"), "{}", lines[2]);
        assert!(lines[2].ends_with('…'));
        assert_eq!(
            lines[2].chars().count(),
            "1234  pending   ".len() + MAX_CELL
        );
    }

    #[test]
    fn labels_are_padded_to_one_width() {
        let mut fields = Fields::default();
        fields.add("state", "pending");
        fields.add("next attempt", "in 5 s");
        assert_eq!(
            fields.to_string(),
            "state         pending\nnext attempt  in 5 s\n"
        );
    }
}

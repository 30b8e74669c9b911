//! Durations on the command line (`--expires-in 30d`, `--for 2h`): one
//! parser, so every command takes the same units and says the same thing
//! about a bad one.

/// `90`, `90s`, `15m`, `12h` or `30d` in seconds; zero is refused.
pub fn parse_secs(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 45m, 12h or 30d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(scale)
        .filter(|&s| s > 0)
        .ok_or_else(|| format!("{text:?} must be a positive duration"))
}

#[cfg(test)]
mod tests {
    use super::parse_secs;

    #[test]
    fn durations_take_units_and_refuse_nonsense() {
        assert_eq!(parse_secs("90"), Ok(90));
        assert_eq!(parse_secs("15m"), Ok(900));
        assert_eq!(parse_secs("30d"), Ok(2_592_000));
        assert!(parse_secs("0h").is_err());
        assert!(parse_secs("3w").unwrap_err().contains("unit"));
        assert!(parse_secs("soon").is_err());
    }
}

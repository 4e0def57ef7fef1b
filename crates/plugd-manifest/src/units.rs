//! Human-written sizes (`256MiB`) and durations (`1.5s`) as used in `[limits]`.

use std::time::Duration;

/// Parses a byte size: a whole number with an optional unit.
///
/// Units are `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000) and `KiB`/`MiB`/`GiB`/`TiB` (powers of
/// 1024), case-insensitive, optionally separated from the number by spaces. A bare number is
/// bytes. The error is a user-facing sentence.
pub fn parse_size(s: &str) -> Result<u64, String> {
    size(s).map_err(|why| format!("Invalid size `{s}`: {why}; hint: {SIZE_HINT}"))
}

/// Parses a duration: a number (decimals allowed) followed by `ms`, `s`, `m` or `h`.
///
/// A unit is required, because a bare `5` is ambiguous. The error is a user-facing sentence.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration(s).map_err(|why| format!("Invalid duration `{s}`: {why}; hint: {DURATION_HINT}"))
}

/// How to fix a bad size.
pub(crate) const SIZE_HINT: &str =
    "write a whole number with a unit, like `256MiB`, `1GiB` or `100MB`, or plain bytes";
/// How to fix a bad duration.
pub(crate) const DURATION_HINT: &str =
    "write a number with a unit, like `250ms`, `5s`, `1.5s`, `2m` or `1h`";

/// [`parse_size`], failing with just the reason.
pub(crate) fn size(s: &str) -> Result<u64, String> {
    let invalid = |why: &str| why.to_owned();
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(invalid("it does not start with a number"));
    }
    let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000u64.pow(2),
        "gb" => 1000u64.pow(3),
        "tb" => 1000u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ if unit.starts_with('.') => return Err(invalid("fractions are not supported")),
        _ => return Err(invalid(&format!("unknown unit `{}`", unit.trim_start()))),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| invalid("it is too large"))
}

/// [`parse_duration`], failing with just the reason.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let invalid = |why: &str| why.to_owned();
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(invalid("it does not start with a number"));
    }
    let nanos_per_unit: u128 = match unit.trim_start() {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        "" => return Err(invalid("it has no unit")),
        other => return Err(invalid(&format!("unknown unit `{other}`"))),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let well_formed = !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !(number.contains('.') && frac.is_empty());
    if !well_formed {
        return Err(invalid(&format!("`{number}` is not a number")));
    }
    // Exact decimal arithmetic: `1.1s` must be 1.1 s, not the nearest binary float.
    let too_large = || invalid("it is too large");
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let mut nanos = whole.checked_mul(nanos_per_unit).ok_or_else(too_large)?;
    let mut scale = nanos_per_unit;
    for digit in frac.bytes() {
        scale /= 10;
        nanos += u128::from(digit - b'0') * scale;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_large())?;
    // Lossless: the remainder is below 10^9.
    let sub = (nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    fn check(input: &str, expect: Expect) {
        let size = match parse_size(input) {
            Ok(n) => n.to_string(),
            Err(e) => e,
        };
        let duration = match parse_duration(input) {
            Ok(d) => format!("{d:?}"),
            Err(e) => e,
        };
        expect.assert_eq(&format!("size: {size}\nduration: {duration}"));
    }

    #[test]
    fn sizes_and_durations() {
        check(
            "256MiB",
            expect![[r#"
                size: 268435456
                duration: Invalid duration `256MiB`: unknown unit `MiB`; hint: write a number with a unit, like `250ms`, `5s`, `1.5s`, `2m` or `1h`"#]],
        );
        check(
            "1GiB",
            expect![[r#"
                size: 1073741824
                duration: Invalid duration `1GiB`: unknown unit `GiB`; hint: write a number with a unit, like `250ms`, `5s`, `1.5s`, `2m` or `1h`"#]],
        );
        check(
            "512KiB",
            expect![[r#"
                size: 524288
                duration: Invalid duration `512KiB`: unknown unit `KiB`; hint: write a number with a unit, like `250ms`, `5s`, `1.5s`, `2m` or `1h`"#]],
        );
        check(
            "100MB",
            expect![[r#"
                size: 100000000
                duration: Invalid duration `100MB`: unknown unit `MB`; hint: write a number with a unit, like `250ms`, `5s`, `1.5s`, `2m` or `1h`"#]],
        );
        check(
            "1024",
            expect![[r#"
                size: 1024
                duration: Invalid duration `1024`: it has no unit; hint: write a number with a unit, like `250ms`, `5s`, `1.5s`, `2m` or `1h`"#]],
        );
        check(
            "64 mib",
            expect![[r#"
                size: 67108864
                duration: Invalid duration `64 mib`: unknown unit `mib`; hint: write a number with a unit, like `250ms`, `5s`, `1.5s`, `2m` or `1h`"#]],
        );
        check(
            "5s",
            expect![[r#"
                size: Invalid size `5s`: unknown unit `s`; hint: write a whole number with a unit, like `256MiB`, `1GiB` or `100MB`, or plain bytes
                duration: 5s"#]],
        );
        check(
            "250ms",
            expect![[r#"
                size: Invalid size `250ms`: unknown unit `ms`; hint: write a whole number with a unit, like `256MiB`, `1GiB` or `100MB`, or plain bytes
                duration: 250ms"#]],
        );
        check(
            "2m",
            expect![[r#"
                size: Invalid size `2m`: unknown unit `m`; hint: write a whole number with a unit, like `256MiB`, `1GiB` or `100MB`, or plain bytes
                duration: 120s"#]],
        );
        check(
            "1h",
            expect![[r#"
                size: Invalid size `1h`: unknown unit `h`; hint: write a whole number with a unit, like `256MiB`, `1GiB` or `100MB`, or plain bytes
                duration: 3600s"#]],
        );
        check(
            "1.5s",
            expect![[r#"
                size: Invalid size `1.5s`: fractions are not supported; hint: write a whole number with a unit, like `256MiB`, `1GiB` or `100MB`, or plain bytes
                duration: 1.5s"#]],
        );
        check(
            "0.001ms",
            expect![[r#"
                size: Invalid size `0.001ms`: fractions are not supported; hint: write a whole number with a unit, like `256MiB`, `1GiB` or `100MB`, or plain bytes
                duration: 1µs"#]],
        );
        check(
            "1.s",
            expect![[r#"
                size: Invalid size `1.s`: fractions are not supported; hint: write a whole number with a unit, like `256MiB`, `1GiB` or `100MB`, or plain bytes
                duration: Invalid duration `1.s`: `1.` is not a number; hint: write a number with a unit, like `250ms`, `5s`, `1.5s`, `2m` or `1h`"#]],
        );
        check(
            "",
            expect![[r#"
                size: Invalid size ``: it does not start with a number; hint: write a whole number with a unit, like `256MiB`, `1GiB` or `100MB`, or plain bytes
                duration: Invalid duration ``: it does not start with a number; hint: write a number with a unit, like `250ms`, `5s`, `1.5s`, `2m` or `1h`"#]],
        );
        check(
            "-1s",
            expect![[r#"
                size: Invalid size `-1s`: it does not start with a number; hint: write a whole number with a unit, like `256MiB`, `1GiB` or `100MB`, or plain bytes
                duration: Invalid duration `-1s`: it does not start with a number; hint: write a number with a unit, like `250ms`, `5s`, `1.5s`, `2m` or `1h`"#]],
        );
        check(
            "99999999999999999999TiB",
            expect![[r#"
                size: Invalid size `99999999999999999999TiB`: it is too large; hint: write a whole number with a unit, like `256MiB`, `1GiB` or `100MB`, or plain bytes
                duration: Invalid duration `99999999999999999999TiB`: unknown unit `TiB`; hint: write a number with a unit, like `250ms`, `5s`, `1.5s`, `2m` or `1h`"#]],
        );
        check(
            "99999999999999999999h",
            expect![[r#"
                size: Invalid size `99999999999999999999h`: unknown unit `h`; hint: write a whole number with a unit, like `256MiB`, `1GiB` or `100MB`, or plain bytes
                duration: Invalid duration `99999999999999999999h`: it is too large; hint: write a number with a unit, like `250ms`, `5s`, `1.5s`, `2m` or `1h`"#]],
        );
    }
}

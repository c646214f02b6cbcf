//! A single pass over a trade in its usual shape: a flat JSON object, all
//! ASCII, whose strings have no escapes and whose prices are short
//! decimals.
//!
//! It answers only where serde_json would answer the same, bit for bit,
//! and gives up (`None`) on anything else — escapes, non-ASCII text,
//! exponents, long mantissas, a minus sign on a price, duplicate or nested
//! fields — so that [`super::Trade::parse`] falls back to serde, which also
//! words the errors. Why the numbers agree: a price `m / 10^k` with
//! `m ≤ 2^53` and `k ≤ 22` has both operands exact in an f64, so the one
//! division is correctly rounded; serde_json computes the same division,
//! and Rust's `str::parse` (for decimal strings) rounds correctly. The
//! tests compare the two on generated inputs.
//!
//! Written for what Cranelift makes of it in wasm, where a component spends
//! most of its time on this. A loop inlined into a large function gets its
//! live values spilled and reloaded on every pass (about 35 instructions a
//! byte); so the two loops that run over many bytes, [`string_end`] and
//! [`digit_run`], are small functions of their own, and each takes eight
//! bytes a step (SWAR). Keys are compared as one `u64`, not through
//! `memcmp` (a byte loop in wasm). An all-ASCII input needs no separate
//! UTF-8 check: a non-ASCII byte stops a string, and anywhere else breaks
//! the grammar.

use super::Trade;

/// `10^k` for the `k` an exact division allows.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The largest mantissa an f64 holds exactly.
const EXACT: u64 = 1 << 53;

/// Digits a u64 always holds (10^19 - 1 < 2^64).
const MAX_DIGITS: usize = 19;

/// A byte repeated in each of a word's eight bytes.
const fn splat(byte: u8) -> u64 {
    0x0101_0101_0101_0101 * byte as u64
}

/// Up to eight bytes as one number, the first lowest (as [`word`] reads them).
const fn pack(bytes: &[u8]) -> u64 {
    let (mut code, mut i) = (0, 0);
    while i < bytes.len() {
        code |= (bytes[i] as u64) << (8 * i);
        i += 1;
    }
    code
}

/// The low `n` bytes of a word (`n` from 1 to 8).
const fn low_bytes(w: u64, n: usize) -> u64 {
    w & (u64::MAX >> (64 - 8 * n))
}

/// The fields of [`Trade`], under either name.
#[derive(Clone, Copy)]
enum Field {
    Symbol,
    Price,
    Qty,
    Ts,
    TradeId,
}

/// The trade in `b`, or `None` when serde must judge it.
pub(super) fn trade(b: &[u8]) -> Option<Trade> {
    let (mut symbol, mut price, mut qty, mut ts, mut trade_id) = (None, None, None, None, None);
    let mut at = eat(b, ws(b, 0), b'{')?;
    loop {
        at = eat(b, ws(b, at), b'"')?;
        let field = match known_key(b, at) {
            Some((field, end)) => {
                at = end;
                Some(field)
            }
            None => {
                at = string_end(b, at)? + 1;
                None
            }
        };
        at = ws(b, eat(b, ws(b, at), b':')?);
        at = match field {
            Some(Field::Symbol) => {
                let start = eat(b, at, b'"')?;
                let end = string_end(b, start)?;
                once(&mut symbol, Some((start, end)))?;
                end + 1
            }
            Some(Field::Price) => once_at(&mut price, number_or_string(b, at))?,
            Some(Field::Qty) => once_at(&mut qty, number_or_string(b, at))?,
            Some(Field::Ts) => once_at(&mut ts, signed(b, at))?,
            Some(Field::TradeId) => once_at(&mut trade_id, unsigned(b, at))?,
            None => skip_scalar(b, at)?,
        };
        at = ws(b, at);
        match b.get(at)? {
            b',' => at += 1,
            b'}' => break,
            _ => return None,
        }
    }
    if ws(b, at + 1) != b.len() {
        return None;
    }
    let (start, end) = symbol?;
    Some(Trade {
        // ASCII, as `string_end` checked.
        symbol: std::str::from_utf8(b.get(start..end)?).ok()?.to_owned(),
        price: price?,
        qty: qty.unwrap_or(0.0),
        ts: ts?,
        trade_id: trade_id.unwrap_or(0),
    })
}

/// Fills a field's slot with its value; `None` when the field came before
/// (serde refuses a duplicate) or the value is not in the usual shape.
fn once<T>(slot: &mut Option<T>, value: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value?);
    Some(())
}

/// [`once`] for a value read with the position after it; gives that position.
fn once_at<T>(slot: &mut Option<T>, read: Option<(T, usize)>) -> Option<usize> {
    let (value, at) = read?;
    once(slot, Some(value))?;
    Some(at)
}

/// Eight bytes from `at`, the first lowest; `None` within eight of the end.
#[inline(always)]
fn word(b: &[u8], at: usize) -> Option<u64> {
    let eight: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(eight))
}

/// `at` when the byte there is `byte`, and the position after it.
#[inline(always)]
fn eat(b: &[u8], at: usize, byte: u8) -> Option<usize> {
    (b.get(at) == Some(&byte)).then_some(at + 1)
}

/// The position after JSON's whitespace from `at` (rare in feeds: no
/// loop of its own is worth a call).
#[inline(always)]
fn ws(b: &[u8], mut at: usize) -> usize {
    while matches!(b.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// Where the string whose opening quote is before `at` closes; `None` on
/// an escape, a control character or a non-ASCII byte (serde decodes,
/// refuses or checks those).
#[inline(never)]
fn string_end(b: &[u8], mut at: usize) -> Option<usize> {
    while let Some(w) = word(b, at) {
        // The high bit of each byte that is a quote, a backslash, below
        // 0x20 or above 0x7f. Each test flags its first byte exactly
        // (no borrow reaches a byte before it), so the lowest flag is the
        // first stop.
        let quote = w ^ splat(b'"');
        let slash = w ^ splat(b'\\');
        let stops = (quote.wrapping_sub(splat(1)) & !quote)
            | (slash.wrapping_sub(splat(1)) & !slash)
            | (w.wrapping_sub(splat(0x20)) & !w)
            | w;
        let stops = stops & splat(0x80);
        if stops != 0 {
            at += (stops.trailing_zeros() / 8) as usize;
            return (b.get(at) == Some(&b'"')).then_some(at);
        }
        at += 8;
    }
    loop {
        match *b.get(at)? {
            b'"' => return Some(at),
            b'\\' | 0..=0x1f | 0x80..=0xff => return None,
            _ => at += 1,
        }
    }
}

/// The field of [`Trade`] a key names, from just after its opening
/// quote, and the position after its closing quote; `None` for any other
/// key (the caller then scans it as a string). The key and its closing
/// quote are compared as one word: a key ends at its first quote, so `p"`
/// can only be the key `p`. Near the end the word is padded with bytes no
/// key holds, so a short key there is still recognised.
#[inline(always)]
fn known_key(b: &[u8], at: usize) -> Option<(Field, usize)> {
    let w = word_padded(b, at);
    let field = match low_bytes(w, 2) {
        k if k == pack(b"s\"") => (Field::Symbol, 2),
        k if k == pack(b"p\"") => (Field::Price, 2),
        k if k == pack(b"q\"") => (Field::Qty, 2),
        k if k == pack(b"T\"") => (Field::Ts, 2),
        k if k == pack(b"t\"") => (Field::TradeId, 2),
        _ if low_bytes(w, 6) == pack(b"price\"") => (Field::Price, 6),
        _ if low_bytes(w, 4) == pack(b"qty\"") => (Field::Qty, 4),
        _ if low_bytes(w, 7) == pack(b"symbol\"") => (Field::Symbol, 7),
        _ if low_bytes(w, 3) == pack(b"ts\"") => (Field::Ts, 3),
        _ if w == pack(b"trade_id") && b.get(at + 8) == Some(&b'"') => (Field::TradeId, 9),
        _ => return None,
    };
    Some((field.0, at + field.1))
}

/// Eight bytes from `at` as [`word`] reads them; past the end of `b`,
/// bytes read as 0xff (no digit, quote or ASCII).
#[inline(always)]
fn word_padded(b: &[u8], at: usize) -> u64 {
    if let Some(w) = word(b, at) {
        return w;
    }
    let rest = b.get(at..).unwrap_or_default();
    rest.iter()
        .rev()
        .fold(u64::MAX << (8 * rest.len()), |w, &c| w << 8 | u64::from(c))
}

/// How many of `w`'s bytes, from the lowest, are ASCII digits (0 to 8).
/// Each test flags its first byte exactly (no borrow or carry reaches a
/// lower byte), so the lowest flag is the first non-digit.
#[inline(always)]
fn leading_digits(w: u64) -> usize {
    let below = w.wrapping_sub(splat(b'0')) & !w;
    let above = w.wrapping_add(splat(0x7f - b'9')) | w;
    ((below | above) & splat(0x80)).trailing_zeros() as usize / 8
}

/// The number the first `n` bytes of `w` spell (`n` from 1 to 8, all
/// digits): shifted so that they are the top bytes, the bytes below read
/// as leading zeros, and three multiplies combine the digits in pairs,
/// fours and eights.
#[inline(always)]
fn digits_value(w: u64, n: usize) -> u64 {
    let w = (w << (8 * (8 - n))) & splat(0x0f);
    let w = (w.wrapping_mul(10 << 8 | 1) >> 8) & 0x00ff_00ff_00ff_00ff;
    let w = (w.wrapping_mul(100 << 16 | 1) >> 16) & 0x0000_ffff_0000_ffff;
    w.wrapping_mul(10_000 << 32 | 1) >> 32
}

/// `10^n` for up to eight digits.
const POW10_INT: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// Appends the digits from `at` to `value`, eight at a time; gives it and
/// where they end. Exact while the digits in all stay within
/// [`MAX_DIGITS`] (callers count them).
#[inline(never)]
fn digit_run(b: &[u8], mut at: usize, mut value: u64) -> (u64, usize) {
    loop {
        let w = word_padded(b, at);
        let n = leading_digits(w);
        if n == 0 {
            return (value, at);
        }
        value = value
            .wrapping_mul(POW10_INT[n])
            .wrapping_add(digits_value(w, n));
        at += n;
        if n < 8 {
            return (value, at);
        }
    }
}

/// JSON's integer part (`0`, or digits without a leading zero), how many
/// digits it has and where it ends. More than 19 could overflow a u64:
/// left to serde.
fn integer(b: &[u8], at: usize) -> Option<(u64, usize, usize)> {
    match b.get(at)? {
        b'0' => (!b.get(at + 1).is_some_and(u8::is_ascii_digit)).then_some((0, 1, at + 1)),
        b'1'..=b'9' => {
            let (value, end) = digit_run(b, at, 0);
            (end - at <= MAX_DIGITS).then_some((value, end - at, end))
        }
        _ => None,
    }
}

/// A non-negative decimal without exponent that divides exactly.
fn decimal(b: &[u8], at: usize) -> Option<(f64, usize)> {
    let (mut m, mut digits, mut at) = integer(b, at)?;
    let mut k = 0;
    if let Some(fraction) = eat(b, at, b'.') {
        (m, at) = digit_run(b, fraction, m);
        k = at - fraction;
        digits += k;
        if k == 0 {
            return None;
        }
    }
    if digits > MAX_DIGITS || m > EXACT || matches!(b.get(at), Some(b'e' | b'E')) {
        return None;
    }
    Some((m as f64 / POW10.get(k)?, at))
}

/// A price or quantity: a number, or a decimal string without spaces.
fn number_or_string(b: &[u8], at: usize) -> Option<(f64, usize)> {
    let Some(start) = eat(b, at, b'"') else {
        return decimal(b, at);
    };
    let (v, end) = decimal(b, start)?;
    Some((v, eat(b, end, b'"')?))
}

/// An integer with an optional minus that fits an `i64` (not its
/// minimum, which serde reads too). serde_json reads `-0` as the float
/// -0.0, which an `i64` refuses: left to it too.
fn signed(b: &[u8], at: usize) -> Option<(i64, usize)> {
    let negative = b.get(at) == Some(&b'-');
    let (magnitude, end) = unsigned(b, at + usize::from(negative))?;
    let magnitude = i64::try_from(magnitude).ok()?;
    match negative {
        true => (magnitude > 0).then_some((-magnitude, end)),
        false => Some((magnitude, end)),
    }
}

/// A whole number, with no fraction or exponent after it.
fn unsigned(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let (v, _, end) = integer(b, at)?;
    (!matches!(b.get(end), Some(b'.' | b'e' | b'E'))).then_some((v, end))
}

/// Steps over the value of a field `Trade` does not have, when it is a
/// plain string, number, `true`, `false` or `null`.
fn skip_scalar(b: &[u8], at: usize) -> Option<usize> {
    match b.get(at)? {
        b'"' => Some(string_end(b, at + 1)? + 1),
        b'-' | b'0'..=b'9' => {
            let negative = b.get(at) == Some(&b'-');
            let (_, _, mut at) = integer(b, at + usize::from(negative))?;
            if let Some(fraction) = eat(b, at, b'.') {
                at = digits(b, fraction)?;
            }
            if matches!(b.get(at), Some(b'e' | b'E')) {
                at += 1;
                at += usize::from(matches!(b.get(at), Some(b'+' | b'-')));
                at = digits(b, at)?;
            }
            Some(at)
        }
        _ => [&b"true"[..], b"false", b"null"]
            .into_iter()
            .find(|word| b.get(at..).is_some_and(|rest| rest.starts_with(word)))
            .map(|word| at + word.len()),
    }
}

/// The end of one or more digits from `at`.
fn digits(b: &[u8], at: usize) -> Option<usize> {
    let (_, end) = digit_run(b, at, 0);
    (end > at).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::trade;
    use crate::events::Trade;

    /// xorshift64: the same inputs every run, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[self.below(xs.len())]
        }
        /// From `fewest` to `most - 1` random digits.
        fn digits(&mut self, fewest: usize, most: usize) -> String {
            let n = fewest + self.below(most - fewest);
            (0..n)
                .map(|_| char::from(b'0' + self.below(10) as u8))
                .collect()
        }
    }

    /// A number as a feed might write it: mostly in the usual shape,
    /// sometimes not (exponents, long mantissas, leading zeros, signs).
    fn number(rng: &mut Rng) -> String {
        if rng.below(10) < 7 {
            return format!(
                "{}{}.{}",
                1 + rng.below(9),
                rng.digits(0, 6),
                rng.digits(1, 9)
            );
        }
        let int = match rng.below(4) {
            0 => "0".to_owned(),
            1 => format!("{}{}", 1 + rng.below(9), rng.digits(0, 6)),
            2 => format!("{}{}", 1 + rng.below(9), rng.digits(0, 22)),
            _ => rng.digits(1, 4),
        };
        let frac = match rng.below(4) {
            0 => String::new(),
            1 => format!(".{}", rng.digits(0, 3)),
            _ => format!(".{}", rng.digits(1, 25)),
        };
        let sign = rng.pick(&["", "", "", "-"]);
        let exp = match rng.below(5) {
            0 => format!("e{}", rng.below(400)),
            1 => format!("E-{}", rng.below(30)),
            _ => String::new(),
        };
        format!("{sign}{int}{frac}{exp}")
    }

    fn price(rng: &mut Rng) -> String {
        let n = number(rng);
        match rng.below(10) {
            0 | 1 => format!("\"{n}\""),
            2 => format!("\"{}{n} \"", rng.pick(&["", " "])),
            3 => rng
                .pick(&["true", "null", "\"\"", "\"12x\"", "[1]"])
                .to_owned(),
            _ => n,
        }
    }

    fn whole(rng: &mut Rng) -> String {
        match rng.below(12) {
            0 => number(rng),
            1 => format!("-{}", 1 + rng.below(1000)),
            2 => rng
                .pick(&[
                    "9223372036854775807",
                    "9223372036854775808",
                    "-9223372036854775808",
                    "18446744073709551616",
                    "-0",
                    "\"5\"",
                ])
                .to_owned(),
            _ => format!("{}{}", 1 + rng.below(9), rng.digits(0, 13)),
        }
    }

    /// A trade-like object: fields in any order, under either name, some
    /// missing, doubled or unknown, with or without whitespace.
    fn object(rng: &mut Rng) -> String {
        let mut fields: Vec<String> = Vec::new();
        let mut add = |rng: &mut Rng, names: &[&str], value: String, keep: usize| {
            if rng.below(100) < keep {
                fields.push(format!("\"{}\":{value}", rng.pick(names)));
            }
        };
        let symbol = rng.pick(&[
            "\"BTCUSDT\"",
            "\"SOL\"",
            "\"ETHUSDT\"",
            "\"BTC-PERP\"",
            "\"ADA\"",
            "\"é\"",
            "\"\"",
            "\"B\\u0054C\"",
            "\"a\tb\"",
            "7",
        ]);
        add(rng, &["symbol", "s"], symbol.to_owned(), 95);
        let p = price(rng);
        add(rng, &["price", "p"], p, 95);
        let q = price(rng);
        add(rng, &["qty", "q"], q, 80);
        let t = whole(rng);
        add(rng, &["ts", "T"], t, 95);
        let id = whole(rng);
        add(rng, &["trade_id", "t"], id, 70);
        for _ in 0..rng.below(3).saturating_sub(rng.below(2)) {
            let extra = rng.pick(&[
                "\"trade\"",
                "true",
                "false",
                "null",
                "1.5e3",
                "-0.25",
                "3",
                "{\"a\":1}",
                "[1,2]",
                "\"x\\\"y\"",
                "01",
                "nul",
            ]);
            add(rng, &["e", "E", "m", "M", "x"], extra.to_owned(), 100);
        }
        if rng.below(20) == 0 {
            add(rng, &["s", "p", "T"], "\"1\"".to_owned(), 100);
        }
        for i in (1..fields.len()).rev() {
            fields.swap(i, rng.below(i + 1));
        }
        let ws = |rng: &mut Rng| {
            rng.pick(&["", "", "", " ", "\n", " \t", "\r\n  "])
                .to_owned()
        };
        let mut out = ws(rng) + "{";
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out += &(ws(rng) + ",");
            }
            out += &(ws(rng) + &f.replacen(':', &format!("{}:{}", ws(rng), ws(rng)), 1));
        }
        out += &(ws(rng) + "}" + &ws(rng));
        match rng.below(30) {
            0 => out.push('x'),
            1 => {
                out.pop();
            }
            _ => {}
        }
        out
    }

    fn same(a: &Trade, b: &Trade) -> bool {
        a.symbol == b.symbol
            && a.price.to_bits() == b.price.to_bits()
            && a.qty.to_bits() == b.qty.to_bits()
            && a.ts == b.ts
            && a.trade_id == b.trade_id
    }

    #[test]
    fn answers_only_as_serde_does() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut quick, mut by_serde, mut left_to_serde) = (0, 0, 0);
        for _ in 0..100_000 {
            let text = object(&mut rng);
            let serde: Result<Trade, _> = serde_json::from_str(&text);
            match (trade(text.as_bytes()), &serde) {
                (Some(q), Ok(s)) => {
                    assert!(same(&q, s), "{text}: quick {q:?}, serde {s:?}");
                    quick += 1;
                }
                (Some(q), Err(e)) => panic!("{text}: quick {q:?}, serde refused: {e}"),
                (None, Ok(_)) => left_to_serde += 1,
                (None, Err(_)) => by_serde += 1,
            }
        }
        // The inputs reach every branch: quick answers, trades only serde
        // reads, and inputs serde refuses.
        assert!(quick > 10_000, "{quick} quick");
        assert!(left_to_serde > 1_000, "{left_to_serde} left to serde");
        assert!(by_serde > 1_000, "{by_serde} refused");
    }

    /// Short keys in the last eight bytes (where no whole word can be
    /// read) and digit runs of every length, wherever they fall against
    /// the eight-byte steps.
    #[test]
    fn reads_near_the_end_and_digit_runs_of_every_length() {
        for text in [
            r#"{"s":"X","p":1,"T":1,"q":43}"#,
            r#"{"s":"X","p":1,"T":1,"t":7}"#,
            r#"{"s":"X","p":1,"t":7,"T":2}"#,
            r#"{"p":1,"T":1,"s":"X"}"#,
            r#"{"p":1,"T":1,"x":"y"}"#,
        ] {
            let serde: Result<Trade, _> = serde_json::from_str(text);
            match (trade(text.as_bytes()), serde) {
                (Some(q), Ok(s)) => assert!(same(&q, &s), "{text}: {q:?} against {s:?}"),
                (None, Err(_)) => {}
                (q, s) => panic!("{text}: quick {q:?}, serde {s:?}"),
            }
        }
        let digits = "1234567890123456789";
        for pad in 0..8 {
            for len in 1..=digits.len() {
                let n = &digits[..len];
                // A price's mantissa stays exact (within 2^53).
                let p = &digits[..len.min(14)];
                let text = format!(
                    r#"{{"symbol":"{}","price":{p}.5,"ts":{n},"trade_id":{n}}}"#,
                    &"ABCDEFGH"[..pad + 1]
                );
                let by_serde: Trade = serde_json::from_str(&text).unwrap();
                let quick = trade(text.as_bytes()).unwrap_or_else(|| panic!("not quick: {text}"));
                assert!(same(&quick, &by_serde), "{text}");
            }
        }
    }

    #[test]
    fn takes_the_usual_shapes() {
        for text in [
            r#"{"symbol":"BTCUSDT","price":64000.5,"qty":0.1,"ts":1753862400171,"trade_id":7}"#,
            r#"{"e":"trade","E":1753862400172,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1753862400171,"m":true,"M":true}"#,
            "{ \"price\": 149.951, \"symbol\": \"SOLUSDT\", \"ts\": 1 }\n",
        ] {
            let quick = trade(text.as_bytes()).unwrap_or_else(|| panic!("not quick: {text}"));
            assert!(same(&quick, &serde_json::from_str(text).unwrap()), "{text}");
        }
        // Every trade of the sample data (it holds alert requests too).
        let sample = include_str!("../../../examples/data/trades.ndjson");
        let mut trades = 0;
        for line in sample.lines() {
            let Ok(by_serde) = serde_json::from_str::<Trade>(line) else {
                continue;
            };
            let quick = trade(line.as_bytes()).unwrap_or_else(|| panic!("not quick: {line}"));
            assert!(same(&quick, &by_serde), "{line}");
            trades += 1;
        }
        assert!(trades >= 6_000, "{trades} trades in the sample");
    }
}

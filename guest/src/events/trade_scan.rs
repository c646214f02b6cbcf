//! A single pass over a trade in its usual shape: a flat JSON object whose
//! strings have no escapes and whose prices are short decimals. In wasm it
//! costs about 3,600 instructions per trade, against about 4,500 for
//! serde_json's generic parse (a visitor per field, a float parser per
//! number).
//!
//! It answers only where serde_json would answer the same, bit for bit,
//! and gives up (`None`) on anything else — escapes, exponents, long
//! mantissas, a minus sign on a price, duplicate or nested fields — so that
//! [`super::Trade::parse`] falls back to serde, which also words the errors.
//! Why the numbers agree: a price `m / 10^k` with `m ≤ 2^53` and `k ≤ 22`
//! has both operands exact in an f64, so the one division is correctly
//! rounded; serde_json computes the same division, and Rust's `str::parse`
//! (for decimal strings) rounds correctly. The tests compare the two on
//! generated inputs.

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

/// The trade in `text`, or `None` when serde must judge it.
pub(super) fn trade(text: &str) -> Option<Trade> {
    let mut c = Cursor { text, at: 0 };
    let (mut symbol, mut price, mut qty, mut ts, mut trade_id) = (None, None, None, None, None);
    c.ws();
    c.eat(b'{')?;
    loop {
        c.ws();
        c.eat(b'"')?;
        let key = c.string()?;
        c.ws();
        c.eat(b':')?;
        c.ws();
        match key {
            "symbol" | "s" => once(&mut symbol, c.eat(b'"').and_then(|()| c.string()))?,
            "price" | "p" => once(&mut price, c.number_or_string())?,
            "qty" | "q" => once(&mut qty, c.number_or_string())?,
            "ts" | "T" => once(&mut ts, c.signed())?,
            "trade_id" | "t" => once(&mut trade_id, c.unsigned())?,
            _ => c.skip_scalar()?,
        }
        c.ws();
        if c.eat(b',').is_none() {
            c.eat(b'}')?;
            break;
        }
    }
    c.ws();
    if c.at != text.len() {
        return None;
    }
    Some(Trade {
        symbol: symbol?.to_owned(),
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

/// A position in the text being scanned.
struct Cursor<'a> {
    /// Checked UTF-8, so a slice between two ASCII quotes is a `&str`.
    text: &'a str,
    /// Byte offset of the next character.
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    /// JSON's whitespace.
    fn ws(&mut self) {
        // Loops run on a local index: the cursor lives in the guest's
        // memory, where every `self.at += 1` would be a load and a store.
        let bytes = self.text.as_bytes();
        let mut at = self.at;
        while matches!(bytes.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            at += 1;
        }
        self.at = at;
    }

    /// The rest of a string whose opening quote was eaten; `None` on an
    /// escape or a control character (serde decodes or refuses those).
    fn string(&mut self) -> Option<&'a str> {
        let (bytes, start) = (self.text.as_bytes(), self.at);
        let mut at = start;
        loop {
            match *bytes.get(at)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => at += 1,
            }
        }
        self.at = at + 1;
        self.text.get(start..at)
    }

    /// JSON's integer part (`0`, or digits without a leading zero) and
    /// how many digits it has. More than 19 could overflow a u64: left to
    /// serde. (Counting digits, not `checked_mul`, which in wasm is a call
    /// to a 128-bit multiply for every digit.)
    fn integer(&mut self) -> Option<(u64, usize)> {
        let first = self.peek().filter(u8::is_ascii_digit)?;
        if first == b'0' {
            self.at += 1;
            return (!self.peek().is_some_and(|b| b.is_ascii_digit())).then_some((0, 1));
        }
        let (value, digits) = self.run_of_digits(0);
        (digits <= MAX_DIGITS).then_some((value, digits))
    }

    /// Appends the digits that follow to `value`; returns it and their
    /// count. Exact while the total stays within [`MAX_DIGITS`].
    fn run_of_digits(&mut self, mut value: u64) -> (u64, usize) {
        let (bytes, start) = (self.text.as_bytes(), self.at);
        let mut at = start;
        while let Some(d) = bytes.get(at).filter(|b| b.is_ascii_digit()) {
            value = value.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            at += 1;
        }
        self.at = at;
        (value, at - start)
    }

    /// A non-negative decimal without exponent that divides exactly.
    fn decimal(&mut self) -> Option<f64> {
        let (mut m, mut digits) = self.integer()?;
        let mut k = 0;
        if self.eat(b'.').is_some() {
            (m, k) = self.run_of_digits(m);
            digits += k;
            if k == 0 {
                return None;
            }
        }
        if digits > MAX_DIGITS || m > EXACT || matches!(self.peek(), Some(b'e' | b'E')) {
            return None;
        }
        Some(m as f64 / POW10.get(k)?)
    }

    /// A price or quantity: a number, or a decimal string without spaces.
    fn number_or_string(&mut self) -> Option<f64> {
        if self.eat(b'"').is_none() {
            return self.decimal();
        }
        let v = self.decimal()?;
        self.eat(b'"')?;
        Some(v)
    }

    /// An integer with an optional minus that fits an `i64` (not its
    /// minimum, which serde reads too). serde_json reads `-0` as the float
    /// -0.0, which an `i64` refuses: left to it too.
    fn signed(&mut self) -> Option<i64> {
        let negative = self.eat(b'-').is_some();
        let magnitude = i64::try_from(self.unsigned()?).ok()?;
        if negative {
            (magnitude > 0).then_some(-magnitude)
        } else {
            Some(magnitude)
        }
    }

    /// A whole number, with no fraction or exponent after it.
    fn unsigned(&mut self) -> Option<u64> {
        let (v, _) = self.integer()?;
        (!matches!(self.peek(), Some(b'.' | b'e' | b'E'))).then_some(v)
    }

    /// Steps over the value of a field `Trade` does not have, when it is a
    /// plain string, number, `true`, `false` or `null`.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string().map(drop)
            }
            b'-' | b'0'..=b'9' => {
                self.eat(b'-');
                self.integer()?;
                if self.eat(b'.').is_some() {
                    self.digits()?;
                }
                if matches!(self.peek(), Some(b'e' | b'E')) {
                    self.at += 1;
                    if matches!(self.peek(), Some(b'+' | b'-')) {
                        self.at += 1;
                    }
                    self.digits()?;
                }
                Some(())
            }
            _ => ["true", "false", "null"]
                .into_iter()
                .find(|word| {
                    self.text
                        .get(self.at..)
                        .is_some_and(|rest| rest.starts_with(word))
                })
                .map(|word| self.at += word.len()),
        }
    }

    /// One or more digits.
    fn digits(&mut self) -> Option<()> {
        (self.run_of_digits(0).1 > 0).then_some(())
    }
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
            match (trade(&text), &serde) {
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

    #[test]
    fn takes_the_usual_shapes() {
        for text in [
            r#"{"symbol":"BTCUSDT","price":64000.5,"qty":0.1,"ts":1753862400171,"trade_id":7}"#,
            r#"{"e":"trade","E":1753862400172,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1753862400171,"m":true,"M":true}"#,
            "{ \"price\": 149.951, \"symbol\": \"SOLUSDT\", \"ts\": 1 }\n",
        ] {
            let quick = trade(text).unwrap_or_else(|| panic!("not quick: {text}"));
            assert!(same(&quick, &serde_json::from_str(text).unwrap()), "{text}");
        }
        // Every trade of the sample data (it holds alert requests too).
        let sample = include_str!("../../../examples/data/trades.ndjson");
        let mut trades = 0;
        for line in sample.lines() {
            let Ok(by_serde) = serde_json::from_str::<Trade>(line) else {
                continue;
            };
            let quick = trade(line).unwrap_or_else(|| panic!("not quick: {line}"));
            assert!(same(&quick, &by_serde), "{line}");
            trades += 1;
        }
        assert!(trades >= 6_000, "{trades} trades in the sample");
    }
}

//! Counters (`wasi:keyvalue/atomics.increment`): a counter is an ordinary
//! cache value holding decimal digits, so `get` reads it like any value. In
//! L2 it sits in a raw codec envelope (`0x00` then the digits), and Redis
//! adds to it in one script, so hosts sharing Redis count together.

use super::CacheError;

/// Reads a counter's value.
pub fn parse(key: &str, value: &[u8]) -> Result<u64, CacheError> {
    std::str::from_utf8(value)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            CacheError::Invalid(format!(
                "cannot increment {key}: its value is not a decimal counter"
            ))
        })
}

/// `current + delta`, refused past `u64::MAX`.
pub fn add(key: &str, current: u64, delta: u64) -> Result<u64, CacheError> {
    current.checked_add(delta).ok_or_else(|| {
        CacheError::Invalid(format!(
            "cannot increment {key} by {delta}: {current} + {delta} is more than a u64 holds"
        ))
    })
}

/// Adds `ARGV[1]` to the counter at `KEYS[1]` atomically; a new counter
/// lives `ARGV[2]` ms, an existing one keeps its TTL. Returns the new value
/// (as text: Lua numbers are doubles) and the TTL left. Redis does the
/// arithmetic with `INCRBY` on the bare digits, then puts the envelope back;
/// a script's writes are not rolled back on error, so the old value is
/// restored by hand when `INCRBY` refuses (overflow past i64).
pub const INCREMENT_SCRIPT: &str = r"
local old = redis.call('GET', KEYS[1])
if old then
  local digits = string.sub(old, 2)
  if string.byte(old, 1) ~= 0 or not string.match(digits, '^%d+$') or #digits > 20 then
    return redis.error_reply('ERR value is not a decimal counter')
  end
  redis.call('SET', KEYS[1], digits, 'KEEPTTL')
else
  redis.call('SET', KEYS[1], '0', 'PX', ARGV[2])
end
local r = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(r) == 'table' and r.err then
  if old then redis.call('SET', KEYS[1], old, 'KEEPTTL') else redis.call('DEL', KEYS[1]) end
  return r
end
local now = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], string.char(0) .. now, 'KEEPTTL')
return {now, redis.call('PTTL', KEYS[1])}
";

#[cfg(test)]
mod tests {
    use super::{add, parse};

    #[test]
    fn counters_are_plain_decimal_digits() {
        assert_eq!(parse("k", b"0").unwrap(), 0);
        assert_eq!(parse("k", b"18446744073709551615").unwrap(), u64::MAX);
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b" 1",
            b"1.5",
            b"0x10",
            b"18446744073709551616",
            b"\x001",
        ] {
            let e = parse("k", bad).unwrap_err().to_string();
            assert!(e.contains("not a decimal counter"), "{bad:?}: {e}");
        }
        assert_eq!(add("k", 1, 2).unwrap(), 3);
        assert!(
            add("k", u64::MAX, 1)
                .unwrap_err()
                .to_string()
                .contains("more than a u64")
        );
    }
}

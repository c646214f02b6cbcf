//! NATS subject rules: validation and wildcard matching.
//!
//! A subject is a dot-separated list of non-empty tokens without white
//! space. In a filter, `*` matches exactly one token and `>` (last token
//! only) matches one or more.

use thiserror::Error;

/// Why a subject or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubjectError {
    /// Empty string.
    #[error("subject is empty")]
    Empty,
    /// Longer than the host's limit.
    #[error("subject is {0} bytes long; the limit is {MAX_SUBJECT_LEN}")]
    TooLong(usize),
    /// `a..b`, `.a`, `a.`.
    #[error("subject {0:?} has an empty token")]
    EmptyToken(String),
    /// Spaces, tabs, control characters.
    #[error("subject {0:?} contains white space or a control character")]
    BadCharacter(String),
    /// `*` or `>` where a concrete subject is needed.
    #[error("subject {0:?} contains a wildcard; publish needs a concrete subject")]
    Wildcard(String),
    /// `>` not last, or a wildcard inside a token such as `a*`.
    #[error("filter {0:?} misuses a wildcard: `*` and `>` must be whole tokens, `>` only last")]
    BadWildcard(String),
    /// `$JS.`, `$SYS.`, `$KV.` and other system prefixes.
    #[error("subject {0:?} is in a reserved `$` namespace")]
    Reserved(String),
}

/// Longest subject weir accepts (NATS itself has no hard limit; long
/// subjects cost on every message).
pub const MAX_SUBJECT_LEN: usize = 256;

fn check_common(s: &str) -> Result<(), SubjectError> {
    if s.is_empty() {
        return Err(SubjectError::Empty);
    }
    if s.len() > MAX_SUBJECT_LEN {
        return Err(SubjectError::TooLong(s.len()));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SubjectError::BadCharacter(s.to_owned()));
    }
    if s.split('.').any(str::is_empty) {
        return Err(SubjectError::EmptyToken(s.to_owned()));
    }
    Ok(())
}

/// Checks a subject a component publishes or requests on.
pub fn validate_publish(s: &str) -> Result<(), SubjectError> {
    check_common(s)?;
    if s.starts_with('$') {
        return Err(SubjectError::Reserved(s.to_owned()));
    }
    if s.split('.').any(|t| t.contains(['*', '>'])) {
        return Err(SubjectError::Wildcard(s.to_owned()));
    }
    Ok(())
}

/// Checks a subscription filter or grant pattern.
pub fn validate_filter(s: &str) -> Result<(), SubjectError> {
    check_common(s)?;
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        let wild = t.contains(['*', '>']);
        let whole = *t == "*" || (*t == ">" && i == tokens.len() - 1);
        if wild && !whole {
            return Err(SubjectError::BadWildcard(s.to_owned()));
        }
    }
    Ok(())
}

/// Whether a concrete `subject` matches `filter` (which may hold wildcards).
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(ft), Some(st)) if ft == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every subject matched by `inner` is also matched by `outer`:
/// used to check that a subscription stays within a grant.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('.');
    let mut i = inner.split('.');
    loop {
        match (o.next(), i.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(ot), Some(it)) if ot == it => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(matches("TRADE.trade.*", "TRADE.trade.BTCUSDT"));
        assert!(!matches("TRADE.trade.*", "TRADE.trade.BTCUSDT.x"));
        assert!(!matches("TRADE.trade.*", "TRADE.trade"));
        assert!(matches("TRADE.>", "TRADE.trade.BTCUSDT"));
        assert!(!matches("TRADE.>", "TRADE"));
        assert!(matches("*.trade.>", "TRADE.trade.a.b"));
        assert!(matches("alerts.created", "alerts.created"));
        assert!(!matches("alerts.created", "alerts.created2"));
    }

    #[test]
    fn publish_subjects_are_concrete() {
        assert!(validate_publish("signals.BTCUSDT").is_ok());
        assert_eq!(validate_publish(""), Err(SubjectError::Empty));
        assert!(matches!(
            validate_publish("a..b"),
            Err(SubjectError::EmptyToken(_))
        ));
        assert!(matches!(
            validate_publish("a.b."),
            Err(SubjectError::EmptyToken(_))
        ));
        assert!(matches!(
            validate_publish("a b"),
            Err(SubjectError::BadCharacter(_))
        ));
        assert!(matches!(
            validate_publish("a.*"),
            Err(SubjectError::Wildcard(_))
        ));
        assert!(matches!(
            validate_publish("a.>"),
            Err(SubjectError::Wildcard(_))
        ));
        assert!(matches!(
            validate_publish("$JS.API.INFO"),
            Err(SubjectError::Reserved(_))
        ));
        assert!(matches!(
            validate_publish(&"a".repeat(300)),
            Err(SubjectError::TooLong(300))
        ));
    }

    #[test]
    fn filters_use_whole_token_wildcards() {
        assert!(validate_filter("a.*.c").is_ok());
        assert!(validate_filter("a.>").is_ok());
        assert!(validate_filter(">").is_ok());
        assert!(matches!(
            validate_filter("a.>.c"),
            Err(SubjectError::BadWildcard(_))
        ));
        assert!(matches!(
            validate_filter("a.b*"),
            Err(SubjectError::BadWildcard(_))
        ));
    }

    #[test]
    fn grants_cover_narrower_filters() {
        assert!(covers("TRADE.>", "TRADE.trade.*"));
        assert!(covers("TRADE.*.*", "TRADE.trade.*"));
        assert!(covers(">", "anything.at.all"));
        assert!(!covers("TRADE.trade.*", "TRADE.>"));
        assert!(!covers("TRADE.trade.BTCUSDT", "TRADE.trade.*"));
        assert!(!covers("alerts.*", "alerts.created.x"));
        assert!(covers("alerts.created", "alerts.created"));
    }
}

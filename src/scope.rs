//! [`Scopes`]: what a route requires of a key's scopes (permissions), as a
//! rule of all-of and any-of sets, checked against
//! [`Principal::has_scope`](crate::Principal::has_scope).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::Principal;

/// A scope requirement: one scope, all of several, any of several, or any
/// combination (Unkey's `a AND (b OR c)`).
///
/// A route requires it with
/// [`require_scopes`](crate::ApiKeyAuthLayer::require_scopes); a handler
/// can demand one itself with [`Scoped::require`](crate::Scoped::require).
/// It is checked against the key's
/// [`has_scope`](crate::Principal::has_scope), after the key is known and
/// before any rate-limit counter is touched; a key that doesn't satisfy it
/// is answered `403 insufficient_scope`.
///
/// ```
/// use tower_api_key::Scopes;
///
/// let admin = Scopes::one("admin");
/// let reports = Scopes::any(["reports:read", "admin"]);
/// let both = Scopes::one("keys:write").and(Scopes::any(["billing", "admin"]));
/// assert_eq!(both.to_string(), "keys:write AND (billing OR admin)");
///
/// // The same rules, written out (what `Display` writes, `parse` reads).
/// let parsed: Scopes = "keys:write AND (billing OR admin)".parse()?;
/// assert_eq!(parsed, both);
/// assert_eq!("reports:read OR admin".parse::<Scopes>()?, reports);
/// # let _ = admin;
/// # Ok::<(), tower_api_key::InvalidScopes>(())
/// ```
///
/// A scope is an RFC 6749 scope token: visible ASCII but `"` and `\`, no
/// spaces. `AND` binds tighter than `OR`; parentheses group; the words
/// `AND` and `OR` are case-sensitive (a scope can't be named either).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Scopes(Rule);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Rule {
    One(Box<str>),
    All(Vec<Rule>),
    Any(Vec<Rule>),
}

/// A scope rule the layer can't use: an empty set, or a name that is not a
/// scope token, or a rule that doesn't parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope rule {rule:?}: {reason}")]
pub struct InvalidScopes {
    rule: String,
    reason: &'static str,
}

impl Scopes {
    /// Requires one scope.
    pub fn one(scope: impl Into<String>) -> Self {
        Self(Rule::One(scope.into().into_boxed_str()))
    }

    /// Requires every one of `scopes` (each a scope name or a rule).
    pub fn all<I>(scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Scopes>,
    {
        Self(Rule::All(scopes.into_iter().map(|s| s.into().0).collect())).flat()
    }

    /// Requires at least one of `scopes` (each a scope name or a rule).
    pub fn any<I>(scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Scopes>,
    {
        Self(Rule::Any(scopes.into_iter().map(|s| s.into().0).collect())).flat()
    }

    /// This rule and `other`.
    pub fn and(self, other: impl Into<Scopes>) -> Self {
        Self::all([self, other.into()])
    }

    /// This rule or `other`.
    pub fn or(self, other: impl Into<Scopes>) -> Self {
        Self::any([self, other.into()])
    }

    /// Parses a rule as [`Display`](fmt::Display) writes it:
    /// `a AND (b OR c)`.
    pub fn parse(rule: &str) -> Result<Self, InvalidScopes> {
        let invalid = |reason| InvalidScopes {
            rule: rule.to_owned(),
            reason,
        };
        let mut tokens = Tokens::new(rule);
        let parsed = parse_or(&mut tokens).map_err(invalid)?;
        if tokens.next().is_some() {
            return Err(invalid("unexpected text after the rule"));
        }
        let parsed = Self(parsed).flat();
        parsed.validate().map_err(|e| InvalidScopes {
            rule: rule.to_owned(),
            reason: e.reason,
        })?;
        Ok(parsed)
    }

    /// Whether `principal` satisfies the rule. Allocates nothing: each
    /// scope named is asked of [`Principal::has_scope`] until the answer is
    /// known.
    pub fn is_satisfied_by<P: Principal + ?Sized>(&self, principal: &P) -> bool {
        self.0.holds(&|scope: &str| principal.has_scope(scope))
    }

    /// Every scope named is a scope token and no set is empty.
    pub(crate) fn validate(&self) -> Result<(), InvalidScopes> {
        self.0.validate().map_err(|reason| InvalidScopes {
            rule: self.to_string(),
            reason,
        })
    }

    /// Nested sets of the same kind merged (`a AND (b AND c)` is
    /// `a AND b AND c`), a set of one its member.
    fn flat(self) -> Self {
        fn flat(rule: Rule) -> Rule {
            match rule {
                Rule::One(_) => rule,
                Rule::All(rules) => merge(rules, true),
                Rule::Any(rules) => merge(rules, false),
            }
        }
        fn merge(rules: Vec<Rule>, all: bool) -> Rule {
            let mut out = Vec::with_capacity(rules.len());
            for rule in rules.into_iter().map(flat) {
                match rule {
                    Rule::All(inner) if all => out.extend(inner),
                    Rule::Any(inner) if !all => out.extend(inner),
                    other => out.push(other),
                }
            }
            match (out.len(), all) {
                (1, _) => out.pop().unwrap_or(Rule::All(Vec::new())),
                (_, true) => Rule::All(out),
                (_, false) => Rule::Any(out),
            }
        }
        Self(flat(self.0))
    }

    /// One set of scopes that satisfies the rule: for each any-of, its
    /// first member. What the `scope` of an RFC 6750 challenge lists, space
    /// separated (a token with these scopes would pass).
    pub(crate) fn one_way(&self) -> Vec<&str> {
        fn walk<'a>(rule: &'a Rule, out: &mut Vec<&'a str>) {
            match rule {
                Rule::One(s) => {
                    if !out.contains(&&**s) {
                        out.push(s);
                    }
                }
                Rule::All(rules) => rules.iter().for_each(|r| walk(r, out)),
                Rule::Any(rules) => {
                    if let Some(first) = rules.first() {
                        walk(first, out);
                    }
                }
            }
        }
        let mut scopes = Vec::new();
        walk(&self.0, &mut scopes);
        scopes
    }
}

impl Rule {
    #[inline]
    fn holds<F: Fn(&str) -> bool>(&self, has: &F) -> bool {
        match self {
            Rule::One(scope) => has(scope),
            Rule::All(rules) => rules.iter().all(|r| r.holds_nested(has)),
            Rule::Any(rules) => rules.iter().any(|r| r.holds_nested(has)),
        }
    }

    /// A member of a set: most are single scopes, asked without a call.
    #[inline]
    fn holds_nested<F: Fn(&str) -> bool>(&self, has: &F) -> bool {
        match self {
            Rule::One(scope) => has(scope),
            nested => nested.holds_set(has),
        }
    }

    #[inline(never)]
    fn holds_set<F: Fn(&str) -> bool>(&self, has: &F) -> bool {
        self.holds(has)
    }

    fn validate(&self) -> Result<(), &'static str> {
        match self {
            Rule::One(scope) if !is_scope_token(scope) => Err(
                "a scope is 1 or more visible ASCII characters but '\"' and '\\' (RFC 6749 scope-token)",
            ),
            Rule::One(scope) if matches!(&**scope, "AND" | "OR") => {
                Err("AND and OR are not scope names")
            }
            Rule::One(_) => Ok(()),
            Rule::All(rules) | Rule::Any(rules) if rules.is_empty() => {
                Err("an empty set of scopes")
            }
            Rule::All(rules) | Rule::Any(rules) => rules.iter().try_for_each(Rule::validate),
        }
    }
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub(crate) fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e))
}

impl From<&str> for Scopes {
    /// One scope (not a rule to parse: use [`Scopes::parse`] for that).
    fn from(scope: &str) -> Self {
        Self::one(scope)
    }
}

impl From<String> for Scopes {
    /// One scope.
    fn from(scope: String) -> Self {
        Self::one(scope)
    }
}

impl FromStr for Scopes {
    type Err = InvalidScopes;

    fn from_str(rule: &str) -> Result<Self, InvalidScopes> {
        Self::parse(rule)
    }
}

impl fmt::Display for Scopes {
    /// `a AND (b OR c)`: a set inside another in parentheses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn write(rule: &Rule, nested: bool, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let (rules, word) = match rule {
                Rule::One(scope) => return f.write_str(scope),
                Rule::All(rules) => (rules, " AND "),
                Rule::Any(rules) => (rules, " OR "),
            };
            let group = nested && rules.len() > 1;
            if group {
                f.write_str("(")?;
            }
            for (i, r) in rules.iter().enumerate() {
                if i > 0 {
                    f.write_str(word)?;
                }
                write(r, true, f)?;
            }
            if group {
                f.write_str(")")?;
            }
            Ok(())
        }
        write(&self.0, false, f)
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// A route's requirement as the layer keeps it: the rule, and its two
/// renderings for a refusal, made once.
#[derive(Debug)]
pub(crate) struct Requirement {
    pub(crate) scopes: Scopes,
    /// `scope="…"` of the challenge: one way to satisfy the rule (empty:
    /// none said).
    pub(crate) challenge: Box<str>,
    /// The body's `required_scopes`: the whole rule (`None`: not said).
    pub(crate) rule: Option<Box<str>>,
}

impl Requirement {
    /// A requirement whose refusal doesn't say what it is (every route's
    /// at once, for a path not in canonical form: naming it would list the
    /// API's rules).
    pub(crate) fn undisclosed(scopes: Scopes) -> Arc<Self> {
        Arc::new(Self {
            scopes,
            challenge: Box::from(""),
            rule: None,
        })
    }

    pub(crate) fn new(scopes: Scopes) -> Arc<Self> {
        // A rule made in a handler may name what is not a scope token:
        // left out of the header, whose quoted string it could break.
        let mut challenge = scopes.one_way();
        challenge.retain(|s| is_scope_token(s));
        let challenge = challenge.join(" ");
        Arc::new(Self {
            rule: Some(scopes.to_string().into_boxed_str()),
            challenge: challenge.into_boxed_str(),
            scopes,
        })
    }
}

/// The words of a rule: scope names, `AND`, `OR`, parentheses.
struct Tokens<'a> {
    rest: &'a str,
    peeked: Option<Option<&'a str>>,
}

impl<'a> Tokens<'a> {
    fn new(rule: &'a str) -> Self {
        Self {
            rest: rule,
            peeked: None,
        }
    }

    fn peek(&mut self) -> Option<&'a str> {
        if self.peeked.is_none() {
            self.peeked = Some(self.read());
        }
        self.peeked.flatten()
    }

    fn read(&mut self) -> Option<&'a str> {
        self.rest = self.rest.trim_start_matches([' ', '\t']);
        let first = self.rest.chars().next()?;
        let len = if matches!(first, '(' | ')') {
            1
        } else {
            self.rest
                .find([' ', '\t', '(', ')'])
                .unwrap_or(self.rest.len())
        };
        let (token, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(token)
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match self.peeked.take() {
            Some(peeked) => peeked,
            None => self.read(),
        }
    }
}

type Parsed = Result<Rule, &'static str>;

/// `or := and ("OR" and)*`
fn parse_or(tokens: &mut Tokens<'_>) -> Parsed {
    let mut rules = vec![parse_and(tokens)?];
    while tokens.peek() == Some("OR") {
        tokens.next();
        rules.push(parse_and(tokens)?);
    }
    Ok(Rule::Any(rules))
}

/// `and := atom ("AND" atom)*`
fn parse_and(tokens: &mut Tokens<'_>) -> Parsed {
    let mut rules = vec![parse_atom(tokens)?];
    while tokens.peek() == Some("AND") {
        tokens.next();
        rules.push(parse_atom(tokens)?);
    }
    Ok(Rule::All(rules))
}

/// `atom := scope | "(" or ")"`
fn parse_atom(tokens: &mut Tokens<'_>) -> Parsed {
    match tokens.next() {
        None => Err("a scope or '(' expected"),
        Some("(") => {
            let rule = parse_or(tokens)?;
            match tokens.next() {
                Some(")") => Ok(rule),
                _ => Err("')' expected"),
            }
        }
        Some(")" | "AND" | "OR") => Err("a scope or '(' expected"),
        Some(scope) => Ok(Rule::One(scope.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Key(&'static [&'static str]);

    impl Principal for Key {
        fn has_scope(&self, scope: &str) -> bool {
            self.0.contains(&scope)
        }
    }

    #[test]
    fn rules_hold_as_their_logic_says() {
        let rule = Scopes::one("a").and(Scopes::any(["b", "c"]));
        assert!(rule.is_satisfied_by(&Key(&["a", "b"])));
        assert!(rule.is_satisfied_by(&Key(&["c", "a"])));
        assert!(!rule.is_satisfied_by(&Key(&["a"])));
        assert!(!rule.is_satisfied_by(&Key(&["b", "c"])));
        assert!(!rule.is_satisfied_by(&Key(&[])));
        let all = Scopes::all(["x", "y"]);
        assert!(all.is_satisfied_by(&Key(&["y", "x", "z"])));
        assert!(!all.is_satisfied_by(&Key(&["x"])));
        // A principal that says nothing of scopes has none.
        struct Bare;
        impl Principal for Bare {}
        assert!(!Scopes::one("a").is_satisfied_by(&Bare));
    }

    #[test]
    fn display_and_parse_agree() {
        for (text, rule) in [
            ("a", Scopes::one("a")),
            ("a AND b", Scopes::all(["a", "b"])),
            ("a OR b", Scopes::any(["a", "b"])),
            (
                "a AND (b OR c)",
                Scopes::one("a").and(Scopes::any(["b", "c"])),
            ),
            (
                "(a AND b) OR c",
                Scopes::all(["a", "b"]).or(Scopes::one("c")),
            ),
            ("a AND b AND c", Scopes::all(["a", "b"]).and("c")),
        ] {
            assert_eq!(rule.to_string(), text);
            assert_eq!(Scopes::parse(text), Ok(rule), "{text}");
        }
        // AND binds tighter; spaces and tabs are free around parentheses.
        assert_eq!(
            Scopes::parse("a OR b AND c").unwrap().to_string(),
            "a OR (b AND c)"
        );
        assert_eq!(
            Scopes::parse("\t( a OR b )AND c ").unwrap().to_string(),
            "(a OR b) AND c"
        );
        assert_eq!(
            Scopes::parse("keys:write AND users.read").unwrap(),
            Scopes::all(["keys:write", "users.read"])
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in [
            "",
            "AND",
            "a AND",
            "a OR OR b",
            "(a",
            "a)",
            "()",
            "a b",
            "a (b)",
            "a\"b",
            "a\\b",
            "é",
        ] {
            assert!(Scopes::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Scopes::all(Vec::<&str>::new()).validate().is_err());
        assert!(Scopes::one("a b").validate().is_err());
        assert!(Scopes::one("OR").validate().is_err());
        assert!(Scopes::any(["a", "b"]).validate().is_ok());
    }

    #[test]
    fn the_challenge_lists_one_way_to_pass() {
        assert_eq!(
            Scopes::any(["reports:read", "admin"]).one_way(),
            ["reports:read"]
        );
        assert_eq!(
            Scopes::one("a").and(Scopes::any(["b", "c"])).one_way(),
            ["a", "b"]
        );
        assert_eq!(
            Scopes::any([Scopes::all(["a", "b"]), Scopes::one("c")]).one_way(),
            ["a", "b"]
        );
        assert_eq!(Scopes::all(["a", "a"]).one_way(), ["a"]);
        let req = Requirement::new(Scopes::all(["ok", "not ok"]));
        assert_eq!(&*req.challenge, "ok");
        assert_eq!(req.rule.as_deref(), Some("ok AND not ok"));
    }
}

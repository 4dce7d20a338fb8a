//! Alertmanager's label matchers (`name="value"`, `name!="value"`, `name=~"regex"`,
//! `name!~"regex"`), parsed and matched as Alertmanager does: values quoted or not, escapes `\"`,
//! `\\` and `\n` in quoted values, regexes anchored at both ends (`^(?:RE)$`), and a label that
//! is absent matching as the empty string (`severity!="page"` matches an alert without severity).

use std::collections::{BTreeMap, HashMap};

use regex::{Regex, RegexBuilder};

/// The most memory one matcher's regex may take compiled, and as much for its lazy DFA's cache
/// (grown only as alerts are matched): a trigger holds at most 32 matchers, so at most 16 MiB
/// (the regex crate's defaults allow 10 MiB and 2 MiB per regex: 384 MiB a trigger). Every
/// usual matcher (`page|critical`, `10\..*`, `\w+`, `node-\d+`) takes a few KiB; `\w{200}`
/// (Unicode word characters) is refused.
const REGEX_SIZE_LIMIT: usize = 256 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: Op,
    pub value: String,
    regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid matcher {input:?}: {why}")]
pub struct ParseError {
    pub input: String,
    pub why: String,
}

impl Matcher {
    /// Parses one matcher: `name OP value`, where value may be double-quoted.
    pub fn parse(input: &str) -> Result<Matcher, ParseError> {
        let err = |why: &str| ParseError {
            input: input.to_string(),
            why: why.to_string(),
        };
        let s = input.trim();
        let name_end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        let name = &s[..name_end];
        if name.is_empty() {
            return Err(err("no label name"));
        }
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(err("a label name cannot start with a digit"));
        }
        let rest = s[name_end..].trim_start();
        let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
            (Op::Regex, r)
        } else if let Some(r) = rest.strip_prefix("!~") {
            (Op::NotRegex, r)
        } else if let Some(r) = rest.strip_prefix("!=") {
            (Op::NotEqual, r)
        } else if let Some(r) = rest.strip_prefix('=') {
            (Op::Equal, r)
        } else {
            return Err(err("expected =, !=, =~ or !~ after the label name"));
        };
        let rest = rest.trim();
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            unquote(quoted).map_err(|w| err(&w))?
        } else {
            if rest.contains('"') {
                return Err(err("an unquoted value cannot contain a quote"));
            }
            rest.to_string()
        };
        let regex = match op {
            Op::Regex | Op::NotRegex => Some(
                RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| err(&format!("regex: {e}")))?,
            ),
            _ => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value,
            regex,
        })
    }

    /// Whether the labels satisfy this matcher (an absent label is the empty string).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        match self.op {
            Op::Equal => v == self.value,
            Op::NotEqual => v != self.value,
            Op::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(v)),
            Op::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }
}

/// The rest of a quoted value (after its opening quote), unescaped; nothing may follow the
/// closing quote.
fn unquote(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some(other) => {
                    // Alertmanager keeps other escapes as they are (regexes use them).
                    out.push('\\');
                    out.push(other);
                }
                None => return Err("unterminated quoted value".into()),
            },
            '"' => {
                return if chars.as_str().trim().is_empty() {
                    Ok(out)
                } else {
                    Err("text after the closing quote".into())
                };
            }
            c => out.push(c),
        }
    }
    Err("unterminated quoted value".into())
}

/// The label name a matcher reads (what precedes its operator), without parsing the rest.
pub fn label_name(input: &str) -> &str {
    let s = input.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Parses every matcher; the first invalid one is the error.
pub fn parse_all(inputs: &[String]) -> Result<Vec<Matcher>, ParseError> {
    inputs.iter().map(|m| Matcher::parse(m)).collect()
}

/// Whether the labels satisfy every matcher.
pub fn matches_all(matchers: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

/// Each trigger's parsed matchers (or the error of an invalid one), by UID, with the generation
/// they were parsed from: parsed again when the trigger changes, let go when it is gone, so the
/// cache holds one entry per trigger that exists.
#[derive(Default)]
pub struct Compiled {
    by_uid: HashMap<String, (i64, Result<Vec<Matcher>, String>)>,
}

impl Compiled {
    /// The matchers of the trigger `uid` at `generation`, parsed from `inputs` unless they were
    /// at that generation.
    pub fn get(
        &mut self,
        uid: &str,
        generation: i64,
        inputs: &[String],
    ) -> &Result<Vec<Matcher>, String> {
        let parse = || parse_all(inputs).map_err(|e| format!("spec.matchers: {e}"));
        let entry = self
            .by_uid
            .entry(uid.to_string())
            .or_insert_with(|| (generation, parse()));
        if entry.0 != generation {
            *entry = (generation, parse());
        }
        &entry.1
    }

    /// Lets go of the matchers of triggers for which `exists` is false.
    pub fn prune(&mut self, exists: impl Fn(&str) -> bool) {
        self.by_uid.retain(|uid, _| exists(uid));
    }

    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn m(s: &str) -> Matcher {
        Matcher::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_each_operator_quoted_or_not() {
        assert_eq!(m(r#"alertname="HighIOLatency""#).op, Op::Equal);
        assert_eq!(m(r#"alertname="HighIOLatency""#).value, "HighIOLatency");
        assert_eq!(m("alertname=HighIOLatency").value, "HighIOLatency");
        assert_eq!(m(r#"job!="x""#).op, Op::NotEqual);
        assert_eq!(m(r#"severity=~"page|critical""#).op, Op::Regex);
        assert_eq!(m(r#"instance!~"10\..*""#).op, Op::NotRegex);
        assert_eq!(m(r#"  a = "b"  "#).name, "a");
        assert_eq!(m(r#"a="""#).value, "");
        assert_eq!(m(r#"a="say \"hi\"\\""#).value, r#"say "hi"\"#);
        assert_eq!(m(r#"a="x\ny""#).value, "x\ny");
    }

    #[test]
    fn refuses_what_alertmanager_refuses() {
        for bad in [
            "",
            "=x",
            "a",
            r#"a="b"#,
            r#"a="b"c"#,
            "1a=b",
            r#"a=~"(""#,
            r#"a=b"c"#,
        ] {
            assert!(Matcher::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn equality_and_absent_labels() {
        let l = labels(&[("alertname", "HighIOLatency"), ("severity", "page")]);
        assert!(m(r#"alertname="HighIOLatency""#).matches(&l));
        assert!(!m(r#"alertname="HighIOLatencyX""#).matches(&l));
        assert!(m(r#"team!="db""#).matches(&l), "absent is empty, not db");
        assert!(m(r#"team="""#).matches(&l), "absent equals empty");
        assert!(!m(r#"severity!="page""#).matches(&l));
    }

    #[test]
    fn regexes_are_anchored() {
        let l = labels(&[("severity", "critical"), ("instance", "10.0.0.1:9100")]);
        assert!(m(r#"severity=~"page|critical""#).matches(&l));
        assert!(
            !m(r#"severity=~"crit""#).matches(&l),
            "not a substring match"
        );
        assert!(m(r#"severity=~"crit.*""#).matches(&l));
        assert!(!m(r#"instance!~"10\..*""#).matches(&l));
        assert!(m(r#"instance!~"192\..*""#).matches(&l));
        // Alternation inside the anchors applies to the whole value.
        assert!(!m(r#"severity=~"pag|critica""#).matches(&l));
        assert!(
            m(r#"missing=~"x|""#).matches(&l),
            "absent matches the empty alternative"
        );
    }

    #[test]
    fn huge_regexes_are_refused() {
        // Compiles to more than the limit (the regex crate's default limit would take it).
        let e = Matcher::parse(r#"a=~"\w{200}""#).expect_err("over the size limit");
        assert!(e.why.contains("size limit"), "{e}");
        for usual in [r#"a=~"\w+""#, r#"a=~"page|critical""#, r#"a=~"10\..*""#] {
            assert!(Matcher::parse(usual).is_ok(), "{usual}");
        }
        assert_eq!(label_name(r#" severity=~"x""#), "severity");
    }

    #[test]
    fn the_cache_follows_generations_and_forgets_triggers_gone() {
        let mut c = Compiled::default();
        let a1 = vec![r#"x="1""#.to_string()];
        let a2 = vec![r#"x="2""#.to_string()];
        assert_eq!(
            c.get("a", 1, &a1).as_ref().map(|m| m[0].value.clone()),
            Ok("1".into())
        );
        // The same generation is not parsed again; a new one is.
        assert_eq!(
            c.get("a", 1, &a2).as_ref().map(|m| m[0].value.clone()),
            Ok("1".into())
        );
        assert_eq!(
            c.get("a", 2, &a2).as_ref().map(|m| m[0].value.clone()),
            Ok("2".into())
        );
        assert!(c.get("b", 1, &["bad".to_string()]).is_err());
        assert_eq!(c.len(), 2);
        c.prune(|uid| uid == "a");
        assert_eq!(c.len(), 1);
        c.prune(|_| false);
        assert!(c.is_empty());
    }

    #[test]
    fn all_must_match() {
        let l = labels(&[("alertname", "A"), ("severity", "page")]);
        let ms = parse_all(&[
            r#"alertname="A""#.into(),
            r#"severity=~"page|critical""#.into(),
        ])
        .expect("parse");
        assert!(matches_all(&ms, &l));
        let ms =
            parse_all(&[r#"alertname="A""#.into(), r#"severity="info""#.into()]).expect("parse");
        assert!(!matches_all(&ms, &l));
        assert!(parse_all(&["bad".into()]).is_err());
    }
}

//! Image references as docker reads them: the grammar of docker's
//! distribution/reference (`[domain[:port]/]path[:tag][@digest]`) and its
//! normalisation (`busybox` is `docker.io/library/busybox:latest`).
//!
//! Why not `oci_client::Reference`'s `FromStr`: its regex has a Unicode
//! `\w` repeated 128 times in the tag part, so the first parse compiles a
//! ~7 MiB automaton and every thread that parses keeps a ~6 MiB search
//! cache — 13-19 MiB that stayed in every daemon after its first pull.
//! Docker's grammar (Go's RE2, where `\w` is ASCII) compiled with
//! `regex-lite`, made for small footprints, costs a few KiB.

use std::sync::LazyLock;

use oci_client::Reference;
use regex_lite::Regex;

/// Longest repository path docker accepts.
const NAME_MAX: usize = 255;

/// docker's `ReferenceRegexp`, anchored: name, tag, digest.
static REFERENCE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    let path = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    let label = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let domain = format!(r"(?:{label}(?:\.{label})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?");
    let name = format!(r"(?:{domain}/)?{path}(?:/{path})*");
    let tag = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
    let digest = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
    // A fixed pattern: it compiles (the unit tests run it).
    Regex::new(&format!("^({name})(?::({tag}))?(?:@({digest}))?$")).ok()
});

/// A reference as docker reads it, or what is wrong with it.
pub(crate) fn parse(s: &str) -> Result<Reference, &'static str> {
    if s.is_empty() {
        return Err("repository name must have at least one component");
    }
    let re = REFERENCE
        .as_ref()
        .ok_or("the reference grammar does not compile")?;
    let c = re.captures(s).ok_or("invalid reference format")?;
    let name = c.get(1).map_or("", |m| m.as_str());
    let tag = c.get(2).map(|m| m.as_str());
    let digest = c.get(3).map(|m| m.as_str());
    if let Some(d) = digest {
        check_digest(d)?;
    }
    let (registry, repository) = split_domain(name);
    // What is left after the registry must be path components (docker
    // refuses `[::1]/app`, whose registry it does not see as one).
    let path_ok = repository.split('/').all(|c| {
        let b = c.as_bytes();
        let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        !b.is_empty()
            && b.first().is_some_and(alnum)
            && b.last().is_some_and(alnum)
            && b.iter()
                .all(|x| alnum(x) || matches!(x, b'.' | b'_' | b'-'))
    });
    if !path_ok {
        return Err("invalid reference format");
    }
    if repository.len() > NAME_MAX {
        return Err("repository name must not be more than 255 characters");
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").into()),
    })
}

/// The algorithms a digest may name, with the length of their hex part.
fn check_digest(d: &str) -> Result<(), &'static str> {
    let (alg, hex) = d.split_once(':').ok_or("invalid checksum digest format")?;
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != want {
        return Err("invalid checksum digest length");
    }
    Ok(())
}

/// Docker's normalisation: no domain (the first part has no `.`, `:` or
/// upper-case letter and is not `localhost`) means Docker Hub, whose
/// one-part names are under `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        // As docker's splitDockerDomain: a first part with a dot, a colon
        // or an upper-case letter, or `localhost`, is a registry.
        Some((l, r))
            if l.contains('.')
                || l.contains(':')
                || l == "localhost"
                || l.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (l.to_string(), r.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".into();
    }
    if domain == "docker.io" && !rest.contains('/') {
        rest = format!("library/{rest}");
    }
    (domain, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const F64: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    /// Input, registry, repository, tag, digest.
    type Case<'a> = (String, &'a str, &'a str, Option<&'a str>, Option<&'a str>);

    #[test]
    fn good_references_parse_as_docker_reads_them() {
        let d = format!("sha256:{F64}");
        let d512 = format!("sha512:{F64}{F64}");
        let cases: Vec<Case> = vec![
            (
                "busybox".into(),
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "test.com:tag".into(),
                "docker.io",
                "library/test.com",
                Some("tag"),
                None,
            ),
            (
                "test.com:5000".into(),
                "docker.io",
                "library/test.com",
                Some("5000"),
                None,
            ),
            (
                "test.com/repo:tag".into(),
                "test.com",
                "repo",
                Some("tag"),
                None,
            ),
            (
                "test:5000/repo".into(),
                "test:5000",
                "repo",
                Some("latest"),
                None,
            ),
            (
                format!("test:5000/repo@{d}"),
                "test:5000",
                "repo",
                None,
                Some(&d),
            ),
            (
                format!("test:5000/repo:tag@{d}"),
                "test:5000",
                "repo",
                Some("tag"),
                Some(&d),
            ),
            (
                "lowercase:Uppercase".into(),
                "docker.io",
                "library/lowercase",
                Some("Uppercase"),
                None,
            ),
            (
                "sub-dom1.foo.com/bar/baz/quux".into(),
                "sub-dom1.foo.com",
                "bar/baz/quux",
                Some("latest"),
                None,
            ),
            (
                "b.gcr.io/test.example.com/my-app:test.example.com".into(),
                "b.gcr.io",
                "test.example.com/my-app",
                Some("test.example.com"),
                None,
            ),
            (
                format!("xn--7o8h.com/myimage:xn--7o8h.com@{d512}"),
                "xn--7o8h.com",
                "myimage",
                Some("xn--7o8h.com"),
                Some(&d512),
            ),
            (
                "foo_bar.com:8080".into(),
                "docker.io",
                "library/foo_bar.com",
                Some("8080"),
                None,
            ),
            (
                "foo/foo_bar.com:8080".into(),
                "docker.io",
                "foo/foo_bar.com",
                Some("8080"),
                None,
            ),
            (
                "opensuse/leap:15.3".into(),
                "docker.io",
                "opensuse/leap",
                Some("15.3"),
                None,
            ),
            (
                "localhost/app".into(),
                "localhost",
                "app",
                Some("latest"),
                None,
            ),
            (
                "index.docker.io/nginx".into(),
                "docker.io",
                "library/nginx",
                Some("latest"),
                None,
            ),
            (
                "a--b/c__d".into(),
                "docker.io",
                "a--b/c__d",
                Some("latest"),
                None,
            ),
            (
                "10.77.0.1:5000/shoal/echo:1".into(),
                "10.77.0.1:5000",
                "shoal/echo",
                Some("1"),
                None,
            ),
        ];
        for (input, registry, repository, tag, digest) in cases {
            let r = parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry(), registry, "{input}");
            assert_eq!(r.repository(), repository, "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(r.digest(), digest, "{input}");
        }
    }

    #[test]
    fn bad_references_are_refused() {
        let long_tag = format!("repo:{}", "a".repeat(129));
        let long_name = format!("{}/a", "a".repeat(255));
        let bad = [
            "",
            ":justtag",
            &format!("@sha256:{F64}"),
            "repo@sha256:ffffffffffffffffffffffffffffffffff",
            &format!("validname@invaliddigest:{F64}"),
            "Uppercase:tag",
            "test:5000/Uppercase/lowercase:tag",
            "aa/asdf$$^/aa",
            "a/",
            "/a",
            "a//b",
            "a.:tag",
            "-a/b",
            "a___b",
            "a/b:",
            "a/b:-tag",
            "a/b:täg",
            "ünicode/app",
            "host:/app",
            "host:5x/app",
            &long_tag,
            &long_name,
        ];
        for input in bad {
            assert!(parse(input).is_err(), "{input:?} parsed");
        }
    }

    /// The same verdict and the same normalised name as oci-spec's regex
    /// parser (except where that one takes Unicode `\w` in a tag).
    #[test]
    fn agrees_with_the_regex_parser() {
        let d = format!("sha256:{F64}");
        let mut inputs: Vec<String> = [
            "busybox",
            "Busybox",
            "library/busybox",
            "docker.io/busybox",
            "a/b/c/d:e",
            "reg:5000/app",
            "reg:5000:app",
            "a..b",
            "a.b",
            "a-b",
            "a---b",
            "a_b",
            "a__b",
            "a___b",
            "a/b:1.0-rc_1",
            "a:b:c",
            "a@b",
            "a/b:t@x",
            "x/y:",
            "x/y::t",
            "localhost:5000/x",
            "LOCALHOST/x",
            "Ab.com/x",
            "a-.com/x",
            "1.2.3.4/x:y",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        inputs.push(format!("a/b@{d}"));
        inputs.push(format!("a/b:t@{d}"));
        inputs.push(format!("a/b@sha256:{}", "F".repeat(64)));
        inputs.push(format!("a/b@sha384:{}", "f".repeat(64)));
        inputs.push(format!("a/b:{}", "t".repeat(128)));
        for i in inputs {
            let ours = parse(&i).map(|r| r.whole());
            let theirs = i.parse::<Reference>().map(|r| r.whole());
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{i}: {ours:?} vs {theirs:?}");
            if i.starts_with("LOCALHOST/") {
                // docker reads an upper-case first part as a registry;
                // oci-spec puts it under docker.io (a name that then does
                // not parse again).
                continue;
            }
            if let (Ok(a), Ok(b)) = (ours, theirs) {
                assert_eq!(a, b, "{i}");
            }
        }
    }

    /// What the fuzzer found: a name normalizes to one that parses again,
    /// to itself (an upper-case first part is a registry, as in docker).
    #[test]
    fn normalized_names_parse_to_themselves() {
        assert!(parse("[1]/a/b").is_err());
        for i in [
            "Dom/app",
            "d1A1/ngi2",
            "LOCALHOST/x",
            "busybox",
            "a.b/c:d",
            "[::1]:5000/a",
        ] {
            let whole = parse(i).unwrap().whole();
            assert_eq!(
                parse(&whole).map(|r| r.whole()).ok(),
                Some(whole.clone()),
                "{i}"
            );
        }
        assert_eq!(parse("Dom/app").unwrap().registry(), "Dom");
    }
}

//! `.gitmodules`, and where a nested repository (a DataLad subdataset) can be cloned from.
//!
//! A superdataset records each subdataset as a gitlink plus a `[submodule "NAME"]` section:
//! `path`, `url` (absolute, or relative to the superdataset's remote: `./x`, `../x`) and
//! DataLad's `datalad-id` and optional `datalad-url`. [`candidates`] lists the URLs to try, in
//! the order DataLad itself tries them: `datalad-url`; the `url` (a relative one resolved
//! against each of the superdataset's remotes); each remote's URL + the path (and + `/.git`,
//! for a non-bare repository served over dumb HTTP); last, a relative `url` against the
//! superdataset's own directory (git's rule for a repository without remotes).
//!
//! Pure: text in, values out. The text is the repository's (untrusted): what is not understood
//! is ignored, and nothing is followed (no includes).

/// One `[submodule "NAME"]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Submodule {
    pub name: String,
    pub path: String,
    pub url: Option<String>,
    /// DataLad's dataset id (a UUID), the same in every clone of the dataset.
    pub datalad_id: Option<String>,
    pub datalad_url: Option<String>,
}

/// The sections of a `.gitmodules` text, in order; a section without a `path` is skipped.
pub fn parse(text: &str) -> Vec<Submodule> {
    let mut out: Vec<Submodule> = Vec::new();
    let mut cur: Option<Submodule> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(sec) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.extend(cur.take().filter(|s| !s.path.is_empty()));
            let (kind, name) = sec.split_once(char::is_whitespace).unwrap_or((sec, ""));
            if kind.trim().eq_ignore_ascii_case("submodule") {
                cur = Some(Submodule { name: name.trim().trim_matches('"').to_string(), ..Default::default() });
            }
            continue;
        }
        let Some(s) = cur.as_mut() else { continue };
        let Some((k, v)) = line.split_once('=') else { continue };
        let v = unquote(v.trim());
        match k.trim().to_ascii_lowercase().as_str() {
            "path" => s.path = v.trim_end_matches('/').to_string(),
            "url" => s.url = Some(v),
            "datalad-id" => s.datalad_id = Some(v),
            "datalad-url" => s.datalad_url = Some(v),
            _ => {}
        }
    }
    out.extend(cur.filter(|s| !s.path.is_empty()));
    out
}

/// A config value with its quotes removed and `\"`, `\\` unescaped; a trailing comment cut.
fn unquote(v: &str) -> String {
    let mut out = String::new();
    let (mut quoted, mut chars) = (false, v.chars());
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' => out.extend(chars.next()),
            '#' | ';' if !quoted => break,
            c => out.push(c),
        }
    }
    out.trim_end().to_string()
}

/// Whether `url` is relative to the superdataset's remote (git's `./` and `../` forms).
pub fn is_relative(url: &str) -> bool {
    url.starts_with("./") || url.starts_with("../")
}

/// `rel` (`./x`, `../x`) resolved against `base` (a URL or a path), as git resolves relative
/// submodule URLs: `..` drops the last component of the base.
pub fn resolve_relative(base: &str, rel: &str) -> String {
    let mut base = base.trim_end_matches('/').to_string();
    let mut rest = rel;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            rest = r;
            match base.rfind('/') {
                // Never into a URL's `//host`.
                Some(i) if !base[..i].ends_with('/') => base.truncate(i),
                Some(_) => {}
                // `host:path` (scp-like ssh): the path after the ':' goes, the ':' stays.
                None => {
                    if let Some(i) = base.rfind(':') {
                        base.truncate(i + 1);
                    }
                }
            }
        } else {
            break;
        }
    }
    let rest = rest.trim_end_matches('/');
    match (rest.is_empty(), base.ends_with(':')) {
        (true, _) => base,
        (false, true) => format!("{base}{rest}"),
        (false, false) => format!("{base}/{rest}"),
    }
}

/// The URLs to try for `sub`, best first, without repeats. `remotes`: the superdataset's
/// remote URLs in order; `own`: the superdataset's own directory (its working tree, or the
/// repository itself when bare).
pub fn candidates(sub: &Submodule, remotes: &[String], own: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |u: String| {
        if !u.is_empty() && !out.contains(&u) {
            out.push(u);
        }
    };
    if let Some(u) = &sub.datalad_url {
        add(u.clone());
    }
    match sub.url.as_deref() {
        Some(u) if is_relative(u) => {
            for r in remotes {
                add(resolve_relative(r, u));
            }
        }
        Some(u) => add(u.to_string()),
        None => {}
    }
    for r in remotes {
        let r = r.trim_end_matches('/');
        let base = r.strip_suffix("/.git").unwrap_or(r);
        add(format!("{base}/{}", sub.path));
        add(format!("{base}/{}/.git", sub.path));
    }
    if let (Some(u), Some(own)) = (sub.url.as_deref(), own)
        && is_relative(u)
    {
        add(resolve_relative(own, u));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_datalad_sections() {
        let text = "[submodule \"a b\"]\n\tpath = a b\n\turl = ./a b\n\tdatalad-id = 1234\n\
                    [submodule \"c\"]\n\tpath = \"d/c\"\n\turl = https://x/c.git # note\n\
                    \tdatalad-url = \"https://y/c\"\n[core]\n\tbare = false\n[submodule \"nopath\"]\n\turl = u\n";
        let subs = parse(text);
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].name, "a b");
        assert_eq!(subs[0].path, "a b");
        assert_eq!(subs[0].url.as_deref(), Some("./a b"));
        assert_eq!(subs[0].datalad_id.as_deref(), Some("1234"));
        assert_eq!(subs[1].path, "d/c");
        assert_eq!(subs[1].url.as_deref(), Some("https://x/c.git"));
        assert_eq!(subs[1].datalad_url.as_deref(), Some("https://y/c"));
    }

    #[test]
    fn relative_urls_as_git_resolves_them() {
        assert_eq!(resolve_relative("http://h/super.git", "../sub.git"), "http://h/sub.git");
        assert_eq!(resolve_relative("http://h/super.git/", "./sub"), "http://h/super.git/sub");
        assert_eq!(resolve_relative("/srv/super", "../a/../b"), "/srv/a/../b");
        assert_eq!(resolve_relative("host:super", "../sub"), "host:sub");
        assert_eq!(resolve_relative("/srv/d/super", "../../x"), "/srv/x");
    }

    #[test]
    fn candidates_in_datalad_order() {
        let sub = Submodule {
            name: "s".into(),
            path: "s".into(),
            url: Some("./s".into()),
            datalad_id: None,
            datalad_url: Some("http://dl/s".into()),
        };
        let remotes = vec!["http://h/super/.git".to_string(), "/srv/super".to_string()];
        assert_eq!(
            candidates(&sub, &remotes, Some("/home/u/super")),
            vec![
                "http://dl/s",
                "http://h/super/.git/s",
                "/srv/super/s",
                "http://h/super/s",
                "http://h/super/s/.git",
                "/srv/super/s/.git",
                "/home/u/super/s",
            ]
        );
        let abs = Submodule { url: Some("http://a/s.git".into()), datalad_url: None, ..sub };
        assert_eq!(candidates(&abs, &[], None), vec!["http://a/s.git"]);
    }
}

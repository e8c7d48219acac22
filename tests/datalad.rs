//! A DataLad-style superdataset mounted with its subdatasets installed on demand: a
//! three-level hierarchy (superdataset → 20 subdatasets → a nested one) built with git and
//! git-annex, subdatasets reachable over dumb HTTP (nginx on loopback) and by local paths,
//! their content only on web mirrors; one clone that fails, one installed submodule, a plain
//! git submodule (no annex). Bytes are compared with the originals, and every repository the
//! user has (and every served one) is fingerprinted before and after. Then the superdataset
//! moves on (a subdataset's new commit recorded and pulled): a second mount fetches that
//! subdataset's existing clone and reuses the others.

mod common;

use common::mnt::mount;
use common::nginx::Nginx;
use common::{Sandbox, pseudo_random, tree_fingerprint};
use std::path::{Path, PathBuf};

const SUBS: usize = 20;
/// The subdataset whose clone fails (its URL leads nowhere).
const BROKEN: usize = 20;
/// The subdataset installed in the user's clone (a checkout).
const INSTALLED: usize = 11;

fn sub_name(i: usize) -> String {
    format!("sub{i:02}")
}

fn datalad_id(i: usize) -> String {
    format!("{i:08x}-5d1a-4e2b-9c3d-00000000{i:04x}")
}

fn sub_content(i: usize) -> Vec<u8> {
    pseudo_random(1000 + i as u64, 40_000 + 37 * i)
}

struct World {
    sb: Sandbox,
    nginx: Nginx,
    /// The user's clone of the superdataset (what is mounted).
    user: PathBuf,
    top: Vec<u8>,
    deep: Vec<u8>,
    cache: PathBuf,
}

impl World {
    /// An annex repository `src/NAME` whose annexed `files` are on both web mirrors only (the
    /// repository never had them: `fromkey` + `registerurl`), and a plain `README` in git.
    fn annex_repo(sb: &Sandbox, nginx: &Nginx, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let r = sb.init_repo(&format!("src/{name}"), name);
        let mut urls = String::new();
        for (f, data) in files {
            let key = common::sha256_key(data).to_string();
            sb.write(&sb.path(&format!("www/files/{key}")), data);
            sb.annex(&r, &["fromkey", "-q", "--force", &key, f]);
            for m in 0..2 {
                urls.push_str(&format!("{key} {}\n", nginx.url(m, &format!("files/{key}"))));
            }
        }
        let mut c = sb.cmd("git", &r);
        c.args(["annex", "registerurl", "--batch"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(urls.as_bytes()).unwrap();
        }
        assert!(child.wait().unwrap().success(), "registerurl in {name}");
        sb.write(&r.join("README"), format!("dataset {name}\n").as_bytes());
        sb.git(&r, &["add", "README"]);
        sb.git(&r, &["commit", "-q", "-m", name]);
        r
    }

    /// Serves `repo` over dumb HTTP as `www/NAME.git`.
    fn publish(sb: &Sandbox, repo: &Path, name: &str) {
        let to = sb.path(&format!("www/{name}.git"));
        sb.git(sb.dir.path(), &["clone", "-q", "--bare", repo.to_str().unwrap(), to.to_str().unwrap()]);
        sb.git(&to, &["update-server-info"]);
    }

    /// Records gitlinks (path, commit, .gitmodules section body) in `repo` and commits.
    fn add_gitlinks(sb: &Sandbox, repo: &Path, links: &[(String, String, String)]) {
        let mut modules = String::new();
        for (path, commit, body) in links {
            sb.git(repo, &["update-index", "--add", "--cacheinfo", &format!("160000,{commit},{path}")]);
            modules.push_str(&format!("[submodule \"{path}\"]\n\tpath = {path}\n{body}"));
        }
        sb.write(&repo.join(".gitmodules"), modules.as_bytes());
        sb.git(repo, &["add", ".gitmodules"]);
        sb.git(repo, &["commit", "-q", "-m", "subdatasets"]);
    }

    fn head(sb: &Sandbox, repo: &Path) -> String {
        sb.git(repo, &["rev-parse", "HEAD"]).trim().to_string()
    }

    fn build() -> World {
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.path("www/files")).unwrap();
        let nginx = Nginx::start(&sb.path("www"), &sb.path("nginx"), 2, None);

        // Third level.
        let deep = pseudo_random(7, 300_000);
        let deep_repo = World::annex_repo(&sb, &nginx, "deep", &[("data/deep.bin", &deep)]);
        World::publish(&sb, &deep_repo, "deep");

        // Second level: 19 subdatasets; sub01 nests `deep` (relative URL, over HTTP).
        let make_sub = |i: usize| {
            let name = sub_name(i);
            let file = format!("file{i:02}.bin");
            let r = World::annex_repo(&sb, &nginx, &name, &[(&file, &sub_content(i))]);
            if i == 1 {
                let body = format!("\turl = ../deep.git\n\tdatalad-id = {}\n", datalad_id(99));
                World::add_gitlinks(&sb, &r, &[("deep".into(), World::head(&sb, &deep_repo), body)]);
            }
            World::publish(&sb, &r, &name);
            r
        };
        // Built four at a time: git-annex's start-up dominates.
        let repos: Vec<PathBuf> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|k| {
                    let make_sub = &make_sub;
                    s.spawn(move || (1..SUBS).filter(|i| i % 4 == k).map(|i| (i, make_sub(i))).collect::<Vec<_>>())
                })
                .collect();
            let mut all: Vec<(usize, PathBuf)> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
            all.sort();
            all.into_iter().map(|(_, r)| r).collect()
        });
        let mut links = Vec::new();
        for (i, r) in (1..SUBS).zip(repos) {
            let name = sub_name(i);
            let body = match i {
                // By local path.
                11..=15 => format!("\turl = {}\n", r.display()),
                // A wrong URL, but DataLad's own URL first.
                16 => format!("\turl = ../nowhere{i}.git\n\tdatalad-url = {}\n", nginx.url(1, &format!("{name}.git"))),
                // Relative to the superdataset's remote: over HTTP.
                _ => format!("\turl = ../{name}.git\n"),
            };
            links.push((name, World::head(&sb, &r), format!("{body}\tdatalad-id = {}\n", datalad_id(i))));
        }
        // A subdataset nobody serves: its clone fails.
        let broken = sb.path("src/broken");
        std::fs::create_dir_all(&broken).unwrap();
        sb.git(&broken, &["init", "-q", "-b", "main"]);
        sb.write(&broken.join("x"), b"x");
        sb.git(&broken, &["add", "x"]);
        sb.git(&broken, &["commit", "-q", "-m", "x"]);
        links.push((
            sub_name(BROKEN),
            World::head(&sb, &broken),
            format!("\turl = ../broken.git\n\tdatalad-id = {}\n", datalad_id(BROKEN)),
        ));
        // A plain git submodule, no annex.
        let plain = sb.path("src/plain");
        std::fs::create_dir_all(plain.join("doc")).unwrap();
        sb.git(&plain, &["init", "-q", "-b", "main"]);
        sb.write(&plain.join("doc/notes.txt"), b"plain git notes\n");
        sb.git(&plain, &["add", "doc/notes.txt"]);
        sb.git(&plain, &["commit", "-q", "-m", "notes"]);
        links.push(("plain".into(), World::head(&sb, &plain), format!("\turl = {}\n", plain.display())));

        // First level.
        let top = pseudo_random(5, 120_000);
        let sup = World::annex_repo(&sb, &nginx, "super", &[("top.bin", &top)]);
        World::add_gitlinks(&sb, &sup, &links);
        World::publish(&sb, &sup, "super");

        // The user's clone, over HTTP, with one subdataset installed (by local path).
        let user = sb.path("user/super");
        sb.git(sb.dir.path(), &["clone", "-q", &nginx.url(0, "super.git"), user.to_str().unwrap()]);
        sb.git(&user, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
        sb.git(
            &user,
            &["-c", "protocol.file.allow=always", "submodule", "update", "-q", "--init", &sub_name(INSTALLED)],
        );
        let cache = sb.path("cache");
        World { sb, nginx, user, top, deep, cache }
    }

    /// Requests of a clone or fetch of `www/REPO.git` (not of its `config`, which a mount
    /// reads to learn the remote's UUID).
    fn git_requests(&self, repo: &str) -> usize {
        let is_git = |l: &&str| {
            l.contains(&format!("/{repo}.git/info/"))
                || l.contains(&format!("/{repo}.git/objects/"))
                || l.contains(&format!("/{repo}.git/HEAD"))
        };
        (0..2).map(|m| self.nginx.access_log(m).lines().filter(is_git).count()).sum()
    }

    fn clones(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.cache.join("datasets")) else { return Vec::new() };
        let mut v: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn superdataset_mounted_with_subdatasets_installed_on_demand() {
    let w = World::build();
    let before = (tree_fingerprint(&w.user), tree_fingerprint(&w.sb.path("src")), tree_fingerprint(&w.sb.path("www")));
    let cache = w.cache.to_str().unwrap().to_string();
    // --no-publish: a mount otherwise publishes the piece manifests of the superdataset's own
    // keys through git-annex (the one write annexfs makes, on by default).
    let m = mount(&w.sb, &w.user, "mnt", &["--cache-dir", &cache, "--no-publish"]);

    // Listing the superdataset clones nothing.
    let top = names(&m.mp);
    for i in 1..=SUBS {
        assert!(top.contains(&sub_name(i)), "{top:?}");
    }
    assert!(top.contains(&"plain".to_string()) && top.contains(&"top.bin".to_string()), "{top:?}");
    assert!(std::fs::metadata(m.p("sub02")).unwrap().is_dir());
    assert_eq!(w.clones(), Vec::<String>::new(), "listing the superdataset cloned something");
    assert_eq!(w.git_requests("sub02"), 0);
    assert_eq!(std::fs::read(m.p("top.bin")).unwrap(), w.top);

    // Listing a subdataset's root clones that one (over HTTP), and only that one.
    assert_eq!(names(&m.p("sub02")), vec!["README", "file02.bin"]);
    assert_eq!(w.clones(), vec![datalad_id(2)]);
    assert!(w.git_requests("sub02") > 0);

    // Every subdataset's content, read at once from many threads: HTTP, local paths, DataLad's
    // URL, the installed checkout; bytes exact, from the web mirrors.
    let mp = m.mp.clone();
    let readers: Vec<_> = (1..SUBS)
        .map(|i| {
            let mp = mp.clone();
            std::thread::spawn(move || {
                let p = mp.join(sub_name(i)).join(format!("file{i:02}.bin"));
                (i, std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display())))
            })
        })
        .collect();
    for r in readers {
        let (i, got) = r.join().unwrap();
        let got = got.unwrap_or_else(|e| panic!("{e}\nlog: {}", m.log()));
        assert!(got == sub_content(i), "{} differs", sub_name(i));
        let readme = std::fs::read_to_string(m.p(&format!("{}/README", sub_name(i)))).unwrap();
        assert_eq!(readme, format!("dataset {}\n", sub_name(i)));
    }
    assert_eq!(w.git_requests("nowhere16"), 0, "datalad-url is tried before the .gitmodules URL");

    // Three levels down.
    assert_eq!(std::fs::read(m.p("sub01/deep/data/deep.bin")).unwrap(), w.deep);
    assert_eq!(
        common::mnt::xattr(&m.p("sub01/deep/data/deep.bin"), "user.annexfs.present").unwrap(),
        w.deep.len().to_string().into_bytes()
    );

    // A plain git submodule, served as plain files.
    assert_eq!(std::fs::read(m.p("plain/doc/notes.txt")).unwrap(), b"plain git notes\n");

    // The failed clone: an empty directory and a log line naming the candidates and why.
    assert_eq!(names(&m.p(&sub_name(BROKEN))), Vec::<String>::new());
    assert!(std::fs::metadata(m.p(&format!("{}/x", sub_name(BROKEN)))).is_err());
    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains(&sub_name(BROKEN)) && l.contains("cannot install"))
        .unwrap_or_else(|| panic!("no log line for the failed clone: {log}"));
    assert!(line.contains("broken.git"), "{line}");

    // The installed one was served from its checkout; the others cloned into the state
    // directory: 18 subdatasets over HTTP or local paths, `deep` and `plain`.
    let clones = w.clones();
    assert!(!clones.contains(&datalad_id(INSTALLED)), "{clones:?}");
    assert!(clones.contains(&datalad_id(99)), "{clones:?}");
    assert_eq!(clones.len(), SUBS - 2 + 2, "{clones:?}");

    // Status names files open inside subdatasets and the nested repositories.
    {
        use std::io::Read;
        let mut f = std::fs::File::open(m.p("sub01/deep/data/deep.bin")).unwrap();
        let mut b = [0u8; 10];
        f.read_exact(&mut b).unwrap();
        let st = common::mount_status(&m.mp);
        let open: Vec<&str> =
            st["open_files"].as_array().unwrap().iter().map(|f| f["file"].as_str().unwrap()).collect();
        assert_eq!(open, vec!["sub01/deep/data/deep.bin"], "{st}");
        let nested: Vec<&str> = st["nested"].as_array().unwrap().iter().map(|n| n["path"].as_str().unwrap()).collect();
        assert!(nested.contains(&"sub01/deep") && nested.contains(&"sub02"), "{st}");
    }
    drop(m);

    // `annexfs sources` on paths inside subdatasets: an installed one, clones the mount made
    // (three levels down too), and one never cloned (it failed).
    let out = w.sb.annexfs(
        &w.user,
        &[
            "sources",
            "--json",
            "--cache-dir",
            &cache,
            "sub02/file02.bin",
            &format!("{}/file{INSTALLED}.bin", sub_name(INSTALLED)),
            "sub01/deep/data/deep.bin",
            &format!("{}/x", sub_name(BROKEN)),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "the path in the failed subdataset is an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&sub_name(BROKEN)), "{err}");
    assert!(err.contains("neither installed nor cloned"), "{err}");
    let files = common::json_lines(&out.stdout);
    let shown: Vec<&str> = files.iter().map(|f| f["file"].as_str().unwrap()).collect();
    assert_eq!(
        shown,
        vec!["sub02/file02.bin", &format!("{}/file{INSTALLED}.bin", sub_name(INSTALLED)), "sub01/deep/data/deep.bin"]
    );
    for f in &files {
        let urls: Vec<String> = f["holders"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|h| h["locations"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()))
            .collect();
        for mirror in 0..2 {
            let base = w.nginx.url(mirror, "files/");
            assert!(urls.iter().any(|u| u.starts_with(&base)), "{f}");
        }
    }
    assert_eq!(files[2]["size"], w.deep.len());

    let after = (tree_fingerprint(&w.user), tree_fingerprint(&w.sb.path("src")), tree_fingerprint(&w.sb.path("www")));
    let changed: Vec<_> = after.0.iter().filter(|(p, v)| before.0.get(*p) != Some(v)).map(|(p, _)| p).collect();
    assert!(before.0 == after.0, "the user's superdataset changed: {changed:?}");
    assert!(before.1 == after.1, "a source repository changed");
    assert!(before.2 == after.2, "a served repository changed");

    // The superdataset moves on: sub02 gets a commit, the superdataset records it, the user
    // pulls. A second mount (a ref view) fetches sub02's existing clone and reuses the others.
    let sub02 = w.sb.path("src/sub02");
    w.sb.write(&sub02.join("new.txt"), b"second commit\n");
    w.sb.git(&sub02, &["add", "new.txt"]);
    w.sb.git(&sub02, &["commit", "-q", "-m", "new"]);
    let served = |name: &str| w.sb.path(&format!("www/{name}.git")).to_str().unwrap().to_string();
    w.sb.git(&sub02, &["push", "-q", &served("sub02"), "main"]);
    w.sb.git(&w.sb.path("www/sub02.git"), &["update-server-info"]);
    let sup = w.sb.path("src/super");
    let commit = World::head(&w.sb, &sub02);
    w.sb.git(&sup, &["update-index", "--cacheinfo", &format!("160000,{commit},sub02")]);
    w.sb.git(&sup, &["commit", "-q", "-m", "sub02 moves on"]);
    w.sb.git(&sup, &["push", "-q", &served("super"), "main"]);
    w.sb.git(&w.sb.path("www/super.git"), &["update-server-info"]);
    w.sb.git(&w.user, &["pull", "-q", "--ff-only"]);

    let (sub02_before, sub03_before) = (w.git_requests("sub02"), w.git_requests("sub03"));
    let m2 = mount(&w.sb, &w.user, "mnt2", &["--cache-dir", &cache, "--no-publish", "--ref", "HEAD"]);
    assert_eq!(std::fs::read(m2.p("sub02/new.txt")).unwrap(), b"second commit\n");
    assert_eq!(std::fs::read(m2.p("sub02/file02.bin")).unwrap(), sub_content(2));
    assert!(w.git_requests("sub02") > sub02_before, "sub02's clone was not fetched");
    assert_eq!(std::fs::read(m2.p("sub03/file03.bin")).unwrap(), sub_content(3));
    assert_eq!(std::fs::read(m2.p("sub01/deep/data/deep.bin")).unwrap(), w.deep);
    assert_eq!(w.git_requests("sub03"), sub03_before, "sub03's clone was not reused");
    assert_eq!(w.clones().len(), SUBS, "no new clone");
    drop(m2);

    // A bare superdataset (the served one, relative URLs against itself) follows its
    // gitlinks too; the clones are the same datasets (by DataLad id), so they are reused.
    let m3 = mount(&w.sb, &w.sb.path("www/super.git"), "mnt3", &["--cache-dir", &cache, "--no-publish"]);
    assert_eq!(std::fs::read(m3.p("sub05/file05.bin")).unwrap(), sub_content(5));
    assert_eq!(std::fs::read(m3.p("sub02/new.txt")).unwrap(), b"second commit\n");
    assert_eq!(w.clones().len(), SUBS, "no new clone");
}

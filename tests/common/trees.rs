//! Directory trees to fill caches from, and what a tree holds.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A small node_modules-shaped tree: `dirs` directories of `files` files,
/// modes 0644 and 0755, a relative, an absolute and a dangling symlink.
pub fn make_tree(root: &Path, dirs: usize, files: usize) {
    use std::os::unix::fs::symlink;
    for d in 0..dirs {
        let dir = root.join(format!("pkg-{d}/lib"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            let p = dir.join(format!("f{f}.js"));
            fs::write(&p, format!("module {d}/{f}\n").repeat(1 + (d * 7 + f) % 50)).unwrap();
            if f % 5 == 0 {
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        symlink("lib/f0.js", root.join(format!("pkg-{d}/index.js"))).unwrap();
    }
    symlink("/etc/hostname", root.join("abs-link")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
}

/// Every entry below `root`: relative path → (kind, mode bits, content or
/// link target). Symlinks are not followed.
pub fn tree_listing(root: &Path) -> std::collections::BTreeMap<PathBuf, (char, u32, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut std::collections::BTreeMap<PathBuf, (char, u32, Vec<u8>)>,
    ) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let m = p.symlink_metadata().unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    (
                        'l',
                        0,
                        fs::read_link(&p)
                            .unwrap()
                            .into_os_string()
                            .into_encoded_bytes(),
                    ),
                );
            } else if m.is_dir() {
                out.insert(rel, ('d', 0, Vec::new()));
                walk(root, &p, out);
            } else {
                out.insert(rel, ('f', m.mode() & 0o777, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

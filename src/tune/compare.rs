//! Profiles against the box: `c2m tune verify` (which of a profile's values are in force now)
//! and the sysctl diff of two profiles that `c2m bench --ab` reports (what differs between its
//! arms on this box).

use std::collections::BTreeSet;

use serde::Serialize;

use super::TuneError;
use super::profile::{self, Change};
use super::sysctl::{ProcSys, Setting, normalize};

/// A profile against the values now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Keys at the profile's value.
    pub in_force: Vec<String>,
    /// Keys at another value: the profile's value and the one now.
    pub differ: Vec<Change>,
    /// Keys this kernel does not have (`tune apply` skips them too, so they do not fail a verify).
    pub missing: Vec<String>,
}

impl Verification {
    /// Every key the kernel has is at the profile's value.
    pub fn all_in_force(&self) -> bool {
        self.differ.is_empty()
    }
}

/// Which of `settings` are in force in `sys`.
pub fn verify(settings: &[Setting], sys: &ProcSys) -> Result<Verification, TuneError> {
    let plan = profile::plan(settings, sys)?;
    Ok(Verification { in_force: plan.unchanged, differ: plan.changes, missing: plan.missing })
}

/// What `c2m tune verify` prints.
pub fn render(origin: &str, v: &Verification) -> String {
    let mut out = format!("c2m tune verify {origin}\n");
    for key in &v.in_force {
        out += &format!("  in force  {key}\n");
    }
    for c in &v.differ {
        out += &format!("  differs   {}: {} now, the profile says {}\n", c.key, c.current, c.new);
    }
    for key in &v.missing {
        out += &format!("  missing   {key} (not on this kernel; apply skips it)\n");
    }
    out += &format!(
        "{} of {} key(s) in force, {} differ, {} not on this kernel\n",
        v.in_force.len(),
        v.in_force.len() + v.differ.len() + v.missing.len(),
        v.differ.len(),
        v.missing.len()
    );
    out
}

/// A key whose value differs between two profiles applied on this box. `None`: not on this
/// kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub key: String,
    pub a: Option<String>,
    pub b: Option<String>,
}

/// The value each key of either profile would have with `a` applied and with `b` applied: a
/// profile's own value where it sets the key, else the value in `sys` now. Keys with the same
/// value under both (after whitespace is normalized) are left out; sorted by key.
pub fn diff(a: &[Setting], b: &[Setting], sys: &ProcSys) -> Result<Vec<Difference>, TuneError> {
    let keys: BTreeSet<&str> = a.iter().chain(b).map(|s| s.key.as_str()).collect();
    let mut out = Vec::new();
    for key in keys {
        let now = sys.read(key)?;
        let under = |profile: &[Setting]| -> Option<String> {
            // A key this kernel lacks cannot be set by either profile.
            now.as_ref()?;
            profile.iter().find(|s| s.key == key).map(|s| normalize(&s.value)).or_else(|| now.clone())
        };
        let (va, vb) = (under(a), under(b));
        if va != vb {
            out.push(Difference { key: key.to_string(), a: va, b: vb });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tune::sysctl::parse_conf;

    fn tree() -> (tempfile::TempDir, ProcSys) {
        crate::tune::sysctl::fake_tree(&[("net/core/somaxconn", "4096\n"), ("net/ipv4/tcp_max_syn_backlog", "512\n")])
    }

    fn settings(text: &str) -> Vec<Setting> {
        parse_conf("t.conf", text).unwrap()
    }

    #[test]
    fn verify_sorts_keys_and_only_a_different_value_fails() {
        let (_dir, sys) = tree();
        let v = verify(
            &settings(
                "net.core.somaxconn = 4096\nnet.ipv4.tcp_max_syn_backlog = 8192\nnet.netfilter.nf_conntrack_max = 1\n",
            ),
            &sys,
        )
        .unwrap();
        assert_eq!(v.in_force, ["net.core.somaxconn"]);
        assert_eq!(v.differ.len(), 1);
        assert_eq!((v.differ[0].current.as_str(), v.differ[0].new.as_str()), ("512", "8192"));
        assert_eq!(v.missing, ["net.netfilter.nf_conntrack_max"]);
        assert!(!v.all_in_force());
        let text = render("t.conf", &v);
        assert!(text.contains("differs   net.ipv4.tcp_max_syn_backlog: 512 now, the profile says 8192"), "{text}");
        assert!(text.ends_with("1 of 3 key(s) in force, 1 differ, 1 not on this kernel\n"), "{text}");
        let ok = verify(&settings("net.core.somaxconn = 4096\nnet.netfilter.nf_conntrack_max = 1\n"), &sys).unwrap();
        assert!(ok.all_in_force());
    }

    #[test]
    fn diff_fills_unset_keys_with_the_box_value() {
        let (_dir, sys) = tree();
        let a = settings("net.core.somaxconn = 128\n");
        let b = settings("net.core.somaxconn = 4096\nnet.ipv4.tcp_max_syn_backlog = 512\nvm.nothing = 3\n");
        // tcp_max_syn_backlog is 512 under both (A leaves the box's 512); vm.nothing is on
        // neither.
        let d = diff(&a, &b, &sys).unwrap();
        assert_eq!(
            d,
            vec![Difference { key: "net.core.somaxconn".into(), a: Some("128".into()), b: Some("4096".into()) }]
        );
        assert!(diff(&a, &a, &sys).unwrap().is_empty());
        assert!(diff(&[], &[], &sys).unwrap().is_empty());
    }
}

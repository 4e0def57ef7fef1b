//! Uid allocation without collisions (issue 7, item 3) and reaping a killed host's cgroups.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use plugd_sandbox::{DEFAULT_ID_BASE, DEFAULT_ID_SPAN, allocate_ids, default_ids, reap_leftovers};

use super::*;

/// Two owners whose old name hash is the same id (found by search, as an attacker would).
fn colliding_owners(dir: &Path) -> (PathBuf, PathBuf) {
    let mut seen: HashMap<(u32, u32), PathBuf> = HashMap::new();
    for i in 0.. {
        let owner = dir.join(format!("data/p{i}"));
        let id = default_ids(&owner.to_string_lossy());
        if let Some(first) = seen.insert(id, owner.clone()) {
            return (first, owner);
        }
    }
    unreachable!()
}

#[test]
fn owners_whose_hash_collides_get_different_ids_stable_and_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("uids");
    let (a, b) = colliding_owners(dir.path());
    assert_eq!(
        default_ids(&a.to_string_lossy()),
        default_ids(&b.to_string_lossy())
    );
    let id_a = allocate_ids(&table, &a).unwrap();
    let id_b = allocate_ids(&table, &b).unwrap();
    assert_ne!(id_a, id_b);
    assert_eq!(id_a.0, id_a.1);
    // The second one probed past the first.
    assert_eq!(id_b.0, id_a.0 + 1);
    // Many more owners, each unique, all in the range; asking again gives the same ids.
    let owners: Vec<PathBuf> = (0..300)
        .map(|i| dir.path().join(format!("state{}/data/p{i}", i % 3)))
        .collect();
    let ids: Vec<(u32, u32)> = owners
        .iter()
        .map(|o| allocate_ids(&table, o).unwrap())
        .collect();
    let unique: HashSet<u32> = ids.iter().map(|i| i.0).chain([id_a.0, id_b.0]).collect();
    assert_eq!(unique.len(), 302);
    for id in &unique {
        assert!((DEFAULT_ID_BASE..DEFAULT_ID_BASE + DEFAULT_ID_SPAN).contains(id));
    }
    assert_eq!(allocate_ids(&table, &a).unwrap(), id_a);
    // Persisted: one line per owner, readable after a restart.
    let text = std::fs::read_to_string(&table).unwrap();
    assert_eq!(text.lines().count(), 302);
    assert!(
        text.contains(&format!("{}\t{}\n", id_b.0, b.display())),
        "{text}"
    );
}

#[test]
fn concurrent_allocators_never_hand_out_one_id_twice() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("nested/uids");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let table = table.clone();
            let base = dir.path().to_owned();
            std::thread::spawn(move || {
                (0..40)
                    .map(|i| {
                        allocate_ids(&table, &base.join(format!("s{t}/data/p{i}")))
                            .unwrap()
                            .0
                    })
                    .collect::<Vec<u32>>()
            })
        })
        .collect();
    let all: Vec<u32> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let unique: HashSet<&u32> = all.iter().collect();
    assert_eq!((all.len(), unique.len()), (320, 320));
}

#[test]
fn an_id_in_use_by_a_running_process_or_a_user_is_skipped() {
    if !kernel().root {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("uids");
    let owner = dir.path().join("data/busy");
    let (start, _) = default_ids(&owner.to_string_lossy());
    // Someone else on the machine runs as the id the search would start at.
    use std::os::unix::process::CommandExt;
    let mut squatter = Command::new("sleep").arg("30").uid(start).spawn().unwrap();
    let got = allocate_ids(&table, &owner).unwrap();
    squatter.kill().unwrap();
    squatter.wait().unwrap();
    assert_eq!(got.0, start + 1);
    // Ids of /etc/passwd users are never handed out (root's 0 is a user, so is nobody's).
    let root_owner = dir.path().join("data/root");
    assert_ne!(allocate_ids(&table, &root_owner).unwrap().0, 0);
}

#[test]
fn two_plugins_get_different_uids_from_the_machine_table() {
    if !kernel().root {
        return;
    }
    let f = fixture();
    let other = f.base.join("data2");
    std::fs::create_dir(&other).unwrap();
    let table = f.base.join("uids");
    let mut p = policy(&f, "one");
    p.uid_table = table.clone();
    let mut q = p.clone();
    q.name = "two".into();
    q.data_dir = other;
    let one = Sandbox::prepare(&p).unwrap().ids().unwrap();
    let two = Sandbox::prepare(&q).unwrap().ids().unwrap();
    assert_ne!(one, two);
    assert_eq!(Sandbox::prepare(&p).unwrap().ids().unwrap(), one);
    let detail = Sandbox::prepare(&p)
        .unwrap()
        .layers()
        .iter()
        .find(|s| s.layer == Layer::Uid)
        .unwrap()
        .detail
        .clone();
    assert_eq!(
        detail,
        format!(
            "uid {}, gid {}, no supplementary groups, allocated in `{}`",
            one.0,
            one.1,
            table.display()
        )
    );
}

#[test]
fn leftovers_of_a_killed_host_are_reaped_and_only_those() {
    let f = fixture();
    let records = f.base.join("sandbox");
    let mut p = policy(&f, "reap");
    p.record_dir = Some(records.clone());
    p.disabled = vec![Layer::PidNamespace];
    let prepared = Sandbox::prepare(&p).unwrap();
    let paths = prepared.cgroup_paths();
    if paths.is_empty() {
        return; // No cgroup layer: nothing is recorded.
    }
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "sleep 300 >/dev/null 2>&1 & echo $!"])
        .stdin(Stdio::null());
    prepared.apply_to(&mut cmd);
    let orphan: i32 = stdout(&cmd.output().unwrap()).trim().parse().unwrap();
    let record = std::fs::read_dir(&records)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // A live host's record (ours) is left alone.
    let report = reap_leftovers(&records).unwrap();
    assert_eq!((report.live_records, report.cgroups_removed), (1, 0));
    assert!(!gone(orphan));
    // The host "dies" without dropping: its record now names a process that is gone.
    std::mem::forget(prepared);
    let text = std::fs::read_to_string(&record).unwrap();
    let rest = text.split_once('\n').unwrap().1;
    std::fs::write(&record, format!("host 999999999 1\n{rest}")).unwrap();
    let report = reap_leftovers(&records).unwrap();
    assert_eq!(report.cgroups_removed, paths.len());
    assert!(report.processes_killed >= 1 || paths[0].join("cgroup.kill").exists());
    wait_gone(&[orphan]);
    for path in &paths {
        assert!(!path.exists());
    }
    assert!(!record.exists());
    assert_eq!(
        reap_leftovers(&f.base.join("none")).unwrap(),
        Default::default()
    );
}

//! JIT perf maps name frames only when the process's own user or root wrote them: anyone can
//! create `/tmp/perf-PID.map` for someone else's process (root required; a real node, its
//! real map given away).
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
};

use sockleak_tests::{Reading, Scenario, Site, Trace};

const PROGRAMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/programs");

/// The uid the map is given to: nobody's on a test machine.
const STRANGER: u32 = 12345;

/// Node's perf map, removed however the test ends (node leaves it behind).
struct PerfMapFile(PathBuf);

impl Drop for PerfMapFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The names in a perf map's text, as written and as sockleak shows them (V8's tier marker
/// dropped: `JS:~f` is shown `JS:f`).
fn names_in(map: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    for line in map.lines() {
        let mut fields = line.splitn(3, ' ');
        let Some(name) = fields.nth(2) else { continue };
        if let Some(rest) = name.strip_prefix("JS:")
            && rest.starts_with(['~', '^', '+', '*'])
        {
            names.insert(format!("JS:{}", &rest[1..]));
        }
        names.insert(name.to_owned());
    }
    names
}

/// Node's own map, given to another user once node has it open (node goes on writing to it):
/// none of its names is in the group's stack, which still has its native frames and says,
/// once, why the map was not read.
#[test]
fn a_perf_map_owned_by_another_user_names_no_frame_and_the_group_says_why() {
    sockleak_tests::require_root();
    let mut upstream = Scenario::spawn();
    let port = upstream.run("listen 127.0.0.1:0")[0].clone();
    upstream.run("serve-keep");
    let mut node = Scenario::spawn_program(
        Command::new("node")
            // Node drops a v8 log per isolate in its working directory with these flags.
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .args(["--perf-basic-prof", "--interpreted-frames-native-stack"])
            .arg(Path::new(PROGRAMS).join("leaky_client.js"))
            .args([port.as_str(), "4"]),
    );
    let map = PerfMapFile(format!("/tmp/perf-{}.map", node.pid()).into());
    sockleak_tests::eventually("node creates its perf map", |seen| {
        *seen = format!("{} is not a file yet", map.0.display());
        map.0.is_file().then_some(())
    });
    std::os::unix::fs::chown(&map.0, Some(STRANGER), None).expect("giving node's perf map away");

    let tracer = Trace::start(&[node.pid()]);
    node.run("go");
    // The map does have names for the code that made the connections: read, they would be in
    // the stack.
    let map_names = sockleak_tests::eventually("node writes openAndForget in its map", |seen| {
        let text = std::fs::read_to_string(&map.0).unwrap_or_default();
        *seen = format!("{} bytes of map, no openAndForget", text.len());
        text.contains("openAndForget").then(|| names_in(&text))
    });

    let report = tracer.report_when(|r| {
        r.groups_at(node.pid(), &Site::socket())
            .first()
            .is_some_and(|g| g.count == 4 && g.stack_note.is_some())
    });
    let group = report.group_at(node.pid(), &Site::socket());
    assert_eq!(group.count, 4, "{group:#?}");
    let note = group.stack_note.as_deref().unwrap_or_default();
    let refused = format!(
        "JIT frames not named: /tmp/perf-{}.map is owned by uid {STRANGER}, not the process's \
         user (uid 0) or root",
        node.pid()
    );
    assert!(note.contains(&refused), "{refused:?} not in {group:#?}");
    assert_eq!(note.matches("JIT frames not named").count(), 1, "{note}");
    let frames = group.key.stack.frames();
    assert!(
        frames.iter().any(|f| f.contains("node::TCPWrap::New")),
        "the native frames are still named: {frames:#?}"
    );
    let from_map: Vec<&String> = frames
        .iter()
        .filter(|f| map_names.contains(f.as_str()))
        .collect();
    assert!(
        from_map.is_empty(),
        "names from a map owned by uid {STRANGER}: {from_map:#?} in {frames:#?}"
    );
    drop(tracer);
}

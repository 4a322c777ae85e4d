//! Scenario files (`bench/scenarios/*.toml`): what `c2m bench` runs, declared. The keys are
//! documented at the top of `bench/scenarios/smoke.toml`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::load::Workload;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::{parse_bytes, parse_count, parse_duration};

/// Where scenario files live, relative to a checkout.
pub const SCENARIO_DIR: &str = "bench/scenarios";

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("no scenario {name:?}: looked in {looked}")]
    NotFound { name: String, looked: String },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// One scenario file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Names the results folder (`results/<name>/`): lowercase letters, digits, `-`, `_`.
    pub name: String,
    pub description: String,
    /// `"kernel"` (io_uring over kernel TCP sockets, on loopback; the default) or `"xdp"` (AF_XDP
    /// and c2m's own TCP at both ends, between two network namespaces the bench makes).
    #[serde(default)]
    pub dataplane: crate::transport::DataPlaneName,
    #[serde(default)]
    pub server: ServerSettings,
    pub load: LoadSettings,
}

/// Passed to `c2m serve`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// `"auto"` (one per core) or a number.
    #[serde(default)]
    pub workers: AutoOr,
    #[serde(default = "default_session_bytes")]
    pub session_bytes: Bytes,
    /// Told to clients; the server closes a session silent for 3 of these.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: HumanDuration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings { workers: AutoOr::Auto, session_bytes: default_session_bytes(), heartbeat: default_heartbeat() }
    }
}

fn default_session_bytes() -> Bytes {
    Bytes(40 * 1024)
}

fn default_heartbeat() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// Passed to `c2m load`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSettings {
    /// A count, or `"auto"`: as many as fit here, capped by `max_connections`.
    pub connections: AutoOr,
    /// The cap on `"auto"` (only with `"auto"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Count>,
    /// Connects per second over all workers; 0 = as fast as the connect concurrency allows.
    #[serde(default)]
    pub connect_rate: Count,
    #[serde(default)]
    pub workload: Workload,
    /// Per connection, between two PINGs (`ping` workload).
    #[serde(default = "default_ping_interval")]
    pub ping_interval: HumanDuration,
    /// The message phase, after every connection is up.
    pub duration: HumanDuration,
    /// Idle time holding the connections after the message phase.
    #[serde(default)]
    pub hold: HumanDuration,
    /// ECHO frame size, header included (`echo` workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Bytes>,
    /// Messages per second over all connections (`echo` workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Count>,
    /// Closed loop: messages each connection keeps in flight, the next sent as a reply arrives
    /// (throughput, not latency at a rate); not with `rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<Count>,
}

fn default_ping_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// A number written either way in TOML: `100000` or `"100k"` (see [`parse_count`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Count(pub u64);

/// `"auto"` or a [`Count`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AutoOr {
    #[default]
    Auto,
    Fixed(u64),
}

/// A size: `4096` or `"40KiB"` (see [`parse_bytes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

/// A duration: `"30s"`, `"1500ms"`, or a bare number of seconds (see [`parse_duration`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    /// As `c2m load` takes it: whole seconds as `30s`, anything else in milliseconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) { write!(f, "{}s", ms / 1000) } else { write!(f, "{ms}ms") }
    }
}

/// What TOML may hold where a number with a unit is expected.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Int(u64),
    Float(f64),
    Text(String),
}

fn number_or_text<'de, D: Deserializer<'de>, T>(
    d: D,
    from_number: impl FnOnce(f64) -> Result<T, String>,
    from_text: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    let v = match NumberOrText::deserialize(d)? {
        NumberOrText::Int(n) => from_number(n as f64),
        NumberOrText::Float(x) => from_number(x),
        NumberOrText::Text(s) => from_text(&s),
    };
    v.map_err(serde::de::Error::custom)
}

fn whole(x: f64) -> Result<u64, String> {
    if x.is_finite() && x >= 0.0 && x.fract() == 0.0 { Ok(x as u64) } else { Err(format!("{x} is not a whole number")) }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, |x| whole(x).map(Count), |s| parse_count(s).map(Count))
    }
}

impl Serialize for Count {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for AutoOr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(
            d,
            |x| whole(x).map(AutoOr::Fixed),
            |s| if s.trim() == "auto" { Ok(AutoOr::Auto) } else { parse_count(s).map(AutoOr::Fixed) },
        )
    }
}

impl Serialize for AutoOr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AutoOr::Auto => s.serialize_str("auto"),
            AutoOr::Fixed(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, |x| whole(x).map(Bytes), |s| parse_bytes(s).map(Bytes))
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let seconds = |x: f64| {
            if x.is_finite() && x >= 0.0 {
                Ok(HumanDuration(Duration::from_secs_f64(x)))
            } else {
                Err(format!("{x} is not a duration"))
            }
        };
        number_or_text(d, seconds, |s| parse_duration(s).map(HumanDuration))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Scenario {
    /// Parses and checks a scenario's text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario =
            toml::from_str(text).map_err(|e| ScenarioError::Parse { path: path.to_path_buf(), source: Box::new(e) })?;
        scenario.validate().map_err(|message| ScenarioError::Invalid { path: path.to_path_buf(), message })?;
        Ok(scenario)
    }

    /// Rules serde cannot say.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !name_ok {
            return Err(format!(
                "name {:?}: use lowercase letters, digits, '-' and '_' (it names a folder)",
                self.name
            ));
        }
        let load = &self.load;
        match load.connections {
            AutoOr::Fixed(0) => return Err("load.connections must be at least 1".into()),
            AutoOr::Fixed(_) if load.max_connections.is_some() => {
                return Err("load.max_connections caps \"auto\" only; drop it or set connections = \"auto\"".into());
            }
            _ => {}
        }
        if load.duration.0.is_zero() {
            return Err("load.duration must be more than 0".into());
        }
        if load.workload == Workload::Ping && load.ping_interval.0.is_zero() {
            return Err("load.ping_interval must be more than 0 for the ping workload".into());
        }
        if load.in_flight.is_some() && load.rate.is_some() {
            return Err("load.in_flight (closed loop) and load.rate (open loop) exclude each other".into());
        }
        if let AutoOr::Fixed(0) = self.server.workers {
            return Err("server.workers must be at least 1 (or \"auto\")".into());
        }
        Ok(())
    }
}

/// Reads and checks a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { path: path.to_path_buf(), source })?;
    Scenario::parse(&text, path)
}

/// The scenarios of `bench/scenarios`, built into the binary so a copied `c2m` runs them
/// anywhere (a test checks this list against the folder).
pub const BUILT_IN: [(&str, &str); 10] = [
    ("c100k", include_str!("../../bench/scenarios/c100k.toml")),
    ("c1m", include_str!("../../bench/scenarios/c1m.toml")),
    ("connect-burst", include_str!("../../bench/scenarios/connect-burst.toml")),
    ("default", include_str!("../../bench/scenarios/default.toml")),
    ("echo-buffers", include_str!("../../bench/scenarios/echo-buffers.toml")),
    ("echo-closed", include_str!("../../bench/scenarios/echo-closed.toml")),
    ("record", include_str!("../../bench/scenarios/record.toml")),
    ("record-xdp", include_str!("../../bench/scenarios/record-xdp.toml")),
    ("smoke", include_str!("../../bench/scenarios/smoke.toml")),
    ("whatsapp-2012", include_str!("../../bench/scenarios/whatsapp-2012.toml")),
];

/// A scenario to run: a built-in one by name, or a file given by path.
#[derive(Clone, Debug)]
pub struct Located {
    /// How results name it: `bench/scenarios/NAME.toml` for a built-in one, else the path.
    pub file: String,
    text: std::borrow::Cow<'static, str>,
}

impl Located {
    pub fn parse(&self) -> Result<Scenario, ScenarioError> {
        Scenario::parse(&self.text, Path::new(&self.file))
    }
}

/// A scenario: a path as given when it looks like one (has a `/` or ends in `.toml`), else the
/// built-in scenario of that name.
pub fn locate(name_or_path: &str) -> Result<Located, ScenarioError> {
    if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
        let path = PathBuf::from(name_or_path);
        let text = std::fs::read_to_string(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => {
                ScenarioError::NotFound { name: name_or_path.into(), looked: path.display().to_string() }
            }
            _ => ScenarioError::Read { path: path.clone(), source },
        })?;
        return Ok(Located { file: display_path(&path), text: text.into() });
    }
    match BUILT_IN.iter().find(|(name, _)| *name == name_or_path) {
        Some((name, text)) => Ok(Located { file: format!("{SCENARIO_DIR}/{name}.toml"), text: (*text).into() }),
        None => Err(ScenarioError::NotFound {
            name: name_or_path.into(),
            looked: format!(
                "the built-in scenarios ({}); a file needs a path (./mine.toml)",
                BUILT_IN.map(|(name, _)| name).join(", ")
            ),
        }),
    }
}

/// How a result names its scenario file: `bench/scenarios/NAME.toml` when it is in a checkout's
/// scenario folder, else the path as given.
pub fn display_path(path: &Path) -> String {
    let in_scenario_dir = path.parent().is_some_and(|dir| dir.ends_with(SCENARIO_DIR));
    match path.file_name() {
        Some(file) if in_scenario_dir => format!("{SCENARIO_DIR}/{}", file.to_string_lossy()),
        _ => path.display().to_string(),
    }
}

/// Every built-in scenario, by name, each parsed.
pub fn list() -> Vec<(&'static str, Result<Scenario, ScenarioError>)> {
    BUILT_IN.iter().map(|(name, _)| (*name, locate(name).and_then(|l| l.parse()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn full_file() {
        let s = parse(
            r#"
            name = "c100k"
            description = "d"
            [server]
            workers = 2
            session_bytes = "40KiB"
            heartbeat = "60s"
            [load]
            connections = "100k"
            connect_rate = 20000
            workload = "echo"
            ping_interval = "10s"
            duration = "1.5s"
            hold = 2
            size = "1KiB"
            rate = "10k"
            "#,
        )
        .unwrap();
        assert_eq!(s.server.workers, AutoOr::Fixed(2));
        assert_eq!(s.server.session_bytes, Bytes(40 * 1024));
        assert_eq!(s.server.heartbeat.to_string(), "60s");
        assert_eq!(s.load.connections, AutoOr::Fixed(100_000));
        assert_eq!(s.load.connect_rate, Count(20_000));
        assert_eq!(s.load.workload, Workload::Echo);
        assert_eq!(s.load.duration.to_string(), "1500ms");
        assert_eq!(s.load.hold.to_string(), "2s");
        assert_eq!(s.load.size, Some(Bytes(1024)));
        assert_eq!(s.load.rate, Some(Count(10_000)));
    }

    #[test]
    fn defaults() {
        let s = parse("name = \"x\"\ndescription = \"\"\n[load]\nconnections = \"auto\"\nduration = \"5s\"\n").unwrap();
        assert_eq!(s.server, ServerSettings::default());
        assert_eq!(s.load.connections, AutoOr::Auto);
        assert_eq!(s.load.workload, Workload::Ping);
        assert_eq!(s.load.hold.to_string(), "0s");
        assert_eq!(s.load.connect_rate, Count(0));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err =
            parse("name = \"x\"\ndescription = \"\"\n[load]\nconnections = 5\nduration = \"5s\"\nconections = 3\n")
                .unwrap_err();
        assert!(err.to_string().contains("conections"), "{err}");
        assert!(
            parse("name = \"x\"\ndescription = \"\"\ncolour = 1\n[load]\nconnections = 5\nduration = \"5s\"\n")
                .is_err()
        );
    }

    #[test]
    fn rules() {
        let base = |extra: &str| format!("name = \"x\"\ndescription = \"\"\n[load]\nduration = \"5s\"\n{extra}\n");
        assert!(parse(&base("connections = 0")).is_err());
        assert!(parse(&base("connections = 5\nmax_connections = 10")).is_err());
        assert!(parse(&base("connections = \"auto\"\nmax_connections = \"200k\"")).is_ok());
        assert!(parse(&base("connections = \"lots\"")).is_err());
        assert!(parse(&base("connections = 5\nworkload = \"chat\"")).is_ok());
        assert!(parse(&base("connections = 5\nduration = \"3 weeks\"")).is_err());
        assert!(
            Scenario::parse(
                "name = \"Bad Name\"\ndescription = \"\"\n[load]\nconnections = 5\nduration = \"5s\"\n",
                Path::new("t")
            )
            .is_err()
        );
    }

    #[test]
    fn settings_serialize_with_units() {
        let s = parse("name = \"x\"\ndescription = \"\"\n[load]\nconnections = 7\nduration = \"90s\"\n").unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["load"]["connections"], 7);
        assert_eq!(v["load"]["duration"], "90s");
        assert_eq!(v["server"]["workers"], "auto");
        assert_eq!(v["server"]["session_bytes"], 40960);
    }

    /// The built-in list is exactly the folder: a scenario added there and not here would be
    /// unreachable by name.
    #[test]
    fn built_in_scenarios_are_the_folder() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(SCENARIO_DIR);
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        assert_eq!(on_disk, BUILT_IN.map(|(name, _)| name.to_string()));
        for (name, parsed) in list() {
            let sc = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(sc.name, name);
            let text = std::fs::read_to_string(dir.join(format!("{name}.toml"))).unwrap();
            assert_eq!(BUILT_IN.iter().find(|(n, _)| *n == name).unwrap().1, text);
        }
    }

    #[test]
    fn names_are_built_in_and_paths_are_read() {
        assert_eq!(locate("smoke").unwrap().file, "bench/scenarios/smoke.toml");
        let err = locate("nope").unwrap_err().to_string();
        assert!(err.contains("built-in") && err.contains("whatsapp-2012") && err.contains("./mine.toml"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine.toml");
        let smoke = BUILT_IN.iter().find(|(n, _)| *n == "smoke").unwrap().1;
        std::fs::write(&mine, smoke.replace("name = \"smoke\"", "name = \"mine\"")).unwrap();
        let located = locate(mine.to_str().unwrap()).unwrap();
        assert_eq!(located.file, mine.display().to_string());
        assert_eq!(located.parse().unwrap().name, "mine");
        assert!(matches!(locate("/nonexistent/x.toml"), Err(ScenarioError::NotFound { .. })));
    }

    #[test]
    fn paths_in_results() {
        assert_eq!(display_path(Path::new("/a/b/bench/scenarios/smoke.toml")), "bench/scenarios/smoke.toml");
        assert_eq!(display_path(Path::new("my/own.toml")), "my/own.toml");
    }
}

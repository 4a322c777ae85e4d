//! `c2m results merge`: the reports of every shard of one run (`c2m load --shard I/N --json`)
//! made into the report of the run. Counts are added; latencies come from the shards' embedded
//! HdrHistograms added together (never from averaged percentiles), so the merged percentiles are
//! exactly those of one histogram of every measurement. Reports that are not all the shards of
//! one run, each once, are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;

use crate::schema::histogram;
use crate::schema::load::{
    ChatCounts, ConnectionCounts, Latencies, LatencySummary, LoadParams, LoadReport, MergedFrom, MessageCounts, Phase,
    RunStatus, Sample,
};

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{path}: {why}")]
    Read { path: PathBuf, why: String },
    /// The reports are not the shards of one run, each once.
    #[error("not the shards of one run: {0}")]
    NotOneRun(String),
    /// A report has counts its embedded histograms do not back (or none at all).
    #[error("{name}: cannot merge its latencies exactly: {why}")]
    Histograms { name: String, why: String },
}

/// Reads `c2m load --json` reports and merges them (see [`merge`]).
pub fn merge_files(paths: &[PathBuf]) -> Result<LoadReport, MergeError> {
    let reports =
        paths.iter().map(|p| Ok((p.display().to_string(), read_report(p)?))).collect::<Result<Vec<_>, _>>()?;
    merge(&reports)
}

fn read_report(path: &Path) -> Result<LoadReport, MergeError> {
    let read = |why: String| MergeError::Read { path: path.to_path_buf(), why };
    let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| read(format!("not a c2m load report: {e}")))
}

/// Merges named reports, one per shard of one run, into the run's report.
pub fn merge(reports: &[(String, LoadReport)]) -> Result<LoadReport, MergeError> {
    let first = check_one_run(reports)?;
    let all = || reports.iter().map(|(_, r)| r);
    let sum = |f: fn(&LoadReport) -> u64| all().map(f).sum::<u64>();
    let sumf = |f: fn(&LoadReport) -> f64| all().map(f).sum::<f64>();
    let start = all().map(|r| r.started_unix_ms).min().unwrap_or(0);
    // Each shard's times, in seconds from the earliest shard's start.
    let offset = |r: &LoadReport| (r.started_unix_ms - start) as f64 / 1000.0;
    let end = all().map(|r| offset(r) + r.elapsed_seconds).fold(0.0, f64::max);
    let histograms = add_histograms(reports)?;
    let summary = |key: &str| histograms.get(key).map(LatencySummary::from_ns).unwrap_or_else(LatencySummary::empty);

    let connect_seconds = all().map(|r| r.connections.connect_seconds).fold(0.0, f64::max);
    let established = sum(|r| r.connections.established);
    let shard = first.shard.as_ref().expect("checked: every report is a shard's");
    let reasons: Vec<String> = all()
        .filter_map(|r| {
            Some(format!("shard {}/{}: {}", r.shard.as_ref()?.index, shard.count, r.abort_reason.as_ref()?))
        })
        .collect();
    let status = all().map(|r| r.status).max_by_key(|s| severity(*s)).unwrap_or(RunStatus::Complete);
    Ok(LoadReport {
        params: merged_params(first, reports, shard.run_connections),
        status,
        abort_reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        started_unix_ms: start,
        elapsed_seconds: end,
        connections: ConnectionCounts {
            requested: sum(|r| r.connections.requested),
            connected: sum(|r| r.connections.connected),
            established,
            // The shards' peaks added: the run's peak when they peak together, as their
            // schedules make them (`--start-at`), an upper bound otherwise.
            established_peak: sum(|r| r.connections.established_peak),
            established_at_end: sum(|r| r.connections.established_at_end),
            failed: sum(|r| r.connections.failed),
            lost: sum(|r| r.connections.lost),
            reconnects: sum(|r| r.connections.reconnects),
            relogins: sum(|r| r.connections.relogins),
            retried: sum(|r| r.connections.retried),
            churned: sum(|r| r.connections.churned),
            answered_in_messages: sum(|r| r.connections.answered_in_messages),
            connect_seconds,
            connect_rate_achieved: if connect_seconds > 0.0 { established as f64 / connect_seconds } else { 0.0 },
        },
        errors: all().flat_map(|r| r.errors.iter()).fold(BTreeMap::new(), |mut m, (k, v)| {
            *m.entry(k.clone()).or_insert(0) += v;
            m
        }),
        messages: MessageCounts {
            sent: sum(|r| r.messages.sent),
            received: sum(|r| r.messages.received),
            unanswered: sum(|r| r.messages.unanswered),
            late: sum(|r| r.messages.late),
            bytes_sent: sum(|r| r.messages.bytes_sent),
            bytes_received: sum(|r| r.messages.bytes_received),
            rate_requested: sumf(|r| r.messages.rate_requested),
            rate_achieved: sumf(|r| r.messages.rate_achieved),
            recv_buffer_shortfalls: sum(|r| r.messages.recv_buffer_shortfalls),
        },
        latency: Latencies {
            connect: summary("connect"),
            connect_corrected: summary("connect_corrected"),
            login: summary("login"),
            rtt_corrected: summary("rtt_corrected"),
            rtt_uncorrected: summary("rtt_uncorrected"),
            schedule_lag: summary("schedule_lag"),
            chat_ack: summary("chat_ack"),
            chat_deliver: summary("chat_deliver"),
            chat_receipt: summary("chat_receipt"),
        },
        phases: merged_phases(reports, &offset),
        timeline: merged_timeline(reports, &offset),
        chat: merged_chat(reports),
        histograms: histograms
            .iter()
            .map(|(k, h)| {
                let text = histogram::encode(h)
                    .map_err(|e| MergeError::Histograms { name: "the merged report".into(), why: e.to_string() })?;
                Ok((k.clone(), text))
            })
            .collect::<Result<_, MergeError>>()?,
        shard: None,
        merged: Some(MergedFrom { run_id: shard.run_id.clone(), shards: shard.count }),
    })
}

/// Aborted is worse than fell short, which is worse than complete.
fn severity(s: RunStatus) -> u8 {
    match s {
        RunStatus::Complete => 0,
        RunStatus::FellShort => 1,
        RunStatus::Aborted => 2,
    }
}

/// Every report is a shard of the same run (id, shard count, run size, parameters), every shard
/// is there once, and their connections add up to the run's. Returns the first report.
fn check_one_run(reports: &[(String, LoadReport)]) -> Result<&LoadReport, MergeError> {
    let refuse = |why: String| Err(MergeError::NotOneRun(why));
    let Some((first_name, first)) = reports.first() else { return refuse("no reports given".into()) };
    let shard_of = |name: &str, r: &LoadReport| {
        r.shard.clone().ok_or_else(|| {
            MergeError::NotOneRun(format!("{name} is not a shard's report (it has no `shard`: c2m load --shard I/N)"))
        })
    };
    let one = shard_of(first_name, first)?;
    let mut by_index: BTreeMap<u32, &str> = BTreeMap::new();
    for (name, r) in reports {
        let s = shard_of(name, r)?;
        if s.run_id != one.run_id {
            return refuse(format!("{name} is of run {:?}, {first_name} of run {:?}", s.run_id, one.run_id));
        }
        if (s.count, s.run_connections) != (one.count, one.run_connections) {
            return refuse(format!(
                "{name} is shard {}/{} of {} connections, {first_name} shard {}/{} of {}",
                s.index, s.count, s.run_connections, one.index, one.count, one.run_connections
            ));
        }
        if let Some(field) = differing_param(&first.params, &r.params) {
            return refuse(format!("{name} and {first_name} ran with different `{field}`"));
        }
        if let Some(other) = by_index.insert(s.index, name) {
            return refuse(format!("shard {}/{} given twice: {other} and {name}", s.index, s.count));
        }
    }
    let missing: Vec<String> = (0..one.count).filter(|i| !by_index.contains_key(i)).map(|i| i.to_string()).collect();
    if !missing.is_empty() {
        return refuse(format!("shard {} of {} missing", missing.join(", "), one.count));
    }
    let requested: u64 = reports.iter().map(|(_, r)| r.connections.requested).sum();
    if requested != one.run_connections {
        return refuse(format!("the shards requested {requested} connections, the run {}", one.run_connections));
    }
    Ok(first)
}

/// Parameters that are each process's own: its part of the connections and rate, its sources,
/// its threads and rings.
const PER_SHARD_PARAMS: &[&str] = &[
    "connections",
    "sources",
    "source_addresses",
    "source_ports",
    "message_rate",
    "workers",
    "rings_per_worker",
    "files_per_ring",
];

/// The first run-wide parameter two shards' reports disagree on.
fn differing_param(a: &LoadParams, b: &LoadParams) -> Option<String> {
    let (serde_json::Value::Object(a), serde_json::Value::Object(b)) =
        (serde_json::to_value(a).ok()?, serde_json::to_value(b).ok()?)
    else {
        return None;
    };
    a.keys().chain(b.keys()).find(|k| !PER_SHARD_PARAMS.contains(&k.as_str()) && a.get(*k) != b.get(*k)).cloned()
}

fn merged_params(first: &LoadReport, reports: &[(String, LoadReport)], run_connections: u64) -> LoadParams {
    let all = || reports.iter().map(|(_, r)| &r.params);
    let mut sources: Vec<String> = Vec::new();
    for s in all().flat_map(|p| p.sources.iter()) {
        if !sources.contains(s) {
            sources.push(s.clone());
        }
    }
    LoadParams {
        connections: run_connections,
        sources,
        source_addresses: all().map(|p| p.source_addresses).sum(),
        source_ports: [
            all().map(|p| p.source_ports[0]).min().unwrap_or(0),
            all().map(|p| p.source_ports[1]).max().unwrap_or(0),
        ],
        message_rate: all().map(|p| p.message_rate).sum(),
        workers: all().map(|p| p.workers).sum(),
        rings_per_worker: all().map(|p| p.rings_per_worker).max().unwrap_or(0),
        ..first.params.clone()
    }
}

/// The shards' embedded histograms, added key by key. A report whose latency summary counted
/// values its histograms do not hold (an older result, or a hand-edited one) is refused.
fn add_histograms(reports: &[(String, LoadReport)]) -> Result<BTreeMap<String, Histogram<u64>>, MergeError> {
    let mut out: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    for (name, r) in reports {
        let bad = |why: String| MergeError::Histograms { name: name.clone(), why };
        let mut decoded = BTreeMap::new();
        for (key, text) in &r.histograms {
            decoded.insert(key.as_str(), histogram::decode(text).map_err(|e| bad(format!("histogram {key}: {e}")))?);
        }
        for (key, summary) in latency_fields(&r.latency) {
            let held = decoded.get(key).map_or(0, |h| h.len());
            if held != summary.count {
                return Err(bad(format!(
                    "latency.{key} counts {} values, its embedded histogram {held} (results written before \
                     histograms were embedded cannot be merged)",
                    summary.count
                )));
            }
        }
        for (key, h) in decoded {
            match out.get_mut(key) {
                Some(sum) => sum.add(&h).map_err(|e| bad(format!("histogram {key}: {e:?}")))?,
                None => {
                    out.insert(key.to_string(), h);
                }
            }
        }
    }
    Ok(out)
}

/// The latency summaries of a report by their key in `histograms`.
fn latency_fields(l: &Latencies) -> [(&'static str, &LatencySummary); 9] {
    [
        ("connect", &l.connect),
        ("connect_corrected", &l.connect_corrected),
        ("login", &l.login),
        ("rtt_corrected", &l.rtt_corrected),
        ("rtt_uncorrected", &l.rtt_uncorrected),
        ("schedule_lag", &l.schedule_lag),
        ("chat_ack", &l.chat_ack),
        ("chat_deliver", &l.chat_deliver),
        ("chat_receipt", &l.chat_receipt),
    ]
}

/// Each phase from the first shard's start of it to the last shard's end of it.
fn merged_phases(reports: &[(String, LoadReport)], offset: &dyn Fn(&LoadReport) -> f64) -> Vec<Phase> {
    let mut phases: Vec<Phase> = Vec::new();
    for (_, r) in reports {
        for p in &r.phases {
            let (start, end) = (offset(r) + p.start, offset(r) + p.end);
            match phases.iter_mut().find(|q| q.name == p.name) {
                Some(q) => {
                    q.start = q.start.min(start);
                    q.end = q.end.max(end);
                }
                None => phases.push(Phase { name: p.name.clone(), start, end }),
            }
        }
    }
    phases.sort_by(|a, b| a.start.total_cmp(&b.start));
    phases
}

/// One sample a second of the run: the shards' samples of that second, counts and rates added,
/// MemFree the lowest, percentiles the highest (a shard's second-by-second percentiles cannot be
/// merged exactly; the run's whole histograms are in `histograms`).
fn merged_timeline(reports: &[(String, LoadReport)], offset: &dyn Fn(&LoadReport) -> f64) -> Vec<Sample> {
    let mut seconds: BTreeMap<u64, Sample> = BTreeMap::new();
    for (_, r) in reports {
        for s in &r.timeline {
            let t = offset(r) + s.t;
            let m = seconds.entry(t.round() as u64).or_insert_with(|| Sample {
                t,
                mem_free: u64::MAX,
                ..Default::default()
            });
            m.t = m.t.max(t);
            m.established += s.established;
            m.connect_rate += s.connect_rate;
            m.msg_rate += s.msg_rate;
            m.p50_us = m.p50_us.max(s.p50_us);
            m.p99_us = m.p99_us.max(s.p99_us);
            m.errors += s.errors;
            m.mem_free = m.mem_free.min(s.mem_free);
        }
    }
    seconds.into_values().collect()
}

/// The shards' ledgers added. A message's deliveries may be counted by other shards than its
/// sender's, so the lost and the unreceipted are counted here, for the whole run: what the
/// senders expected less what the recipients got, and what they got less what came back
/// receipted.
fn merged_chat(reports: &[(String, LoadReport)]) -> Option<ChatCounts> {
    let chats: Vec<&ChatCounts> = reports.iter().filter_map(|(_, r)| r.chat.as_ref()).collect();
    if chats.is_empty() {
        return None;
    }
    let sum = |f: fn(&ChatCounts) -> u64| chats.iter().map(|c| f(c)).sum::<u64>();
    let (expected, delivered, receipted) = (sum(|c| c.expected), sum(|c| c.delivered), sum(|c| c.receipted));
    Some(ChatCounts {
        sent: sum(|c| c.sent),
        acked: sum(|c| c.acked),
        nacked_unknown_recipient: sum(|c| c.nacked_unknown_recipient),
        nacked_offline_full: sum(|c| c.nacked_offline_full),
        nacked_other: sum(|c| c.nacked_other),
        unanswered: sum(|c| c.unanswered),
        expected,
        delivered,
        receipted,
        duplicates: sum(|c| c.duplicates),
        // Whether a lost message was ACKed is in its sender's shard, where its loss is not
        // known: the merge counts only the loss.
        lost: expected.saturating_sub(delivered),
        lost_after_ack: 0,
        lost_unacked: 0,
        unreceipted: delivered.saturating_sub(receipted),
        unknown: sum(|c| c.unknown),
        window_full: sum(|c| c.window_full),
        delivered_rate: chats.iter().map(|c| c.delivered_rate).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::load::ShardInfo;

    fn histogram_of(values: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        for &v in values {
            h.record(v).unwrap();
        }
        h
    }

    /// Shard `index` of `count` of a 10-connection chat run, its login latencies `values` (ns).
    fn shard(index: u32, count: u32, values: &[u64]) -> (String, LoadReport) {
        let requested = crate::load::shard::Shard { index, count }.connections_of(10);
        let params = serde_json::from_value(serde_json::json!({
            "target": "198.18.0.1:7700", "connections": requested, "connect_rate": 0.0, "connect_concurrency": 16,
            "connect_timeout_ms": 1000, "sources": [format!("198.18.0.{}", 10 + index)], "source_addresses": 1,
            "source_ports": [10000 + index as u16 * 100, 10099 + index as u16 * 100], "duration_ms": 1000,
            "ramp_ms": 0, "hold_ms": 0, "workload": "chat", "message_interval_ms": 100.0,
            "message_rate": requested as f64 * 10.0, "size": 44, "workers": 2, "rings_per_worker": 1,
            "files_per_ring": 20000
        }))
        .unwrap();
        let login = histogram_of(values);
        let report = LoadReport {
            params,
            status: RunStatus::Complete,
            abort_reason: None,
            started_unix_ms: 1_000_000 + index as u64 * 500,
            elapsed_seconds: 3.0,
            connections: ConnectionCounts {
                requested,
                connected: requested,
                established: requested,
                established_peak: requested,
                connect_seconds: 0.1 * (index + 1) as f64,
                ..Default::default()
            },
            errors: [("connect timeout".to_string(), 1)].into(),
            messages: MessageCounts { sent: 30, received: 30, ..Default::default() },
            latency: Latencies { login: LatencySummary::from_ns(&login), ..Default::default() },
            phases: vec![
                Phase { name: "connect".into(), start: 0.0, end: 0.5 },
                Phase { name: "messages".into(), start: 0.5, end: 1.5 },
            ],
            timeline: vec![Sample {
                t: 1.0,
                established: requested,
                mem_free: 100 + index as u64,
                ..Default::default()
            }],
            // Shard i sent 30 SENDs expecting 30 deliveries and received 29 + i of the run's.
            chat: Some(ChatCounts {
                sent: 30,
                acked: 30,
                expected: 30,
                delivered: 29 + index as u64,
                receipted: 29,
                ..Default::default()
            }),
            histograms: [("login".to_string(), histogram::encode(&login).unwrap())].into(),
            shard: Some(ShardInfo { run_id: "run-a".into(), index, count, run_connections: 10 }),
            merged: None,
        };
        (format!("s{index}.json"), report)
    }

    fn three() -> Vec<(String, LoadReport)> {
        vec![shard(2, 3, &[7_000, 9_000_000]), shard(0, 3, &[1_000, 2_000, 3_000]), shard(1, 3, &[50_000])]
    }

    fn refused(reports: &[(String, LoadReport)], says: &str) {
        let err = merge(reports).unwrap_err().to_string();
        assert!(err.contains(says), "{err:?} does not say {says:?}");
    }

    #[test]
    fn counts_add_and_histograms_merge_exactly() {
        let m = merge(&three()).unwrap();
        assert_eq!(m.params.connections, 10);
        assert_eq!(m.params.message_rate, 100.0);
        assert_eq!(m.params.source_ports, [10000, 10299]);
        assert_eq!(m.connections.requested, 10);
        assert_eq!(m.connections.established, 10);
        assert_eq!(m.errors["connect timeout"], 3);
        assert_eq!(m.messages.sent, 90);
        // The latencies are those of one histogram of every value, not an average of the shards'.
        let whole = histogram_of(&[1_000, 2_000, 3_000, 50_000, 7_000, 9_000_000]);
        assert_eq!(m.latency.login, LatencySummary::from_ns(&whole));
        assert_eq!(histogram::decode(&m.histograms["login"]).unwrap(), whole);
        // The ledger of the run: 90 expected, 29 + 30 + 31 delivered, 87 receipted.
        let chat = m.chat.as_ref().unwrap();
        assert_eq!((chat.expected, chat.delivered, chat.receipted), (90, 90, 87));
        assert_eq!((chat.lost, chat.unreceipted), (0, 3));
        assert_eq!(m.merged, Some(MergedFrom { run_id: "run-a".into(), shards: 3 }));
        assert_eq!(m.shard, None);
        // Times from the earliest start: shard 2 started 1 s after shard 0 and ran 3 s.
        assert_eq!(m.elapsed_seconds, 4.0);
        assert_eq!(m.phases[1], Phase { name: "messages".into(), start: 0.5, end: 2.5 });
        assert!((m.connections.connect_seconds - 0.3).abs() < 1e-9);
    }

    #[test]
    fn a_lost_delivery_shows_in_the_merged_ledger() {
        let mut reports = three();
        reports[0].1.chat.as_mut().unwrap().delivered -= 1;
        let m = merge(&reports).unwrap();
        assert_eq!(m.chat.as_ref().unwrap().lost, 1);
        assert!(m.shortfall().unwrap().contains("1 chat messages lost"));
    }

    #[test]
    fn refuses_what_is_not_one_run() {
        let mut r = three();
        r.pop();
        refused(&r, "shard 1 of 3 missing");
        let mut r = three();
        r[2] = shard(0, 3, &[1]);
        refused(&r, "shard 0/3 given twice");
        let mut r = three();
        r[1].1.shard.as_mut().unwrap().run_id = "run-b".into();
        refused(&r, "of run \"run-b\"");
        let mut r = three();
        r[1] = shard(0, 2, &[1]);
        refused(&r, "shard 0/2 of 10 connections");
        let mut r = three();
        r[1].1.params.workload = "ping".into();
        refused(&r, "different `workload`");
        let mut r = three();
        r[1].1.shard = None;
        refused(&r, "is not a shard's report");
        let mut r = three();
        r[1].1.histograms.clear();
        refused(&r, "embedded histogram 0");
        refused(&[], "no reports");
    }

    /// The merged report validates against the results schema's LoadReport.
    #[test]
    fn the_merged_report_validates_against_the_schema() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/results/schema/bench-result.schema.json");
        let mut schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let defs = schema["$defs"].take();
        let load_schema = serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": "#/$defs/LoadReport", "$defs": defs
        });
        let validator = jsonschema::draft202012::new(&load_schema).expect("schema compiles");
        for report in [merge(&three()).unwrap(), three()[0].1.clone()] {
            let value = serde_json::to_value(&report).unwrap();
            let errors: Vec<String> =
                validator.iter_errors(&value).map(|e| format!("{}: {e}", e.instance_path())).collect();
            assert!(errors.is_empty(), "{errors:#?}");
            // And it reads back to the same JSON.
            let back = serde_json::from_value::<LoadReport>(value.clone()).unwrap();
            assert_eq!(serde_json::to_value(&back).unwrap(), value);
        }
    }
}

//! Both exposition formats read by parsers that are not ours: promtool (text) and the
//! Python client's parsers (text and OpenMetrics), on a live scrape with every metric.

use std::process::Command;

use crate::util::{http_get, require_tool, run, samples, Exporter};

#[test]
fn promtool_and_the_python_parsers_accept_a_live_scrape() {
    let e = Exporter::start(&[]);
    let text = e.scrape();
    for family in [
        "network_connections_info",
        "network_connection_states",
        "conn_exporter_connections_dropped_series",
        "conn_exporter_parse_errors_total",
        "conn_exporter_build_info",
        "conn_exporter_scrape_collector_duration_seconds",
        "conn_exporter_scrape_collector_success",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(!samples(&text, family).is_empty(), "{family} missing");
    }
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("metrics.txt");
    std::fs::write(&text_file, &text).unwrap();
    let (code, out, err) = run(Command::new(require_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&text_file).unwrap()));
    assert_eq!(code, 0, "promtool check metrics: {out}{err}");

    let om = http_get(e.addr, "/metrics", &[("Accept", "application/openmetrics-text;version=1.0.0")]).text();
    let om_file = dir.path().join("metrics.om");
    std::fs::write(&om_file, &om).unwrap();
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as text\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as om\nfor parse, path in ((text, sys.argv[1]), (om, sys.argv[2])):\n    fams = list(parse(open(path).read()))\n    print(len(fams), sum(len(f.samples) for f in fams))\n";
    let (code, out, err) =
        run(Command::new(require_tool("python3")).args(["-c", script]).arg(&text_file).arg(&om_file));
    assert_eq!(code, 0, "python prometheus_client parsers: {err}");
    let lines: Vec<&str> = out.lines().collect();
    let families = text.lines().filter(|l| l.starts_with("# TYPE")).count();
    assert_eq!(lines[0].split(' ').next().unwrap().parse::<usize>().unwrap(), families, "{out}");
    assert_eq!(lines[1].split(' ').next().unwrap().parse::<usize>().unwrap(), families, "{out}");
}

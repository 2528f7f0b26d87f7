// Alerts on the exporter itself: down, truncating, failing, unable to parse. They read
// the exporter's own metrics of every job it is scraped by (anyJobSelector): the
// bounded job and, where it is on, the per-connection drill-down job.
{
  prometheusAlerts+:: {
    groups+: [{
      name: 'conn-exporter-health',
      rules: [
        {
          alert: 'ConnExporterDown',
          expr: 'up{%(anyJobSelector)s} == 0' % $._config,
          'for': '5m',
          labels: { severity: 'critical' },
          annotations: {
            summary: 'conn-exporter on {{ $labels.instance }} is down',
            description: 'Prometheus could not scrape {{ $labels.instance }} for 5 minutes (service stopped, firewall, TLS or port change?).',
          },
        },
        {
          alert: 'ConnExporterSeriesTruncated',
          expr: 'conn_exporter_connections_dropped_series{%(anyJobSelector)s} > 0' % $._config,
          'for': '15m',
          labels: { severity: 'warning' },
          annotations: {
            summary: 'conn-exporter on {{ $labels.instance }} truncates per-connection series',
            description: '{{ $value }} per-connection series are left out by --collector.connections.max-series. Totals (network_connection_states) stay exact; raise the limit if the detail is needed.',
          },
        },
        {
          alert: 'ConnExporterCollectorFailing',
          expr: 'conn_exporter_scrape_collector_success{%(anyJobSelector)s} == 0' % $._config,
          'for': '5m',
          labels: { severity: 'warning' },
          annotations: {
            summary: 'conn-exporter collector {{ $labels.collector }} fails on {{ $labels.instance }}',
            description: 'The {{ $labels.collector }} collector has failed for 5 minutes; see the exporter\'s log (journalctl -u conn-exporter).',
          },
        },
        {
          alert: 'ConnExporterParseErrors',
          expr: 'increase(conn_exporter_parse_errors_total{%(jobSelector)s}[15m]) > 0' % $._config,
          'for': '0m',
          labels: { severity: 'info' },
          annotations: {
            summary: 'conn-exporter cannot parse socket table {{ $labels.file }} on {{ $labels.instance }}',
            description: 'Lines of socket table {{ $labels.file }} were skipped in the last 15 minutes (unexpected kernel format?).',
          },
        },
      ],
    }],
  },
}

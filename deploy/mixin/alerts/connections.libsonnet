// Alerts on the hosts' sockets, from the exact per-state totals.
{
  prometheusAlerts+:: {
    groups+: [{
      name: 'conn-exporter-connections',
      rules: [
        {
          alert: 'TooManyConnections',
          expr: 'sum by (instance) (network_connection_states) > %d' % $._config.tooManyConnectionsThreshold,
          'for': '5m',
          labels: { severity: 'warning' },
          annotations: {
            summary: 'Too many network connections on {{ $labels.instance }}',
            description: '{{ $labels.instance }} has {{ $value }} TCP sockets (all states) for 5 minutes (threshold %d).' % $._config.tooManyConnectionsThreshold,
          },
        },
        {
          // The specification's absent(network_connections_info{...}) fires only
          // when no host at all listens on 22; this fires per host. A host whose
          // per-connection series are truncated is left out (the LISTEN socket may
          // be among the dropped ones): ConnExporterSeriesTruncated covers it.
          alert: 'NoListeningSSH',
          expr: |||
            (
              max by (instance) (conn_exporter_scrape_collector_success{%(jobSelector)s,collector="connections"} == 1)
              unless on (instance)
              count by (instance) (network_connections_info{%(jobSelector)s,state="LISTEN",source_port="22"})
            )
            unless on (instance)
            (conn_exporter_connections_dropped_series{%(jobSelector)s} > 0)
          ||| % $._config,
          'for': '1m',
          labels: { severity: 'critical' },
          annotations: {
            summary: 'SSH service not listening on {{ $labels.instance }}',
            description: 'No socket listens on TCP port 22 on {{ $labels.instance }}.',
          },
        },
        {
          // CLOSE_WAIT: the peer closed, the local application has not. A growing
          // count is a socket leak in an application on that host.
          alert: 'CloseWaitPileUp',
          expr: 'sum by (instance) (network_connection_states{%(jobSelector)s,state="CLOSE_WAIT"}) > %(closeWaitThreshold)d' % $._config,
          'for': '15m',
          labels: { severity: 'warning' },
          annotations: {
            summary: 'CLOSE_WAIT sockets piling up on {{ $labels.instance }}',
            description: '{{ $value }} sockets in CLOSE_WAIT on {{ $labels.instance }} for 15 minutes: an application does not close its connections.',
          },
        },
        {
          // Many TIME_WAIT sockets towards one destination exhaust the ephemeral ports.
          alert: 'TimeWaitPileUp',
          expr: 'sum by (instance) (network_connection_states{%(jobSelector)s,state="TIME_WAIT"}) > %(timeWaitThreshold)d' % $._config,
          'for': '10m',
          labels: { severity: 'warning' },
          annotations: {
            summary: 'TIME_WAIT sockets piling up on {{ $labels.instance }}',
            description: '{{ $value }} sockets in TIME_WAIT on {{ $labels.instance }}: short-lived connections may exhaust ephemeral ports; consider connection reuse.',
          },
        },
      ],
    }],
  },
}

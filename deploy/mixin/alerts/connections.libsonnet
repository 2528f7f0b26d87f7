// Alerts on the hosts' sockets, from the exact per-state totals.
{
  prometheusAlerts+:: {
    groups+: [{
      name: 'conn-exporter-connections',
      rules: [
        {
          alert: 'TooManyConnections',
          expr: 'sum by (instance) (network_connection_states{%(jobSelector)s}) > %(tooManyConnectionsThreshold)d' % $._config,
          'for': '5m',
          labels: { severity: 'warning' },
          annotations: {
            summary: 'Too many network connections on {{ $labels.instance }}',
            description: '{{ $labels.instance }} has {{ $value }} TCP sockets (all states) for 5 minutes (threshold %d).' % $._config.tooManyConnectionsThreshold,
          },
        },
        {
          // The specification's absent(network_connections_info{...}) fires only
          // when no host at all listens on 22; this fires per host. It reads the
          // listeners family (bounded: one series per listening endpoint, never
          // truncated), so it works without the per-connection series. A host that
          // serves no listener at all (its listeners collector failing or not
          // scraped) is left out: the exporter's own listener is always there when
          // the family is, and ConnExporterCollectorFailing covers a failure.
          alert: 'NoListeningSSH',
          expr: |||
            count by (instance) (network_listen_queue_length{%(jobSelector)s})
            unless on (instance)
            count by (instance) (network_listen_queue_length{%(jobSelector)s,source_port="22"})
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

// Alerts on services and their dependencies: listener queues (listeners collector)
// and failed outbound connects (lifecycle collector).
{
  prometheusAlerts+:: {
    groups+: [{
      name: 'conn-exporter-peers',
      rules: [
        {
          // A service that stops calling accept() (stuck, overloaded, deadlocked)
          // lets its listen queue fill; at the limit the kernel drops new SYNs and
          // clients time out. Both series share their labels, so they divide one to one.
          alert: 'ListenQueueFilling',
          expr: |||
            network_listen_queue_length{%(jobSelector)s}
              / network_listen_queue_limit{%(jobSelector)s}
            > %(listenQueueRatioThreshold)g
          ||| % $._config,
          'for': $._config.listenQueueFor,
          labels: { severity: 'warning' },
          annotations: {
            summary: 'Listen queue of {{ $labels.source_address }}:{{ $labels.source_port }} filling on {{ $labels.instance }}',
            description: 'The listener {{ $labels.source_address }}:{{ $labels.source_port }} on {{ $labels.instance }} has {{ $value | humanizePercentage }} of its backlog waiting to be accepted for %(listenQueueFor)s: the service does not accept fast enough and new connections will be dropped at the limit.' % $._config,
          },
        },
        {
          // Failed connects (refused, timed out, reset in the handshake), counted by
          // remote address: with the socket-destroy notifications they carry no port
          // (the kernel has cleared it by then), with the eBPF source they do; summing
          // by address works for both. Attempts = failed + closed after being established.
          alert: 'ConnectFailures',
          expr: |||
            (
              sum by (instance, destination_address) (rate(network_connections_failed_total{%(jobSelector)s}[%(rateWindow)s]))
              /
              (
                sum by (instance, destination_address) (rate(network_connections_failed_total{%(jobSelector)s}[%(rateWindow)s]))
                +
                (
                  sum by (instance, destination_address) (rate(network_connections_closed_total{%(jobSelector)s,direction="outbound"}[%(rateWindow)s]))
                  or
                  sum by (instance, destination_address) (rate(network_connections_failed_total{%(jobSelector)s}[%(rateWindow)s])) * 0
                )
              )
            ) > %(connectFailuresRatioThreshold)g
            and
            sum by (instance, destination_address) (rate(network_connections_failed_total{%(jobSelector)s}[%(rateWindow)s])) > %(connectFailuresMinRate)g
          ||| % $._config,
          'for': $._config.connectFailuresFor,
          labels: { severity: 'warning' },
          annotations: {
            summary: 'Connects from {{ $labels.instance }} to {{ $labels.destination_address }} failing',
            description: '{{ $value | humanizePercentage }} of the outbound connects from {{ $labels.instance }} to {{ $labels.destination_address }} failed (refused, timed out or reset before ESTABLISHED) over %(rateWindow)s, for %(connectFailuresFor)s: a dependency is down or unreachable.' % $._config,
          },
        },
      ],
    }],
  },
}

// Recording rules: per-host totals from the exact per-state counts, so that
// fleet-wide dashboards and federation read one series per host (and state)
// instead of one per family, interface and state. `without` keeps the target
// labels Prometheus adds (environment, role, ...).
{
  prometheusRules+:: {
    groups+: [{
      name: 'conn-exporter-totals',
      rules: [
        {
          record: 'instance:network_connection_states:sum',
          expr: 'sum without (family, interface, state) (network_connection_states{%(jobSelector)s})' % $._config,
        },
        {
          record: 'instance_state:network_connection_states:sum',
          expr: 'sum without (family, interface) (network_connection_states{%(jobSelector)s})' % $._config,
        },
        {
          record: 'instance_family:network_connection_states:sum',
          expr: 'sum without (interface, state) (network_connection_states{%(jobSelector)s})' % $._config,
        },
      ],
    }],
  },
}

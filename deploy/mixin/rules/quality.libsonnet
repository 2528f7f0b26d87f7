// Recording rules on connection quality (the quality collector): the 99th percentile
// of TCP's smoothed RTT per service, for dashboards, SLOs and federation.
//
// "Per service" depends on the direction. Outbound, the service is the remote one:
// destination_address and destination_port (a dependency as this host sees it, all
// local addresses and namespaces together). Inbound, the service is the local one:
// source_address and source_port, kept apart per network namespace (netns, and the
// container_id and pod_uid that go with it in --collector.namespaces=all mode), its
// clients together. Interfaces and owners are summed away. `without` keeps job,
// instance and the target labels Prometheus adds (environment, role, ...), as the
// totals do; one series per service and direction carries no source/destination
// label of the other side.
local quality = {
  outboundWithout: 'interface, source_address, netns, container_id, pod_uid, process, systemd_unit',
  inboundWithout: 'interface, destination_address, process, systemd_unit',
};
{
  prometheusRules+:: {
    groups+: [{
      name: 'conn-exporter-quality',
      rules: [
        {
          record: 'instance_service:network_connection_rtt_seconds:p99_rate%(rttQuantileWindow)s' % $._config,
          // The classic buckets (a text scrape), or the native histogram (a Prometheus
          // with native histograms, which stores no _bucket series): one side is empty.
          expr: |||
            histogram_quantile(0.99,
              sum without (%(outboundWithout)s) (rate(network_connection_rtt_seconds_bucket{%(jobSelector)s,direction="outbound"}[%(rttQuantileWindow)s]))
              or
              sum without (%(inboundWithout)s) (rate(network_connection_rtt_seconds_bucket{%(jobSelector)s,direction="inbound"}[%(rttQuantileWindow)s]))
            )
            or
            histogram_quantile(0.99,
              sum without (%(outboundWithout)s) (rate(network_connection_rtt_seconds{%(jobSelector)s,direction="outbound"}[%(rttQuantileWindow)s]))
              or
              sum without (%(inboundWithout)s) (rate(network_connection_rtt_seconds{%(jobSelector)s,direction="inbound"}[%(rttQuantileWindow)s]))
            )
          ||| % ($._config + quality),
        },
      ],
    }],
  },
}

// Alerts on connection quality (the quality collector): a lossy path to a peer.
{
  prometheusAlerts+:: {
    groups+: [{
      name: 'conn-exporter-quality',
      rules: [
        {
          // The retransmit ratio per remote address (loss is a property of the path to
          // a host, so both directions and every port of that address count together):
          // the share of the data segments sent that were retransmissions. Both counters
          // count open connections (between two quality samples) and closed ones (up to
          // their close): network_connection_retransmits_total (the lifecycle family) over
          // network_connection_sent_segments_total (the quality collector's
          // tcpi_data_segs_out, retransmissions included). The floor on the segment rate
          // keeps a trickle of traffic (or none: a zero denominator) from alerting.
          alert: 'PeerRetransmitRatioHigh',
          expr: |||
            (
              sum by (instance, destination_address) (rate(network_connection_retransmits_total{%(jobSelector)s}[%(rateWindow)s]))
              /
              sum by (instance, destination_address) (rate(network_connection_sent_segments_total{%(jobSelector)s}[%(rateWindow)s]))
            ) > %(retransmitRatioThreshold)g
            and
            sum by (instance, destination_address) (rate(network_connection_sent_segments_total{%(jobSelector)s}[%(rateWindow)s])) > %(retransmitRatioMinSegmentsRate)g
          ||| % $._config,
          'for': $._config.retransmitRatioFor,
          labels: { severity: 'warning' },
          annotations: {
            summary: 'Retransmits to {{ $labels.destination_address }} high on {{ $labels.instance }}',
            description: '{{ $labels.instance }} retransmits {{ $value | humanizePercentage }} of the segments it sends to {{ $labels.destination_address }} (retransmitted segments per data segment sent, over %(rateWindow)s, for %(retransmitRatioFor)s): the path to that peer loses packets, or the peer is overloaded.' % $._config,
          },
        },
      ],
    }],
  },
}

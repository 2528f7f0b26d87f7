// Alerts on connection quality (the quality collector): a lossy path to a peer.
{
  prometheusAlerts+:: {
    groups+: [{
      name: 'conn-exporter-quality',
      rules: [
        {
          // The retransmit ratio per remote address (loss is a property of the path to
          // a host, so both directions and every port of that address count together):
          // segments retransmitted per segment sent. No segments family exists, only
          // bytes sent, so segments sent are estimated as bytes sent divided by a
          // full-size segment (retransmitRatioSegmentBytes, see config.libsonnet). The
          // floor on the estimated segment rate also removes a zero denominator (bytes
          // sent are counted when a connection closes: a peer with only long-lived
          // connections can show retransmits and no bytes sent in the window).
          alert: 'PeerRetransmitRatioHigh',
          expr: |||
            (
              sum by (instance, destination_address) (rate(network_connection_retransmits_total{%(jobSelector)s}[%(rateWindow)s]))
              /
              (sum by (instance, destination_address) (rate(network_connection_sent_bytes_total{%(jobSelector)s}[%(rateWindow)s])) / %(retransmitRatioSegmentBytes)g)
            ) > %(retransmitRatioThreshold)g
            and
            sum by (instance, destination_address) (rate(network_connection_sent_bytes_total{%(jobSelector)s}[%(rateWindow)s])) / %(retransmitRatioSegmentBytes)g > %(retransmitRatioMinSegmentsRate)g
          ||| % $._config,
          'for': $._config.retransmitRatioFor,
          labels: { severity: 'warning' },
          annotations: {
            summary: 'Retransmits to {{ $labels.destination_address }} high on {{ $labels.instance }}',
            description: '{{ $labels.instance }} retransmits {{ $value | humanizePercentage }} of the segments it sends to {{ $labels.destination_address }} (retransmits per %(retransmitRatioSegmentBytes)g bytes sent, over %(rateWindow)s, for %(retransmitRatioFor)s): the path to that peer loses packets, or the peer is overloaded.' % $._config,
          },
        },
      ],
    }],
  },
}

// Settings shared by the alerts, recording rules and dashboards. Override them in
// a mixin that imports this one: (import 'mixin.libsonnet') + { _config+:: { ... } }.
{
  _config+:: {
    // The scrape job of the bounded families (states, peers, listeners, lifecycle, quality);
    // alerts, recording rules and dashboards select it.
    jobSelector: 'job="conn-exporter"',
    // Any job of the exporter: the bounded one above, or the opt-in drill-down job
    // `conn-exporter-connections` of the fleet configuration (collect[]=connections).
    // The exporter-health alerts watch both; the single-host configuration's one job
    // matches too.
    anyJobSelector: 'job=~"conn-exporter(-connections)?"',

    tooManyConnectionsThreshold: 10000,
    closeWaitThreshold: 200,
    // Linux offers 28232 ephemeral ports by default (32768-60999).
    timeWaitThreshold: 20000,

    // ListenQueueFilling: connections waiting to be accepted, as a share of the
    // listener's backlog limit (the limit needs the netlink source).
    listenQueueRatioThreshold: 0.8,
    listenQueueFor: '5m',

    // ConnectFailures: the share of outbound connects to one remote address that
    // failed, over rateWindow, when at least connectFailuresMinRate per second
    // failed (a single refused retry is not an outage).
    connectFailuresRatioThreshold: 0.2,
    connectFailuresMinRate: 0.1,
    connectFailuresFor: '10m',
    rateWindow: '5m',

    // Connection quality (the quality collector, issue 19).
    // PeerRetransmitRatioHigh: retransmitted segments per data segment sent to one
    // remote address (network_connection_retransmits_total over
    // network_connection_sent_segments_total), over rateWindow, above
    // retransmitRatioThreshold for retransmitRatioFor. 1 % resent is far above what a
    // healthy path loses (a path that drops 1 packet in 100 costs TCP throughput). The
    // alert needs at least retransmitRatioMinSegmentsRate data segments sent per second,
    // so that a trickle of traffic (or none) does not divide by almost nothing.
    retransmitRatioThreshold: 0.01,
    retransmitRatioMinSegmentsRate: 10,
    retransmitRatioFor: '10m',
    // The window of the recorded RTT quantiles (its name carries it).
    rttQuantileWindow: '5m',
  },
}

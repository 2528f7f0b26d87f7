// Settings shared by the alerts, recording rules and dashboards. Override them in
// a mixin that imports this one: (import 'mixin.libsonnet') + { _config+:: { ... } }.
{
  _config+:: {
    // The scrape job the exporter runs under; alerts and dashboards select it.
    jobSelector: 'job="conn-exporter"',

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
  },
}

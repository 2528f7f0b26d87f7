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
  },
}

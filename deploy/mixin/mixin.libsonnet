// conn-exporter monitoring mixin: alerts, recording rules and Grafana dashboards,
// in the shape of node-mixin (prometheusAlerts, prometheusRules, grafanaDashboards).
// Add an alert group, rule group or dashboard as one file and import it here.
(import 'config.libsonnet') +
(import 'alerts/connections.libsonnet') +
(import 'alerts/health.libsonnet') +
(import 'alerts/peers.libsonnet') +
(import 'alerts/quality.libsonnet') +
(import 'rules/totals.libsonnet') +
(import 'rules/quality.libsonnet') +
(import 'dashboards/single-host.libsonnet') +
(import 'dashboards/multi-host.libsonnet')

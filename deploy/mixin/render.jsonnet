// Renders the mixin into the files committed under deploy/ (paths relative to it):
//   jsonnet -S -m deploy deploy/mixin/render.jsonnet
// tests/ops/test-static.sh renders again and fails on any difference.
local mixin = import 'mixin.libsonnet';

local header(what) =
  '# ' + what + ' for conn-exporter, rendered from deploy/mixin/ (edit there, then run\n' +
  '#   jsonnet -S -m deploy deploy/mixin/render.jsonnet\n' +
  '# ). Check: promtool check rules; tests: deploy/prometheus/alerts_test.yml.\n';

{
  'prometheus/alerts.yml': header('Alerting rules') + std.manifestYamlDoc(mixin.prometheusAlerts, indent_array_in_object=true, quote_keys=false) + '\n',
  'prometheus/recording-rules.yml': header('Recording rules') + std.manifestYamlDoc(mixin.prometheusRules, indent_array_in_object=true, quote_keys=false) + '\n',
  // The same alerts and recording rules for the Prometheus Operator.
  'kubernetes/prometheus-operator/prometheusrule.yaml':
    '# Alerts and recording rules of conn-exporter for the Prometheus Operator, rendered from\n' +
    '# deploy/mixin/ (edit there, then run: jsonnet -S -m deploy deploy/mixin/render.jsonnet).\n' +
    '# Installations that select rules by label (kube-prometheus-stack: release) need it added.\n' +
    std.manifestYamlDoc({
      apiVersion: 'monitoring.coreos.com/v1',
      kind: 'PrometheusRule',
      metadata: {
        name: 'conn-exporter',
        namespace: 'monitoring',
        labels: { 'app.kubernetes.io/name': 'conn-exporter', 'app.kubernetes.io/component': 'exporter' },
      },
      spec: { groups: mixin.prometheusAlerts.groups + mixin.prometheusRules.groups },
    }, indent_array_in_object=true, quote_keys=false) + '\n',
} + {
  ['grafana/' + name]: std.manifestJsonEx(mixin.grafanaDashboards[name], '  ') + '\n'
  for name in std.objectFields(mixin.grafanaDashboards)
}

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
} + {
  ['grafana/' + name]: std.manifestJsonEx(mixin.grafanaDashboards[name], '  ') + '\n'
  for name in std.objectFields(mixin.grafanaDashboards)
}

// One host in detail: pick it with the Host variable.
local g = import 'lib.libsonnet';
local s = import 'sections.libsonnet';
local multiHost = false;

{
  grafanaDashboards+:: {
    'conn-exporter-single-host.json':
      g.dashboard(multiHost, s.overview(multiHost) + s.trends(multiHost) + s.detail(multiHost) + s.peers(multiHost) + s.lifecycle(multiHost) + s.nat(multiHost) + s.quality(multiHost) + s.namespaces(multiHost) + s.health(multiHost) + s.drillDown(multiHost)),
  },
}

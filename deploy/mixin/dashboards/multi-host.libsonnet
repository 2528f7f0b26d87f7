// Every host side by side: per-host series, a hosts table, hosts up.
local g = import 'lib.libsonnet';
local s = import 'sections.libsonnet';
local multiHost = true;

{
  grafanaDashboards+:: {
    'conn-exporter-multi-host.json':
      g.dashboard(multiHost, s.overview(multiHost) + s.trends(multiHost) + s.detail(multiHost) + s.peers(multiHost) + s.lifecycle(multiHost) + s.nat(multiHost) + s.quality(multiHost) + s.namespaces(multiHost) + s.health(multiHost) + s.drillDown(multiHost)),
  },
}

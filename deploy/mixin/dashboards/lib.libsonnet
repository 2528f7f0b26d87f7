// Panel builders and the grid layout shared by the dashboards. Every query
// filters by the job and instance variables (the filters below).
local ds = { type: 'prometheus', uid: '${datasource}' };

// Label filters. Every query carries job and instance.
local host = 'job="$job",instance=~"$instance"';
local iface = host + ',interface=~"$interface"';
// The drill-down row's filter: the per-connection series come from the bounded job
// itself where it scrapes everything (single-host configuration), or from the opt-in
// job "<job>-connections" of the fleet configuration (collect[]=connections).
local drillHost = 'job=~"$job(-connections)?",instance=~"$instance"';
local drillIface = drillHost + ',interface=~"$interface"';

local target(expr, legend='', instant=false, format='time_series', ref='A') = {
  datasource: ds,
  expr: expr,
  refId: ref,
  legendFormat: if legend == '' then '__auto' else legend,
  range: !instant,
  instant: instant,
  format: format,
};

local greenOnly = { mode: 'absolute', steps: [{ color: 'green', value: null }] };

{
  ds: ds,
  host: host,
  iface: iface,
  all: iface + ',state=~"$state"',
  drillHost: drillHost,
  drillAll: drillIface + ',state=~"$state"',
  target: target,

  redAbove0: { mode: 'absolute', steps: [{ color: 'green', value: null }, { color: 'red', value: 1 }] },
  upMappings: [{ type: 'value', options: { '0': { text: 'DOWN', color: 'red' }, '1': { text: 'UP', color: 'green' } } }],

  stat(title, description, expr, unit='short', mappings=[], thresholds=greenOnly):: {
    type: 'stat',
    title: title,
    description: description,
    datasource: ds,
    targets: [target(expr)],
    fieldConfig: { defaults: { unit: unit, mappings: mappings, thresholds: thresholds }, overrides: [] },
    options: {
      reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
      colorMode: 'value',
      graphMode: 'area',
      textMode: 'auto',
    },
  },

  timeseries(title, description, targets, unit='short', stack=false):: {
    type: 'timeseries',
    title: title,
    description: description,
    datasource: ds,
    targets: targets,
    fieldConfig: {
      defaults: {
        unit: unit,
        custom: {
          drawStyle: 'line',
          lineWidth: 1,
          fillOpacity: 10,
          showPoints: 'never',
          stacking: { mode: if stack then 'normal' else 'none', group: 'A' },
        },
      },
      overrides: [],
    },
    options: {
      legend: { displayMode: 'table', placement: 'bottom', calcs: ['lastNotNull', 'max'] },
      tooltip: { mode: 'multi', sort: 'desc' },
    },
  },

  // A second query (refId B) with its own unit on the right axis.
  rightAxis(unit):: {
    fieldConfig+: {
      overrides: [{
        matcher: { id: 'byFrameRefID', options: 'B' },
        properties: [{ id: 'unit', value: unit }, { id: 'custom.axisPlacement', value: 'right' }],
      }],
    },
  },

  table(title, description, expr, unit='short'):: {
    type: 'table',
    title: title,
    description: description,
    datasource: ds,
    targets: [target(expr, instant=true, format='table')],
    fieldConfig: { defaults: { unit: unit, custom: { filterable: true } }, overrides: [] },
    options: { showHeader: true, footer: { show: false, reducer: ['sum'], fields: '' } },
    transformations: [{
      id: 'organize',
      options: {
        excludeByName: { Time: true, __name__: true, job: true },
        renameByName: { Value: 'Sockets' },
      },
    }],
  },

  bars(title, description, expr, legend, unit='short'):: {
    type: 'bargauge',
    title: title,
    description: description,
    datasource: ds,
    targets: [target(expr, legend=legend, instant=true)],
    fieldConfig: { defaults: { unit: unit, min: 0 }, overrides: [] },
    options: {
      orientation: 'horizontal',
      displayMode: 'gradient',
      showUnfilled: true,
      reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
    },
  },

  // Layout items: a row header, or a panel w columns wide and h high.
  row(title):: { kind: 'row', title: title },
  panel(p, w, h):: { kind: 'panel', panel: p, w: w, h: h },

  // Places the items left to right, wrapping at Grafana's 24 columns; a row
  // header starts a new line. Panel ids count up from 1 in that order.
  layout(items)::
    local newline(s) = if s.x != 0 then s { y: s.y + s.rowH, x: 0, rowH: 0 } else s;
    local step(s, it) =
      if it.kind == 'row' then
        local n = newline(s);
        n {
          panels: n.panels + [{
            type: 'row',
            title: it.title,
            id: n.nextId,
            collapsed: false,
            gridPos: { h: 1, w: 24, x: 0, y: n.y },
            panels: [],
          }],
          nextId: n.nextId + 1,
          y: n.y + 1,
        }
      else
        local n = if s.x + it.w > 24 then newline(s) else s;
        n {
          panels: n.panels + [it.panel { id: n.nextId, gridPos: { h: it.h, w: it.w, x: n.x, y: n.y } }],
          nextId: n.nextId + 1,
          x: n.x + it.w,
          rowH: std.max(n.rowH, it.h),
        };
    std.foldl(step, items, { x: 0, y: 0, rowH: 0, nextId: 1, panels: [] }).panels,

  // The template variables both dashboards share: data source, job, host,
  // interface, state, network namespace. The multi-host dashboard starts with every
  // host selected.
  variables(multiHost)::
    local queryVar(name, label, query, multi, includeAll, allValue=null, current=null) = {
      type: 'query',
      name: name,
      label: label,
      datasource: ds,
      definition: query,
      query: { query: query, refId: name + '-var' },
      refresh: 2,  // on time range change: hosts come and go
      sort: 1,
      multi: multi,
      includeAll: includeAll,
      hide: 0,
      regex: '',
    } + (if allValue != null then { allValue: allValue } else {})
      + (if current != null then { current: current } else {});
    local allSelected = { text: ['All'], value: ['$__all'] };
    [
      {
        type: 'datasource',
        name: 'datasource',
        label: 'Data source',
        query: 'prometheus',
        refresh: 1,
        hide: 0,
        current: { text: 'default', value: 'default' },
      },
      // From a bounded family and from up: neither needs the exporter's own metrics
      // (--web.disable-exporter-metrics) nor the per-connection series.
      queryVar('job', 'Job', 'label_values(network_connection_states, job)', false, false,
               current={ text: 'conn-exporter', value: 'conn-exporter' }),
      queryVar('instance', 'Host', 'label_values(up{job="$job"}, instance)', true, true,
               current=if multiHost then allSelected else null),
      queryVar('interface', 'Interface', 'label_values(network_connection_states{' + host + '}, interface)',
               true, true, '.*', current=allSelected),
      queryVar('state', 'State', 'label_values(network_connection_states{' + host + '}, state)',
               true, true, '.*', current=allSelected),
      // Values only with --collector.namespaces=all; All (.*) matches the empty label too.
      queryVar('netns', 'Network namespace', 'label_values(network_connection_states{' + host + '}, netns)',
               true, true, '.*', current=allSelected),
    ],

  dashboard(multiHost, items)::
    local kind = if multiHost then 'multi-host' else 'single-host';
    {
      title: 'conn-exporter: ' + (if multiHost then 'all hosts' else 'host detail'),
      uid: 'conn-exporter-' + kind,
      description: if multiHost then 'TCP connections across hosts scraped from conn-exporter'
      else 'TCP connections of one host, scraped from conn-exporter',
      tags: ['conn-exporter', 'network', kind],
      editable: true,
      graphTooltip: 1,
      schemaVersion: 39,
      version: 1,
      refresh: '30s',
      time: { from: 'now-1h', to: 'now' },
      timezone: 'browser',
      templating: { list: $.variables(multiHost) },
      annotations: {
        list: [{
          builtIn: 1,
          datasource: { type: 'grafana', uid: '-- Grafana --' },
          enable: true,
          hide: true,
          iconColor: 'rgba(0, 211, 255, 1)',
          name: 'Annotations & Alerts',
          type: 'dashboard',
        }],
      },
      links: [],
      panels: $.layout(items),
    },
}

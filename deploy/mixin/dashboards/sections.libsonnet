// The dashboards' sections (a row header and its panels), each a function of
// whether the dashboard shows many hosts. Add a panel here and both dashboards
// get it; a section for one dashboard only goes in that dashboard's file.
local g = import 'lib.libsonnet';
local host = g.host;
local iface = g.iface;
local all = g.all;

// Wildcard peers (unconnected sockets): IPv4, IPv6 and IPv4-mapped IPv6, the form
// a dual-stack socket reports for an IPv4 peer (::ffff:a.b.c.d).
local wildcardPeer = @'0\\.0\\.0\\.0|::|::ffff:0\\.0\\.0\\.0';

{
  overview(multiHost):: [
    g.row('Overview'),
    g.panel(g.stat('TCP sockets', 'All TCP sockets of the selected hosts, interfaces and states ' +
                                  '(exact totals from network_connection_states, never truncated).',
                   'sum(network_connection_states{' + all + '})'), 4, 4),
    g.panel(g.stat('Established', 'Sockets in ESTABLISHED state.',
                   'sum(network_connection_states{' + iface + ',state="ESTABLISHED"})'), 4, 4),
    g.panel(g.stat('Listening', 'Listening sockets (LISTEN state).',
                   'sum(network_connection_states{' + iface + ',state="LISTEN"})'), 4, 4),
    g.panel(g.stat('TIME_WAIT', 'Sockets in TIME_WAIT: closed locally, waiting out late packets. ' +
                                'Many of them mean short-lived connections.',
                   'sum(network_connection_states{' + iface + ',state="TIME_WAIT"}) or vector(0)'), 4, 4),
    g.panel(g.stat('CLOSE_WAIT', 'Sockets in CLOSE_WAIT: the peer closed, the local application has ' +
                                 'not. A growing number is a socket leak.',
                   'sum(network_connection_states{' + iface + ',state="CLOSE_WAIT"}) or vector(0)',
                   thresholds={ mode: 'absolute', steps: [
                     { color: 'green', value: null },
                     { color: 'orange', value: 100 },
                     { color: 'red', value: 200 },
                   ] }), 4, 4),
    if multiHost then
      g.panel(g.stat('Hosts up', 'Hosts whose exporter answered the last scrape, out of those selected.',
                     'sum(up{' + host + '})', unit='none'), 4, 4)
    else
      g.panel(g.stat('Exporter', 'Whether Prometheus could scrape the exporter (up).',
                     'min(up{' + host + '})', unit='none', mappings=g.upMappings,
                     thresholds={ mode: 'absolute', steps: [
                       { color: 'red', value: null },
                       { color: 'green', value: 1 },
                     ] }), 4, 4),
  ],

  trends(multiHost):: [
    g.row('Connections over time'),
    g.panel(g.timeseries('Sockets by state', 'TCP sockets per state (exact totals).',
                         [g.target('sum by (state) (network_connection_states{' + all + '})', '{{state}}')],
                         stack=true), 12, 8),
    g.panel(g.timeseries('Sockets by interface', 'TCP sockets per interface holding the local address ' +
                                                 '(any = wildcard bind, lo = loopback).',
                         [g.target('sum by (interface) (network_connection_states{' + all + '})', '{{interface}}')]), 12, 8),
  ] + (if multiHost then [
         g.panel(g.timeseries('Sockets by host', 'TCP sockets per host (exact totals).',
                              [g.target('sum by (instance) (network_connection_states{' + all + '})', '{{instance}}')]), 12, 8),
         g.panel(g.timeseries('Established by host', 'ESTABLISHED sockets per host.',
                              [g.target('sum by (instance) (network_connection_states{' + iface + ',state="ESTABLISHED"})',
                                        '{{instance}}')]), 12, 8),
       ] else []) + [
    g.panel(g.timeseries('Connection churn', 'How fast the number of sockets per state changes ' +
                                             '(per-second slope over $__rate_interval); spikes show bursts of ' +
                                             'connections opening or closing.',
                         [g.target('sum by (' + (if multiHost then 'instance, ' else '') + 'state) ' +
                                   '(deriv(network_connection_states{' + all + '}[$__rate_interval]))',
                                   if multiHost then '{{instance}} {{state}}' else '{{state}}')],
                         unit='cps'), 24, 8),
  ],

  detail(multiHost)::
    local by = if multiHost then 'instance, ' else '';
    [
      g.row('Who talks to whom'),
      g.panel(g.bars('Top destination ports', 'The 10 remote ports with most connections ' +
                                              '(listening sockets left out). From the per-connection series, which the ' +
                                              'cardinality guard may truncate on busy hosts.',
                     'topk(10, sum by (destination_port) (network_connections_info{' + all + ',state!="LISTEN"}))',
                     'port {{destination_port}}'), 8, 9),
      g.panel(g.bars('Top local ports', 'The 10 local ports with most sockets (services receiving connections).',
                     'topk(10, sum by (source_port) (network_connections_info{' + all + '}))',
                     'port {{source_port}}'), 8, 9),
      g.panel(g.bars('Top remote addresses', 'The 10 remote addresses with most connections ' +
                                             '(wildcard peers of listening sockets left out).',
                     'topk(10, sum by (destination_address) (network_connections_info{' + all + ',' +
                     'state!="LISTEN",destination_address!~"' + wildcardPeer + '"}))',
                     '{{destination_address}}'), 8, 9),
      g.panel(g.table('Listening sockets', 'Every listening socket: address, port and interface.',
                      'sum by (' + by + 'source_address, source_port, interface) ' +
                      '(network_connections_info{' + iface + ',state="LISTEN"})'), 12, 9),
      if multiHost then
        g.panel(g.table('Hosts', 'One row per host: its sockets (exact total).',
                        'sum by (instance) (network_connection_states{' + all + '})'), 12, 9)
      else
        g.panel(g.table('Sockets per state and family', 'Exact counts per address family, interface and state.',
                        'sum by (family, interface, state) (network_connection_states{' + all + '})'), 12, 9),
      g.panel(g.table('Connections', 'Every connection of the selected hosts (per-connection series; ' +
                                     "see 'Dropped series' for truncation).",
                      'network_connections_info{' + all + '}'), 24, 12),
    ],

  health(multiHost)::
    local inst = if multiHost then 'instance, ' else '';
    [
      g.row('Exporter health'),
      g.panel(g.stat('Dropped series', 'Per-connection series left out by the cardinality guard ' +
                                       '(--collector.connections.max-series). Totals stay exact.',
                     'sum(conn_exporter_connections_dropped_series{' + host + '})',
                     thresholds=g.redAbove0), 6, 6),
      g.panel(g.stat('Failing collectors', 'Collectors whose last run failed (0 is healthy).',
                     'count(conn_exporter_scrape_collector_success{' + host + '} == 0) or vector(0)',
                     unit='none', thresholds=g.redAbove0), 6, 6),
      g.panel(g.stat('Parse errors', 'Lines of /proc/net/* the exporter could not parse, ' +
                                     'per second over $__rate_interval.',
                     'sum(rate(conn_exporter_parse_errors_total{' + host + '}[$__rate_interval])) or vector(0)',
                     unit='cps', thresholds=g.redAbove0), 6, 6),
      g.panel(g.stat('Exporter version', 'Version of the exporter (build info).',
                     'count by (version) (conn_exporter_build_info{' + host + '})', unit='none') {
        options+: { textMode: 'name' },
        targets: [super.targets[0] { legendFormat: '{{version}}' }],
      }, 6, 6),
      g.panel(g.timeseries('Collector duration', 'Time each collector took in the last scrape.',
                           [g.target('max by (' + inst + 'collector) ' +
                                     '(conn_exporter_scrape_collector_duration_seconds{' + host + '})',
                                     if multiHost then '{{instance}} {{collector}}' else '{{collector}}')],
                           unit='s'), 8, 8),
      g.panel(g.timeseries('Scrape', 'Whole scrape duration as Prometheus measured it, and samples per scrape.',
                           [
                             g.target('scrape_duration_seconds{' + host + '}', '{{instance}} duration'),
                             g.target('scrape_samples_scraped{' + host + '}', '{{instance}} samples', ref='B'),
                           ],
                           unit='s') + g.rightAxis('short'), 8, 8),
      g.panel(g.timeseries('Exporter resources', 'CPU (share of one core, rate over $__rate_interval) ' +
                                                 'and resident memory of the exporter process.',
                           [
                             g.target('rate(process_cpu_seconds_total{' + host + '}[$__rate_interval])', '{{instance}} cpu'),
                             g.target('process_resident_memory_bytes{' + host + '}', '{{instance}} memory', ref='B'),
                           ],
                           unit='percentunit') + g.rightAxis('bytes'), 8, 8),
    ],
}

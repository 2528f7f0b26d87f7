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

  // Who talks to whom, from the bounded families: peers (ephemeral port folded away)
  // and the listeners' own series. The per-connection view is the drill-down row.
  detail(multiHost)::
    local by = if multiHost then 'instance, ' else '';
    [
      g.row('Who talks to whom'),
      g.panel(g.bars('Top destination ports', 'The 10 remote ports this host has most outbound ' +
                                              'connections to (network_connection_peers: exact, bounded; ' +
                                              'listening sockets are not peers).',
                     'topk(10, sum by (destination_port) (network_connection_peers{' + all + ',direction="outbound"}))',
                     'port {{destination_port}}'), 8, 9),
      g.panel(g.bars('Top client addresses (inbound)', 'The 10 remote addresses with most connections to ' +
                                                       "this host's services (network_connection_peers, " +
                                                       'inbound).',
                     'topk(10, sum by (destination_address) (network_connection_peers{' + all + ',direction="inbound"}))',
                     '{{destination_address}}'), 8, 9),
      g.panel(g.bars('Top remote addresses', 'The 10 remote addresses with most connections, both ' +
                                             'directions (network_connection_peers).',
                     'topk(10, sum by (destination_address) (network_connection_peers{' + all + '}))',
                     '{{destination_address}}'), 8, 9),
      g.panel(g.table('Listening sockets', 'Every listening endpoint: address, port and interface, and how ' +
                                           'many sockets listen there (network_listen_queue_length: one ' +
                                           'series per endpoint, SO_REUSEPORT listeners summed).',
                      'count by (' + by + 'source_address, source_port, interface) ' +
                      '(network_listen_queue_length{' + iface + '})'), 12, 9),
      if multiHost then
        g.panel(g.table('Hosts', 'One row per host: its sockets (exact total).',
                        'sum by (instance) (network_connection_states{' + all + '})'), 12, 9)
      else
        g.panel(g.table('Sockets per state and family', 'Exact counts per address family, interface and state.',
                        'sum by (family, interface, state) (network_connection_states{' + all + '})'), 12, 9),
    ],

  // The per-connection series (network_connections_info): one series per socket, the
  // specification's metric. They come from the single-host configuration's one job, or
  // from the fleet configuration's opt-in job "conn-exporter-connections"; without
  // either this row is empty, and every other row still works.
  drillDown(multiHost)::
    local drill = ' Drill-down: per-connection series (network_connections_info), scraped by the ' +
                  'single-host configuration or by the fleet configuration\'s opt-in ' +
                  'conn-exporter-connections job; empty when neither scrapes them.';
    [
      g.row('Drill-down: per-connection series (network_connections_info)'),
      g.panel(g.bars('Top destination ports (per connection)', 'The 10 remote ports with most sockets, ' +
                                                               'inbound clients\' ephemeral ports included.' + drill,
                     'topk(10, sum by (destination_port) (network_connections_info{' + g.drillAll + ',state!="LISTEN"}))',
                     'port {{destination_port}}'), 8, 9),
      g.panel(g.bars('Top local ports (per connection)', 'The 10 local ports with most sockets.' + drill,
                     'topk(10, sum by (source_port) (network_connections_info{' + g.drillAll + '}))',
                     'port {{source_port}}'), 8, 9),
      g.panel(g.bars('Top remote addresses (per connection)', 'The 10 remote addresses with most sockets ' +
                                                              '(wildcard peers of listening sockets left out).' + drill,
                     'topk(10, sum by (destination_address) (network_connections_info{' + g.drillAll + ',' +
                     'state!="LISTEN",destination_address!~"' + wildcardPeer + '"}))',
                     '{{destination_address}}'), 8, 9),
      g.panel(g.table('Connections', 'Every connection of the selected hosts, one row per socket.' + drill +
                                     " See 'Dropped series' for truncation.",
                      'network_connections_info{' + g.drillAll + '}'), 18, 12),
      g.panel(g.stat('Dropped series', 'Per-connection series left out by the cardinality guard ' +
                                       '(--collector.connections.max-series). Totals and every other row ' +
                                       'stay exact.' + drill,
                     'sum(conn_exporter_connections_dropped_series{' + g.drillHost + '})',
                     thresholds=g.redAbove0), 6, 12),
    ],

  // network_connection_peers and the listen queues: bounded families, exact totals,
  // the ephemeral port folded away (see docs/promql-queries.md).
  peers(multiHost)::
    local by = if multiHost then 'instance, ' else '';
    local who = if multiHost then '{{instance}} ' else '';
    [
      g.row('Services and dependencies'),
      g.panel(g.bars('Top services (inbound)', 'The 10 local service ports with most inbound ' +
                                               'connections (network_connection_peers: exact, bounded, ' +
                                               'never truncated).',
                     'topk(10, sum by (' + by + 'source_port) (network_connection_peers{' + all + ',direction="inbound"}))',
                     who + 'port {{source_port}}'), 8, 9),
      g.panel(g.bars('Top dependencies (outbound)', 'The 10 remote services (address and port) this ' +
                                                    'host has most connections to.',
                     'topk(10, sum by (' + by + 'destination_address, destination_port) ' +
                     '(network_connection_peers{' + all + ',direction="outbound"}))',
                     who + '{{destination_address}}:{{destination_port}}'), 8, 9),
      g.panel(g.bars('Top remote addresses (peers)', 'The 10 remote addresses with most connections, ' +
                                                     'both directions; "other" collects the remotes merged ' +
                                                     'by --collector.peers.max-series.',
                     'topk(10, sum by (' + by + 'destination_address) (network_connection_peers{' + all + '}))',
                     who + '{{destination_address}}'), 8, 9),
      g.panel(g.timeseries('Listen queues', 'Connections waiting to be accepted per listener (left axis) ' +
                                            'and the same as a share of its backlog limit (right axis; ' +
                                            'the limit needs the netlink source). At 100% the kernel ' +
                                            'drops new connections.',
                           [
                             g.target('sum by (' + by + 'source_address, source_port) ' +
                                      '(network_listen_queue_length{' + iface + '})',
                                      who + '{{source_address}}:{{source_port}} queued'),
                             g.target('max by (' + by + 'source_address, source_port) ' +
                                      '(network_listen_queue_length{' + iface + '} / network_listen_queue_limit{' + iface + '})',
                                      who + '{{source_address}}:{{source_port}} of limit', ref='B'),
                           ]) + g.rightAxis('percentunit'), 16, 8),
      g.panel(g.stat('Merged peer series', 'Peer label sets merged into destination_address="other" by ' +
                                           '--collector.peers.max-series (counts are kept, only the ' +
                                           'remote address is lost).',
                     'sum(conn_exporter_peers_merged_series{' + host + '})', thresholds=g.redAbove0), 8, 8),
    ],

  // The lifecycle collector's counters: every connection that ended, even between
  // two scrapes, from the eBPF source or the kernel's socket-destroy notifications.
  lifecycle(multiHost)::
    local by = if multiHost then 'instance, ' else '';
    local who = if multiHost then '{{instance}} ' else '';
    local rate(metric, sel) = 'rate(' + metric + '{' + sel + '}[$__rate_interval])';
    [
      g.row('Connection lifecycle'),
      g.panel(g.timeseries('Connections per second by service (inbound)',
                           'Inbound connections that ended, per second, by local service port ' +
                           '(network_connections_closed_total: also those that lived between two scrapes).',
                           [g.target('sum by (' + by + 'source_port) (' +
                                     rate('network_connections_closed_total', iface + ',direction="inbound"') + ')',
                                     who + 'port {{source_port}}')],
                           unit='cps'), 12, 8),
      g.panel(g.timeseries('Connections per second by remote service (outbound)',
                           'Outbound connections that ended, per second, by remote address and port.',
                           [g.target('topk(10, sum by (' + by + 'destination_address, destination_port) (' +
                                     rate('network_connections_closed_total', iface + ',direction="outbound"') + '))',
                                     who + '{{destination_address}}:{{destination_port}}')],
                           unit='cps'), 12, 8),
      g.panel(g.timeseries('Failed connects per second by remote address',
                           'Outbound connects that never reached ESTABLISHED (refused, timed out, reset in ' +
                           'the handshake), per second, by remote address (a failed connect has a port with ' +
                           'the eBPF lifecycle source only).',
                           [g.target('sum by (' + by + 'destination_address) (' +
                                     rate('network_connections_failed_total', iface) + ')',
                                     who + '{{destination_address}}')],
                           unit='cps'), 12, 8),
      g.panel(g.timeseries('Failed connect ratio by remote address',
                           'Failed connects as a share of all connects that ended (failed + closed ' +
                           'outbound), per remote address: what the ConnectFailures alert watches.',
                           [g.target('sum by (' + by + 'destination_address) (' +
                                     rate('network_connections_failed_total', iface) + ') / (sum by (' + by +
                                     'destination_address) (' + rate('network_connections_failed_total', iface) +
                                     ') + (sum by (' + by + 'destination_address) (' +
                                     rate('network_connections_closed_total', iface + ',direction="outbound"') +
                                     ') or sum by (' + by + 'destination_address) (' +
                                     rate('network_connections_failed_total', iface) + ') * 0))',
                                     who + '{{destination_address}}')],
                           unit='percentunit'), 12, 8),
      g.panel(g.timeseries('Bytes per second by remote address',
                           'Payload bytes of the connections that ended, sent (positive) and received ' +
                           '(negative), top 10 remote addresses; counted when a connection closes.',
                           [
                             g.target('topk(10, sum by (' + by + 'destination_address) (' +
                                      rate('network_connection_sent_bytes_total', iface) + '))',
                                      who + '{{destination_address}} sent'),
                             g.target('-topk(10, sum by (' + by + 'destination_address) (' +
                                      rate('network_connection_received_bytes_total', iface) + '))',
                                      who + '{{destination_address}} received', ref='B'),
                           ],
                           unit='Bps'), 12, 8),
      g.panel(g.timeseries('Retransmits per second by remote address',
                           'TCP segments retransmitted on the connections that ended, per second, top 10 ' +
                           'remote addresses.',
                           [g.target('topk(10, sum by (' + by + 'destination_address) (' +
                                     rate('network_connection_retransmits_total', iface) + '))',
                                     who + '{{destination_address}}')],
                           unit='cps'), 8, 8),
      g.panel(g.stat('Lost destroy events', 'Kernel notifications the exporter could not read in time ' +
                                            '(receive buffer overrun), over $__rate_interval. Above 0, the ' +
                                            'lifecycle counters are lower bounds.',
                     'sum(increase(conn_exporter_lifecycle_overruns_total{' + host + '}[$__rate_interval])) or vector(0)',
                     thresholds=g.redAbove0), 4, 8),
    ],

  // NAT resolved through conntrack (--collector.nat, issue 21): the backend a Service
  // address was rewritten to (outbound), the client's address before SNAT (inbound).
  // Empty without the flag: series without a translation carry neither label.
  nat(multiHost)::
    local by = if multiHost then 'instance, ' else '';
    local who = if multiHost then '{{instance}} ' else '';
    local rate(metric, sel) = 'rate(' + metric + '{' + sel + '}[$__rate_interval])';
    local backends = iface + ',direction="outbound",destination_backend_address!=""';
    local service = 'destination_address, destination_port, destination_backend_address, destination_backend_port';
    local serviceLegend = '{{destination_address}}:{{destination_port}} → ' +
                          '{{destination_backend_address}}:{{destination_backend_port}}';
    [
      g.row('Services behind NAT'),
      g.panel(g.timeseries('Backends of a Service',
                           'Outbound connections to a translated address (a Kubernetes Service, a published ' +
                           'port) by the backend conntrack rewrote it to: closed and failed per second ' +
                           '(network_connections_closed_total, network_connections_failed_total, ' +
                           'destination_backend_address and destination_backend_port), the 20 busiest of ' +
                           'each. One backend failing while its siblings close normally is a bad pod, not a ' +
                           'bad Service. Needs --collector.nat; empty under Cilium\'s kube-proxy replacement ' +
                           '(see docs/nat.md).',
                           [
                             g.target('topk(20, sum by (' + by + service + ') (' +
                                      rate('network_connections_closed_total', backends) + '))',
                                      who + serviceLegend + ' closed'),
                             g.target('topk(20, sum by (' + by + service + ') (' +
                                      rate('network_connections_failed_total', backends) + '))',
                                      who + serviceLegend + ' failed', ref='B'),
                           ],
                           unit='cps'), 16, 9),
      g.panel(g.stat('Translations not kept', 'Translated conntrack entries the exporter did not keep, over ' +
                                              '$__rate_interval, because --collector.nat.max-entries was ' +
                                              'reached (conn_exporter_nat_entries_dropped_total): their ' +
                                              'connections are counted without the NAT labels.',
                     'sum(increase(conn_exporter_nat_entries_dropped_total{' + host + '}[$__rate_interval])) or vector(0)',
                     thresholds=g.redAbove0), 4, 9),
      g.panel(g.stat('Cilium load balancer', "Hosts where Cilium's load-balancer maps are pinned " +
                                             '(conn_exporter_nat_cilium_detected): its kube-proxy ' +
                                             'replacement translates Services in BPF, not conntrack, so ' +
                                             'their backends are not resolved there.',
                     'sum(conn_exporter_nat_cilium_detected{' + host + '}) or vector(0)',
                     unit='none', thresholds={ mode: 'absolute', steps: [
                       { color: 'green', value: null },
                       { color: 'orange', value: 1 },
                     ] }), 4, 9),
      g.panel(g.table('Clients before SNAT (inbound)',
                      'Inbound connections whose source conntrack rewrote (masquerade, SNAT: a NodePort, ' +
                      'a load balancer): the local service (source_address, source_port), the client as ' +
                      'the socket sees it (destination_address) and its address before the translation ' +
                      '(destination_original_address), with the sockets now (network_connection_peers); the 50 ' +
                      'largest. Needs --collector.nat.',
                      'topk(50, sum by (' + by + 'source_address, source_port, destination_address, ' +
                      'destination_original_address) (network_connection_peers{' + all +
                      ',direction="inbound",destination_original_address!=""}))'), 12, 9),
      g.panel(g.timeseries('Connections per second by original client (inbound)',
                           'Inbound connections that ended, per second, by local service port and the ' +
                           "client's address before SNAT (network_connections_closed_total, " +
                           'destination_original_address); the 10 busiest. Needs --collector.nat.',
                           [g.target('topk(10, sum by (' + by + 'source_port, destination_original_address) (' +
                                     rate('network_connections_closed_total',
                                          iface + ',direction="inbound",destination_original_address!=""') + '))',
                                     who + 'port {{source_port}} ← {{destination_original_address}}')],
                           unit='cps'), 12, 9),
    ],

  // The quality collector's families (issue 19): TCP's own RTT as a histogram per
  // peer, retransmits and lost segments, time stalled by the receiver's window or the
  // send buffer, and the current backlog. See docs/promql-queries.md, "Connection quality".
  quality(multiHost)::
    local by = if multiHost then 'instance, ' else '';
    local who = if multiHost then '{{instance}} ' else '';
    local rate(metric, sel) = 'rate(' + metric + '{' + sel + '}[$__rate_interval])';
    // One query for both kinds of histogram: the classic buckets (text scrapes) or the
    // native series (a Prometheus with native histograms); the other side is empty.
    local quantile(q, sel, peer) =
      'topk(10, histogram_quantile(' + q + ', sum by (le, ' + by + peer + ') (' +
      rate('network_connection_rtt_seconds_bucket', sel) + ')) or histogram_quantile(' + q + ', sum by (' + by + peer +
      ') (' + rate('network_connection_rtt_seconds', sel) + ')))';
    // The mean, which the fleet configuration keeps when it drops the classic buckets.
    local mean(sel, peer) =
      'topk(10, sum by (' + by + peer + ') (' + rate('network_connection_rtt_seconds_sum', sel) + ') / sum by (' + by +
      peer + ') (' + rate('network_connection_rtt_seconds_count', sel) + ') or histogram_sum(sum by (' + by + peer +
      ') (' + rate('network_connection_rtt_seconds', sel) + ')) / histogram_count(sum by (' + by + peer + ') (' +
      rate('network_connection_rtt_seconds', sel) + ')))';
    local outbound = iface + ',direction="outbound"';
    local inbound = iface + ',direction="inbound"';
    [
      g.row('Connection quality'),
      g.panel(g.timeseries('RTT p50 and p99 by remote service (outbound)',
                           "TCP's smoothed RTT to each remote address and port (network_connection_rtt_seconds: " +
                           'one observation per connection at its close, and one per open connection every ' +
                           '--collector.quality.interval), 50th and 99th percentile over $__rate_interval, ' +
                           'the 10 highest of each, from the classic buckets or the native histogram, and the ' +
                           'mean (the fleet configuration keeps only _sum and _count of a text scrape).',
                           [
                             g.target(quantile('0.5', outbound, 'destination_address, destination_port'),
                                      who + '{{destination_address}}:{{destination_port}} p50'),
                             g.target(quantile('0.99', outbound, 'destination_address, destination_port'),
                                      who + '{{destination_address}}:{{destination_port}} p99', ref='B'),
                             g.target(mean(outbound, 'destination_address, destination_port'),
                                      who + '{{destination_address}}:{{destination_port}} mean', ref='C'),
                           ],
                           unit='s'), 12, 8),
      g.panel(g.timeseries('RTT p50 and p99 by service (inbound)',
                           "TCP's smoothed RTT to the clients of each local service (address and port), " +
                           '50th and 99th percentile over $__rate_interval, the 10 highest of each.',
                           [
                             g.target(quantile('0.5', inbound, 'source_address, source_port'),
                                      who + '{{source_address}}:{{source_port}} p50'),
                             g.target(quantile('0.99', inbound, 'source_address, source_port'),
                                      who + '{{source_address}}:{{source_port}} p99', ref='B'),
                             g.target(mean(inbound, 'source_address, source_port'),
                                      who + '{{source_address}}:{{source_port}} mean', ref='C'),
                           ],
                           unit='s'), 12, 8),
      g.panel(g.timeseries('Retransmit ratio by remote address',
                           'Share of the data segments sent that were retransmissions, per remote address, ' +
                           'both directions: network_connection_retransmits_total over ' +
                           'network_connection_sent_segments_total, open connections included. What the ' +
                           'PeerRetransmitRatioHigh alert watches; the 10 highest.',
                           [g.target('topk(10, sum by (' + by + 'destination_address) (' +
                                     rate('network_connection_retransmits_total', iface) + ') / (sum by (' + by +
                                     'destination_address) (' + rate('network_connection_sent_segments_total', iface) +
                                     ') > 0))',
                                     who + '{{destination_address}}')],
                           unit='percentunit'), 8, 8),
      g.panel(g.timeseries('Lost segments per second by remote address',
                           'Retransmitted segments that the peer did not report as duplicates (DSACK): ' +
                           'network_connection_lost_segments_total, open connections included; the 10 highest.',
                           [g.target('topk(10, sum by (' + by + 'destination_address) (' +
                                     rate('network_connection_lost_segments_total', iface) + '))',
                                     who + '{{destination_address}}')],
                           unit='cps'), 8, 8),
      g.panel(g.timeseries('Stalled time by remote address',
                           'Share of time the connections to each remote address could not send because the ' +
                           "peer's receive window was full (receiver slow: rwnd) or the local send buffer was " +
                           'full (sndbuf), summed over connections (2 = two connections stalled all the time); ' +
                           'the 10 highest of each.',
                           [
                             g.target('topk(10, sum by (' + by + 'destination_address) (' +
                                      rate('network_connection_receive_window_limited_seconds_total', iface) + '))',
                                      who + '{{destination_address}} rwnd'),
                             g.target('topk(10, sum by (' + by + 'destination_address) (' +
                                      rate('network_connection_send_buffer_limited_seconds_total', iface) + '))',
                                      who + '{{destination_address}} sndbuf', ref='B'),
                           ],
                           unit='percentunit'), 8, 8),
      g.panel(g.timeseries('Backlog by remote address',
                           'Bytes queued now on the connections to each remote address: the send queue ' +
                           '(sent or unsent, not yet acknowledged), the receive queue (arrived, not yet read by ' +
                           'the application) and the unsent part of the send queue; the 10 largest of each.',
                           [
                             g.target('topk(10, sum by (' + by + 'destination_address) (network_connection_queued_bytes{' +
                                      iface + ',queue="send"}))', who + '{{destination_address}} send queue'),
                             g.target('topk(10, sum by (' + by + 'destination_address) (network_connection_queued_bytes{' +
                                      iface + ',queue="receive"}))', who + '{{destination_address}} receive queue', ref='B'),
                             g.target('topk(10, sum by (' + by + 'destination_address) (network_connection_unsent_bytes{' +
                                      iface + '}))', who + '{{destination_address}} unsent', ref='C'),
                           ],
                           unit='bytes'), 24, 8),
    ],

  // Needs --collector.namespaces=all (netns, container_id, pod_uid) and, for the
  // process panels, --collector.connections.owner (process, systemd_unit).
  namespaces(multiHost)::
    local by = if multiHost then 'instance, ' else '';
    local who = if multiHost then '{{instance}} ' else '';
    local ns = iface + ',netns=~"$netns"';
    [
      g.row('Namespaces, containers, pods and processes'),
      g.panel(g.timeseries('Sockets by network namespace',
                           'TCP sockets per network namespace (exact totals; --collector.namespaces=all): ' +
                           'host, an ip netns name, a container (nspawn machine name or the first 12 ' +
                           'digits of its id) or netns-<inode>.',
                           [g.target('sum by (' + by + 'netns) (network_connection_states{' + ns + ',state=~"$state"})',
                                     who + '{{netns}}')],
                           stack=true), 12, 8),
      g.panel(g.table('Established by namespace, container and pod',
                      'ESTABLISHED sockets per network namespace with the container and Kubernetes pod ' +
                      'UID its processes run in (empty outside containers).',
                      'sum by (' + by + 'netns, container_id, pod_uid) (network_connection_states{' + ns +
                      ',state="ESTABLISHED"})'), 12, 8),
      g.panel(g.table('Sockets by Kubernetes pod',
                      'TCP sockets per pod: pod_uid joined with kube-state-metrics\' kube_pod_info ' +
                      '(its uid label) for the Kubernetes namespace and pod name. Empty without ' +
                      'kube-state-metrics or outside Kubernetes.',
                      'sum by (' + by + 'namespace, pod) (sum by (' + by + 'pod_uid) (network_connection_states{' +
                      ns + ',state=~"$state",pod_uid!=""}) * on (pod_uid) group_left (namespace, pod) ' +
                      'max by (pod_uid, namespace, pod) (label_replace(kube_pod_info, "pod_uid", "$1", "uid", "(.+)")))'),
              12, 8),
      g.panel(g.bars('Top processes by connections',
                     'The 10 processes (comm) holding most ESTABLISHED sockets, from network_connection_peers ' +
                     '(--collector.connections.owner).',
                     'topk(10, sum by (' + by + 'netns, process) (network_connection_peers{' + ns +
                     ',state="ESTABLISHED",process!=""}))',
                     who + '{{netns}} {{process}}'), 12, 8),
      g.panel(g.table('Peers by process',
                      'Remote addresses each process is connected to, and how many connections ' +
                      '(ESTABLISHED, network_connection_peers, --collector.connections.owner).',
                      'topk(50, sum by (' + by + 'netns, process, destination_address) (network_connection_peers{' +
                      ns + ',state="ESTABLISHED",process!=""}))'), 12, 8),
      g.panel(g.table('Listeners by process and unit',
                      'Listening endpoints with the process and systemd unit holding them, and how many ' +
                      'sockets listen there (network_listen_queue_length, --collector.connections.owner).',
                      'count by (' + by + 'netns, process, systemd_unit, source_address, source_port) ' +
                      '(network_listen_queue_length{' + ns + '})'), 12, 8),
    ],

  health(multiHost)::
    local inst = if multiHost then 'instance, ' else '';
    [
      g.row('Exporter health'),
      g.panel(g.stat('Failing collectors', 'Collectors whose last run failed (0 is healthy; 0 too with ' +
                                           '--web.disable-exporter-metrics, which leaves out the success metric).',
                     'count(conn_exporter_scrape_collector_success{' + host + '} == 0) or vector(0)',
                     unit='none', thresholds=g.redAbove0), 8, 6),
      g.panel(g.stat('Parse errors', 'Lines of /proc/net/* the exporter could not parse, ' +
                                     'per second over $__rate_interval.',
                     'sum(rate(conn_exporter_parse_errors_total{' + host + '}[$__rate_interval])) or vector(0)',
                     unit='cps', thresholds=g.redAbove0), 8, 6),
      g.panel(g.stat('Exporter version', 'Version of the exporter (build info). The exporter\'s own metrics: empty with --web.disable-exporter-metrics.',
                     'count by (version) (conn_exporter_build_info{' + host + '})', unit='none') {
        options+: { textMode: 'name' },
        targets: [super.targets[0] { legendFormat: '{{version}}' }],
      }, 8, 6),
      g.panel(g.timeseries('Collector duration', 'Time each collector took in the last scrape. The exporter\'s own metrics: empty with --web.disable-exporter-metrics.',
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
                                                 'and resident memory of the exporter process. The exporter\'s own metrics: empty with --web.disable-exporter-metrics.',
                           [
                             g.target('rate(process_cpu_seconds_total{' + host + '}[$__rate_interval])', '{{instance}} cpu'),
                             g.target('process_resident_memory_bytes{' + host + '}', '{{instance}} memory', ref='B'),
                           ],
                           unit='percentunit') + g.rightAxis('bytes'), 8, 8),
    ],
}

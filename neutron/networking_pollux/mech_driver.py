"""The Pollux ML2 mechanism driver: binds ports on hosts whose pollux-agent is alive
and writes each host's networks, subnets and ports into etcd after Neutron commits
them (postcommit), under the keys translate.py names.

A network and its subnets go to every host that has a served port on the network;
a host's last port leaving the network takes them away there. What this driver does
not see or cannot express yet (routers, floating IPs, security group rules, QoS) is
not written; what it writes carries every field Pollux enforces, so an unsupported
one is refused by polluxd and logged by the agent, never silently dropped.

Not yet: a journal (a postcommit write that fails while etcd is away is logged and
lost until the resource changes again), routers and floating IPs (an L3 service
plugin), security group callbacks, l2population.
"""

import json

from etcd3gw.client import Etcd3Client
from neutron_lib.api.definitions import portbindings
from neutron_lib import constants as n_const
from neutron_lib.plugins import directory
from neutron_lib.plugins.ml2 import api
from oslo_config import cfg
from oslo_log import log as logging

from networking_pollux import translate

LOG = logging.getLogger(__name__)

OPTS = [
    cfg.StrOpt('etcd_host', default='127.0.0.1', help='etcd host (gRPC gateway)'),
    cfg.PortOpt('etcd_port', default=2379, help='etcd client port'),
    cfg.StrOpt('etcd_api_path', default='/v3/',
               help="etcd's HTTP gateway path (/v3/ from etcd 3.4)"),
    cfg.StrOpt('prefix', default='/pollux', help='key prefix shared with the agents'),
]
cfg.CONF.register_opts(OPTS, 'ml2_pollux')

SUPPORTED_NETWORK_TYPES = ('local', 'flat', 'vlan')


class PolluxMechanismDriver(api.MechanismDriver):

    def initialize(self):
        conf = cfg.CONF.ml2_pollux
        self.prefix = conf.prefix
        self.etcd = Etcd3Client(host=conf.etcd_host, port=conf.etcd_port,
                                api_path=conf.etcd_api_path)
        LOG.info('Pollux mechanism driver: etcd %s:%s%s, prefix %s',
                 conf.etcd_host, conf.etcd_port, conf.etcd_api_path, self.prefix)

    # -- etcd ------------------------------------------------------------------

    def _put(self, host, collection, obj):
        key = translate.object_key(self.prefix, host, collection, obj['id'])
        self.etcd.put(key, json.dumps(obj, sort_keys=True))
        LOG.debug('pollux: put %s', key)

    def _delete(self, host, collection, obj_id):
        self.etcd.delete(translate.object_key(self.prefix, host, collection, obj_id))

    def _hosts_with(self, collection, obj_id):
        """Every host whose keys hold this object (for updates and deletes of
        networks and subnets)."""
        suffix = '/%s/%s' % (collection, obj_id)
        hosts = set()
        for _value, meta in self.etcd.get_prefix(self.prefix.rstrip('/') + '/hosts/'):
            key = meta['key']
            if isinstance(key, bytes):
                key = key.decode()
            if key.endswith(suffix):
                hosts.add(key[len(self.prefix.rstrip('/') + '/hosts/'):-len(suffix)])
        return hosts

    def _agent_alive(self, host):
        return bool(self.etcd.get(translate.agent_key(self.prefix, host)))

    # -- Neutron lookups -------------------------------------------------------

    @staticmethod
    def _plugin():
        return directory.get_plugin()

    def _network_object(self, plugin_context, network_id, segment=None):
        net = self._plugin().get_network(plugin_context, network_id)
        if segment is None:
            segment = {
                'network_type': net.get('provider:network_type'),
                'physical_network': net.get('provider:physical_network'),
                'segmentation_id': net.get('provider:segmentation_id'),
            }
        return translate.network(net, segment)

    def _served_ports(self, plugin_context, network_id, host):
        ports = self._plugin().get_ports(
            plugin_context, filters={'network_id': [network_id],
                                     portbindings.HOST_ID: [host]})
        return [p for p in ports
                if translate.port_is_served(p) and
                p.get(portbindings.VIF_TYPE) not in (
                    portbindings.VIF_TYPE_UNBOUND,
                    portbindings.VIF_TYPE_BINDING_FAILED)]

    # -- networks --------------------------------------------------------------

    def update_network_postcommit(self, context):
        segment = context.network_segments[0] if context.network_segments else None
        obj = translate.network(context.current, segment or {
            'network_type': context.current.get('provider:network_type')})
        for host in self._hosts_with('networks', obj['id']):
            self._put(host, 'networks', obj)

    def delete_network_postcommit(self, context):
        net_id = context.current['id']
        for host in self._hosts_with('networks', net_id):
            self._delete(host, 'networks', net_id)

    # -- subnets ---------------------------------------------------------------

    def create_subnet_postcommit(self, context):
        obj = translate.subnet(context.current)
        for host in self._hosts_with('networks', obj['network_id']):
            self._put(host, 'subnets', obj)

    update_subnet_postcommit = create_subnet_postcommit

    def delete_subnet_postcommit(self, context):
        sub_id = context.current['id']
        for host in self._hosts_with('subnets', sub_id):
            self._delete(host, 'subnets', sub_id)

    # -- ports -----------------------------------------------------------------

    def bind_port(self, context):
        host = context.host
        if not self._agent_alive(host):
            LOG.debug('pollux: no live agent on host %s, not binding port %s',
                      host, context.current['id'])
            return
        for segment in context.segments_to_bind:
            if segment[api.NETWORK_TYPE] not in SUPPORTED_NETWORK_TYPES:
                continue
            pollux_binding = translate.binding(context.current)
            if pollux_binding['driver'] == 'tap':
                vif_type = portbindings.VIF_TYPE_TAP
            else:
                vif_type = portbindings.VIF_TYPE_OTHER
            context.set_binding(segment[api.ID], vif_type,
                                {'pollux_binding': pollux_binding},
                                status=n_const.PORT_STATUS_ACTIVE)
            LOG.info('pollux: bound port %s on host %s (%s)',
                     context.current['id'], host, pollux_binding)
            return
        LOG.info('pollux: port %s: no segment of a type Pollux runs (%s)',
                 context.current['id'],
                 [s[api.NETWORK_TYPE] for s in context.segments_to_bind])

    def _write_port(self, context, port, segment):
        host = port[portbindings.HOST_ID]
        plugin_context = context._plugin_context
        # The network and its subnets first: polluxd validates a port against them.
        self._put(host, 'networks',
                  self._network_object(plugin_context, port['network_id'], segment))
        for sub in self._plugin().get_subnets(
                plugin_context, filters={'network_id': [port['network_id']]}):
            self._put(host, 'subnets', translate.subnet(sub))
        if port.get(portbindings.VNIC_TYPE, portbindings.VNIC_NORMAL) != \
                portbindings.VNIC_NORMAL:
            LOG.warning('pollux: port %s has vnic_type %s; Pollux serves normal '
                        'ports only', port['id'], port.get(portbindings.VNIC_TYPE))
        self._put(host, 'ports', translate.port(port))

    def _remove_port(self, context, port, host):
        self._delete(host, 'ports', port['id'])
        network_id = port['network_id']
        others = [p for p in self._served_ports(context._plugin_context,
                                                network_id, host)
                  if p['id'] != port['id']]
        if not others:
            for sub in self._plugin().get_subnets(
                    context._plugin_context, filters={'network_id': [network_id]}):
                self._delete(host, 'subnets', sub['id'])
            self._delete(host, 'networks', network_id)

    def _bound_here(self, port, vif_type):
        return translate.port_is_served(port) and vif_type in (
            portbindings.VIF_TYPE_TAP, portbindings.VIF_TYPE_OTHER)

    def create_port_postcommit(self, context):
        if self._bound_here(context.current, context.vif_type):
            self._write_port(context, context.current, context.bottom_bound_segment)

    def update_port_postcommit(self, context):
        port, original = context.current, context.original
        old_host = original.get(portbindings.HOST_ID) if original else None
        was_served = original is not None and self._bound_here(
            original, context.original_vif_type)
        now_served = self._bound_here(port, context.vif_type)
        if was_served and (not now_served or old_host != port[portbindings.HOST_ID]):
            self._remove_port(context, original, old_host)
        if now_served:
            self._write_port(context, port, context.bottom_bound_segment)

    def delete_port_postcommit(self, context):
        port = context.current
        host = port.get(portbindings.HOST_ID)
        if host:
            self._remove_port(context, port, host)

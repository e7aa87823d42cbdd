"""The Pollux ML2 mechanism driver: binds ports on hosts whose pollux-agent is alive
and writes each host's networks, subnets and ports into etcd after Neutron commits
them (postcommit), under the keys translate.py names.

A network and its subnets go to every host that has a served port on the network;
a host's last port leaving the network takes them away there. A host gets the security
groups of its ports that have port security, and for every group their rules name as a
remote group an address group of that group's members on every host (see translate);
Neutron's security group callbacks (a rule created or deleted, a group updated) and
every port change that moves a group's membership rewrite them where they are held: a
port's create adds its addresses to its groups' members with a compare-and-swap on each
key, other changes recompute the members from Neutron's database. A port's write
reads only what that port needs, so that binding many ports costs each port's share,
not the host's whole; what a port stops needing is removed by a whole recomputation of
its host's share.
Objects a port refers to are written before the port and removed after it, so that the
agent, which applies the keys in revision order, never applies a dangling reference.

A rule's Neutron address group (`remote_address_group_id`) goes with it, and again
when its addresses change. What this driver does not see or cannot express yet (QoS,
metering) is not written; what it writes carries every field Pollux
enforces, so an unsupported one is refused by polluxd and logged by the agent, never
silently dropped.

Not yet: a journal (a postcommit write that fails while etcd is away is logged and
lost until the resource changes again), l2population. Routers and floating IPs are the
L3 service plugin's (l3.py).
"""

import json

from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import events
from neutron_lib.callbacks import registry
from neutron_lib.callbacks import resources
from neutron_lib.plugins import directory
from neutron_lib.plugins.ml2 import api
from oslo_config import cfg
from oslo_log import log as logging

from networking_pollux import status
from networking_pollux import store
from networking_pollux import translate

LOG = logging.getLogger(__name__)

SUPPORTED_NETWORK_TYPES = ('local', 'flat', 'vlan')
#: The collections of a host's security, in the order a reference needs them written
#: (a group's rules name members' address groups).
SECURITY_COLLECTIONS = ('address_groups', 'security_groups')


class PolluxMechanismDriver(store.HostKeys, api.MechanismDriver):

    def initialize(self):
        conf = cfg.CONF.ml2_pollux
        self.connect()
        LOG.info('Pollux mechanism driver: etcd %s:%s%s, prefix %s',
                 conf.etcd_host, conf.etcd_port, conf.etcd_api_path, self.prefix)
        self._subscribe()

    def get_workers(self):
        return [status.PortStatusWorker(status.PortStatus(self.etcd, self.prefix))]

    def _subscribe(self):
        registry.subscribe(self._security_group_rule_changed,
                           resources.SECURITY_GROUP_RULE, events.AFTER_CREATE)
        registry.subscribe(self._security_group_rule_changed,
                           resources.SECURITY_GROUP_RULE, events.AFTER_DELETE)
        registry.subscribe(self._security_group_changed,
                           resources.SECURITY_GROUP, events.AFTER_UPDATE)
        registry.subscribe(self._security_group_changed,
                           resources.SECURITY_GROUP, events.AFTER_DELETE)
        registry.subscribe(self._address_group_changed,
                           resources.ADDRESS_GROUP, events.AFTER_UPDATE)

    # -- Neutron lookups -------------------------------------------------------

    @staticmethod
    def _plugin():
        return directory.get_plugin()

    def _host_ports(self, plugin_context, host):
        """The ports a host serves, on any network."""
        ports = self._plugin().get_ports(
            plugin_context, filters={portbindings.HOST_ID: [host]})
        return [p for p in ports if self._bound_here(p, p.get(portbindings.VIF_TYPE))]

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

    # -- security groups -------------------------------------------------------

    def _group_members(self, admin, sg_id):
        bindings = self._plugin()._get_port_security_group_bindings(
            admin, filters={'security_group_id': [sg_id]})
        port_ids = [b['port_id'] for b in bindings]
        ports = self._plugin().get_ports(admin, filters={'id': port_ids}) \
            if port_ids else []
        return translate.members_group(sg_id, ports)

    def _host_security(self, admin, host):
        """What a host's keys must hold for its ports' security: collection ->
        id -> object."""
        groups = {}
        for p in self._host_ports(admin, host):
            if p.get('port_security_enabled', True):
                groups.update((g, None) for g in p.get('security_groups') or [])
        wanted = {'security_groups': {}, 'address_groups': {}}
        for sg_id in groups:
            sg = self._plugin().get_security_group(admin, sg_id)
            wanted['security_groups'][sg_id] = translate.security_group(sg)
            for remote in translate.remote_group_ids(sg):
                ag = self._group_members(admin, remote)
                wanted['address_groups'][ag['id']] = ag
            for ag_id in translate.remote_address_group_ids(sg):
                wanted['address_groups'][ag_id] = translate.address_group(
                    self._plugin().get_address_group(admin, ag_id))
        return wanted

    def _port_security(self, admin, host, port):
        """What one port needs on its host: its groups and the address groups their
        rules name. A members' address group the host holds already is left out: the
        membership updates keep it current, and recomputing it is a read of every
        port in the group."""
        wanted = {'security_groups': {}, 'address_groups': {}}
        if not port.get('port_security_enabled', True):
            return wanted
        held = self._held(host, 'address_groups')
        for sg_id in port.get('security_groups') or []:
            sg = self._plugin().get_security_group(admin, sg_id)
            wanted['security_groups'][sg_id] = translate.security_group(sg)
            for remote in translate.remote_group_ids(sg):
                if translate.members_group_id(remote) not in held:
                    ag = self._group_members(admin, remote)
                    wanted['address_groups'][ag['id']] = ag
            for ag_id in translate.remote_address_group_ids(sg):
                wanted['address_groups'][ag_id] = translate.address_group(
                    self._plugin().get_address_group(admin, ag_id))
        return wanted

    def _put_security(self, host, wanted, held):
        for c in SECURITY_COLLECTIONS:
            for _id, obj in sorted(wanted[c].items()):
                self._put_changed(host, c, obj, held[c])

    def _sync_security(self, plugin_context, host, remove=True):
        """Writes what a host's ports need of security groups and address groups, in
        reference order; with `remove`, then deletes what none needs any more (after
        the port changes that stopped needing it)."""
        admin = plugin_context.elevated()
        with self._reading(admin):
            wanted = self._host_security(admin, host)
        held = {c: self._held(host, c) for c in SECURITY_COLLECTIONS}
        self._put_security(host, wanted, held)
        if remove:
            for c in reversed(SECURITY_COLLECTIONS):
                for obj_id in sorted(set(held[c]) - set(wanted[c])):
                    self._delete(host, c, obj_id)

    def _update_members(self, plugin_context, sg_ids):
        """Rewrites the members' address group of each group in `sg_ids` on the hosts
        that hold it (a port joined, left or changed its addresses)."""
        for sg_id in sorted(sg_ids):
            ag_id = translate.members_group_id(sg_id)
            hosts = self._hosts_with('address_groups', ag_id)
            if not hosts:
                continue
            admin = plugin_context.elevated()
            with self._reading(admin):
                ag = self._group_members(admin, sg_id)
            for host in sorted(hosts):
                self._put_if_changed(host, 'address_groups', ag)

    def _add_members(self, port):
        """A new port's addresses joined to its groups' members' address groups where
        they are held: a compare-and-swap on each key, so that two servers adding
        members at once lose neither."""
        addresses = translate.member_addresses(port)
        if not addresses:
            return
        for sg_id in sorted(self._groups(port)):
            ag_id = translate.members_group_id(sg_id)
            for host in sorted(self._hosts_with('address_groups', ag_id)):
                self._merge_members(host, ag_id, addresses)

    def _merge_members(self, host, ag_id, addresses):
        key = translate.object_key(self.prefix, host, 'address_groups', ag_id)
        for _attempt in range(10):
            held = self.etcd.get(key)
            if not held:
                return
            old = store._text(held[0])
            ag = json.loads(old)
            merged = sorted(set(ag['addresses']) | set(addresses))
            if merged == ag['addresses']:
                return
            ag['addresses'] = merged
            if self.etcd.replace(key, old, json.dumps(ag, sort_keys=True)):
                LOG.debug('pollux: members of %s on %s: %s', ag_id, host, merged)
                return
        LOG.error('pollux: %s on %s changed under every attempt to add %s',
                  ag_id, host, addresses)

    def _address_group_changed(self, resource, event, trigger, payload):
        """Addresses added to or removed from a Neutron address group: the hosts whose
        rules name it get it again."""
        for host in sorted(self._hosts_with('address_groups', payload.resource_id)):
            self._sync_security(payload.context, host)

    def _security_group_rule_changed(self, resource, event, trigger, payload):
        if event == events.AFTER_CREATE:
            sg_id = payload.latest_state['security_group_id']
        else:
            sg_id = payload.metadata['security_group_id']
        self._security_group_changed(resource, event, trigger, payload, sg_id)

    def _security_group_changed(self, resource, event, trigger, payload, sg_id=None):
        sg_id = sg_id or payload.resource_id
        hosts = self._hosts_with('security_groups', sg_id)
        LOG.debug('pollux: security group %s changed (%s %s): hosts %s',
                  sg_id, resource, event, sorted(hosts))
        for host in sorted(hosts):
            self._sync_security(payload.context, host)

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
            # DOWN until the host's agent reports polluxd has the port (status.py).
            context.set_binding(segment[api.ID], vif_type,
                                {'pollux_binding': pollux_binding})
            LOG.info('pollux: bound port %s on host %s (%s)',
                     context.current['id'], host, pollux_binding)
            return
        LOG.info('pollux: port %s: no segment of a type Pollux runs (%s)',
                 context.current['id'],
                 [s[api.NETWORK_TYPE] for s in context.segments_to_bind])

    def _write_port(self, context, port, segment, remove_unneeded=False):
        """Writes a port with what it refers to before it; `remove_unneeded` (the port
        left groups or port security) then removes what no port of the host needs."""
        host = port[portbindings.HOST_ID]
        plugin_context = context._plugin_context
        # The network and its subnets first: polluxd validates a port against them.
        # Each only if it differs from the key: a port's status change comes back here,
        # and must not make the agent apply the port again.
        self._put_if_changed(host, 'networks', self._network_object(
            plugin_context, port['network_id'], segment))
        for sub in self._plugin().get_subnets(
                plugin_context, filters={'network_id': [port['network_id']]}):
            self._put_if_changed(host, 'subnets', translate.subnet(sub))
        if port.get(portbindings.VNIC_TYPE, portbindings.VNIC_NORMAL) != \
                portbindings.VNIC_NORMAL:
            LOG.warning('pollux: port %s has vnic_type %s; Pollux serves normal '
                        'ports only', port['id'], port.get(portbindings.VNIC_TYPE))
        admin = plugin_context.elevated()
        with self._reading(admin):
            needed = self._port_security(admin, host, port)
        self._put_security(host, needed,
                           {c: self._held(host, c) for c in SECURITY_COLLECTIONS})
        self._put_if_changed(host, 'ports', translate.port(port))
        if remove_unneeded:
            self._sync_security(plugin_context, host)

    def _remove_port(self, context, port, host):
        # Floating IPs the L3 plugin gave the port on this host go first: polluxd keeps
        # no floating IP of a port it does not have.
        for fip_id, text in sorted(self._held(host, 'floating_ips').items()):
            if json.loads(text).get('port_id') == port['id']:
                self._delete(host, 'floating_ips', fip_id)
        self._delete(host, 'ports', port['id'])
        network_id = port['network_id']
        others = [p for p in self._served_ports(context._plugin_context,
                                                network_id, host)
                  if p['id'] != port['id']]
        if not others and network_id not in self._routed_networks(host):
            for sub in self._plugin().get_subnets(
                    context._plugin_context, filters={'network_id': [network_id]}):
                self._delete(host, 'subnets', sub['id'])
            self._delete(host, 'networks', network_id)
        self._sync_security(context._plugin_context, host)

    def _bound_here(self, port, vif_type):
        return translate.port_is_served(port) and vif_type in (
            portbindings.VIF_TYPE_TAP, portbindings.VIF_TYPE_OTHER)

    @staticmethod
    def _groups(port):
        return set(port.get('security_groups') or []) if port else set()

    def create_port_postcommit(self, context):
        if self._bound_here(context.current, context.vif_type):
            self._write_port(context, context.current, context.bottom_bound_segment)
        self._add_members(context.current)

    def update_port_postcommit(self, context):
        port, original = context.current, context.original
        old_host = original.get(portbindings.HOST_ID) if original else None
        was_served = original is not None and self._bound_here(
            original, context.original_vif_type)
        now_served = self._bound_here(port, context.vif_type)
        if was_served and (not now_served or old_host != port[portbindings.HOST_ID]):
            self._remove_port(context, original, old_host)
        if now_served:
            stayed = was_served and old_host == port[portbindings.HOST_ID]
            left = stayed and (
                self._groups(original) - self._groups(port) or
                original.get('port_security_enabled', True) and
                not port.get('port_security_enabled', True))
            self._write_port(context, port, context.bottom_bound_segment,
                             remove_unneeded=bool(left))
        if original is None or self._groups(port) != self._groups(original) or \
                translate.member_addresses(port) != \
                translate.member_addresses(original):
            self._update_members(context._plugin_context,
                                 self._groups(port) | self._groups(original))

    def delete_port_postcommit(self, context):
        port = context.current
        host = port.get(portbindings.HOST_ID)
        if host:
            self._remove_port(context, port, host)
        self._update_members(context._plugin_context, self._groups(port))

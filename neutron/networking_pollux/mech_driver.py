"""The Pollux ML2 mechanism driver: binds ports on hosts whose pollux-agent is alive
and writes each host's networks, subnets and ports into etcd, under the keys
translate.py names, through the journal (journal.py): each change's precommit records
in its transaction what it touches (a port on a host, a network, a group...), its
postcommit wakes the drainer, which recomputes those keys from Neutron's database and
writes them; the `_reconcile_*` methods below are what a row of each kind does.

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

A row recomputes from the database and from what the host's keys hold (a port's
previous groups are its key's), never from the change's values, so a row taken late or
after a restart writes what Neutron holds then.

Not yet: l2population. Routers and floating IPs are the L3 service plugin's (l3.py).
"""

import json
import os

import eventlet
from neutron.db import segments_db
from neutron.plugins.ml2 import db as ml2_db
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import events
from neutron_lib.callbacks import registry
from neutron_lib.callbacks import resources
from neutron_lib import context as n_context
from neutron_lib import exceptions as n_exc
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory
from neutron_lib.plugins.ml2 import api
from oslo_config import cfg
from oslo_log import log as logging

from networking_pollux import journal
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
        try:
            journal.ensure_table()
        except Exception:
            LOG.exception('pollux: cannot make sure the journal table exists')
        self._subscribe()
        self._drainer = None
        self._drainer_pid = None
        journal.set_waker(self._wake)

    def get_workers(self):
        # The plugin worker's drainer: it alone reconciles every host at start.
        return [status.PortStatusWorker(status.PortStatus(self.etcd, self.prefix)),
                journal.JournalWorker(self._new_journal(reconcile_all=True))]

    # -- the journal -----------------------------------------------------------

    def _new_journal(self, reconcile_all):
        return journal.Journal(n_context.get_admin_context, self._reconcile_row,
                               reconcile_all=reconcile_all, sleep=eventlet.sleep)

    def _record(self, plugin_context, kind, object_id=None, host=None):
        journal.record(plugin_context, kind, object_id, host)

    def _wake(self):
        """After a commit: the drainer of the process that made it takes the rows, at
        once (started by the process's first change: Neutron may run the plugin
        worker's in a process of its own)."""
        if self._drainer is None or self._drainer_pid != os.getpid():
            self._drainer = self._new_journal(reconcile_all=False)
            self._drainer_pid = os.getpid()
            eventlet.spawn(self._drainer.run)
        self._drainer.wake()

    @staticmethod
    def _admin():
        return n_context.get_admin_context()

    def _reconcile_row(self, row):
        admin = self._admin()
        LOG.debug('pollux: %s', row)
        getattr(self, '_reconcile_' + row.kind)(admin, row)

    def _reconcile_port(self, admin, row):
        """A port on a host: written as the database has it when it is served there,
        else removed from the host."""
        host = row.host
        try:
            port = self._plugin().get_port(admin, row.object_id)
        except n_exc.NotFound:
            port = None
        held = self.etcd.get(translate.object_key(self.prefix, host, 'ports',
                                                  row.object_id))
        old = json.loads(store._text(held[0])) if held else None
        if port is not None and port.get(portbindings.HOST_ID) == host and \
                self._bound_here(port, port.get(portbindings.VIF_TYPE)):
            left = old is not None and bool(
                set(old.get('security_groups') or []) - self._groups(port) or
                old.get('port_security_enabled', True) and
                not port.get('port_security_enabled', True))
            self._write_port(admin, port, self._bound_segment(admin, port),
                             remove_unneeded=left)
        elif old is not None:
            self._remove_port(admin, old, host)

    @staticmethod
    def _bound_segment(admin, port):
        """The segment ML2 bound the port to on its host (None: the network's own
        provider attributes name it)."""
        levels = ml2_db.get_binding_level_objs(admin, port['id'],
                                               port[portbindings.HOST_ID])
        if not levels:
            return None
        return segments_db.get_segment_by_id(admin, levels[-1].segment_id)

    def _reconcile_member_join(self, admin, row):
        try:
            port = self._plugin().get_port(admin, row.object_id)
        except n_exc.NotFound:
            return
        self._add_members(port)

    def _reconcile_members(self, admin, row):
        self._update_members(admin, {row.object_id})

    def _reconcile_network(self, admin, row):
        hosts = sorted(self._hosts_with('networks', row.object_id))
        try:
            obj = self._network_object(admin, row.object_id)
        except n_exc.NotFound:
            obj = None
        for host in hosts:
            if obj is None:
                self._delete(host, 'networks', row.object_id)
            else:
                self._put(host, 'networks', obj)

    def _reconcile_subnet(self, admin, row):
        try:
            sub = self._plugin().get_subnet(admin, row.object_id)
        except n_exc.NotFound:
            for host in sorted(self._hosts_with('subnets', row.object_id)):
                self._delete(host, 'subnets', row.object_id)
            return
        obj = translate.subnet(sub)
        for host in sorted(self._hosts_with('networks', obj['network_id'])):
            self._put(host, 'subnets', obj)

    def _reconcile_security_group(self, admin, row):
        hosts = self._hosts_with('security_groups', row.object_id)
        LOG.debug('pollux: security group %s changed: hosts %s', row.object_id,
                  sorted(hosts))
        for host in sorted(hosts):
            self._sync_security(admin, host)

    def _reconcile_address_group(self, admin, row):
        for host in sorted(self._hosts_with('address_groups', row.object_id)):
            self._sync_security(admin, host)

    def _reconcile_host(self, admin, row):
        self._sync_host(admin, row.host)

    def _reconcile_l3(self, admin, row):
        l3 = directory.get_plugin(plugin_constants.L3)
        sync = getattr(l3, 'pollux_sync', None)
        if sync is None:
            LOG.warning('pollux: %s: the L3 plugin is not pollux_router', row)
            return
        sync(admin)

    def _reconcile_all(self, admin, row):
        """Every host's keys against the database: the hosts with keys, the hosts of
        bound ports, then the L3 host."""
        hosts_prefix = self.prefix.rstrip('/') + '/hosts/'
        hosts = {key[len(hosts_prefix):].split('/', 1)[0]
                 for key in self._keys(hosts_prefix)}
        hosts.update(p[portbindings.HOST_ID] for p in self._plugin().get_ports(admin)
                     if p.get(portbindings.HOST_ID) and
                     self._bound_here(p, p.get(portbindings.VIF_TYPE)))
        for host in sorted(hosts):
            self._sync_host(admin, host)
        self._reconcile_l3(admin, row)
        LOG.info('pollux journal: every host reconciled with the database (%s)',
                 ', '.join(sorted(hosts)))

    def _sync_host(self, admin, host):
        """A host's whole share of networks, subnets, ports and security: what its
        served ports need written in reference order, then what none needs removed."""
        ports = self._host_ports(admin, host)
        held_ports = self._held(host, 'ports')
        for net_id in sorted({p['network_id'] for p in ports}):
            self._put_if_changed(host, 'networks',
                                 self._network_object(admin, net_id))
            for sub in self._plugin().get_subnets(
                    admin, filters={'network_id': [net_id]}):
                self._put_if_changed(host, 'subnets', translate.subnet(sub))
        self._sync_security(admin, host, remove=False)
        for p in sorted(ports, key=lambda p: p['id']):
            self._put_changed(host, 'ports', translate.port(p), held_ports)
        wanted = {p['id'] for p in ports}
        for port_id in sorted(set(held_ports) - wanted):
            self._remove_port(admin, json.loads(held_ports[port_id]), host)
        self._sync_security(admin, host)
        needed = {p['network_id'] for p in ports} | self._routed_networks(host)
        for sub_id, text in sorted(self._held(host, 'subnets').items()):
            if json.loads(text)['network_id'] not in needed:
                self._delete(host, 'subnets', sub_id)
        for net_id in sorted(set(self._held(host, 'networks')) - needed):
            self._delete(host, 'networks', net_id)

    def _subscribe(self):
        # PRECOMMIT: the row in the change's transaction; AFTER: the drainer woken.
        for resource, event in (
                (resources.SECURITY_GROUP_RULE, events.PRECOMMIT_CREATE),
                (resources.SECURITY_GROUP_RULE, events.PRECOMMIT_DELETE)):
            registry.subscribe(self._security_group_rule_changed, resource, event)
        for event in (events.PRECOMMIT_UPDATE, events.PRECOMMIT_DELETE):
            registry.subscribe(self._security_group_changed,
                               resources.SECURITY_GROUP, event)
        for resource, event in (
                (resources.SECURITY_GROUP_RULE, events.AFTER_CREATE),
                (resources.SECURITY_GROUP_RULE, events.AFTER_DELETE),
                (resources.SECURITY_GROUP, events.AFTER_UPDATE),
                (resources.SECURITY_GROUP, events.AFTER_DELETE)):
            registry.subscribe(self._committed, resource, event)
        # Neutron publishes no PRECOMMIT for an address group (journal.py's gaps).
        registry.subscribe(self._address_group_changed,
                           resources.ADDRESS_GROUP, events.AFTER_UPDATE)

    def _committed(self, resource, event, trigger, payload):
        self._wake()

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

    # Each change's precommit journals what it touches, in its transaction; its
    # postcommit wakes the drainer, which writes the keys (journal.py).

    def update_network_precommit(self, context):
        self._record(context._plugin_context, journal.NETWORK, context.current['id'])

    delete_network_precommit = update_network_precommit

    def update_network_postcommit(self, context):
        self._wake()

    delete_network_postcommit = update_network_postcommit

    # -- subnets ---------------------------------------------------------------

    def create_subnet_precommit(self, context):
        self._record(context._plugin_context, journal.SUBNET, context.current['id'])

    update_subnet_precommit = delete_subnet_precommit = create_subnet_precommit

    def create_subnet_postcommit(self, context):
        self._wake()

    update_subnet_postcommit = delete_subnet_postcommit = create_subnet_postcommit

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

    def _port_security(self, admin, port, held):
        """What one port needs on its host: its groups and the address groups their
        rules name. A members' address group the host holds already (`held`) is left
        out: the membership updates keep it current, and recomputing it is a read of
        every port in the group."""
        wanted = {'security_groups': {}, 'address_groups': {}}
        if not port.get('port_security_enabled', True):
            return wanted
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
        self._record_now(journal.ADDRESS_GROUP, payload.resource_id)
        self._wake()

    @staticmethod
    def _record_now(kind, object_id=None, host=None):
        journal.record_now(kind, object_id, host)

    def _security_group_rule_changed(self, resource, event, trigger, payload):
        if event == events.PRECOMMIT_CREATE:
            sg_id = payload.latest_state['security_group_id']
        else:
            sg_id = payload.metadata['security_group_id']
        self._security_group_changed(resource, event, trigger, payload, sg_id)

    def _security_group_changed(self, resource, event, trigger, payload, sg_id=None):
        """A group, or one of its rules, changed: the hosts that hold it get it again."""
        self._record(payload.context, journal.SECURITY_GROUP,
                     sg_id or payload.resource_id)

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

    def _write_port(self, plugin_context, port, segment, remove_unneeded=False):
        """Writes a port with what it refers to before it; `remove_unneeded` (the port
        left groups or port security) then removes what no port of the host needs."""
        host = port[portbindings.HOST_ID]
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
        held = {c: self._held(host, c) for c in SECURITY_COLLECTIONS}
        # No etcd request inside a database transaction: on SQLite a reader that
        # waits for etcd holds every writer of the database off.
        with self._reading(admin):
            needed = self._port_security(admin, port, held['address_groups'])
        self._put_security(host, needed, held)
        self._put_if_changed(host, 'ports', translate.port(port))
        if remove_unneeded:
            self._sync_security(plugin_context, host)

    def _remove_port(self, plugin_context, port, host):
        # Floating IPs the L3 plugin gave the port on this host go first: polluxd keeps
        # no floating IP of a port it does not have.
        for fip_id, text in sorted(self._held(host, 'floating_ips').items()):
            if json.loads(text).get('port_id') == port['id']:
                self._delete(host, 'floating_ips', fip_id)
        self._delete(host, 'ports', port['id'])
        network_id = port['network_id']
        others = [p for p in self._served_ports(plugin_context, network_id, host)
                  if p['id'] != port['id']]
        if not others and network_id not in self._routed_networks(host):
            for sub in self._plugin().get_subnets(
                    plugin_context, filters={'network_id': [network_id]}):
                self._delete(host, 'subnets', sub['id'])
            self._delete(host, 'networks', network_id)
        self._sync_security(plugin_context, host)

    def _bound_here(self, port, vif_type):
        return translate.port_is_served(port) and vif_type in (
            portbindings.VIF_TYPE_TAP, portbindings.VIF_TYPE_OTHER)

    @staticmethod
    def _groups(port):
        return set(port.get('security_groups') or []) if port else set()

    def _record_port(self, context, hosts, groups):
        """Journals the port on each of `hosts`, and the members of `groups`."""
        for host in sorted(h for h in hosts if h):
            self._record(context._plugin_context, journal.PORT, context.current['id'],
                         host)
        for sg_id in sorted(groups):
            self._record(context._plugin_context, journal.MEMBERS, sg_id)

    def create_port_precommit(self, context):
        port = context.current
        self._record_port(context, {port.get(portbindings.HOST_ID)}, ())
        if self._groups(port) and translate.member_addresses(port):
            # Added to the members where they are held by a compare-and-swap, rather
            # than a read of every member (_add_members).
            self._record(context._plugin_context, journal.MEMBER_JOIN, port['id'])

    def update_port_precommit(self, context):
        port, original = context.current, context.original
        hosts = {port.get(portbindings.HOST_ID)}
        if original:
            hosts.add(original.get(portbindings.HOST_ID))
        groups = ()
        if original is None or self._groups(port) != self._groups(original) or \
                translate.member_addresses(port) != \
                translate.member_addresses(original):
            groups = self._groups(port) | self._groups(original)
        self._record_port(context, hosts, groups)

    def delete_port_precommit(self, context):
        port = context.current
        self._record_port(context, {port.get(portbindings.HOST_ID)},
                          self._groups(port))

    def create_port_postcommit(self, context):
        self._wake()

    update_port_postcommit = delete_port_postcommit = create_port_postcommit

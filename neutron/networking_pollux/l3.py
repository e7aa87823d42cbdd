"""The Pollux L3 service plugin (`service_plugins = pollux_router`): Neutron's routers and
floating IPs in Neutron's own database (its L3 mixins), written after each change into
etcd for the one host that runs them (`[ml2_pollux] l3_host`), as networking-vpp's L3
plugin does for its hosts, through the mechanism driver's journal (journal.py: an `l3`
row, drained by `pollux_sync`). What is written is recomputed whole for that host and
only the differences are put or deleted, so one API call is a few object methods on the
host.

A router goes there with the subnets of its interfaces, its external gateway (network,
IPv4 address, SNAT) and its extra routes; a floating IP with its port and fixed IP once
associated; and the networks and subnets those need, unless the host has them already.
Objects go in reference order (networks, subnets, routers, floating IPs) and are
removed in the reverse one.

Each router carries the MAC of its oldest Neutron router port (Pollux gives a router one
MAC on all its networks) and its project; `binding_host_id` names the L3 host to any
other host it is written to (overlay networks, where the others reach it by that MAC),
and is left out on the L3 host itself.

Not yet: routers written to the other hosts of their overlay networks (the mechanism
driver binds no overlay port yet), routers spread over several hosts (scheduling, HA,
DVR), an interface at an
address other than its subnet's gateway_ip (polluxd has no such interface: the router is
not written, and the error logged), IPv6 routing.
"""

import json

from neutron.db import extraroute_db
from neutron.db import l3_gwmode_db
from neutron_lib.callbacks import events
from neutron_lib.callbacks import registry
from neutron_lib.callbacks import resources
from neutron_lib import constants as n_const
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory
from neutron_lib.services import base as service_base
from oslo_config import cfg
from oslo_log import log as logging

from networking_pollux import journal
from networking_pollux import store
from networking_pollux import translate

LOG = logging.getLogger(__name__)

#: Written in this order, removed in the reverse one.
L3_COLLECTIONS = ('networks', 'subnets', 'routers', 'floating_ips')


class PolluxL3RouterPlugin(store.HostKeys,
                           service_base.ServicePluginBase,
                           extraroute_db.ExtraRoute_dbonly_mixin,
                           l3_gwmode_db.L3_NAT_dbonly_mixin):

    supported_extension_aliases = ['router', 'ext-gw-mode', 'extraroute']

    def __init__(self):
        super(PolluxL3RouterPlugin, self).__init__()
        self.connect()
        self.l3_host = cfg.CONF.ml2_pollux.l3_host
        # A row in the change's own transaction where Neutron publishes a PRECOMMIT
        # event (a port's delete disassociates its floating IPs in its transaction).
        for resource, event in (
                (resources.ROUTER, events.PRECOMMIT_CREATE),
                (resources.ROUTER, events.PRECOMMIT_UPDATE),
                (resources.ROUTER, events.PRECOMMIT_DELETE),
                (resources.FLOATING_IP, events.PRECOMMIT_CREATE),
                (resources.FLOATING_IP, events.PRECOMMIT_UPDATE),
                (resources.FLOATING_IP, events.PRECOMMIT_DELETE),
                (resources.PORT, events.PRECOMMIT_DELETE)):
            registry.subscribe(self._precommit, resource, event)
        registry.subscribe(self._port_deleted, resources.PORT, events.AFTER_DELETE)
        LOG.info('Pollux L3 plugin: routers and floating IPs on host %s', self.l3_host)

    @classmethod
    def get_plugin_type(cls):
        return plugin_constants.L3

    def get_plugin_description(self):
        return 'Pollux routers and floating IPs, written into etcd for pollux-agent'

    @staticmethod
    def _plugin():
        return directory.get_plugin()

    # -- what the L3 host needs ----------------------------------------------------

    def _wanted(self, admin, host):
        core = self._plugin()
        wanted = {c: {} for c in L3_COLLECTIONS}
        networks = set()
        for r in self.get_routers(admin):
            router_ports = core.get_ports(admin, filters={
                'device_id': [r['id']],
                'device_owner': [n_const.DEVICE_OWNER_ROUTER_INTF,
                                 n_const.DEVICE_OWNER_ROUTER_GW]})
            ports = [p for p in router_ports
                     if p['device_owner'] == n_const.DEVICE_OWNER_ROUTER_INTF]
            subnets = {}
            for p in ports:
                for ip in p['fixed_ips']:
                    subnets[ip['subnet_id']] = ip['ip_address']
            bad = [sid for sid, ip in sorted(subnets.items())
                   if core.get_subnet(admin, sid).get('gateway_ip') != ip]
            if bad:
                LOG.error('pollux: router %s not written: its interfaces on subnets %s '
                          'are not at the subnets\' gateway_ip, the only address a '
                          'Pollux router interface takes', r['id'], bad)
                continue
            obj = translate.router(r, subnets,
                                   mac_address=translate.router_mac(router_ports),
                                   runs_on=self.l3_host, for_host=host)
            wanted['routers'][r['id']] = obj
            networks.update(core.get_subnet(admin, s)['network_id'] for s in subnets)
            if obj.get('external_gateway_info'):
                networks.add(obj['external_gateway_info']['network_id'])
        for net_id in networks:
            wanted['networks'][net_id] = self._network_object(admin, net_id)
            for sub in core.get_subnets(admin, filters={'network_id': [net_id]}):
                wanted['subnets'][sub['id']] = translate.subnet(sub)
        for f in self.get_floatingips(admin):
            if f.get('router_id') in wanted['routers'] or not f.get('port_id'):
                if f.get('floating_network_id') in networks:
                    wanted['floating_ips'][f['id']] = translate.floating_ip(f)
        return wanted

    def _port_networks(self, host):
        """The networks of the ports the host holds: the mechanism driver's to remove
        (with the last port, which it may not have removed yet when a port's delete
        calls back here)."""
        return {json.loads(text)['network_id']
                for text in self._held(host, 'ports').values()}

    def pollux_sync(self, admin):
        """The journal's drainer: the L3 host's keys as the database has them."""
        self._sync(admin)

    def _precommit(self, resource, event, trigger, payload):
        journal.record(payload.context, journal.L3, host=self.l3_host)

    def _journal(self, context):
        """After a change commits: a row of its own (the router interfaces' changes
        have no PRECOMMIT event), and the drainer woken."""
        journal.record_now(journal.L3, host=self.l3_host)
        journal.wake()

    def _sync(self, context):
        """Brings the L3 host's keys to Neutron's routers and floating IPs."""
        if not self.l3_host:
            LOG.error('pollux: [ml2_pollux] l3_host is not set: routers and floating '
                      'IPs are not written anywhere')
            return
        admin = context.elevated()
        host = self.l3_host
        with self._reading(admin):
            wanted = self._wanted(admin, host)
        served = self._port_networks(host)
        held = {c: self._held(host, c) for c in L3_COLLECTIONS}
        for c in L3_COLLECTIONS:
            for _id, obj in sorted(wanted[c].items()):
                self._put_changed(host, c, obj, held[c])
        for c in ('floating_ips', 'routers'):
            for obj_id in sorted(set(held[c]) - set(wanted[c])):
                self._delete(host, c, obj_id)
        # A network (and its subnets) no router needs any more stays while a port of the
        # host is on it: the mechanism driver's then, which removes it with the last.
        for sub_id, text in sorted(held['subnets'].items()):
            net_id = json.loads(text)['network_id']
            if net_id not in wanted['networks'] and net_id not in served and \
                    net_id in held['networks']:
                self._delete(host, 'subnets', sub_id)
        for net_id in sorted(set(held['networks']) - set(wanted['networks']) - served):
            self._delete(host, 'networks', net_id)

    # -- Neutron's API, then etcd ----------------------------------------------------

    def create_router(self, context, router):
        result = super(PolluxL3RouterPlugin, self).create_router(context, router)
        self._journal(context)
        return result

    def update_router(self, context, router_id, router):
        result = super(PolluxL3RouterPlugin, self).update_router(
            context, router_id, router)
        self._journal(context)
        return result

    def delete_router(self, context, router_id):
        super(PolluxL3RouterPlugin, self).delete_router(context, router_id)
        self._journal(context)

    def add_router_interface(self, context, router_id, interface_info=None):
        result = super(PolluxL3RouterPlugin, self).add_router_interface(
            context, router_id, interface_info)
        self._journal(context)
        return result

    def remove_router_interface(self, context, router_id, interface_info):
        result = super(PolluxL3RouterPlugin, self).remove_router_interface(
            context, router_id, interface_info)
        self._journal(context)
        return result

    def create_floatingip(self, context, floatingip,
                          initial_status=n_const.FLOATINGIP_STATUS_ACTIVE):
        result = super(PolluxL3RouterPlugin, self).create_floatingip(
            context, floatingip, initial_status)
        self._journal(context)
        return result

    def update_floatingip(self, context, fip_id, floatingip):
        result = super(PolluxL3RouterPlugin, self).update_floatingip(
            context, fip_id, floatingip)
        self._journal(context)
        return result

    def delete_floatingip(self, context, fip_id):
        super(PolluxL3RouterPlugin, self).delete_floatingip(context, fip_id)
        self._journal(context)

    def _port_deleted(self, resource, event, trigger, payload):
        # Its floating IPs were disassociated inside the port's delete transaction,
        # journaled there (_precommit); the mechanism driver takes their keys away
        # with the port's.
        journal.wake()

"""The L3 plugin's writes for its host: what it puts, in which order, and which networks
it leaves to the mechanism driver. Neutron's database is replaced by `_wanted`.
Run: /usr/bin/python3 -m unittest discover -s neutron -t neutron"""

import contextlib
import json
import unittest

from networking_pollux import l3
from networking_pollux import store
from networking_pollux.tests import test_mech_driver as fakes


class Context(object):
    def elevated(self):
        return self


def wanted(routers=(), fips=(), networks=('ext',)):
    return {
        'networks': {n: {'id': n, 'network_type': 'local', 'admin_state_up': True}
                     for n in networks},
        'subnets': {'sub-' + n: {'id': 'sub-' + n, 'network_id': n,
                                 'cidr': '203.0.113.0/24'} for n in networks},
        'routers': {r['id']: r for r in routers},
        'floating_ips': {f['id']: f for f in fips},
    }


class Harness(store.HostKeys):
    """The plugin's writes without its Neutron mixins, which start workers when made."""
    _sync = l3.PolluxL3RouterPlugin._sync
    _port_networks = l3.PolluxL3RouterPlugin._port_networks


class L3SyncTest(unittest.TestCase):
    def setUp(self):
        self.plugin = Harness()
        self.plugin.prefix = '/pollux'
        self.plugin.l3_host = 'h1'
        self.plugin.etcd = self.etcd = fakes.FakeEtcd()
        self.want = wanted()
        self.plugin._wanted = lambda admin, host: self.want
        self.plugin._reading = lambda ctx: contextlib.nullcontext()

    def ops(self):
        return [(op, k.split('/', 4)[4]) for op, k in self.etcd.log]

    def test_order_and_networks_left_to_the_driver(self):
        router = {'id': 'r1', 'interfaces': [], 'routes': [],
                  'external_gateway_info': {'network_id': 'ext', 'enable_snat': True,
                                            'external_fixed_ip': '203.0.113.101'}}
        fip = {'id': 'f1', 'floating_ip_address': '203.0.113.120', 'port_id': 'p1'}
        self.want = wanted([router], [fip])
        self.plugin._sync(Context())
        self.assertEqual(self.ops(), [
            ('put', 'networks/ext'), ('put', 'subnets/sub-ext'),
            ('put', 'routers/r1'), ('put', 'floating_ips/f1')])
        # Nothing changed: nothing written.
        self.etcd.log = []
        self.plugin._sync(Context())
        self.assertEqual(self.ops(), [])
        # The router goes while a port of the host is on ext: ext stays.
        self.etcd.put('/pollux/hosts/h1/ports/p9',
                      json.dumps({'id': 'p9', 'network_id': 'ext'}))
        self.etcd.log = []
        self.want = wanted(networks=())
        self.plugin._sync(Context())
        self.assertEqual(self.ops(), [('delete', 'floating_ips/f1'),
                                      ('delete', 'routers/r1')])
        # Without that port, ext and its subnet go too, subnet first.
        del self.etcd.kv['/pollux/hosts/h1/ports/p9']
        self.etcd.log = []
        self.plugin._sync(Context())
        self.assertEqual(self.ops(), [('delete', 'subnets/sub-ext'),
                                      ('delete', 'networks/ext')])


class FakeCore(object):
    """Neutron's core plugin as `_wanted` reads it: one router, two interfaces and a
    gateway port, on three networks."""
    NETS = {'net-a': 'sub-a', 'net-b': 'sub-b', 'ext': 'sub-ext'}

    def __init__(self):
        self.ports = [
            {'id': 'pa', 'device_id': 'r1', 'device_owner': 'network:router_interface',
             'mac_address': 'fa:16:3e:00:0a:01', 'created_at': '2026-12-01T10:00:02Z',
             'fixed_ips': [{'subnet_id': 'sub-a', 'ip_address': '198.18.40.1'}]},
            {'id': 'pg', 'device_id': 'r1', 'device_owner': 'network:router_gateway',
             'mac_address': 'fa:16:3e:00:0e:01', 'created_at': '2026-12-01T10:00:01Z',
             'fixed_ips': [{'subnet_id': 'sub-ext', 'ip_address': '203.0.113.101'}]},
            {'id': 'pb', 'device_id': 'r1', 'device_owner': 'network:router_interface',
             'mac_address': 'fa:16:3e:00:0b:01', 'created_at': '2026-12-01T10:00:03Z',
             'fixed_ips': [{'subnet_id': 'sub-b', 'ip_address': '198.18.41.1'}]},
        ]

    def get_ports(self, ctx, filters=None):
        return [p for p in self.ports
                if all(p.get(k) in v for k, v in (filters or {}).items())]

    def get_subnet(self, ctx, sub_id):
        net = {v: k for k, v in self.NETS.items()}[sub_id]
        gateway = {'sub-a': '198.18.40.1', 'sub-b': '198.18.41.1',
                   'sub-ext': '203.0.113.1'}[sub_id]
        return {'id': sub_id, 'network_id': net, 'cidr': '198.18.0.0/15',
                'gateway_ip': gateway, 'enable_dhcp': False}

    def get_subnets(self, ctx, filters=None):
        return [self.get_subnet(ctx, self.NETS[n]) for n in filters['network_id']]

    def get_network(self, ctx, net_id):
        return {'id': net_id, 'admin_state_up': True,
                'provider:network_type': 'flat' if net_id == 'ext' else 'local',
                'provider:physical_network': 'extnet' if net_id == 'ext' else None}


class L3WantedTest(unittest.TestCase):
    def setUp(self):
        self.plugin = WantedHarness()
        self.plugin.l3_host = 'l3'
        self.core = FakeCore()
        self.plugin._plugin = lambda: self.core
        self.plugin.get_routers = lambda admin: [{
            'id': 'r1', 'project_id': 'proj-1', 'routes': [],
            'external_gateway_info': {
                'network_id': 'ext', 'enable_snat': True,
                'external_fixed_ips': [{'subnet_id': 'sub-ext',
                                        'ip_address': '203.0.113.101'}]}}]
        self.plugin.get_floatingips = lambda admin: []

    def test_router_as_its_host_and_the_others_see_it(self):
        # One MAC for all its networks: the oldest router port's (here the gateway's),
        # which a later interface never changes.
        want = self.plugin._wanted(Context(), 'l3')
        self.assertEqual(want['routers']['r1'], {
            'id': 'r1', 'interfaces': ['sub-a', 'sub-b'], 'routes': [],
            'external_gateway_info': {'network_id': 'ext', 'enable_snat': True,
                                      'external_fixed_ip': '203.0.113.101'},
            'mac_address': 'fa:16:3e:00:0e:01', 'project_id': 'proj-1'})
        self.assertEqual(sorted(want['networks']), ['ext', 'net-a', 'net-b'])
        # An interface added later, another removed: the MAC stays.
        self.core.ports.append(
            {'id': 'pc', 'device_id': 'r1', 'device_owner': 'network:router_interface',
             'mac_address': 'fa:16:3e:00:0c:01', 'created_at': '2026-12-01T11:00:00Z',
             'fixed_ips': [{'subnet_id': 'sub-b', 'ip_address': '198.18.41.1'}]})
        self.core.ports = [p for p in self.core.ports if p['id'] != 'pb']
        again = self.plugin._wanted(Context(), 'l3')['routers']['r1']
        self.assertEqual(again['mac_address'], 'fa:16:3e:00:0e:01')
        self.assertNotIn('binding_host_id', again)
        # A host that reaches it over an overlay is told where it runs, with the MAC.
        other = self.plugin._wanted(Context(), 'compute-2')['routers']['r1']
        self.assertEqual(other['binding_host_id'], 'l3')
        self.assertEqual(other['mac_address'], 'fa:16:3e:00:0e:01')


class WantedHarness(store.HostKeys):
    _wanted = l3.PolluxL3RouterPlugin._wanted


if __name__ == '__main__':
    unittest.main()

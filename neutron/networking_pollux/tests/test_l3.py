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
        self.plugin._wanted = lambda admin: self.want
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


if __name__ == '__main__':
    unittest.main()

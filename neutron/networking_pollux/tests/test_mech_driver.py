"""The mechanism driver against fakes of etcd, the core plugin and ML2's contexts: what
it binds and which keys each postcommit leaves in etcd. Needs neutron-lib, oslo.config
and etcd3gw importable (Debian: python3-neutron, python3-etcd3gw).
Run: /usr/bin/python3 -m unittest discover -s neutron -t neutron"""

import json
import unittest

from networking_pollux import mech_driver
from networking_pollux import translate

NET = 'net-1'
SUB = 'sub-1'
LOCAL = {'id': 'seg-1', 'network_type': 'local', 'physical_network': None,
         'segmentation_id': None}


class FakeEtcd(object):
    def __init__(self):
        self.kv = {}

    def put(self, key, value, lease=None):
        self.kv[key] = value

    def get(self, key, **kw):
        return [self.kv[key]] if key in self.kv else []

    def get_prefix(self, prefix, **kw):
        return [(v, {'key': k.encode()}) for k, v in sorted(self.kv.items())
                if k.startswith(prefix)]

    def delete(self, key, **kw):
        return self.kv.pop(key, None) is not None


class FakePlugin(object):
    def __init__(self):
        self.ports = {}

    def get_network(self, ctx, net_id):
        return {'id': net_id, 'name': 'n', 'admin_state_up': True, 'mtu': 1500,
                'provider:network_type': 'local'}

    def get_subnets(self, ctx, filters=None):
        return [{'id': SUB, 'network_id': NET, 'cidr': '198.18.40.0/24',
                 'ip_version': 4, 'gateway_ip': '198.18.40.1', 'enable_dhcp': True,
                 'dns_nameservers': [], 'host_routes': [], 'allocation_pools': []}]

    def get_ports(self, ctx, filters=None):
        out = []
        for p in self.ports.values():
            if all(p.get(k) in v for k, v in (filters or {}).items()):
                out.append(p)
        return out


def neutron_port(pid, host='h1', **kw):
    p = {'id': pid, 'network_id': NET, 'mac_address': 'fa:16:3e:00:00:01',
         'admin_state_up': True,
         'fixed_ips': [{'subnet_id': SUB, 'ip_address': '198.18.40.11'}],
         'security_groups': [], 'port_security_enabled': True,
         'allowed_address_pairs': [], 'binding:host_id': host,
         'binding:profile': {}, 'binding:vnic_type': 'normal',
         'binding:vif_type': 'tap'}
    p.update(kw)
    return p


class FakePortContext(object):
    def __init__(self, current, original=None, segments=(LOCAL,)):
        self.current = current
        self.original = original
        self.host = current.get('binding:host_id')
        self.vif_type = current.get('binding:vif_type')
        self.original_vif_type = original.get('binding:vif_type') if original else None
        self.segments_to_bind = list(segments)
        self.bottom_bound_segment = segments[0] if segments else None
        self._plugin_context = object()
        self.bound = None

    def set_binding(self, segment_id, vif_type, vif_details, status=None):
        self.bound = (segment_id, vif_type, vif_details, status)


class DriverTest(unittest.TestCase):
    def setUp(self):
        self.driver = mech_driver.PolluxMechanismDriver()
        self.driver.prefix = '/pollux'
        self.driver.etcd = self.etcd = FakeEtcd()
        self.plugin = FakePlugin()
        self.driver._plugin = lambda: self.plugin

    def keys(self, host):
        prefix = translate.host_prefix('/pollux', host)
        return sorted(k[len(prefix):] for k in self.etcd.kv if k.startswith(prefix))

    def test_binds_only_where_an_agent_lives(self):
        ctx = FakePortContext(neutron_port('p1', **{'binding:vif_type': 'unbound'}))
        self.driver.bind_port(ctx)
        self.assertIsNone(ctx.bound)
        self.etcd.put('/pollux/agents/h1', '{}')
        self.driver.bind_port(ctx)
        self.assertEqual(ctx.bound, ('seg-1', 'tap', {'pollux_binding': {
            'driver': 'tap', 'interface': 'tapp1'}}, 'ACTIVE'))
        ctx = FakePortContext(neutron_port(
            'p2', **{'binding:profile': {'pollux_afxdp_interface': 'veth1'}}))
        self.driver.bind_port(ctx)
        self.assertEqual(ctx.bound[1:3], ('other', {'pollux_binding': {
            'driver': 'afxdp', 'interface': 'veth1'}}))
        vxlan = dict(LOCAL, network_type='vxlan', segmentation_id=7)
        ctx = FakePortContext(neutron_port('p3'), segments=(vxlan,))
        self.driver.bind_port(ctx)
        self.assertIsNone(ctx.bound)

    def test_a_bound_port_brings_its_network_and_subnets(self):
        port = neutron_port('p1')
        self.plugin.ports['p1'] = port
        self.driver.update_port_postcommit(FakePortContext(
            port, neutron_port('p1', **{'binding:vif_type': 'unbound'})))
        self.assertEqual(self.keys('h1'),
                         ['networks/' + NET, 'ports/p1', 'subnets/' + SUB])
        written = json.loads(self.etcd.kv['/pollux/hosts/h1/ports/p1'])
        self.assertEqual(written, translate.port(port))
        net = json.loads(self.etcd.kv['/pollux/hosts/h1/networks/' + NET])
        self.assertEqual(net['network_type'], 'local')

    def test_moves_down_ports_and_last_port_cleanup(self):
        p1, p2 = neutron_port('p1'), neutron_port('p2')
        self.plugin.ports.update(p1=p1, p2=p2)
        for p in (p1, p2):
            self.driver.update_port_postcommit(FakePortContext(p, None))
        # p1 moves to h2: h1 keeps the network for p2.
        moved = neutron_port('p1', host='h2')
        self.plugin.ports['p1'] = moved
        self.driver.update_port_postcommit(FakePortContext(moved, p1))
        self.assertEqual(self.keys('h1'),
                         ['networks/' + NET, 'ports/p2', 'subnets/' + SUB])
        self.assertEqual(self.keys('h2'),
                         ['networks/' + NET, 'ports/p1', 'subnets/' + SUB])
        # p2 set down: h1's last port, so the network and subnet go too.
        down = neutron_port('p2', admin_state_up=False)
        self.plugin.ports['p2'] = down
        self.driver.update_port_postcommit(FakePortContext(down, p2))
        self.assertEqual(self.keys('h1'), [])
        # p1 deleted.
        del self.plugin.ports['p1']
        self.driver.delete_port_postcommit(FakePortContext(moved, None))
        self.assertEqual(self.keys('h2'), [])

    def test_subnet_and_network_changes_reach_the_hosts_holding_them(self):
        port = neutron_port('p1')
        self.plugin.ports['p1'] = port
        self.driver.update_port_postcommit(FakePortContext(port, None))

        class Ctx(object):
            current = {'id': 'sub-2', 'network_id': NET, 'cidr': '198.18.41.0/24',
                       'enable_dhcp': False}
        self.driver.create_subnet_postcommit(Ctx())
        self.assertIn('subnets/sub-2', self.keys('h1'))
        self.assertEqual(self.keys('h2'), [])
        self.driver.delete_subnet_postcommit(Ctx())
        self.assertNotIn('subnets/sub-2', self.keys('h1'))


if __name__ == '__main__':
    unittest.main()

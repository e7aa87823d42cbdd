"""The mechanism driver against fakes of etcd, the core plugin and ML2's contexts: what
it binds and which keys each postcommit leaves in etcd. Needs neutron-lib, oslo.config
and etcd3gw importable (Debian: python3-neutron, python3-etcd3gw).
Run: /usr/bin/python3 -m unittest discover -s neutron -t neutron"""

import contextlib
import json
import unittest

from neutron_lib import exceptions as n_exc

from networking_pollux import journal
from networking_pollux import mech_driver
from networking_pollux import translate

NET = 'net-1'
SUB = 'sub-1'
LOCAL = {'id': 'seg-1', 'network_type': 'local', 'physical_network': None,
         'segmentation_id': None}


class FakeEtcd(object):
    def __init__(self):
        self.kv = {}
        self.log = []

    def put(self, key, value, lease=None):
        self.kv[key] = value
        self.log.append(('put', key))

    def get(self, key, **kw):
        if 'range_end' in kw:
            # Only what the driver asks: a prefix's keys, without their values.
            assert kw.get('keys_only') and kw.get('metadata'), kw
            return [(b'', meta) for _v, meta in self.get_prefix(key)]
        return [self.kv[key]] if key in self.kv else []

    def get_prefix(self, prefix, **kw):
        return [(v, {'key': k.encode()}) for k, v in sorted(self.kv.items())
                if k.startswith(prefix)]

    def replace(self, key, initial, new):
        if self.kv.get(key) != initial:
            return False
        self.put(key, new)
        return True

    def delete(self, key, **kw):
        self.log.append(('delete', key))
        return self.kv.pop(key, None) is not None


class FakePlugin(object):
    def __init__(self):
        self.ports = {}
        self.groups = {}
        self.address_groups = {}
        #: Subnets beyond the network's first (get_subnets lists that one only).
        self.subnets = {}

    def get_security_group(self, ctx, sg_id):
        return self.groups[sg_id]

    def get_address_group(self, ctx, ag_id):
        return self.address_groups[ag_id]

    def _get_port_security_group_bindings(self, ctx, filters=None):
        wanted = filters['security_group_id']
        return [{'port_id': p['id'], 'security_group_id': g}
                for p in self.ports.values() for g in p['security_groups']
                if g in wanted]

    def get_port(self, ctx, port_id):
        if port_id not in self.ports:
            raise n_exc.PortNotFound(port_id=port_id)
        return self.ports[port_id]

    def get_subnet(self, ctx, sub_id):
        for sub in self.get_subnets(ctx) + list(self.subnets.values()):
            if sub['id'] == sub_id:
                return sub
        raise n_exc.SubnetNotFound(subnet_id=sub_id)

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


class FakePluginContext(object):
    def elevated(self):
        return self


class FakePortContext(object):
    def __init__(self, current, original=None, segments=(LOCAL,)):
        self.current = current
        self.original = original
        self.host = current.get('binding:host_id')
        self.vif_type = current.get('binding:vif_type')
        self.original_vif_type = original.get('binding:vif_type') if original else None
        self.segments_to_bind = list(segments)
        self.bottom_bound_segment = segments[0] if segments else None
        self._plugin_context = FakePluginContext()
        self.bound = None

    def set_binding(self, segment_id, vif_type, vif_details, status=None):
        self.bound = (segment_id, vif_type, vif_details, status)


class DriverCase(unittest.TestCase):
    def setUp(self):
        self.driver = mech_driver.PolluxMechanismDriver()
        self.driver.prefix = '/pollux'
        self.driver.etcd = self.etcd = FakeEtcd()
        self.plugin = FakePlugin()
        self.driver._plugin = lambda: self.plugin
        self.driver._reading = lambda ctx: contextlib.nullcontext()
        # The journal in memory: what the precommits record, drained (in order, each
        # row recomputed from the fake plugin) when a postcommit wakes the drainer.
        self.rows = []
        self.driver._record = self.record
        self.driver._record_now = lambda *row: self.record(None, *row)
        self.driver._wake = self.drain
        self.driver._admin = FakePluginContext
        # The ports' networks name their one segment.
        self.driver._bound_segment = lambda admin, port: None

    def record(self, plugin_context, kind, object_id=None, host=None):
        self.rows.append(journal.Row(len(self.rows) + 1, kind, object_id, host))

    def drain(self):
        rows, self.rows = self.rows, []
        for row in rows:
            self.driver._reconcile_row(row)

    def commit(self, operation, context):
        """A change as ML2 makes it: the precommit in the transaction, the postcommit
        after it."""
        getattr(self.driver, operation + '_precommit')(context)
        getattr(self.driver, operation + '_postcommit')(context)

    def keys(self, host):
        prefix = translate.host_prefix('/pollux', host)
        return sorted(k[len(prefix):] for k in self.etcd.kv if k.startswith(prefix))


class DriverTest(DriverCase):
    def test_binds_only_where_an_agent_lives(self):
        ctx = FakePortContext(neutron_port('p1', **{'binding:vif_type': 'unbound'}))
        self.driver.bind_port(ctx)
        self.assertIsNone(ctx.bound)
        self.etcd.put('/pollux/agents/h1', '{}')
        self.driver.bind_port(ctx)
        self.assertEqual(ctx.bound, ('seg-1', 'tap', {'pollux_binding': {
            'driver': 'tap', 'interface': 'tapp1'}}, None))
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
        port = neutron_port('p1', device_id='inst-1', project_id='proj-1')
        self.plugin.ports['p1'] = port
        self.commit('update_port', FakePortContext(
            port, neutron_port('p1', **{'binding:vif_type': 'unbound'})))
        self.assertEqual(self.keys('h1'),
                         ['networks/' + NET, 'ports/p1', 'subnets/' + SUB])
        written = json.loads(self.etcd.kv['/pollux/hosts/h1/ports/p1'])
        self.assertEqual(written, translate.port(port))
        # The metadata proxy's X-Instance-ID and X-Tenant-ID.
        self.assertEqual((written['device_id'], written['project_id']),
                         ('inst-1', 'proj-1'))
        net = json.loads(self.etcd.kv['/pollux/hosts/h1/networks/' + NET])
        self.assertEqual(net['network_type'], 'local')

    def test_a_port_attached_to_an_instance_later_is_rewritten(self):
        # Nova binds the port, then sets device_id: the host must learn the instance.
        bare = neutron_port('p1', device_id='', project_id='proj-1')
        self.plugin.ports['p1'] = bare
        self.commit('update_port', FakePortContext(bare, None))
        written = json.loads(self.etcd.kv['/pollux/hosts/h1/ports/p1'])
        self.assertNotIn('device_id', written)
        attached = neutron_port('p1', device_id='inst-2', project_id='proj-1')
        self.plugin.ports['p1'] = attached
        self.commit('update_port', FakePortContext(attached, bare))
        written = json.loads(self.etcd.kv['/pollux/hosts/h1/ports/p1'])
        self.assertEqual(written['device_id'], 'inst-2')

    def test_moves_down_ports_and_last_port_cleanup(self):
        p1, p2 = neutron_port('p1'), neutron_port('p2')
        self.plugin.ports.update(p1=p1, p2=p2)
        for p in (p1, p2):
            self.commit('update_port', FakePortContext(p, None))
        # p1 moves to h2: h1 keeps the network for p2.
        moved = neutron_port('p1', host='h2')
        self.plugin.ports['p1'] = moved
        self.commit('update_port', FakePortContext(moved, p1))
        self.assertEqual(self.keys('h1'),
                         ['networks/' + NET, 'ports/p2', 'subnets/' + SUB])
        self.assertEqual(self.keys('h2'),
                         ['networks/' + NET, 'ports/p1', 'subnets/' + SUB])
        # p2 set down: h1's last port, so the network and subnet go too.
        down = neutron_port('p2', admin_state_up=False)
        self.plugin.ports['p2'] = down
        self.commit('update_port', FakePortContext(down, p2))
        self.assertEqual(self.keys('h1'), [])
        # p1 deleted.
        del self.plugin.ports['p1']
        self.commit('delete_port', FakePortContext(moved, None))
        self.assertEqual(self.keys('h2'), [])

    def test_a_ports_floating_ips_and_routed_networks_on_its_removal(self):
        port = neutron_port('p1')
        self.plugin.ports['p1'] = port
        self.commit('update_port', FakePortContext(port, None))
        # The L3 plugin's objects on the same host: a floating IP of p1, and a router
        # with an interface on p1's subnet.
        self.etcd.put('/pollux/hosts/h1/floating_ips/f1', json.dumps(
            {'id': 'f1', 'floating_ip_address': '203.0.113.120', 'port_id': 'p1'}))
        self.etcd.put('/pollux/hosts/h1/routers/r1', json.dumps(
            {'id': 'r1', 'interfaces': [SUB], 'routes': []}))
        self.etcd.log = []
        del self.plugin.ports['p1']
        self.commit('delete_port', FakePortContext(port, None))
        ops = [(op, k.split('/', 4)[4]) for op, k in self.etcd.log]
        self.assertEqual(ops, [('delete', 'floating_ips/f1'), ('delete', 'ports/p1')])
        # The router still needs the network and subnet.
        self.assertEqual(self.keys('h1'),
                         ['networks/' + NET, 'routers/r1', 'subnets/' + SUB])

    def test_subnet_and_network_changes_reach_the_hosts_holding_them(self):
        port = neutron_port('p1')
        self.plugin.ports['p1'] = port
        self.commit('update_port', FakePortContext(port, None))

        class Ctx(object):
            current = {'id': 'sub-2', 'network_id': NET, 'cidr': '198.18.41.0/24',
                       'enable_dhcp': False}
            _plugin_context = FakePluginContext()
        self.plugin.subnets['sub-2'] = Ctx.current
        self.commit('create_subnet', Ctx())
        self.assertIn('subnets/sub-2', self.keys('h1'))
        self.assertEqual(self.keys('h2'), [])
        del self.plugin.subnets['sub-2']
        self.commit('delete_subnet', Ctx())
        self.assertNotIn('subnets/sub-2', self.keys('h1'))


def sg_rule(rid, direction, **kw):
    r = {'id': rid, 'security_group_id': 'sg-1', 'direction': direction,
         'ethertype': 'IPv4', 'protocol': None, 'port_range_min': None,
         'port_range_max': None, 'remote_ip_prefix': None, 'remote_group_id': None,
         'remote_address_group_id': None, 'description': ''}
    r.update(kw)
    return r


class Payload(object):
    def __init__(self, resource_id=None, state=None, metadata=None):
        self.context = FakePluginContext()
        self.resource_id = resource_id
        self.latest_state = state
        self.metadata = metadata or {}


class SecurityGroupTest(DriverCase):
    def setUp(self):
        super(SecurityGroupTest, self).setUp()
        self.plugin.groups['sg-1'] = {
            'id': 'sg-1', 'name': 'default', 'stateful': True,
            'security_group_rules': [
                sg_rule('r-egress', 'egress'),
                sg_rule('r-members', 'ingress', remote_group_id='sg-1')]}

    def add(self, pid, host, ip, groups=('sg-1',)):
        port = neutron_port(pid, host=host, security_groups=list(groups),
                            fixed_ips=[{'subnet_id': SUB, 'ip_address': ip}])
        self.plugin.ports[pid] = port
        self.commit('create_port', FakePortContext(port, None))
        return port

    def held(self, host, collection, obj_id):
        return json.loads(self.etcd.kv[translate.object_key(
            '/pollux', host, collection, obj_id)])

    def test_groups_and_members_go_before_the_port(self):
        self.add('p1', 'h1', '198.18.40.11')
        members = translate.members_group_id('sg-1')
        self.assertEqual(self.keys('h1'), [
            'address_groups/' + members, 'networks/' + NET, 'ports/p1',
            'security_groups/sg-1', 'subnets/' + SUB])
        order = [k.split('/', 4)[4] for op, k in self.etcd.log if op == 'put']
        self.assertLess(order.index('address_groups/' + members),
                        order.index('security_groups/sg-1'))
        self.assertLess(order.index('security_groups/sg-1'), order.index('ports/p1'))
        sg = self.held('h1', 'security_groups', 'sg-1')
        self.assertEqual(sg['rules'][1], {
            'id': 'r-members', 'direction': 'ingress', 'ethertype': 'IPv4',
            'remote_address_group_id': members})
        self.assertEqual(self.held('h1', 'address_groups', members)['addresses'],
                         ['198.18.40.11'])
        # A member on another host joins the address group of h1 as well.
        self.add('p2', 'h2', '198.18.40.12')
        for host in ('h1', 'h2'):
            self.assertEqual(self.held(host, 'address_groups', members)['addresses'],
                             ['198.18.40.11', '198.18.40.12'])
        # A port outside the group changes nothing of it; p2 leaving it does.
        self.add('p3', 'h2', '198.18.40.13', groups=())
        del self.plugin.ports['p2']
        self.commit('delete_port', FakePortContext(neutron_port(
            'p2', host='h2', security_groups=['sg-1']), None))
        self.assertEqual(self.held('h1', 'address_groups', members)['addresses'],
                         ['198.18.40.11'])
        self.assertNotIn('security_groups/sg-1', self.keys('h2'))
        self.assertIn('ports/p3', self.keys('h2'))

    def test_a_new_member_survives_a_concurrent_change(self):
        self.add('p1', 'h1', '198.18.40.11')
        members = translate.members_group_id('sg-1')
        key = translate.object_key('/pollux', 'h1', 'address_groups', members)
        real_replace = self.etcd.replace

        def racing_replace(k, initial, new):
            # Another server adds 198.18.40.77 between this one's read and its swap.
            self.etcd.replace = real_replace
            ag = json.loads(self.etcd.kv[k])
            ag['addresses'] = sorted(ag['addresses'] + ['198.18.40.77'])
            self.etcd.kv[k] = json.dumps(ag, sort_keys=True)
            return real_replace(k, initial, new)
        self.etcd.replace = racing_replace
        self.add('p2', 'h2', '198.18.40.12')
        self.assertEqual(json.loads(self.etcd.kv[key])['addresses'],
                         ['198.18.40.11', '198.18.40.12', '198.18.40.77'])

    def test_rule_changes_reach_the_hosts_holding_the_group(self):
        self.add('p1', 'h1', '198.18.40.11')
        self.add('p9', 'h9', '198.18.40.19', groups=())
        icmp = sg_rule('r-icmp', 'ingress', protocol='icmp',
                       remote_ip_prefix='203.0.113.0/24')
        self.plugin.groups['sg-1']['security_group_rules'].append(icmp)
        self.etcd.log = []
        self.driver._security_group_rule_changed(
            'security_group_rule', mech_driver.events.PRECOMMIT_CREATE, None,
            Payload('r-icmp', state=icmp))
        self.drain()
        self.assertEqual(self.etcd.log, [('put', '/pollux/hosts/h1/security_groups/sg-1')])
        rules = self.held('h1', 'security_groups', 'sg-1')['rules']
        self.assertIn({'id': 'r-icmp', 'direction': 'ingress', 'ethertype': 'IPv4',
                       'protocol': 'icmp', 'remote_ip_prefix': '203.0.113.0/24'}, rules)
        # The rule naming the remote group goes: its address group goes after it.
        self.plugin.groups['sg-1']['security_group_rules'] = [
            r for r in self.plugin.groups['sg-1']['security_group_rules']
            if r['id'] != 'r-members']
        self.etcd.log = []
        self.driver._security_group_rule_changed(
            'security_group_rule', mech_driver.events.PRECOMMIT_DELETE, None,
            Payload('r-members', metadata={'security_group_id': 'sg-1'}))
        self.drain()
        self.assertEqual(self.etcd.log, [
            ('put', '/pollux/hosts/h1/security_groups/sg-1'),
            ('delete', '/pollux/hosts/h1/address_groups/'
             + translate.members_group_id('sg-1'))])

    def test_neutron_address_groups_go_with_the_rules_naming_them(self):
        self.plugin.address_groups['ag-1'] = {
            'id': 'ag-1', 'name': 'office', 'description': '', 'project_id': 'p',
            'addresses': ['203.0.113.0/25', '198.18.50.0/24']}
        self.plugin.groups['sg-1']['security_group_rules'].append(
            sg_rule('r-ag', 'ingress', protocol='tcp', port_range_min=22,
                    port_range_max=22, remote_address_group_id='ag-1'))
        self.add('p1', 'h1', '198.18.40.11')
        self.assertEqual(self.held('h1', 'address_groups', 'ag-1'), {
            'id': 'ag-1', 'name': 'office',
            'addresses': ['198.18.50.0/24', '203.0.113.0/25']})
        self.assertIn({'id': 'r-ag', 'direction': 'ingress', 'ethertype': 'IPv4',
                       'protocol': 'tcp', 'port_range_min': 22, 'port_range_max': 22,
                       'remote_address_group_id': 'ag-1'},
                      self.held('h1', 'security_groups', 'sg-1')['rules'])
        self.plugin.address_groups['ag-1']['addresses'] = ['203.0.113.0/25']
        self.etcd.log = []
        self.driver._address_group_changed('address_group',
                                           mech_driver.events.AFTER_UPDATE, None,
                                           Payload('ag-1'))
        self.assertEqual(self.etcd.log, [('put', '/pollux/hosts/h1/address_groups/ag-1')])
        self.assertEqual(self.held('h1', 'address_groups', 'ag-1')['addresses'],
                         ['203.0.113.0/25'])

    def test_a_port_leaving_its_groups_takes_them_after_it(self):
        p1 = self.add('p1', 'h1', '198.18.40.11')
        bare = neutron_port('p1', security_groups=[], port_security_enabled=False,
                            fixed_ips=p1['fixed_ips'])
        self.plugin.ports['p1'] = bare
        self.etcd.log = []
        self.commit('update_port', FakePortContext(bare, p1))
        self.assertEqual(self.keys('h1'),
                         ['networks/' + NET, 'ports/p1', 'subnets/' + SUB])
        ops = [(op, k.split('/', 4)[4]) for op, k in self.etcd.log]
        self.assertLess(ops.index(('put', 'ports/p1')),
                        ops.index(('delete', 'security_groups/sg-1')))


if __name__ == '__main__':
    unittest.main()

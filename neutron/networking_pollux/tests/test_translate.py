"""The key layout and the translation of Neutron's dicts into Pollux objects.
Run: /usr/bin/python3 -m unittest discover -s neutron -t neutron"""

import unittest

from networking_pollux import translate

PORT_ID = '0f2b6a4e-9d1c-4e57-8a3b-6c1d2e3f4a5b'


def neutron_port(**kw):
    p = {
        'id': PORT_ID,
        'network_id': 'net-1',
        'mac_address': 'fa:16:3e:00:00:01',
        'admin_state_up': True,
        'fixed_ips': [{'subnet_id': 'sub-1', 'ip_address': '198.18.40.11'}],
        'security_groups': ['sg-1'],
        'port_security_enabled': True,
        'allowed_address_pairs': [{'ip_address': '198.18.40.99',
                                   'mac_address': 'fa:16:3e:00:00:01'}],
        'binding:host_id': 'compute-1',
        'binding:profile': {},
        'device_owner': 'compute:nova',
        'device_id': 'inst-1',
        'project_id': 'proj-1',
        'status': 'ACTIVE',
    }
    p.update(kw)
    return p


class KeysTest(unittest.TestCase):
    def test_layout(self):
        self.assertEqual(translate.object_key('/pollux/', 'h1', 'ports', 'p'),
                         '/pollux/hosts/h1/ports/p')
        self.assertEqual(translate.agent_key('/pollux', 'h1'), '/pollux/agents/h1')
        self.assertEqual(translate.tap_name(PORT_ID), 'tap0f2b6a4e-9d')


class PortTest(unittest.TestCase):
    def test_every_enforced_field_is_carried(self):
        obj = translate.port(neutron_port())
        self.assertEqual(obj, {
            'id': PORT_ID,
            'network_id': 'net-1',
            'mac_address': 'fa:16:3e:00:00:01',
            'fixed_ips': [{'subnet_id': 'sub-1', 'ip_address': '198.18.40.11'}],
            # Refused by polluxd until security groups are enforced: never dropped.
            'security_groups': ['sg-1'],
            'port_security_enabled': True,
            'allowed_address_pairs': [{'ip_address': '198.18.40.99',
                                       'mac_address': 'fa:16:3e:00:00:01'}],
            'binding': {'driver': 'tap', 'interface': 'tap0f2b6a4e-9d'},
            # What the metadata proxy tells Nova (X-Instance-ID, X-Tenant-ID).
            'device_id': 'inst-1',
            'project_id': 'proj-1',
        })

    def test_instance_and_project_only_when_neutron_has_them(self):
        # An unattached port has device_id ''; older dicts carry tenant_id only.
        obj = translate.port(neutron_port(device_id='', project_id=None,
                                          tenant_id='proj-old'))
        self.assertNotIn('device_id', obj)
        self.assertEqual(obj['project_id'], 'proj-old')
        obj = translate.port(neutron_port(device_id='', project_id=''))
        self.assertNotIn('device_id', obj)
        self.assertNotIn('project_id', obj)

    def test_profile_names_an_afxdp_interface(self):
        obj = translate.port(neutron_port(
            **{'binding:profile': {'pollux_afxdp_interface': 'veth7'}}))
        self.assertEqual(obj['binding'], {'driver': 'afxdp', 'interface': 'veth7'})

    def test_dhcp_fields(self):
        obj = translate.port(neutron_port(
            dns_name='vm1',
            extra_dhcp_opts=[{'opt_name': 'ntp-server', 'opt_value': '198.18.40.1',
                              'ip_version': 4}]))
        self.assertEqual(obj['dns_name'], 'vm1')
        self.assertEqual(obj['extra_dhcp_opts'],
                         [{'opt_name': 'ntp-server', 'opt_value': '198.18.40.1',
                           'ip_version': 4}])

    def test_served_only_when_bound_and_up(self):
        self.assertTrue(translate.port_is_served(neutron_port()))
        self.assertFalse(translate.port_is_served(neutron_port(admin_state_up=False)))
        self.assertFalse(translate.port_is_served(
            neutron_port(**{'binding:host_id': ''})))


class NetworkSubnetTest(unittest.TestCase):
    def test_network_takes_its_segment(self):
        net = {'id': 'net-1', 'name': 'n', 'admin_state_up': True, 'mtu': 1500,
               'dns_domain': 'example.org.'}
        obj = translate.network(net, {'network_type': 'vlan',
                                      'physical_network': 'physnet1',
                                      'segmentation_id': 101})
        self.assertEqual(obj, {'id': 'net-1', 'name': 'n', 'network_type': 'vlan',
                               'physical_network': 'physnet1', 'segmentation_id': 101,
                               'mtu': 1500, 'admin_state_up': True,
                               'dns_domain': 'example.org'})
        obj = translate.network(net, {'network_type': 'local',
                                      'physical_network': None,
                                      'segmentation_id': None})
        self.assertNotIn('physical_network', obj)
        self.assertNotIn('segmentation_id', obj)

    def test_subnet(self):
        sub = {'id': 'sub-1', 'network_id': 'net-1', 'cidr': '198.18.40.0/24',
               'ip_version': 4, 'gateway_ip': '198.18.40.1', 'enable_dhcp': True,
               'dns_nameservers': ['198.18.40.53'],
               'host_routes': [{'destination': '198.19.0.0/16',
                                'nexthop': '198.18.40.2'}],
               'allocation_pools': [{'start': '198.18.40.10', 'end': '198.18.40.200'}]}
        self.assertEqual(translate.subnet(sub), {
            'id': 'sub-1', 'network_id': 'net-1', 'cidr': '198.18.40.0/24',
            'gateway_ip': '198.18.40.1', 'enable_dhcp': True,
            'dns_nameservers': ['198.18.40.53'],
            'host_routes': [{'destination': '198.19.0.0/16',
                             'nexthop': '198.18.40.2'}],
            'allocation_pools': [{'start': '198.18.40.10', 'end': '198.18.40.200'}]})
        no_gw = dict(sub, gateway_ip=None, allocation_pools=[])
        self.assertNotIn('gateway_ip', translate.subnet(no_gw))


class SecurityGroupTest(unittest.TestCase):
    def test_rules_as_polluxd_has_them(self):
        sg = {'id': 'sg-1', 'name': 'web', 'description': '', 'stateful': False,
              'project_id': 'p', 'security_group_rules': [
                  {'id': 'r2', 'security_group_id': 'sg-1', 'direction': 'ingress',
                   'ethertype': 'IPv6', 'protocol': 'tcp', 'port_range_min': 80,
                   'port_range_max': 80, 'remote_ip_prefix': '2001:db8::/64',
                   'remote_group_id': None, 'remote_address_group_id': None,
                   'normalized_cidr': '2001:db8::/64', 'description': ''},
                  {'id': 'r1', 'security_group_id': 'sg-1', 'direction': 'ingress',
                   'ethertype': 'IPv4', 'protocol': '1', 'port_range_min': 8,
                   'port_range_max': None, 'remote_ip_prefix': None,
                   'remote_group_id': 'sg-2', 'remote_address_group_id': None}]}
        self.assertEqual(translate.security_group(sg), {
            'id': 'sg-1', 'name': 'web', 'stateful': False, 'rules': [
                {'id': 'r1', 'direction': 'ingress', 'ethertype': 'IPv4',
                 'protocol': '1', 'port_range_min': 8,
                 'remote_address_group_id': 'sg-members:sg-2'},
                {'id': 'r2', 'direction': 'ingress', 'ethertype': 'IPv6',
                 'protocol': 'tcp', 'port_range_min': 80, 'port_range_max': 80,
                 'remote_ip_prefix': '2001:db8::/64'}]})
        self.assertEqual(translate.remote_group_ids(sg), {'sg-2'})

    def test_members_are_fixed_ips_and_address_pairs(self):
        ports = [neutron_port(), neutron_port(id='other', security_groups=['sg-9'],
                                              fixed_ips=[{'subnet_id': 's',
                                                          'ip_address': '198.18.40.50'}])]
        self.assertEqual(translate.members_group('sg-1', ports), {
            'id': 'sg-members:sg-1', 'description': 'members of security group sg-1',
            'addresses': ['198.18.40.11', '198.18.40.99']})


class L3Test(unittest.TestCase):
    def test_router_and_floating_ip(self):
        r = {'id': 'r1', 'name': 'x', 'routes': [{'destination': '198.19.0.0/16',
                                                   'nexthop': '198.18.40.5'}],
             'external_gateway_info': {
                 'network_id': 'ext', 'enable_snat': False,
                 'external_fixed_ips': [{'subnet_id': 's6', 'ip_address': '2001:db8::5'},
                                        {'subnet_id': 's4',
                                         'ip_address': '203.0.113.101'}]}}
        self.assertEqual(translate.router(r, {'sub-b': '198.18.41.1',
                                              'sub-a': '198.18.40.1'}), {
            'id': 'r1', 'interfaces': ['sub-a', 'sub-b'],
            'routes': [{'destination': '198.19.0.0/16', 'nexthop': '198.18.40.5'}],
            'external_gateway_info': {'network_id': 'ext', 'enable_snat': False,
                                      'external_fixed_ip': '203.0.113.101'}})
        self.assertNotIn('external_gateway_info',
                         translate.router(dict(r, external_gateway_info=None), {}))

    def test_router_host_mac_and_project(self):
        r = {'id': 'r1', 'routes': [], 'project_id': 'proj-1'}
        here = translate.router(r, {}, mac_address='fa:16:3e:00:0f:01',
                                runs_on='l3', for_host='l3')
        # On its own host: no binding_host_id, which polluxd reads as "runs here".
        self.assertEqual(here, {'id': 'r1', 'interfaces': [], 'routes': [],
                                'mac_address': 'fa:16:3e:00:0f:01',
                                'project_id': 'proj-1'})
        there = translate.router(r, {}, mac_address='fa:16:3e:00:0f:01',
                                 runs_on='l3', for_host='compute-2')
        self.assertEqual(there['binding_host_id'], 'l3')
        self.assertEqual(there['mac_address'], 'fa:16:3e:00:0f:01')

    def test_router_mac_is_its_oldest_ports(self):
        ports = [
            {'id': 'b', 'mac_address': 'fa:16:3e:00:00:0b',
             'created_at': '2026-12-01T10:00:05Z'},
            {'id': 'a', 'mac_address': 'fa:16:3e:00:00:0a',
             'created_at': '2026-12-01T10:00:07Z'},
            {'id': 'c', 'mac_address': 'fa:16:3e:00:00:0c',
             'created_at': '2026-12-01T10:00:05Z'},
        ]
        # The oldest; between two of the same second, the smaller id.
        self.assertEqual(translate.router_mac(ports), 'fa:16:3e:00:00:0b')
        self.assertEqual(translate.router_mac(ports[1:]), 'fa:16:3e:00:00:0c')
        self.assertIsNone(translate.router_mac([]))
        f = {'id': 'f1', 'floating_ip_address': '203.0.113.120', 'port_id': None,
             'fixed_ip_address': None, 'router_id': None}
        self.assertEqual(translate.floating_ip(f),
                         {'id': 'f1', 'floating_ip_address': '203.0.113.120'})
        f.update(port_id='p1', fixed_ip_address='198.18.40.11')
        self.assertEqual(translate.floating_ip(f), {
            'id': 'f1', 'floating_ip_address': '203.0.113.120', 'port_id': 'p1',
            'fixed_ip_address': '198.18.40.11'})


if __name__ == '__main__':
    unittest.main()

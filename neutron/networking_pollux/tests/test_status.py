"""Port status from the agents' keys into Neutron.
Run: /usr/bin/python3 -m unittest discover -s neutron -t neutron"""

import unittest

from networking_pollux import status


class FakePlugin(object):
    def __init__(self):
        self.calls = []
        self.ports = []

    def get_ports(self, ctx, filters=None):
        return [p for p in self.ports if p['status'] in filters['status']]

    def update_port_status(self, ctx, port_id, st, host=None):
        self.calls.append((port_id, st, host))


class StatusTest(unittest.TestCase):
    def test_keys(self):
        self.assertEqual(status.parse_status_key('/pollux/', '/pollux/status/h1/ports/p1'),
                         ('h1', 'p1'))
        for key in ('/pollux/status/h1/ports/', '/pollux/status/h1/networks/n',
                    '/pollux/hosts/h1/ports/p1', '/pollux/status/h1/ports/p/x'):
            self.assertIsNone(status.parse_status_key('/pollux', key), key)

    def test_present_is_active_and_gone_is_down(self):
        plugin = FakePlugin()
        ps = status.PortStatus(None, '/pollux', plugin=lambda: plugin)
        ps.apply('/pollux/status/h1/ports/p1', True)
        ps.apply('/pollux/status/h1/ports/p1', False)
        ps.apply('/pollux/agents/h1', True)
        self.assertEqual(plugin.calls, [('p1', 'ACTIVE', 'h1'), ('p1', 'DOWN', 'h1')])

    def test_a_resync_sets_down_the_ports_whose_key_went_unseen(self):
        plugin = FakePlugin()
        pollux = {'pollux_binding': {'driver': 'tap', 'interface': 'tapx'}}
        plugin.ports = [
            {'id': 'p1', 'status': 'ACTIVE', 'binding:host_id': 'h1',
             'binding:vif_details': pollux},
            {'id': 'p2', 'status': 'ACTIVE', 'binding:host_id': 'h1',
             'binding:vif_details': pollux},
            # Another driver's port has no status key of Pollux's.
            {'id': 'p3', 'status': 'ACTIVE', 'binding:host_id': 'h1',
             'binding:vif_details': {}},
        ]
        ps = status.PortStatus(None, '/pollux', plugin=lambda: plugin)
        ps.resync(['/pollux/status/h1/ports/p1', '/pollux/agents/h1'])
        self.assertEqual(plugin.calls, [('p1', 'ACTIVE', 'h1'), ('p2', 'DOWN', 'h1')])

    def test_watch_messages_split_across_chunks(self):
        chunks = [b'{"result": {"created": true}}\n{"result": {"ev',
                  b'ents": [1]}}\n', b'{"result": {}}']
        self.assertEqual(list(status.watch_payloads(chunks)), [
            {'result': {'created': True}}, {'result': {'events': [1]}},
            {'result': {}}])


if __name__ == '__main__':
    unittest.main()
